//! Checkpoints: atomic `step-N/` folders (weights, EMA, optimizer, training state), their
//! pruning and loading, and `train.init_from`.

use super::io_err;
use crate::ema::Ema;
use crate::optim::AdamW;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use diffuse_data::loader::Position;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(super) struct TrainingState {
    pub(super) step: u64,
    pub(super) position: Position,
    pub(super) rng_seed: u64,
    pub(super) rng_word_pos: u128,
    /// fp16: the loss scaler's (scale, growth tracker).
    pub(super) scaler: Option<(f64, u64)>,
    /// `train.max_minutes`: minutes spent and the planned end of the schedule.
    pub(super) budget: Option<super::budget::BudgetState>,
}

/// What a checkpoint holds: the trained weights and their EMA, the optimizer and the loop's
/// position, with the config files written beside the weights.
#[derive(Clone, Copy)]
pub(super) struct CheckpointParts<'a> {
    /// The model's folder name (`unet`, `transformer`, `vae`; EMA in `*_ema`).
    pub component: &'a str,
    /// Further files as (path relative to the checkpoint, bytes).
    pub files: &'a [(String, Vec<u8>)],
    pub vars: &'a [(String, Var)],
    pub opt: &'a AdamW,
    pub ema: &'a Ema,
    pub state: &'a TrainingState,
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    diffuse_data::fs::write_atomic(path, bytes).map_err(|e| Error::Invalid(e.to_string()))
}

/// Bytes a checkpoint of `vars` takes: the weights, their EMA and AdamW's two moments, f32.
pub(super) fn checkpoint_bytes(vars: &[(String, Var)]) -> u64 {
    let params: usize = vars.iter().map(|(_, v)| v.as_tensor().elem_count()).sum();
    params as u64 * 4 * 4
}

/// What free disk space allows before a checkpoint of `need` bytes.
#[derive(Debug, PartialEq)]
pub(super) enum Disk {
    Enough,
    /// Enough for this checkpoint, not for the run's `keep` checkpoints and the final
    /// pipeline: warn once.
    Low(String),
    /// Not enough for this checkpoint: stop before writing anything.
    Full(String),
}

const MIB: f64 = 1048576.0;

/// Free space `free` in `dir` against checkpoints of `need` bytes, `keep` of them kept.
pub(super) fn disk_check(dir: &Path, free: u64, need: u64, keep: usize) -> Disk {
    // A margin for the config files, the logs and the temporary folder's rename.
    let margin = need / 20 + (16 << 20);
    let (f, n) = (free as f64 / MIB, need as f64 / MIB);
    if free < need + margin {
        Disk::Full(format!(
            "not enough free disk space for a checkpoint: it takes {n:.0} MiB and {} has {f:.0} MiB free; free some space (or move the run folder) and continue with --resume",
            dir.display()
        ))
    } else if free < need * (keep as u64 + 2) + margin {
        Disk::Low(format!(
            "{} has {f:.0} MiB free; a checkpoint takes {n:.0} MiB and the run keeps {keep} of them plus the final pipeline: it may run out of space",
            dir.display()
        ))
    } else {
        Disk::Enough
    }
}

/// Writes `root/step-N/` via `root/.step-N.tmp/` and a rename: valid or absent, never half.
/// A failed write (a full disk, a file-size limit) removes the partial folder and says which
/// earlier checkpoint is still intact.
pub(super) fn save_checkpoint(root: &Path, parts: &CheckpointParts) -> Result<PathBuf> {
    let st = parts.state;
    let free = diffuse_data::fs::free_bytes(root);
    let full =
        free.and_then(
            |free| match disk_check(root, free, checkpoint_bytes(parts.vars), 1) {
                Disk::Full(why) => Some(why),
                _ => None,
            },
        );
    let written = match full {
        Some(why) => Err(Error::Invalid(why)),
        None => write_checkpoint(root, parts),
    };
    written.map_err(|e| {
        let _ = std::fs::remove_dir_all(root.join(format!(".step-{}.tmp", st.step)));
        let kept = match newest_checkpoint(root) {
            Some(p) => format!(
                "the previous checkpoint {} is intact (continue with --resume)",
                p.display()
            ),
            None => "no earlier checkpoint exists".to_string(),
        };
        Error::Invalid(format!(
            "could not write checkpoint step-{}: {e}; {kept}",
            st.step
        ))
    })
}

fn write_checkpoint(root: &Path, parts: &CheckpointParts) -> Result<PathBuf> {
    let CheckpointParts {
        component,
        files,
        vars,
        opt,
        ema,
        state: st,
    } = *parts;
    let name = format!("step-{}", st.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dst = root.join(&name);
    let _ = std::fs::remove_dir_all(&tmp);
    let weights = |tensors: Vec<(String, Tensor)>| -> Result<Vec<u8>> {
        Ok(diffuse_models::weights::serialize_tensors(tensors)?)
    };
    let model_tensors: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let ema_tensors: Vec<(String, Tensor)> = vars
        .iter()
        .zip(ema.shadow())
        .map(|((k, _), t)| (k.clone(), t.clone()))
        .collect();
    let mut all = Vec::new();
    for (suffix, tensors) in [("", model_tensors), ("_ema", ema_tensors)] {
        // A text-to-image run's text encoder goes to its own folder, under transformers' names.
        let (text, net): (Vec<_>, Vec<_>) = tensors
            .into_iter()
            .partition(|(k, _)| k.starts_with(crate::text::PREFIX));
        all.push((
            format!("{component}{suffix}/diffusion_pytorch_model.safetensors"),
            weights(net)?,
        ));
        if !text.is_empty() {
            let text = text
                .into_iter()
                .map(|(k, t)| (k[crate::text::PREFIX.len()..].to_string(), t))
                .collect();
            all.push((
                format!(
                    "{}{suffix}/{}",
                    crate::text::COMPONENT,
                    crate::text::WEIGHTS_NAME
                ),
                weights(text)?,
            ));
        }
    }
    all.extend(files.iter().cloned());
    for (rel, bytes) in &all {
        let path = tmp.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        write(&path, bytes)?;
    }
    write(&tmp.join("optimizer.safetensors"), &weights(opt.state())?)?;
    let mut meta = json!({
        "step": st.step,
        "adam_step": opt.step,
        "ema_optimization_step": ema.optimization_step,
        "loader": {"epoch": st.position.epoch, "batch": st.position.batch},
        "rng": {"seed": st.rng_seed, "word_pos": st.rng_word_pos.to_string()},
    });
    if let Some((scale, tracker)) = st.scaler {
        meta["grad_scaler"] = json!({"scale": scale, "growth_tracker": tracker});
    }
    if let Some(b) = st.budget {
        meta["budget"] = json!({
            "elapsed_s": b.elapsed_s,
            "planned_steps": b.planned_steps,
            "replans": b.replans,
        });
    }
    // Written last: its presence marks the checkpoint complete.
    write(
        &tmp.join("training_state.json"),
        serde_json::to_string_pretty(&meta)
            .expect("json")
            .as_bytes(),
    )?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    if let Ok(d) = std::fs::File::open(root) {
        let _ = d.sync_all();
    }
    Ok(dst)
}

/// The newest `step-N` folder that holds a complete training state.
pub fn newest_checkpoint(root: &Path) -> Option<PathBuf> {
    let rd = std::fs::read_dir(root).ok()?;
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: u64 = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join("training_state.json")
                .exists()
                .then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

pub(super) fn prune_checkpoints(root: &Path, keep: usize) -> Result<()> {
    let mut all: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .map_err(io_err(root))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    all.sort();
    let excess = all.len().saturating_sub(keep.max(1));
    for (_, p) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&p).map_err(io_err(&p))?;
    }
    Ok(())
}

pub(super) fn load_checkpoint(
    dir: &Path,
    component: &str,
    vars: &[(String, Var)],
    opt: &mut AdamW,
    ema: &mut Ema,
) -> Result<TrainingState> {
    let read = |p: PathBuf| -> Result<HashMap<String, Tensor>> {
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a valid safetensors file ({e})",
                p.display()
            ))
        })
    };
    let weights = "diffusion_pytorch_model.safetensors";
    let mut model = read(dir.join(component).join(weights))?;
    let mut shadow_map = read(dir.join(format!("{component}_ema")).join(weights))?;
    // A text-to-image run's text encoder, back under the trainer's names.
    if vars.iter().any(|(k, _)| k.starts_with(crate::text::PREFIX)) {
        for (suffix, map) in [("", &mut model), ("_ema", &mut shadow_map)] {
            let file = dir
                .join(format!("{}{suffix}", crate::text::COMPONENT))
                .join(crate::text::WEIGHTS_NAME);
            for (k, t) in read(file)? {
                map.insert(format!("{}{k}", crate::text::PREFIX), t);
            }
        }
    }
    let mut shadow = Vec::with_capacity(vars.len());
    for (k, v) in vars {
        let get = |m: &HashMap<String, Tensor>, what: &str| -> Result<Tensor> {
            m.get(k)
                .cloned()
                .ok_or_else(|| Error::Invalid(format!("{}: {what} lacks `{k}`", dir.display())))
        };
        v.set(&get(&model, component)?.to_device(v.device())?)?;
        shadow.push(get(&shadow_map, &format!("{component}_ema"))?.to_device(v.device())?);
    }
    let meta_path = dir.join("training_state.json");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).map_err(io_err(&meta_path))?)
            .map_err(|e| Error::Invalid(format!("{}: {e}", meta_path.display())))?;
    let num = |v: &Value, what: &str| -> Result<u64> {
        v.as_u64()
            .ok_or_else(|| Error::Invalid(format!("{}: bad `{what}`", meta_path.display())))
    };
    opt.load_state(
        &read(dir.join("optimizer.safetensors"))?,
        num(&meta["adam_step"], "adam_step")?,
    )?;
    ema.set_shadow(
        shadow,
        num(&meta["ema_optimization_step"], "ema_optimization_step")?,
    )?;
    Ok(TrainingState {
        step: num(&meta["step"], "step")?,
        position: Position {
            epoch: num(&meta["loader"]["epoch"], "loader.epoch")?,
            batch: num(&meta["loader"]["batch"], "loader.batch")?,
        },
        rng_seed: num(&meta["rng"]["seed"], "rng.seed")?,
        rng_word_pos: meta["rng"]["word_pos"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::Invalid(format!("{}: bad `rng.word_pos`", meta_path.display()))
            })?,
        budget: meta["budget"]["elapsed_s"]
            .as_f64()
            .map(|elapsed_s| super::budget::BudgetState {
                elapsed_s,
                planned_steps: meta["budget"]["planned_steps"].as_u64(),
                replans: meta["budget"]["replans"].as_u64().unwrap_or(0) as u32,
            }),
        scaler: meta["grad_scaler"]["scale"].as_f64().map(|s| {
            (
                s,
                meta["grad_scaler"]["growth_tracker"].as_u64().unwrap_or(0),
            )
        }),
    })
}

/// The UNet `config.json` of a pipeline or UNet folder (`train.init_from` with an empty
/// `[model]`).
pub(super) fn init_config(dir: &Path) -> Result<Map<String, Value>> {
    let err = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("train.init_from {}: {e}", dir.display()))
    };
    let folder = diffuse_models::weights::resolve_model_folder(dir).map_err(|e| err(&e))?;
    let path = folder
        .ema_net_dir
        .unwrap_or(folder.net_dir)
        .join(diffuse_models::weights::CONFIG_NAME);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let mut map: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| err(&format!("{}: {e}", path.display())))?;
    if map.get("_class_name").and_then(|c| c.as_str()) == Some("DiTTransformer2DModel") {
        map.insert("type".into(), "dit".into());
    }
    Ok(map)
}

/// Overwrites the fresh weights with those of a pipeline folder (its EMA UNet when there is
/// one) or a UNet folder (`train.init_from`).
pub(super) fn init_from(varmap: &candle_nn::VarMap, dir: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| {
        Error::Invalid(format!("train.init_from {}: {e}", dir.display()))
    };
    let folder = diffuse_models::weights::resolve_model_folder(dir).map_err(|e| err(&e))?;
    let unet = folder.ema_net_dir.unwrap_or(folder.net_dir);
    let files = diffuse_models::weights::weight_files(&unet).map_err(|e| err(&e))?;
    let unused = diffuse_models::weights::load_into(varmap, &files).map_err(|e| err(&e))?;
    if !unused.is_empty() {
        return Err(err(&format!(
            "{} tensors the model does not have (e.g. `{}`): [model] differs from the weights' config",
            unused.len(),
            unused[0]
        )));
    }
    Ok(())
}

/// Copies the files of `src` into `dst`, each written atomically.
pub(crate) fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io_err(dst))?;
    for e in std::fs::read_dir(src).map_err(io_err(src))?.flatten() {
        let bytes = std::fs::read(e.path()).map_err(io_err(&e.path()))?;
        write(&dst.join(e.file_name()), &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    #[test]
    fn low_disk_warns_early_and_a_full_one_stops_before_writing() {
        let dir = Path::new("runs/x/checkpoints");
        let mib = 1u64 << 20;
        assert_eq!(disk_check(dir, 10_000 * mib, 100 * mib, 3), Disk::Enough);
        match disk_check(dir, 400 * mib, 100 * mib, 3) {
            Disk::Low(w) => assert!(
                w.contains("400 MiB free") && w.contains("a checkpoint takes 100 MiB"),
                "{w}"
            ),
            other => panic!("{other:?}"),
        }
        match disk_check(dir, 110 * mib, 100 * mib, 3) {
            Disk::Full(e) => assert!(
                e.contains("not enough free disk space") && e.contains("--resume"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
