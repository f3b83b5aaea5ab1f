//! TensorBoard event files, written by hand: TFRecord framing (length, masked CRC32C, data,
//! masked CRC32C) around `tensorflow.Event` protos with scalar and image summaries
//! (tensorboard `summary/writer/event_file_writer.py`, `record_writer.py`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// CRC32C (Castagnoli), bitwise table.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(0x09); // wall_time: double, field 1
    e.extend(wall_time.to_le_bytes());
    e.push(0x10); // step: int64, field 2
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

/// An append-only event file in `dir`.
pub struct EventWriter {
    /// None: a writer that discards everything (data-parallel ranks other than 0).
    file: Option<std::fs::File>,
    path: PathBuf,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            now() as u64,
            std::process::id()
        ));
        let mut w = EventWriter {
            file: Some(std::fs::File::create(&path)?),
            path,
        };
        let e = event(now(), 0, |e| field_bytes(3, b"brain.Event:2", e));
        w.record(&e)?;
        Ok(w)
    }

    /// A writer that writes nothing.
    pub fn discard() -> std::io::Result<Self> {
        Ok(EventWriter {
            file: None,
            path: PathBuf::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut buf = Vec::with_capacity(data.len() + 16);
        buf.extend(len);
        buf.extend(masked_crc(&len).to_le_bytes());
        buf.extend(data);
        buf.extend(masked_crc(data).to_le_bytes());
        match &mut self.file {
            Some(f) => f.write_all(&buf),
            None => Ok(()),
        }
    }

    /// A scalar summary (`tag` at `step`).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> std::io::Result<()> {
        let mut v = Vec::new();
        field_bytes(1, tag.as_bytes(), &mut v);
        v.push(0x15); // simple_value: float, field 2
        v.extend(value.to_le_bytes());
        let mut summary = Vec::new();
        field_bytes(1, &v, &mut summary);
        let e = event(now(), step, |e| field_bytes(5, &summary, e));
        self.record(&e)
    }

    /// An image summary from PNG bytes.
    pub fn image_png(
        &mut self,
        tag: &str,
        step: i64,
        png: &[u8],
        width: u32,
        height: u32,
        channels: u32,
    ) -> std::io::Result<()> {
        let mut img = Vec::new();
        img.push(0x08);
        varint(height as u64, &mut img);
        img.push(0x10);
        varint(width as u64, &mut img);
        img.push(0x18);
        varint(channels as u64, &mut img);
        field_bytes(4, png, &mut img);
        let mut v = Vec::new();
        field_bytes(1, tag.as_bytes(), &mut v);
        field_bytes(4, &img, &mut v);
        let mut summary = Vec::new();
        field_bytes(1, &v, &mut summary);
        let e = event(now(), step, |e| field_bytes(5, &summary, e));
        self.record(&e)
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// Reads back the records of an event file, checking both CRCs of each.
pub fn read_records(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut i = 0;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    while i < bytes.len() {
        if i + 12 > bytes.len() {
            return Err(bad(format!("truncated record header at offset {i}")));
        }
        let len_bytes = &bytes[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8")) as usize;
        let crc = u32::from_le_bytes(bytes[i + 8..i + 12].try_into().expect("4"));
        if crc != masked_crc(len_bytes) {
            return Err(bad(format!("length CRC mismatch at offset {i}")));
        }
        let start = i + 12;
        if start + len + 4 > bytes.len() {
            return Err(bad(format!("truncated record at offset {i}")));
        }
        let data = &bytes[start..start + len];
        let dcrc = u32::from_le_bytes(bytes[start + len..start + len + 4].try_into().expect("4"));
        if dcrc != masked_crc(data) {
            return Err(bad(format!("data CRC mismatch at offset {i}")));
        }
        out.push(data.to_vec());
        i = start + len + 4;
    }
    Ok(out)
}

/// The `step` (field 2) of an event proto; `None` when it is malformed.
fn event_step(mut data: &[u8]) -> Option<i64> {
    fn read_varint(data: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = data.split_first()?;
            *data = rest;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut step = 0i64;
    while !data.is_empty() {
        let key = read_varint(&mut data)?;
        let skip = match key & 7 {
            0 => {
                let v = read_varint(&mut data)?;
                if key >> 3 == 2 {
                    step = v as i64;
                }
                0
            }
            1 => 8,
            2 => read_varint(&mut data)? as usize,
            5 => 4,
            _ => return None,
        };
        data = data.get(skip..)?;
    }
    Some(step)
}

/// Cuts the event file at `path` back to `step`: records of later steps go, as does a torn last
/// record (a run killed mid-write); the file is rewritten atomically when anything goes.
/// Returns the number of records dropped.
pub fn truncate_after(path: &Path, step: i64) -> std::io::Result<usize> {
    let bytes = std::fs::read(path)?;
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = 0;
    let mut i = 0;
    while i + 12 <= bytes.len() {
        let len_bytes = &bytes[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8")) as usize;
        let start = i + 12;
        let end = start.saturating_add(len).saturating_add(4);
        if u32::from_le_bytes(bytes[i + 8..start].try_into().expect("4")) != masked_crc(len_bytes)
            || end > bytes.len()
        {
            break;
        }
        let data = &bytes[start..start + len];
        let dcrc = u32::from_le_bytes(bytes[start + len..end].try_into().expect("4"));
        if dcrc != masked_crc(data) {
            break;
        }
        match event_step(data) {
            Some(s) if s <= step => kept.extend_from_slice(&bytes[i..end]),
            _ => dropped += 1,
        }
        i = end;
    }
    let torn = i < bytes.len();
    if dropped > 0 || torn {
        diffuse_data::fs::write_atomic(path, &kept).map_err(std::io::Error::other)?;
    }
    Ok(dropped + usize::from(torn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_values() {
        // RFC 3720 test vectors.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_round_trip() {
        let dir = std::env::temp_dir().join(format!("diffuse-tb-{}", std::process::id()));
        let mut w = EventWriter::create(&dir).unwrap();
        w.scalar("loss", 3, 0.25).unwrap();
        w.image_png("samples", 3, b"\\x89PNG", 2, 2, 1).unwrap();
        w.flush().unwrap();
        let recs = read_records(w.path()).unwrap();
        assert_eq!(recs.len(), 3);
        assert!(recs[0].windows(13).any(|x| x == b"brain.Event:2"));
        assert!(recs[1].windows(4).any(|x| x == b"loss"));
        assert!(recs[1].windows(4).any(|x| x == 0.25f32.to_le_bytes()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncate_after_drops_later_steps_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in 1..=6 {
            w.scalar("train/loss", step, step as f32).unwrap();
        }
        w.image_png("samples", 6, b"png", 1, 1, 1).unwrap();
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        // A record cut short by a kill.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[7, 0, 0]);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(truncate_after(&path, 4).unwrap(), 4);
        let steps: Vec<i64> = read_records(&path)
            .unwrap()
            .iter()
            .map(|r| event_step(r).unwrap())
            .collect();
        assert_eq!(steps, [0, 1, 2, 3, 4]);
        // Nothing past the step: the file stays as it is.
        assert_eq!(truncate_after(&path, 4).unwrap(), 0);
    }
}
