//! The WIDEN pack's errors, typed end to end: what the user must change (with the Python
//! exception type the reference pack raises, which ComfyUI shows), a model file's error, a WIDEN
//! operation's error (out-of-memory among them), or an interrupt.

use comfyrs_runtime::NodeError;

use crate::models::FormatError;
use crate::widen::WidenError;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A message for the user, raised as `exception_type` (ValueError, TypeError, ...).
    #[error("{message}")]
    Node { message: String, exception_type: &'static str },
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A WIDEN or libtorch operation failed; out-of-memory is [`WidenError::OutOfMemory`].
    #[error(transparent)]
    Widen(#[from] WidenError),
    /// A key that does not fit in device memory on its own (docs/decisions.md D35).
    #[error(transparent)]
    DeviceMemory(#[from] KeyTooLarge),
    #[error("interrupted")]
    Interrupted,
}

/// A key that does not fit in device memory even alone, with the caches emptied.
#[derive(Debug, thiserror::Error)]
#[error(
    "device memory: key '{key}' does not fit on its own under {limit}: merging it needs about {need} of working \
     memory, and the device's caches were already emptied. Raise the limit (--device-memory, memory.device, \
     COMFYRS_DEVICE_MEMORY), or free device memory (a model kept on the device for sampling counts against it). \
     libtorch said: {cause}"
)]
pub struct KeyTooLarge {
    pub key: String,
    /// The limit as words: `the 12.0 GiB device memory limit`.
    pub limit: String,
    /// The planned working memory of one key, as words.
    pub need: String,
    /// The first line of libtorch's message.
    pub cause: String,
}


impl PackError {
    pub fn value(m: impl Into<String>) -> Self {
        PackError::Node { message: m.into(), exception_type: "ValueError" }
    }
    pub fn type_error(m: impl Into<String>) -> Self {
        PackError::Node { message: m.into(), exception_type: "TypeError" }
    }
    pub fn runtime(m: impl Into<String>) -> Self {
        PackError::Node { message: m.into(), exception_type: "RuntimeError" }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        PackError::Node { message: m.into(), exception_type: "FileNotFoundError" }
    }

    /// The message as the user sees it.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The Python exception type the reference pack raises for this error.
    pub fn exception_type(&self) -> &'static str {
        match self {
            PackError::Node { exception_type, .. } => exception_type,
            PackError::Format(e) => match e {
                FormatError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => "FileNotFoundError",
                FormatError::ModelNotFound { .. } => "FileNotFoundError",
                FormatError::MissingKeys { .. } => "KeyMismatchError",
                FormatError::UnsupportedFormat { .. } => "UnsupportedFormatError",
                _ => "ValueError",
            },
            PackError::Widen(_) => "RuntimeError",
            // What PyTorch raises for an allocation that does not fit on the device.
            PackError::DeviceMemory(_) => "OutOfMemoryError",
            PackError::Interrupted => "InterruptProcessingException",
        }
    }

    /// Whether the device (or host) ran out of memory: the Exit retries such a chunk in halves.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, PackError::Widen(e) if e.is_out_of_memory())
    }
}

impl From<tch::TchError> for PackError {
    fn from(e: tch::TchError) -> Self {
        // libtorch reports out-of-memory only in its message: `WidenError::from` classifies it
        // once, here at the boundary, into a type.
        PackError::Widen(WidenError::from(e))
    }
}

impl From<PackError> for NodeError {
    fn from(e: PackError) -> Self {
        match e {
            PackError::Interrupted => NodeError::Interrupted,
            e => NodeError::Failed { message: e.message(), exception_type: e.exception_type().into(), traceback: Vec::new() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_exception_types_and_oom_is_a_type() {
        let oom = PackError::from(WidenError::OutOfMemory("CUDA out of memory. Tried to allocate 2 GiB".into()));
        assert!(oom.is_out_of_memory());
        assert_eq!(oom.exception_type(), "RuntimeError");
        // A message that merely mentions memory is not an out-of-memory error.
        assert!(!PackError::runtime("the model is out of memory range").is_out_of_memory());
        assert!(!PackError::from(WidenError::Input("bad shape".into())).is_out_of_memory());
        assert_eq!(PackError::not_found("x").exception_type(), "FileNotFoundError");
        assert!(matches!(NodeError::from(PackError::Interrupted), NodeError::Interrupted));
        match NodeError::from(PackError::value("bad t")) {
            NodeError::Failed { message, exception_type, .. } => assert_eq!((message.as_str(), exception_type.as_str()), ("bad t", "ValueError")),
            other => panic!("{other:?}"),
        }
    }
}
