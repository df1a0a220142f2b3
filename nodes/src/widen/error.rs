//! Errors of the WIDEN operations.

use tch::TchError;

#[derive(Debug, thiserror::Error)]
pub enum WidenError {
    /// The device ran out of memory. Never replaced by a fallback: the caller retries the chunk
    /// in smaller pieces (docs/decisions.md D18).
    #[error("out of memory while running WIDEN: {0}")]
    OutOfMemory(String),
    #[error("weights_list must not be empty: a merge needs at least one contributor")]
    EmptyWeights,
    #[error("invalid WIDEN configuration: {0}")]
    Config(String),
    /// Inputs that no WIDEN rule applies to (shapes, ranks, devices). Inside `filter`/`merge`
    /// these trigger the fallback of docs/widen.md, "Fallbacks".
    #[error("{0}")]
    Input(String),
    #[error("libtorch error: {0}")]
    Torch(String),
}

impl WidenError {
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, Self::OutOfMemory(_))
    }
}

/// libtorch reports running out of memory only through its message: "CUDA out of memory" on a
/// GPU, "can't allocate memory" from its CPU allocator; so that is what classifies it.
pub(crate) fn is_oom_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("out of memory") || m.contains("can't allocate memory")
}

impl From<TchError> for WidenError {
    fn from(e: TchError) -> Self {
        let message = e.to_string();
        if is_oom_message(&message) {
            Self::OutOfMemory(message)
        } else {
            Self::Torch(message)
        }
    }
}

pub type Result<T, E = WidenError> = std::result::Result<T, E>;
