//! Downloads a hub snapshot into the local cache with the `hf-hub` client, in the layout
//! `huggingface_hub` writes (blobs, snapshot symlinks, refs), fetching what
//! `DiffusionPipeline.download` fetches: the configs, and per folder the weights in one format
//! (safetensors before `.bin`, the default variant before others); a pipeline's folders are
//! the components its `model_index.json` names, less the safety checker diffuse never runs.

use super::parse_id;
use crate::{Error, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// A hub endpoint to download from.
#[derive(Clone, Debug)]
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    progress: bool,
}

impl Hub {
    /// `endpoint` (e.g. `https://huggingface.co`), without a token or progress bars.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Hub {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            progress: false,
        }
    }

    /// As huggingface_hub configures itself: `HF_ENDPOINT` (default `https://huggingface.co`),
    /// the token from `HF_TOKEN` or `huggingface-cli login`, progress bars on a terminal.
    pub fn from_env() -> Self {
        let endpoint =
            std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
        let token = std::env::var("HF_TOKEN")
            .ok()
            .or_else(|| std::fs::read_to_string(super::hf_home().join("token")).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        Hub {
            token,
            progress: std::io::stderr().is_terminal(),
            ..Hub::new(endpoint)
        }
    }

    /// Downloads hub id `id` (`ORG/NAME[@REVISION]`) into `cache` and returns its snapshot
    /// folder. `refs/REVISION` is written last, so an interrupted download is never taken for
    /// a complete snapshot; files already in the cache are not fetched again.
    pub fn snapshot(&self, cache: &Path, id: &str) -> Result<PathBuf> {
        let (org, name, rev) = parse_id(id)
            .ok_or_else(|| Error::Hub(format!("{id}: not a hub id (ORG/NAME[@REV])")))?;
        let repo_id = format!("{org}/{name}");
        let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(self.progress)
            .with_retries(2)
            .build()
            .map_err(|e| self.fail(id, rev, e))?;
        let info = api
            .repo(Repo::with_revision(
                repo_id.clone(),
                RepoType::Model,
                rev.to_string(),
            ))
            .info()
            .map_err(|e| self.fail(id, rev, e))?;
        let sha = info.sha;
        let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let at = api.repo(Repo::with_revision(repo_id, RepoType::Model, sha.clone()));
        let get = |f: &str| at.get(f).map_err(|e| self.fail(id, rev, e));
        // model_index.json first: it names the folders to fetch.
        let index = match files.iter().any(|f| f == "model_index.json") {
            true => {
                let path = get("model_index.json")?;
                let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
                Some(diffuse_core::pyjson::parse(&text).map_err(|e| {
                    Error::Hub(format!("{id}: model_index.json: malformed JSON: {e}"))
                })?)
            }
            false => None,
        };
        let wanted = select_files(&files, index.as_ref());
        if wanted.is_empty() {
            return Err(Error::Hub(format!(
                "{id}: the hub repository at {} has no diffusers config or weights",
                self.endpoint
            )));
        }
        for f in &wanted {
            get(f)?;
        }
        let repo = cache.join(format!("models--{org}--{name}"));
        let refs = repo.join("refs");
        if rev != sha {
            let tmp = refs.join(format!(".{rev}.tmp"));
            std::fs::write(&tmp, &sha).map_err(Error::io(&tmp))?;
            let dst = refs.join(rev);
            std::fs::rename(&tmp, &dst).map_err(Error::io(&dst))?;
            // hf-hub's own ref for the hash revision; huggingface_hub writes none.
            let _ = std::fs::remove_file(refs.join(&sha));
        }
        Ok(repo.join("snapshots").join(sha))
    }

    /// One clause saying why the hub did not give `id`.
    fn fail(&self, id: &str, rev: &str, e: ApiError) -> Error {
        let at = &self.endpoint;
        let why = match &e {
            ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::Status(401 | 403, _) => format!(
                    "{at} refused access (gated or private: set HF_TOKEN or run `huggingface-cli login`)"
                ),
                ureq::Error::Status(404, _) => {
                    format!("{at} has no model {id} at revision {rev} (HTTP 404)")
                }
                ureq::Error::Status(code, _) => format!("{at} answered HTTP {code}"),
                ureq::Error::Transport(t) => format!(
                    "{at} could not be reached ({t}); use --offline with a model in the cache"
                ),
            },
            other => format!("the download from {at} failed: {other}"),
        };
        Error::Hub(format!("{id}: {why}"))
    }
}

/// Weight formats in the order diffusers prefers them.
const WEIGHTS: [&str; 2] = ["safetensors", "bin"];

/// The files of a hub repository that diffuse needs, from its file list and its parsed
/// `model_index.json`: every JSON, tokenizer text and SentencePiece file, and per folder the
/// weights of one kind — safetensors before `.bin`, and the default variant (no `.fp16.` in
/// the name) before others. With a model index, only the root and the components it names.
pub fn select_files(files: &[String], index: Option<&serde_json::Value>) -> Vec<String> {
    let allowed = |dir: &str| {
        let top = dir.split('/').next().unwrap_or("");
        match index {
            None => true,
            Some(_) if top.is_empty() => true,
            Some(_) if top == "safety_checker" => false,
            Some(ix) => crate::weights::names_component(ix.get(top)),
        }
    };
    let mut by_dir: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in files {
        let (dir, _) = f.rsplit_once('/').unwrap_or(("", f));
        if allowed(dir) {
            by_dir.entry(dir).or_default().push(f);
        }
    }
    let mut out = Vec::new();
    for group in by_dir.values() {
        let ext = |f: &str| f.rsplit_once('.').map_or("", |(_, e)| e).to_string();
        let base = |f: &str| f.rsplit('/').next().unwrap_or(f).to_string();
        out.extend(
            group
                .iter()
                .filter(|f| matches!(ext(f).as_str(), "json" | "txt" | "model"))
                .map(|f| f.to_string()),
        );
        // A variant is a `.` inside the stem: `x.fp16.safetensors`, `x.fp16-00001-of-00002.bin`.
        let variant = |f: &str| base(f).matches('.').count() > 1;
        let tier = WEIGHTS
            .iter()
            .flat_map(|w| [(*w, false), (*w, true)])
            .map(|(w, v)| {
                group
                    .iter()
                    .filter(|f| ext(f) == w && variant(f) == v)
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
            })
            .find(|t| !t.is_empty());
        out.extend(tier.unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_pipeline_takes_its_components_in_one_weight_format() {
        let repo = files(&[
            ".gitattributes",
            "README.md",
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.bin",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.onnx",
            "unet/diffusion_flax_model.msgpack",
            "scheduler/scheduler_config.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.bin",
            "vae/diffusion_pytorch_model.bin",
            "text_encoder/config.json",
            "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors",
            "text_encoder/model.safetensors.index.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "safety_checker/config.json",
            "safety_checker/model.safetensors",
            "unused/config.json",
            "sample.png",
        ]);
        let index = serde_json::json!({
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
            "unused": [null, null],
        });
        let mut got = select_files(&repo, Some(&index));
        got.sort();
        let mut want = files(&[
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json",
            "vae/config.json",
            "vae/diffusion_pytorch_model.bin",
            "text_encoder/config.json",
            "text_encoder/model-00001-of-00002.safetensors",
            "text_encoder/model-00002-of-00002.safetensors",
            "text_encoder/model.safetensors.index.json",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
        ]);
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bare_model_takes_a_variant_only_when_there_is_no_default() {
        let repo = files(&[
            "config.json",
            "diffusion_pytorch_model.fp16.safetensors",
            "diffusion_pytorch_model.fp16.bin",
        ]);
        assert_eq!(
            select_files(&repo, None),
            files(&["config.json", "diffusion_pytorch_model.fp16.safetensors"])
        );
        assert!(select_files(&files(&["README.md", "x.ckpt"]), None).is_empty());
    }
}
