//! Structured channel pruning of a UNet's ResNet blocks by filter magnitude (`diffuse prune`),
//! after Li et al. 2017, "Pruning Filters for Efficient ConvNets" (rank a conv's filters by
//! their L1 norm, remove the smallest together with the matching input channels of the next
//! conv), with the coupled layers found as torch-pruning's dependency graph would group them
//! (Fang et al. 2023, "DepGraph").
//!
//! Inside `ResnetBlock2D` (GN → SiLU → conv1 → +t → GN → SiLU → conv2, plus the shortcut) one
//! set of channels is private to the block and can shrink without touching anything outside
//! it: conv1's output channels = norm2's channels = `time_emb_proj`'s rows (both the scale
//! and the shift half with `scale_shift`) = conv2's input channels. The block's output width
//! (the residual stream, skip connections, attention) stays. Channels are ranked by the norm
//! of their conv1 filter and the same number is removed **within every GroupNorm group** of
//! norm2, so the group count (`norm_num_groups`) still divides the width and each remaining
//! channel stays in its group. GroupNorm statistics then cover fewer channels, which changes
//! the function: a short fine-tune (`diffuse train` with `train.init_from`) recovers it.
//!
//! The new widths go into `config.json` under [`RESNET_INNER_KEY`], which diffuse's UNet builder
//! reads; diffusers' `UNet2DModel` cannot express them, so a pruned folder is diffuse-only.

use crate::config::{ResnetTimeScaleShift, UNet2DConfig, RESNET_INNER_KEY};
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// How a filter's magnitude is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Criterion {
    /// Σ|w| (Li et al. 2017).
    L1,
    /// √Σw².
    L2,
}

impl Criterion {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "l1" | "L1" => Ok(Criterion::L1),
            "l2" | "L2" => Ok(Criterion::L2),
            _ => Err(Error::Config(format!(
                "unknown pruning criterion {s:?}; allowed: l1, l2"
            ))),
        }
    }
}

/// One pruned ResNet block.
#[derive(Debug, Clone, PartialEq)]
pub struct PrunedBlock {
    /// Weight prefix (`down_blocks.0.resnets.0`).
    pub prefix: String,
    /// Inner width before and after.
    pub before: usize,
    pub after: usize,
}

/// Channels to keep: in each of `groups` equal consecutive groups of `norms`, the
/// `keep_per_group` largest (ties: the lower index), in ascending order.
pub fn keep_indices(norms: &[f32], groups: usize, keep_per_group: usize) -> Vec<usize> {
    let size = norms.len() / groups.max(1);
    let mut keep = Vec::with_capacity(groups * keep_per_group);
    for g in 0..groups {
        let mut idx: Vec<usize> = (g * size..(g + 1) * size).collect();
        idx.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
        let mut mine: Vec<usize> = idx.into_iter().take(keep_per_group).collect();
        mine.sort_unstable();
        keep.extend(mine);
    }
    keep
}

/// The norm of each output filter of a conv weight `[out, in, k, k]`.
fn filter_norms(w: &Tensor, criterion: Criterion) -> Result<Vec<f32>> {
    let flat = w.flatten_from(1)?;
    let n = match criterion {
        Criterion::L1 => flat.abs()?.sum(1)?,
        Criterion::L2 => flat.sqr()?.sum(1)?.sqrt()?,
    };
    Ok(n.to_vec1()?)
}

/// Prunes `amount` (in [0, 1)) of the inner channels of every ResNet block of a UNet with
/// weights `tensors` (diffusers names): per norm2 group, `round(group size · (1 − amount))`
/// channels (at least one) with the largest conv1 filters stay. Returns the config with the
/// new widths under [`RESNET_INNER_KEY`], the pruned tensors (all others unchanged) and what
/// changed. An already pruned model is pruned further from its current widths.
pub fn prune_unet(
    config: &UNet2DConfig,
    tensors: &HashMap<String, Tensor>,
    amount: f64,
    criterion: Criterion,
) -> Result<(UNet2DConfig, HashMap<String, Tensor>, Vec<PrunedBlock>)> {
    if !(0.0..1.0).contains(&amount) {
        return Err(Error::Config(format!(
            "pruning amount {amount}: must be in [0, 1) (the fraction of each block's inner channels removed)"
        )));
    }
    config.validate()?;
    let groups = config.norm_num_groups;
    let scale_shift = match config.resnet_time_scale_shift {
        ResnetTimeScaleShift::Default => false,
        ResnetTimeScaleShift::ScaleShift => true,
    };
    let mut out = tensors.clone();
    let mut cfg = config.clone();
    let mut report = Vec::new();
    let get = |name: &str| -> Result<&Tensor> {
        tensors
            .get(name)
            .ok_or_else(|| Error::Weights(format!("missing tensor `{name}`")))
    };
    for (prefix, cout) in config.resnet_blocks() {
        let width = config.resnet_inner(&prefix, cout);
        let conv1 = get(&format!("{prefix}.conv1.weight"))?;
        if conv1.dim(0)? != width {
            return Err(Error::Weights(format!(
                "tensor `{prefix}.conv1.weight` has {} output channels, the config says {width}",
                conv1.dim(0)?
            )));
        }
        let size = width / groups;
        let keep_per_group = ((size as f64 * (1.0 - amount)).round() as usize).clamp(1, size);
        if keep_per_group == size {
            continue;
        }
        let keep = keep_indices(&filter_norms(conv1, criterion)?, groups, keep_per_group);
        let idx = Tensor::from_vec(
            keep.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            keep.len(),
            conv1.device(),
        )?;
        let rows = |name: String, t: &Tensor| -> Result<(String, Tensor)> {
            Ok((name, t.index_select(&idx, 0)?))
        };
        let mut set = vec![
            rows(format!("{prefix}.conv1.weight"), conv1)?,
            rows(
                format!("{prefix}.conv1.bias"),
                get(&format!("{prefix}.conv1.bias"))?,
            )?,
        ];
        for leaf in ["norm2.weight", "norm2.bias"] {
            let name = format!("{prefix}.{leaf}");
            set.push(rows(name.clone(), get(&name)?)?);
        }
        let conv2 = format!("{prefix}.conv2.weight");
        set.push((conv2.clone(), get(&conv2)?.index_select(&idx, 1)?));
        for leaf in ["weight", "bias"] {
            let name = format!("{prefix}.time_emb_proj.{leaf}");
            let Some(t) = tensors.get(&name) else {
                continue; // a UNet without time embedding in its ResNets
            };
            let rows_idx = if scale_shift {
                let both: Vec<u32> = keep
                    .iter()
                    .chain(keep.iter())
                    .enumerate()
                    .map(|(k, &i)| (if k < keep.len() { i } else { width + i }) as u32)
                    .collect();
                Tensor::from_vec(both, 2 * keep.len(), t.device())?
            } else {
                idx.clone()
            };
            set.push((name, t.index_select(&rows_idx, 0)?));
        }
        for (name, t) in set {
            out.insert(name, t);
        }
        let after = keep.len();
        cfg.resnet_inner_channels.insert(prefix.clone(), after);
        report.push(PrunedBlock {
            prefix,
            before: width,
            after,
        });
    }
    cfg.validate().map_err(|e| {
        Error::Config(format!(
            "the pruned config is invalid ({RESNET_INNER_KEY}): {e}"
        ))
    })?;
    Ok((cfg, out, report))
}

/// What [`prune_model_folder`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneSummary {
    pub blocks: Vec<PrunedBlock>,
    pub params_before: usize,
    pub params_after: usize,
}

/// Prunes UNet model folder `src` ([`prune_unet`]) into `dst` (created): `config.json` with
/// the new widths and f32 weights (a quantised source is dequantised first), each written
/// atomically.
pub fn prune_model_folder(
    src: &Path,
    dst: &Path,
    amount: f64,
    criterion: Criterion,
) -> Result<PruneSummary> {
    use crate::weights;
    let (net, varmap) = weights::load::<crate::Network>(src, &Device::Cpu)?;
    let crate::NetworkConfig::UNet(cfg) = net.config() else {
        return Err(Error::Config(format!(
            "{}: pruning applies to UNet2DModel ResNet blocks; this is a {}",
            src.display(),
            net.config().class_name()
        )));
    };
    let tensors = weights::detached_tensors(&varmap);
    let (pc, pruned, blocks) = prune_unet(&cfg, &tensors, amount, criterion)?;
    let summary = PruneSummary {
        blocks,
        params_before: parameter_count(&tensors),
        params_after: parameter_count(&pruned),
    };
    let bytes = weights::serialize_tensors(pruned.into_iter().collect())?;
    let v = serde_json::to_value(&pc).expect("serializable");
    weights::write_model_folder(dst, v, &bytes)?;
    Ok(summary)
}

/// Number of parameters in named tensors.
pub fn parameter_count(tensors: &HashMap<String, Tensor>) -> usize {
    tensors.values().map(|t| t.elem_count()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{build_unet, detached_tensors, from_tensors, seeded_init};
    use crate::UNet2DModel;

    fn config(time_shift: &str) -> UNet2DConfig {
        UNet2DConfig::from_json_str(&format!(
            r#"{{"sample_size": 8, "in_channels": 1, "out_channels": 1,
                "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8,
                "num_class_embeds": 3, "resnet_time_scale_shift": "{time_shift}",
                "downsample_type": "resnet", "upsample_type": "resnet"}}"#
        ))
        .unwrap()
    }

    fn forward(m: &UNet2DModel) -> Tensor {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 128.0, &dev)
            .unwrap()
            .affine(0.01, -0.6)
            .unwrap()
            .reshape((2, 1, 8, 8))
            .unwrap();
        let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
        m.forward(&x, &[10.0, 700.0], Some(&labels)).unwrap()
    }

    #[test]
    fn keeps_the_largest_filters_within_each_group() {
        // Two groups of four.
        let norms = [0.1, 5.0, 3.0, 0.2, 9.0, 1.0, 1.0, 8.0];
        assert_eq!(keep_indices(&norms, 2, 2), vec![1, 2, 4, 7]);
        // Ties go to the lower index.
        assert_eq!(keep_indices(&norms, 2, 3), vec![1, 2, 3, 4, 5, 7]);
        assert_eq!(keep_indices(&norms, 1, 1), vec![4]);
    }

    #[test]
    fn pruned_unet_builds_runs_and_removes_the_smallest_filters() {
        for shift in ["default", "scale_shift"] {
            let cfg = config(shift);
            let dev = Device::Cpu;
            let (_, vm) = build_unet(&cfg, &dev).unwrap();
            seeded_init(&vm, 3).unwrap();
            let mut t = detached_tensors(&vm);
            // Zero the conv1 filters of channels 1 and 6 of one block: they must go.
            let p = "down_blocks.0.resnets.0";
            let w = &t[&format!("{p}.conv1.weight")];
            let mask: Vec<f32> = (0..8)
                .map(|c| if c == 1 || c == 6 { 0.0 } else { 1.0 })
                .collect();
            let mask = Tensor::from_vec(mask, (8, 1, 1, 1), &dev).unwrap();
            let zeroed = w.broadcast_mul(&mask).unwrap();
            t.insert(format!("{p}.conv1.weight"), zeroed);

            let (same_cfg, same, none) = prune_unet(&cfg, &t, 0.0, Criterion::L1).unwrap();
            assert!(none.is_empty() && same_cfg.resnet_inner_channels.is_empty());
            let base = from_tensors::<UNet2DModel>(&cfg, t.clone(), &dev).unwrap();
            let unchanged = from_tensors::<UNet2DModel>(&same_cfg, same, &dev).unwrap();
            let d: f32 = (forward(&base) - forward(&unchanged))
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(d, 0.0);

            let (pc, pt, report) = prune_unet(&cfg, &t, 0.5, Criterion::L1).unwrap();
            // Every ResNet: 2 down, 2 mid, 4 up + the AttnUpBlock2D's resampling one.
            assert_eq!(report.len(), cfg.resnet_blocks().len());
            assert_eq!(report.len(), 9);
            let r = report.iter().find(|r| r.prefix == p).unwrap();
            assert_eq!((r.before, r.after), (8, 4));
            // Group size 2: channel 1 loses to 0 and channel 6 to 7; the larger filter of
            // {2, 3} and of {4, 5} stays.
            let kept = &pt[&format!("{p}.conv1.weight")];
            let orig = &t[&format!("{p}.conv1.weight")];
            let n = filter_norms(orig, Criterion::L1).unwrap();
            let pick = |a: u32, b: u32| if n[b as usize] > n[a as usize] { b } else { a };
            let want_idx = [0u32, pick(2, 3), pick(4, 5), 7];
            let want = orig
                .index_select(&Tensor::new(&want_idx, &dev).unwrap(), 0)
                .unwrap();
            let eq: f32 = (kept - want)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(eq, 0.0);
            let tproj = &pt[&format!("{p}.time_emb_proj.weight")];
            assert_eq!(
                tproj.dim(0).unwrap(),
                if shift == "scale_shift" { 8 } else { 4 }
            );
            assert_eq!(pt[&format!("{p}.conv2.weight")].dims(), [8, 4, 3, 3]);
            assert!(parameter_count(&pt) < parameter_count(&t));

            // The config round-trips through JSON and builds the smaller network.
            let text = pc.to_json_string();
            assert!(text.contains(RESNET_INNER_KEY), "{text}");
            let pc2 = UNet2DConfig::from_json_str(&text).unwrap();
            assert_eq!(pc2.resnet_inner_channels, pc.resnet_inner_channels);
            let pruned = from_tensors::<UNet2DModel>(&pc2, pt.clone(), &dev).unwrap();
            let y = forward(&pruned);
            assert_eq!(y.dims(), [2, 1, 8, 8]);
            let finite: f32 = y.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(finite.is_finite());
            // It trains: a gradient reaches the pruned layers.
            let (m, vm2) = build_unet(&pc2, &dev).unwrap();
            let loss = forward(&m).sqr().unwrap().mean_all().unwrap();
            let g = loss.backward().unwrap();
            let var = vm2.data().lock().unwrap()[&format!("{p}.conv1.weight")].clone();
            assert_eq!(var.dims(), [4, 8, 3, 3]);
            assert!(g.get(&var).is_some());
            // The unpruned config refuses the pruned weights.
            assert!(from_tensors::<UNet2DModel>(&cfg, pt.clone(), &dev).is_err());
            // Pruning further halves again, down to one channel per group.
            let (_, _, again) = prune_unet(&pc, &pt, 0.5, Criterion::L2).unwrap();
            let r = again
                .iter()
                .find(|r| r.prefix == "down_blocks.1.resnets.0")
                .unwrap();
            assert_eq!((r.before, r.after), (8, 4));
            assert!(
                again.iter().all(|r| r.prefix != p),
                "group size 1 is the floor"
            );
        }
    }

    #[test]
    fn bad_amounts_and_widths_are_refused() {
        let cfg = config("default");
        let (_, vm) = build_unet(&cfg, &Device::Cpu).unwrap();
        let t = detached_tensors(&vm);
        for a in [1.0, -0.1] {
            let e = prune_unet(&cfg, &t, a, Criterion::L1)
                .unwrap_err()
                .to_string();
            assert!(e.contains("[0, 1)"), "{e}");
        }
        let e = Criterion::parse("l3").unwrap_err().to_string();
        assert!(e.contains("l1, l2"), "{e}");
        let bad = |json: &str| {
            let mut v: serde_json::Value = serde_json::from_str(&cfg.to_json_string()).unwrap();
            v[RESNET_INNER_KEY] = serde_json::from_str(json).unwrap();
            UNet2DConfig::from_json_str(&v.to_string())
                .unwrap_err()
                .to_string()
        };
        let e = bad(r#"{"down_blocks.9.resnets.0": 4}"#);
        assert!(
            e.contains(RESNET_INNER_KEY) && e.contains("down_blocks.9"),
            "{e}"
        );
        let e = bad(r#"{"down_blocks.0.resnets.0": 6}"#);
        assert!(e.contains("multiple of norm_num_groups 4"), "{e}");
        let e = bad(r#"{"down_blocks.0.resnets.0": 12}"#);
        assert!(e.contains("up to the block's 8"), "{e}");
    }
}
