//! Model files: memory-mapped safetensors reading (zero-copy `tch` tensors), a streaming
//! safetensors writer, checkpoint key normalization (diffusion-model files, full LDM
//! checkpoints, OpenCLIP text encoders), ComfyUI model folders (`--models-dir`,
//! `extra_model_paths.yaml`) and file identity for fingerprints.
//!
//! Everything here reports errors as [`FormatError`], whose messages name the file involved.

pub mod checkpoint;
pub mod folders;
pub mod fp8;
pub mod identity;
pub mod mapped;
pub mod writer;

use std::path::{Path, PathBuf};

pub use checkpoint::{CheckpointDomain, CheckpointFile, CheckpointLayout, KeySource};
pub use folders::{ModelFolders, MODEL_EXTENSIONS};
pub use identity::{file_stats, FileIdentity};
pub use mapped::{FileDtype, MappedFile, MappedTensor, TensorMeta};
pub use writer::{SafetensorsWriter, TensorHeader};

/// Errors of the file-format layer (model files, LoRA files, model folders).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("cannot read '{path}': {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("'{path}' is not a valid safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("'{path}' is truncated or incomplete: {reason}")]
    Truncated { path: PathBuf, reason: String },
    #[error("'{path}': tensor '{key}' has dtype {dtype}; only F16, BF16, F32 and fp8 (F8_E4M3, F8_E5M2) tensors are supported")]
    UnsupportedDtype { path: PathBuf, key: String, dtype: String },
    #[error(
        "Only safetensors format is supported for model merging. Got: {ext}. Please convert your \
         checkpoint to safetensors format. ('{path}')"
    )]
    UnsupportedFormat { path: PathBuf, ext: String },
    #[error("'{path}' has no tensor '{key}'")]
    KeyNotFound { path: PathBuf, key: String },
    #[error("Checkpoint '{path}' is missing {} key(s) requested by base model:\n{}", .missing.len(), list_keys(.missing))]
    MissingKeys { path: PathBuf, missing: Vec<String> },
    #[error("Unexpected embedder indices in checkpoint '{path}': {indices:?}. Expected only embedders.0 (CLIP-L) and embedders.1 (CLIP-G) for SDXL.")]
    UnexpectedEmbedders { path: PathBuf, indices: Vec<u64> },
    #[error("LoRA '{path}' matches nothing for architecture '{arch}': {detail}")]
    LoraNoMatch { path: PathBuf, arch: String, detail: String },
    #[error(
        "LoRA '{path}' is not a '{arch}' LoRA: only {matched} of {modules} modules name a '{arch}' \
         weight, while {guess_matched} name '{guess}' weights. Connect it to a '{guess}' model."
    )]
    LoraWrongArch { path: PathBuf, arch: String, guess: String, matched: usize, guess_matched: usize, modules: usize },
    #[error("LoRA '{path}', module '{module}': {reason}")]
    LoraModule { path: PathBuf, module: String, reason: String },
    #[error("unknown model folder '{kind}' (known: {known})")]
    UnknownFolder { kind: String, known: String },
    #[error("model name '{name}' is not allowed: {reason}")]
    BadName { name: String, reason: String },
    #[error("'{name}' not found in model folder '{kind}' (searched: {searched})")]
    ModelNotFound { kind: String, name: String, searched: String },
    #[error("'{path}': invalid extra_model_paths config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("'{path}': {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Other(String),
}

fn list_keys(keys: &[String]) -> String {
    let mut lines: Vec<String> = keys.iter().take(10).map(|k| format!("  - {k}")).collect();
    if keys.len() > 10 {
        lines.push(format!("  ... and {} more", keys.len() - 10));
    }
    lines.join("\n")
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io { path: path.to_path_buf(), source }
}
