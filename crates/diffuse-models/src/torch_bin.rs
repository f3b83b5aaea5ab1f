//! PyTorch `.bin` weights (`diffusion_pytorch_model.bin`, diffusers' layout before
//! safetensors: `torch.save`'s zip of `data.pkl` and one file per storage), read without running
//! code. Python's pickle calls whatever a `GLOBAL` names (`os.system` as easily as a tensor
//! rebuild), so each `data.pkl` is first parsed as data (candle's `pickle::Stack` interprets the
//! opcodes, it never calls anything) and every class or function it names is checked against
//! the ones `torch.save(state_dict)` writes, as torch's own `weights_only=True` unpickler does.
//! Only then does candle's reader map the storages to tensors.

use crate::{Error, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The globals a state dict of tensors may name (`torch/_weights_only_unpickler.py`'s allowed
/// rebuild functions and storage types, and the dict types).
const ALLOWED: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// The first class or function `obj` names that a state dict may not.
fn forbidden(obj: &Object) -> Option<String> {
    match obj {
        Object::Class {
            module_name,
            class_name,
        } => (!ALLOWED.contains(&(module_name.as_str(), class_name.as_str())))
            .then(|| format!("{module_name}.{class_name}")),
        Object::Tuple(v) | Object::List(v) => v.iter().find_map(forbidden),
        Object::Dict(kv) => kv
            .iter()
            .find_map(|(k, v)| forbidden(k).or_else(|| forbidden(v))),
        Object::Reduce { callable, args } | Object::Build { callable, args } => {
            forbidden(callable).or_else(|| forbidden(args))
        }
        Object::PersistentLoad(o) => forbidden(o),
        _ => None,
    }
}

/// Checks every `data.pkl` of the zip at `path` (see the module docs).
pub fn check(path: &Path) -> Result<()> {
    let bad = |why: String| Error::Weights(format!("{}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(Error::io(path))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        bad(format!(
            "not a torch.save zip ({e}); an old-format (pre-1.6) or other pickle is not read: \
             re-save it with torch.save or as safetensors"
        ))
    })?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .filter(|n| n.ends_with("data.pkl"))
        .collect();
    if names.is_empty() {
        return Err(bad("no data.pkl in the zip: not a torch.save file".into()));
    }
    for name in names {
        let mut bytes = Vec::new();
        zip.by_name(&name)
            .and_then(|mut f| Ok(f.read_to_end(&mut bytes)?))
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::Cursor::new(&bytes))
            .map_err(|e| bad(format!("{name}: unreadable pickle: {e}")))?;
        // Everything the pickle built, finished or not (an unknown opcode stops the reader).
        if let Some(g) = stack.stack().iter().find_map(forbidden) {
            return Err(bad(format!(
                "refused: its pickle calls `{g}`, which is not a tensor or torch rebuild function \
                 (nothing was run; only state dicts of tensors are read)"
            )));
        }
    }
    Ok(())
}

/// The tensors of a `.bin` state dict, on `device`, after [`check`].
pub fn read(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    check(path)?;
    let tensors = candle_core::pickle::read_all(path)
        .map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
    tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_device(device)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/layouts")
            .join(rel)
    }

    #[test]
    fn a_pickle_that_calls_os_system_is_refused_before_anything_runs() {
        let marker = Path::new("/tmp/diffuse-evil-ran");
        let _ = std::fs::remove_file(marker);
        let e = read(&fixture("evil.bin"), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("refused: its pickle calls `posix.system`")
                || e.contains("refused: its pickle calls `os.system`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert!(!marker.exists());
    }

    #[test]
    fn state_dicts_saved_by_torch_pass_the_check() {
        for m in ["unet_basic", "dit_p2_rgb", "vae_gray_plain"] {
            let p = fixture(&format!("bin/{m}/diffusion_pytorch_model.bin"));
            let t = read(&p, &Device::Cpu).unwrap_or_else(|e| panic!("{m}: {e}"));
            assert!(!t.is_empty(), "{m}");
        }
        let not_zip = std::env::temp_dir().join("diffuse-not-a-zip.bin");
        std::fs::write(&not_zip, b"\x80\x02}q\x00.").unwrap();
        let e = check(&not_zip).unwrap_err().to_string();
        assert!(e.contains("not a torch.save zip"), "{e}");
    }
}
