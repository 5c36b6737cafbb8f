//! Reads a GGUF file's metadata (the key-value header) without loading
//! any weights: a model's own name and the figures its KV cache size is
//! estimated from. Only the header is read; arrays (the vocabulary) are
//! skipped over.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The scalar metadata of a GGUF file (strings and numbers; arrays are
/// skipped).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    pub strings: HashMap<String, String>,
    pub numbers: HashMap<String, f64>,
}

/// Longest key or string value accepted (a corrupt length is an error, not
/// an allocation).
const MAX_STRING: u64 = 1 << 24;
/// Most metadata entries accepted.
const MAX_KEYS: u64 = 1 << 16;

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn u32_of(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn u64_of(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn string_of(r: &mut impl Read) -> io::Result<String> {
    let n = u64_of(r)?;
    if n > MAX_STRING {
        return Err(bad(format!("a string of {n} bytes")));
    }
    let mut b = vec![0u8; n as usize];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Bytes of a fixed-size value type, `None` for strings and arrays.
fn fixed_size(t: u32) -> io::Result<Option<u64>> {
    Ok(match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        _ => return Err(bad(format!("unknown value type {t}"))),
    })
}

/// A number of fixed-size type `t`.
fn number_of(r: &mut impl Read, t: u32) -> io::Result<f64> {
    let n = fixed_size(t)?.unwrap_or(0) as usize;
    let mut b = [0u8; 8];
    r.read_exact(&mut b[..n])?;
    Ok(match t {
        0 | 7 => f64::from(b[0]),
        1 => f64::from(b[0] as i8),
        2 => f64::from(u16::from_le_bytes([b[0], b[1]])),
        3 => f64::from(i16::from_le_bytes([b[0], b[1]])),
        4 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        5 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        6 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        10 => u64::from_le_bytes(b) as f64,
        11 => i64::from_le_bytes(b) as f64,
        _ => f64::from_le_bytes(b),
    })
}

/// Skips an array's elements.
fn skip_array<R: Read + Seek>(r: &mut R) -> io::Result<()> {
    let t = u32_of(r)?;
    let n = u64_of(r)?;
    match fixed_size(t)? {
        Some(size) => {
            let bytes = n.checked_mul(size).ok_or_else(|| bad("an array too large"))?;
            r.seek(SeekFrom::Current(bytes as i64))?;
        }
        None if t == 8 => {
            for _ in 0..n {
                let len = u64_of(r)?;
                if len > MAX_STRING {
                    return Err(bad(format!("a string of {len} bytes")));
                }
                r.seek(SeekFrom::Current(len as i64))?;
            }
        }
        None => {
            for _ in 0..n {
                skip_array(r)?;
            }
        }
    }
    Ok(())
}

impl Header {
    /// Reads the header of the GGUF file at `path`.
    pub fn read(path: &Path) -> io::Result<Header> {
        let mut r = BufReader::new(File::open(path)?);
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != b"GGUF" {
            return Err(bad("not a GGUF file (no GGUF magic)"));
        }
        let version = u32_of(&mut r)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!("GGUF version {version} (2 or 3 understood)")));
        }
        let _tensors = u64_of(&mut r)?;
        let keys = u64_of(&mut r)?;
        if keys > MAX_KEYS {
            return Err(bad(format!("{keys} metadata entries")));
        }
        let mut h = Header::default();
        for _ in 0..keys {
            let key = string_of(&mut r)?;
            let t = u32_of(&mut r)?;
            match t {
                8 => {
                    let v = string_of(&mut r)?;
                    h.strings.insert(key, v);
                }
                9 => skip_array(&mut r)?,
                _ => {
                    let v = number_of(&mut r, t)?;
                    h.numbers.insert(key, v);
                }
            }
        }
        Ok(h)
    }

    /// `general.name`, when set.
    pub fn name(&self) -> Option<&str> {
        self.strings
            .get("general.name")
            .map(String::as_str)
            .filter(|s| !s.trim().is_empty())
    }

    /// A number of the model's architecture (`{arch}.{key}`).
    fn arch_number(&self, key: &str) -> Option<u64> {
        let arch = self.strings.get("general.architecture")?;
        self.numbers
            .get(&format!("{arch}.{key}"))
            .filter(|v| v.is_finite() && **v >= 0.0)
            .map(|v| *v as u64)
    }

    /// The training context length.
    pub fn context_length(&self) -> Option<u64> {
        self.arch_number("context_length")
    }

    /// KV cache bytes per token of context (f16 cells):
    /// `n_layer * (n_embd_k_gqa + n_embd_v_gqa) * 2`, where `n_embd_k_gqa`
    /// is `key_length * head_count_kv` (`key_length` defaulting to
    /// `embedding_length / head_count`, `head_count_kv` to `head_count`),
    /// and the same for values. `None` when the header lacks them.
    pub fn kv_bytes_per_token(&self) -> Option<u64> {
        let layers = self.arch_number("block_count")?;
        let embd = self.arch_number("embedding_length")?;
        let heads = self.arch_number("attention.head_count").filter(|h| *h > 0)?;
        let heads_kv = self.arch_number("attention.head_count_kv").unwrap_or(heads);
        let k = self.arch_number("attention.key_length").unwrap_or(embd / heads);
        let v = self.arch_number("attention.value_length").unwrap_or(embd / heads);
        Some(layers * (k + v) * heads_kv * 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }

    fn kv_u32(out: &mut Vec<u8>, k: &str, v: u32) {
        s(out, k);
        out.extend(4u32.to_le_bytes());
        out.extend(v.to_le_bytes());
    }

    #[test]
    fn reads_names_and_kv_figures_and_skips_arrays() {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        f.extend(9u64.to_le_bytes());
        s(&mut f, "general.architecture");
        f.extend(8u32.to_le_bytes());
        s(&mut f, "llama");
        s(&mut f, "tokenizer.ggml.tokens");
        f.extend(9u32.to_le_bytes());
        f.extend(8u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        s(&mut f, "a");
        s(&mut f, "bc");
        s(&mut f, "tokenizer.ggml.scores");
        f.extend(9u32.to_le_bytes());
        f.extend(6u32.to_le_bytes());
        f.extend(3u64.to_le_bytes());
        f.extend([0u8; 12]);
        s(&mut f, "general.name");
        f.extend(8u32.to_le_bytes());
        s(&mut f, "Tiny Model");
        kv_u32(&mut f, "llama.block_count", 30);
        kv_u32(&mut f, "llama.embedding_length", 576);
        kv_u32(&mut f, "llama.attention.head_count", 9);
        kv_u32(&mut f, "llama.attention.head_count_kv", 3);
        kv_u32(&mut f, "llama.context_length", 8192);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.gguf");
        std::fs::write(&p, &f).unwrap();
        let h = Header::read(&p).unwrap();
        assert_eq!(h.name(), Some("Tiny Model"));
        assert_eq!(h.context_length(), Some(8192));
        // 30 layers * (64 + 64) * 3 kv heads * 2 bytes
        assert_eq!(h.kv_bytes_per_token(), Some(30 * 128 * 3 * 2));
        std::fs::write(&p, b"GGML....").unwrap();
        assert!(Header::read(&p).is_err());
        std::fs::write(&p, &f[..40]).unwrap();
        assert!(Header::read(&p).is_err(), "a truncated header is an error");
    }
}
