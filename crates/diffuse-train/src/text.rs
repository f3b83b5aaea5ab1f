//! Text-to-image training, Stable Diffusion's recipe at the scale of this machine (diffusers'
//! `examples/text_to_image/train_text_to_image.py`, with the text encoder trained too):
//! - prompts built from a captioned data set: the caption, with some of its tags appended as
//!   augmentation (`[captions]`), and the empty prompt in place of the caption for a
//!   `train.cond_dropout` share of rows (classifier-free guidance, as SD trains it);
//! - a CLIP BPE tokenizer learnt from the training captions ([`ClipTokenizer::train`]);
//! - a CLIP-architecture text encoder (`[text_encoder]`) trained jointly from scratch with the
//!   UNet: there is no pretrained CLIP on this machine, and a frozen random encoder would leave
//!   the UNet only random features of the words to read. Its variables live in the trainer's
//!   `VarMap` under [`PREFIX`], so AdamW, clipping, EMA and checkpoints cover both networks;
//!   checkpoints and the output pipeline hold them as `text_encoder/` (and `text_encoder_ema/`);
//! - captions held out as whole strings (`captions.holdout`): their images are left out of
//!   training, so sampling those prompts tests composition, not memory.

use crate::objective::TrainRng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use diffuse_data::datasets::{Caption, Dataset};
use diffuse_models::text::{ClipTextConfig, ClipTextModel, ClipTokenizer, HiddenAct};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Name prefix of the text encoder's variables in the trainer's `VarMap`.
pub const PREFIX: &str = "text_encoder.";
/// The pipeline folder of the text encoder (`_ema` beside it for the EMA weights).
pub const COMPONENT: &str = "text_encoder";
/// transformers' weights file name.
pub const WEIGHTS_NAME: &str = "model.safetensors";

/// `[text_encoder]`: the CLIP text encoder trained with the UNet (transformers'
/// `CLIPTextConfig` keys) and its tokenizer's size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextEncoderSection {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: HiddenAct,
    /// Tokens per prompt (the tokenizer's `model_max_length`, the encoder's
    /// `max_position_embeddings`).
    pub max_length: usize,
    /// BPE merges learnt from the captions (beyond CLIP's 512 byte tokens).
    pub merges: usize,
}

impl Default for TextEncoderSection {
    fn default() -> Self {
        TextEncoderSection {
            hidden_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 256,
            hidden_act: HiddenAct::QuickGelu,
            max_length: 16,
            merges: 1000,
        }
    }
}

/// `[captions]`: how prompts are made from a data set's captions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptionsSection {
    /// Chance that a prompt gets tags appended ("red apple, fruit").
    pub tag_probability: f64,
    /// At most this many tags, drawn without replacement.
    pub max_tags: usize,
    /// Captions whose images are left out of training (whole strings, case-insensitive), to
    /// sample as held-out prompts.
    pub holdout: Vec<String>,
}

impl Default for CaptionsSection {
    fn default() -> Self {
        CaptionsSection {
            tag_probability: 0.5,
            max_tags: 2,
            holdout: Vec::new(),
        }
    }
}

/// The text side of a text-to-image run: captions, tokenizer and the jointly trained encoder.
pub struct TextConditioning {
    pub tokenizer: ClipTokenizer,
    pub config: ClipTextConfig,
    /// The encoder over the trainer's variables (the ones under [`PREFIX`]).
    pub encoder: ClipTextModel,
    /// Captions by training-set index.
    captions: Vec<Caption>,
    section: CaptionsSection,
    dropout: f64,
}

impl TextConditioning {
    /// Learns the tokenizer from the captions of `data` (the training set), builds the encoder
    /// (transformers' init from `seed`) and registers its variables in `varmap` under
    /// [`PREFIX`].
    pub fn new(
        te: &TextEncoderSection,
        section: &CaptionsSection,
        data: &dyn Dataset,
        dropout: f64,
        seed: u64,
        varmap: &VarMap,
        device: &Device,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&section.tag_probability) {
            return Err(Error::Invalid(format!(
                "captions.tag_probability must be in [0, 1], got {}",
                section.tag_probability
            )));
        }
        let captions: Vec<Caption> = (0..data.len())
            .map(|i| {
                data.caption(i).ok_or_else(|| {
                    Error::Invalid(format!(
                        "data set {}: item {i} has no caption; text-to-image training needs a captioned set (openmoji)",
                        data.describe()
                    ))
                })
            })
            .collect::<Result<_>>()?;
        let corpus = captions
            .iter()
            .flat_map(|c| std::iter::once(c.text.clone()).chain(c.tags.iter().cloned()));
        let tokenizer =
            ClipTokenizer::train(corpus, te.merges)?.with_model_max_length(te.max_length)?;
        let config = ClipTextConfig {
            vocab_size: tokenizer.vocab_size(),
            hidden_size: te.hidden_size,
            intermediate_size: te.intermediate_size,
            projection_dim: te.hidden_size,
            num_hidden_layers: te.num_hidden_layers,
            num_attention_heads: te.num_attention_heads,
            max_position_embeddings: te.max_length,
            hidden_act: te.hidden_act,
            pad_token_id: Some(tokenizer.pad_id()),
            bos_token_id: Some(tokenizer.bos_id()),
            eos_token_id: tokenizer.eos_id(),
            ..ClipTextConfig::default()
        };
        config
            .validate()
            .map_err(|e| Error::Invalid(format!("[text_encoder]: {e}")))?;
        let (encoder, own) = ClipTextModel::build(&config, device, seed)?;
        register(varmap, &own)?;
        Ok(TextConditioning {
            tokenizer,
            config,
            encoder,
            captions,
            section: section.clone(),
            dropout,
        })
    }

    /// Re-applies the encoder's own init after the trainer's generic one ran over every
    /// variable.
    pub fn reinit(&self, varmap: &VarMap, seed: u64) -> Result<()> {
        let own = VarMap::new();
        {
            let data = varmap.data().lock().expect("varmap lock");
            let mut mine = own.data().lock().expect("varmap lock");
            for (k, v) in data.iter() {
                if let Some(name) = k.strip_prefix(PREFIX) {
                    mine.insert(name.to_string(), v.clone());
                }
            }
        }
        Ok(diffuse_models::text::clip::seeded_init(
            &own,
            &self.config,
            seed,
        )?)
    }

    /// The prompt of training item `i`: its caption, and with `captions.tag_probability` up to
    /// `captions.max_tags` of its tags.
    fn prompt(&self, i: usize, r: &mut impl Rng) -> String {
        let c = &self.captions[i];
        let (tags, u): (usize, f64) = (
            r.random_range(0..=self.section.max_tags.min(c.tags.len())),
            r.random(),
        );
        let drop: f64 = r.random();
        if drop < self.dropout {
            return String::new();
        }
        if u >= self.section.tag_probability || tags == 0 {
            return c.text.clone();
        }
        let picked: Vec<&String> = c.tags.choose_multiple(r, tags).collect();
        let mut p = c.text.clone();
        for t in picked {
            p.push_str(", ");
            p.push_str(t);
        }
        p
    }

    /// Prompts for training items `indices`: one seed per row from the run's stream (all rows
    /// of a data-parallel batch draw theirs alike), each row's choices from its seed.
    pub fn prompts(&self, indices: &[usize], rng: &mut TrainRng) -> Vec<String> {
        let seeds = rng.rows(indices.len(), |r| r.random::<u64>());
        indices
            .iter()
            .zip(seeds)
            .map(|(&i, seed)| self.prompt(i, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed)))
            .collect()
    }

    /// Token ids `[b, max_length]` of `prompts`.
    pub fn ids(&self, prompts: &[String], device: &Device) -> Result<Tensor> {
        ids(&self.tokenizer, prompts, device)
    }

    /// Prompt embeddings `[b, L, d]` of training items `indices` through the trained encoder
    /// (in the graph: the UNet's loss trains it).
    pub fn embeddings(
        &self,
        indices: &[usize],
        rng: &mut TrainRng,
        device: &Device,
    ) -> Result<Tensor> {
        let prompts = self.prompts(indices, rng);
        let ids = self.ids(&prompts, device)?;
        Ok(self.encoder.forward(&ids)?.last_hidden_state)
    }

    /// Files of the pipeline beside the weights: `tokenizer/` and the encoder's `config.json`
    /// in `text_encoder/` and `text_encoder_ema/`.
    pub fn files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files: Vec<(String, Vec<u8>)> = self
            .tokenizer
            .files()
            .into_iter()
            .map(|(name, bytes)| (format!("tokenizer/{name}"), bytes))
            .collect();
        let mut config = self.config.clone();
        config.architectures = Some(vec!["CLIPTextModel".into()]);
        let text = format!("{}\n", config.to_json_string()).into_bytes();
        files.push((format!("{COMPONENT}/config.json"), text.clone()));
        files.push((format!("{COMPONENT}_ema/config.json"), text));
        Ok(files)
    }

    /// The encoder over `tensors` (the trainer's names, e.g. the EMA weights).
    pub fn encoder_from(
        &self,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<ClipTextModel> {
        let own: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(PREFIX).map(|n| (n.to_string(), t.clone())))
            .collect();
        Ok(ClipTextModel::new(
            &self.config,
            VarBuilder::from_tensors(own, DType::F32, device),
        )?)
    }

    /// Prompts for sample grids: the first captions of the training set, one per row.
    pub fn grid_prompts(&self, n: usize) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.captions
            .iter()
            .filter(|c| seen.insert(c.text.clone()))
            .step_by((self.captions.len() / n.max(1)).max(1))
            .take(n)
            .map(|c| c.text.clone())
            .collect()
    }
}

/// Token ids `[b, max_length]` of `prompts`, padded and truncated as SD's pipelines do.
pub fn ids(tokenizer: &ClipTokenizer, prompts: &[String], device: &Device) -> Result<Tensor> {
    Ok(tokenizer
        .encode_batch(prompts, tokenizer.model_max_length(), device)?
        .0)
}

/// Puts the variables of `own` into `varmap` under [`PREFIX`].
fn register(varmap: &VarMap, own: &VarMap) -> Result<()> {
    let mine = own.data().lock().expect("varmap lock");
    let mut all = varmap.data().lock().expect("varmap lock");
    for (k, v) in mine.iter() {
        let name = format!("{PREFIX}{k}");
        if all.contains_key(&name) {
            return Err(Error::Invalid(format!("variable {name} exists twice")));
        }
        // The same variable, not a copy: the encoder reads its tensor, AdamW updates it.
        all.insert(name, v.clone());
    }
    Ok(())
}
