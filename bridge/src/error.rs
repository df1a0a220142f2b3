//! The bridge's errors.

/// Why the bridge could not start or a Python call failed outside a node.
///
/// `Clone` because a failed start is remembered and returned again to a second
/// [`Bridge::start`](crate::Bridge::start) with the same options (CPython starts once per process).
#[derive(Clone, Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("Python venv: {0}")]
    Venv(String),
    #[error("ComfyUI: {0}")]
    ComfyUi(String),
    #[error("starting the embedded Python ComfyUI failed: {0}")]
    Boot(String),
    /// A Python exception, formatted with its traceback.
    #[error("Python: {0}")]
    Python(String),
    #[error("the embedded Python's thread has stopped; restart comfyrs")]
    Stopped,
    #[error("a call on the embedded Python's thread panicked: {0}")]
    Panicked(String),
    /// A node class's schema record could not be read.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("the Python bridge is already running in this process with other options; it can start only once per process")]
    AlreadyStarted,
}

/// A node class whose schema could not be read; the class is skipped.
#[derive(Clone, Debug, thiserror::Error)]
#[error("node class {class}: {reason}")]
pub struct SchemaError {
    /// The ComfyUI class name.
    pub class: String,
    pub reason: RecordError,
}

/// Why a class's schema record could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The class raised while ComfyUI's record of it was built (`INPUT_TYPES` & co).
    #[error("its schema could not be built in Python: {0}")]
    Raised(String),
    /// The host module sent a record that is not JSON (a bug of the bridge).
    #[error("the bridge's record of it is not JSON: {0}")]
    Json(String),
    /// The record is JSON but not a node schema comfyrs understands.
    #[error("its schema is not one comfyrs understands: {0}")]
    Schema(String),
}
