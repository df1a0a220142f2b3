//! Streaming, atomic safetensors writer.
//!
//! The header (names, dtypes, shapes) is declared up front; tensor bytes are then streamed in
//! declaration order, so a multi-gigabyte model never has to exist in memory. The file is
//! written to a temporary name in the destination directory and renamed into place by
//! [`SafetensorsWriter::finish`] after an fsync; an unfinished writer removes its temp file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{FileDtype, FormatError, Result};

/// One tensor of the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorHeader {
    pub name: String,
    pub dtype: FileDtype,
    pub shape: Vec<usize>,
}

impl TensorHeader {
    pub fn new(name: impl Into<String>, dtype: FileDtype, shape: &[usize]) -> Self {
        TensorHeader { name: name.into(), dtype, shape: shape.to_vec() }
    }
    pub fn nbytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.to_safetensors().bitsize() / 8
    }
}

/// Build the header bytes (length prefix + JSON padded with spaces to a multiple of 8).
pub fn header_bytes(
    entries: &[TensorHeader],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut obj = serde_json::Map::new();
    if let Some(md) = metadata {
        let m: serde_json::Map<String, serde_json::Value> =
            md.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        obj.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for e in entries {
        if e.name == "__metadata__" || obj.contains_key(&e.name) {
            return Err(FormatError::Other(format!("duplicate or reserved tensor name '{}'", e.name)));
        }
        let n = e.nbytes();
        obj.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": e.dtype.name(),
                "shape": e.shape,
                "data_offsets": [offset, offset + n],
            }),
        );
        offset += n;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(obj))
        .map_err(|e| FormatError::Other(e.to_string()))?;
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Streaming writer; see the module documentation.
pub struct SafetensorsWriter {
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    dest: PathBuf,
    sizes: Vec<(String, usize)>,
    current: usize,
    written_in_current: usize,
}

impl SafetensorsWriter {
    /// Create the temp file and write the header.
    pub fn create(
        dest: impl AsRef<Path>,
        entries: &[TensorHeader],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let werr = |reason: String| FormatError::Write { path: dest.clone(), reason };
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| werr(e.to_string()))?;
        let file_name = dest.file_name().ok_or_else(|| werr("no file name".into()))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            file_name.to_string_lossy(),
            std::process::id(),
            unique()
        ));
        let header = header_bytes(entries, metadata)?;
        let file = File::create(&tmp).map_err(|e| werr(e.to_string()))?;
        let mut out = BufWriter::with_capacity(8 << 20, file);
        out.write_all(&header).map_err(|e| werr(e.to_string()))?;
        let mut w = SafetensorsWriter {
            out: Some(out),
            tmp,
            dest,
            sizes: entries.iter().map(|e| (e.name.clone(), e.nbytes())).collect(),
            current: 0,
            written_in_current: 0,
        };
        w.skip_empty();
        Ok(w)
    }

    fn skip_empty(&mut self) {
        while self.current < self.sizes.len() && self.written_in_current == self.sizes[self.current].1 {
            self.current += 1;
            self.written_in_current = 0;
        }
    }

    fn err(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Write { path: self.dest.clone(), reason: reason.into() }
    }

    /// Name of the tensor the next bytes belong to (`None` when all are written).
    pub fn current_tensor(&self) -> Option<&str> {
        self.sizes.get(self.current).map(|(n, _)| n.as_str())
    }

    /// Append bytes (little-endian tensor data, in declaration order). Chunks may span tensors.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some((_, size)) = self.sizes.get(self.current) else {
                return Err(self.err("more tensor bytes written than declared in the header"));
            };
            let take = (size - self.written_in_current).min(bytes.len());
            let out = self.out.as_mut().expect("writer used after finish");
            if let Err(e) = out.write_all(&bytes[..take]) {
                return Err(self.err(e.to_string()));
            }
            self.written_in_current += take;
            bytes = &bytes[take..];
            self.skip_empty();
        }
        Ok(())
    }

    /// Check that every declared byte was written, flush, fsync, rename into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        if let Some((name, size)) = self.sizes.get(self.current) {
            return Err(self.err(format!(
                "tensor '{name}' incomplete: {} of {size} bytes written",
                self.written_in_current
            )));
        }
        let out = self.out.take().expect("finish called twice");
        let file = out.into_inner().map_err(|e| self.err(e.to_string()))?;
        file.sync_all().map_err(|e| self.err(e.to_string()))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| self.err(e.to_string()))?;
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.dest.clone())
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn unique() -> u64 {
    comfyrs_runtime::random::fresh_u64()
}

/// Write a small file in one go: `(name, dtype, shape, bytes)` per tensor.
pub fn write_all(
    dest: impl AsRef<Path>,
    tensors: &[(String, FileDtype, Vec<usize>, Vec<u8>)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<PathBuf> {
    let headers: Vec<TensorHeader> =
        tensors.iter().map(|(n, d, s, _)| TensorHeader::new(n.clone(), *d, s)).collect();
    let mut w = SafetensorsWriter::create(dest, &headers, metadata)?;
    for (_, _, _, b) in tensors {
        w.write(b)?;
    }
    w.finish()
}

/// Encode f32 values in a file dtype (round to nearest even; fp8 saturates at its largest
/// finite value).
pub fn encode_f32(values: &[f32], dtype: FileDtype) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    encode_f32_into(values, dtype, &mut out)?;
    Ok(out)
}

/// Append the encoding of `values` to `out`.
pub fn encode_f32_into(values: &[f32], dtype: FileDtype, out: &mut Vec<u8>) -> Result<()> {
    match dtype {
        FileDtype::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        FileDtype::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        FileDtype::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        FileDtype::F8E4M3 | FileDtype::F8E5M2 => {
            let f = super::fp8::Fp8Encoder::new(dtype.fp8().expect("an fp8 dtype"));
            out.extend(values.iter().map(|&v| f.encode(v)));
        }
        FileDtype::Other(d) => {
            return Err(FormatError::Other(format!("cannot encode floats as {d:?}")));
        }
    }
    Ok(())
}
