//! Memory-mapped safetensors files with zero-copy `tch` tensors.
//!
//! # Safety argument
//!
//! A [`MappedFile`] owns a private copy-on-write memory map (`MAP_PRIVATE | MAP_NORESERVE`) of
//! the whole file.
//! [`MappedFile::tensor`] builds a CPU `tch::Tensor` with `Tensor::from_blob` pointing *into* that
//! map: libtorch does not own the memory and will not free it. The returned [`MappedTensor`]
//! holds an `Arc<MappedFile>` next to the tensor, so the map is unmapped only after the last
//! tensor built from it is dropped. Three rules keep this sound:
//!
//! 1. **Lifetime.** A `MappedTensor` never hands out an owned `Tensor` aliasing the map: it only
//!    derefs to `&Tensor`. Operations that produce new storage (`to_kind`, `to_device`, `matmul`,
//!    `copy`, ...) are always safe. Views (`narrow`, `reshape` of contiguous data, `tr`,
//!    `shallow_clone`) alias the map: derive them through [`MappedTensor::map_view`], which
//!    carries the `Arc` along. A view created by hand from `&Tensor` must not outlive its
//!    `MappedTensor`.
//! 2. **Writes stay private.** `tch`'s in-place operations take `&mut Tensor`, and `MappedTensor`
//!    implements only `Deref` (not `DerefMut`), so they cannot be called on a mapped tensor
//!    directly; but `&Tensor` offers `shallow_clone`, an owned handle that can be written
//!    through. The map is therefore copy-on-write: such a write lands in a private copy of the
//!    page (memory of this process), never in the file, and never faults. Nothing in comfyrs
//!    writes to a model's weights; the mapping only makes a mistake harmless. `MAP_NORESERVE`
//!    keeps the kernel from reserving swap for pages that are never written.
//! 3. **The file must not change on disk while mapped.** As with every memory map, truncating
//!    or rewriting the file underneath a live map is undefined (SIGBUS on truncation). Writers in
//!    this crate replace files atomically (write a temp file, then rename), which leaves existing
//!    maps on the old inode intact; [`FileIdentity`](super::FileIdentity) (path, size, mtime)
//!    lets callers notice a replaced file and reopen it.
//!
//! Tensor data is validated once at open: the header is parsed and every tensor's byte range is
//! checked to lie inside the file (`safetensors::SafeTensors::read_metadata`), so `from_blob`
//! never points past the map. A tensor whose data is not aligned to its element size (possible
//! in files written by old tools that mix dtypes) is copied instead of mapped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use memmap2::MmapMut;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::{io_err, FileIdentity, FormatError, Result};

/// The dtype of a tensor in a file. `F16`, `BF16`, `F32` and the two fp8 formats can be read
/// as tensors (`docs/widen.md`, "Model formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDtype {
    F16,
    BF16,
    F32,
    /// `F8_E4M3` (torch `float8_e4m3fn`).
    F8E4M3,
    /// `F8_E5M2` (torch `float8_e5m2`).
    F8E5M2,
    /// Any other safetensors dtype (integers, F64, the fnuz / e8m0 fp8 variants, ...): listed,
    /// never read as a tensor.
    Other(Dtype),
}

impl FileDtype {
    pub fn from_safetensors(d: Dtype) -> Self {
        match d {
            Dtype::F16 => FileDtype::F16,
            Dtype::BF16 => FileDtype::BF16,
            Dtype::F32 => FileDtype::F32,
            Dtype::F8_E4M3 => FileDtype::F8E4M3,
            Dtype::F8_E5M2 => FileDtype::F8E5M2,
            other => FileDtype::Other(other),
        }
    }

    pub fn to_safetensors(self) -> Dtype {
        match self {
            FileDtype::F16 => Dtype::F16,
            FileDtype::BF16 => Dtype::BF16,
            FileDtype::F32 => Dtype::F32,
            FileDtype::F8E4M3 => Dtype::F8_E4M3,
            FileDtype::F8E5M2 => Dtype::F8_E5M2,
            FileDtype::Other(d) => d,
        }
    }

    /// The `tch` kind, or `None` for unsupported dtypes.
    pub fn kind(self) -> Option<Kind> {
        match self {
            FileDtype::F16 => Some(Kind::Half),
            FileDtype::BF16 => Some(Kind::BFloat16),
            FileDtype::F32 => Some(Kind::Float),
            FileDtype::F8E4M3 => Some(Kind::Float8e4m3fn),
            FileDtype::F8E5M2 => Some(Kind::Float8e5m2),
            FileDtype::Other(_) => None,
        }
    }

    pub fn from_kind(kind: Kind) -> Option<Self> {
        match kind {
            Kind::Half => Some(FileDtype::F16),
            Kind::BFloat16 => Some(FileDtype::BF16),
            Kind::Float => Some(FileDtype::F32),
            Kind::Float8e4m3fn => Some(FileDtype::F8E4M3),
            Kind::Float8e5m2 => Some(FileDtype::F8E5M2),
            _ => None,
        }
    }

    /// The fp8 format, for the two fp8 dtypes.
    pub fn fp8(self) -> Option<super::fp8::Fp8> {
        match self {
            FileDtype::F8E4M3 => Some(super::fp8::Fp8::E4M3),
            FileDtype::F8E5M2 => Some(super::fp8::Fp8::E5M2),
            _ => None,
        }
    }

    /// Bytes per element (0 for sub-byte dtypes).
    pub fn size(self) -> usize {
        self.to_safetensors().bitsize() / 8
    }

    /// The safetensors spelling (`F16`, `BF16`, `F32`, `I64`, ...).
    pub fn name(self) -> String {
        format!("{:?}", self.to_safetensors())
    }

    /// torch's dtype name (`torch.float16`, ...), as used in base-identity hashes.
    pub fn torch_name(self) -> String {
        match self {
            FileDtype::F16 => "torch.float16".into(),
            FileDtype::BF16 => "torch.bfloat16".into(),
            FileDtype::F32 => "torch.float32".into(),
            FileDtype::F8E4M3 => "torch.float8_e4m3fn".into(),
            FileDtype::F8E5M2 => "torch.float8_e5m2".into(),
            FileDtype::Other(d) => format!("{d:?}"),
        }
    }
}

impl std::fmt::Display for FileDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// Header entry of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorMeta {
    pub dtype: FileDtype,
    pub shape: Vec<usize>,
    /// Byte range inside the file (absolute offsets).
    pub start: usize,
    pub end: usize,
}

impl TensorMeta {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
    pub fn shape_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }
}

/// An open, memory-mapped safetensors file. Share it as `Arc<MappedFile>`.
pub struct MappedFile {
    path: PathBuf,
    identity: FileIdentity,
    map: MmapMut,
    /// Tensors in file (offset) order.
    tensors: IndexMap<String, TensorMeta>,
    metadata: Option<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn describe(err: SafeTensorError) -> (bool, String) {
    // (is_truncation, message)
    match err {
        SafeTensorError::HeaderTooSmall => (true, "shorter than the 8-byte header length".into()),
        SafeTensorError::InvalidHeaderLength => {
            (true, "the header length points past the end of the file".into())
        }
        SafeTensorError::MetadataIncompleteBuffer => (
            true,
            "the tensor data declared in the header does not match the file size".into(),
        ),
        SafeTensorError::HeaderTooLarge => (false, "the header length is implausibly large".into()),
        SafeTensorError::InvalidHeader(e) => (false, format!("the header is not UTF-8 ({e})")),
        SafeTensorError::InvalidHeaderDeserialization(e) => {
            (false, format!("the header is not valid safetensors JSON ({e})"))
        }
        SafeTensorError::InvalidOffset(name) => {
            (false, format!("tensor '{name}' has invalid data offsets"))
        }
        SafeTensorError::TensorInvalidInfo => {
            (false, "a tensor's shape and dtype do not match its byte range".into())
        }
        other => (false, other.to_string()),
    }
}

impl MappedFile {
    /// Open and map `path`, parse and validate its header. No tensor data is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Arc<MappedFile>> {
        let path = path.as_ref();
        let file = File::open(path).map_err(io_err(path))?;
        let identity = FileIdentity::of_file(path, &file).map_err(io_err(path))?;
        if identity.size < 8 {
            return Err(FormatError::Truncated {
                path: path.to_path_buf(),
                reason: format!("{} bytes, shorter than the 8-byte header length", identity.size),
            });
        }
        // SAFETY: a private copy-on-write mapping; see the module documentation for the rules that
        // keep it valid (lifetime via Arc, writes stay private, file replaced atomically, not
        // truncated).
        let map = unsafe { memmap2::MmapOptions::new().no_reserve_swap().map_copy(&file) }.map_err(io_err(path))?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            let (trunc, reason) = describe(e);
            if trunc {
                FormatError::Truncated { path: path.to_path_buf(), reason }
            } else {
                FormatError::Corrupt { path: path.to_path_buf(), reason }
            }
        })?;
        let data_start = 8 + n;
        let infos = meta.tensors();
        let mut tensors = IndexMap::with_capacity(infos.len());
        for name in meta.offset_keys() {
            let info = infos[&name];
            tensors.insert(
                name,
                TensorMeta {
                    dtype: FileDtype::from_safetensors(info.dtype),
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                },
            );
        }
        Ok(Arc::new(MappedFile {
            path: path.to_path_buf(),
            identity,
            map,
            tensors,
            metadata: meta.metadata().clone(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (path, size, mtime) of the file as opened.
    pub fn identity(&self) -> &FileIdentity {
        &self.identity
    }

    /// Tensor names in file order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn meta(&self, key: &str) -> Option<&TensorMeta> {
        self.tensors.get(key)
    }

    pub fn tensors(&self) -> &IndexMap<String, TensorMeta> {
        &self.tensors
    }

    /// The `__metadata__` string map of the header.
    pub fn metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// Raw little-endian bytes of a tensor (borrowed from the map).
    pub fn bytes(&self, key: &str) -> Result<&[u8]> {
        let m = self.meta(key).ok_or_else(|| self.not_found(key))?;
        Ok(&self.map[m.start..m.end])
    }

    fn not_found(&self, key: &str) -> FormatError {
        FormatError::KeyNotFound { path: self.path.clone(), key: key.to_string() }
    }

    /// A zero-copy CPU tensor over the mapped bytes (F16 / BF16 / F32 / fp8 only). An fp8
    /// tensor is the stored values: a scaled-fp8 weight's scale is applied by its reader
    /// ([`CheckpointFile::scale`](super::CheckpointFile::scale)).
    pub fn tensor(self: &Arc<Self>, key: &str) -> Result<MappedTensor> {
        let m = self.meta(key).ok_or_else(|| self.not_found(key))?;
        let kind = m.dtype.kind().ok_or_else(|| FormatError::UnsupportedDtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: m.dtype.name(),
        })?;
        let shape = m.shape_i64();
        let bytes = &self.map[m.start..m.end];
        let elem = m.dtype.size();
        let tensor = if bytes.is_empty() {
            Tensor::zeros(&shape, (kind, Device::Cpu))
        } else if !(bytes.as_ptr() as usize).is_multiple_of(elem) {
            // Unaligned data: copy (from_data_size copies into a fresh, aligned buffer).
            Tensor::f_from_data_size(bytes, &shape, kind)?
        } else {
            let strides = contiguous_strides(&shape);
            // SAFETY: `bytes` lies inside the live map (validated at open) and covers exactly
            // numel * elem bytes (safetensors validated shape × dtype == byte range); the
            // pointer is aligned to the element size (checked above). The returned
            // MappedTensor keeps `self` (and so the map) alive for as long as the tensor
            // handle lives; see the module documentation.
            unsafe { Tensor::f_from_blob(bytes.as_ptr(), &shape, &strides, kind, Device::Cpu)? }
        };
        Ok(MappedTensor { tensor, file: Some(self.clone()) })
    }

    /// Read a tensor converted to `f32` values (copies). For tests and small tensors (alpha).
    pub fn to_f32_vec(self: &Arc<Self>, key: &str) -> Result<Vec<f32>> {
        let t = self.tensor(key)?;
        let t = t.to_kind(Kind::Float).contiguous().view(-1);
        Ok(Vec::<f32>::try_from(&t)?)
    }

    /// Read a tensor converted to `f64` values without going through libtorch (plain byte
    /// decoding). Independent of `tensor()`, which makes it useful for cross-checking.
    pub fn to_f64_vec(&self, key: &str) -> Result<Vec<f64>> {
        let m = self.meta(key).ok_or_else(|| self.not_found(key))?;
        let b = self.bytes(key)?;
        let out = match m.dtype {
            FileDtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            FileDtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            FileDtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            FileDtype::F8E4M3 | FileDtype::F8E5M2 => {
                let f = m.dtype.fp8().expect("an fp8 dtype");
                b.iter().map(|&x| f.decode(x) as f64).collect()
            }
            FileDtype::Other(_) => {
                return Err(FormatError::UnsupportedDtype {
                    path: self.path.clone(),
                    key: key.to_string(),
                    dtype: m.dtype.name(),
                })
            }
        };
        Ok(out)
    }

    /// True when `t`'s data pointer lies inside this file's map (zero-copy check).
    pub fn contains_ptr(&self, t: &Tensor) -> bool {
        let p = t.data_ptr() as usize;
        let base = self.map.as_ptr() as usize;
        p >= base && p < base + self.map.len()
    }
}

pub(crate) fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

/// A tensor that may alias a memory-mapped file, together with the file's keep-alive handle.
///
/// Derefs to `&Tensor` only (no in-place operations; see the module documentation).
pub struct MappedTensor {
    tensor: Tensor,
    file: Option<Arc<MappedFile>>,
}

impl MappedTensor {
    /// Wrap a tensor that owns its storage (no map involved).
    pub fn owned(tensor: Tensor) -> Self {
        MappedTensor { tensor, file: None }
    }

    /// Derive a view (narrow, reshape, transpose, ...) that keeps the map alive.
    pub fn map_view(&self, f: impl FnOnce(&Tensor) -> Tensor) -> MappedTensor {
        MappedTensor { tensor: f(&self.tensor), file: self.file.clone() }
    }

    /// Fallible variant of [`map_view`](Self::map_view).
    pub fn try_map_view<E>(
        &self,
        f: impl FnOnce(&Tensor) -> std::result::Result<Tensor, E>,
    ) -> std::result::Result<MappedTensor, E> {
        Ok(MappedTensor { tensor: f(&self.tensor)?, file: self.file.clone() })
    }

    /// The file this tensor aliases, if any.
    pub fn file(&self) -> Option<&Arc<MappedFile>> {
        self.file.as_ref()
    }

    /// True when the tensor's data lies in a memory map (no copy was made).
    pub fn is_mapped(&self) -> bool {
        self.file.as_ref().is_some_and(|f| f.contains_ptr(&self.tensor))
    }

    /// A shallow handle sharing this tensor's storage and keep-alive.
    pub fn clone_ref(&self) -> MappedTensor {
        self.map_view(|t| t.shallow_clone())
    }
}

impl std::ops::Deref for MappedTensor {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.tensor
    }
}

impl std::fmt::Debug for MappedTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedTensor")
            .field("shape", &self.tensor.size())
            .field("kind", &self.tensor.kind())
            .field("mapped", &self.file.is_some())
            .finish()
    }
}

// SAFETY: the tensor is reached only through shared references (no DerefMut): concurrent reads
// of one libtorch tensor are thread-safe, and a handle made with `shallow_clone` is an owned
// value of its own (written only by its owner, into private copy-on-write pages). MappedFile is
// Sync (MmapMut is Sync, and nothing mutates it through `&self`). tch::Tensor is Send.
unsafe impl Sync for MappedTensor {}
