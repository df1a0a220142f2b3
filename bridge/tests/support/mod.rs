//! What the bridge test binaries share: one embedded ComfyUI per binary, started over generated
//! models in the binary's own scratch folder, and an event collector.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use comfyrs_bridge::{Bridge, BridgeOptions};
use comfyrs_runtime::events::{Event, EventSink};
use comfyrs_runtime::Registry;

pub struct Env {
    pub bridge: Bridge,
    pub registry: Registry,
    pub models: PathBuf,
    pub output: PathBuf,
    /// File name of the tiny SD1.5 checkpoint in `models/checkpoints`.
    pub ckpt: String,
}

/// The binary's environment, started on first use: the tiny SD1.5 checkpoint under
/// `CARGO_TARGET_TMPDIR/<scratch>/models`, the test custom node pack, an empty output folder.
/// `extend` adds what the binary needs beyond ComfyUI's nodes (it runs before the bridge's own
/// nodes are registered, so native nodes win) and wires the started bridge.
pub fn env(cell: &'static OnceLock<Env>, scratch: &str, extend: impl FnOnce(&mut Registry, &PathBuf, &Bridge)) -> &'static Env {
    cell.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(scratch);
        let models = root.join("models");
        let ckpt = comfyrs_testkit::sd15::ensure_tiny_sd15(&models).expect("tiny checkpoint");
        let output = root.join("output");
        let _ = std::fs::remove_dir_all(&output);
        let support = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("tests/support/custom_nodes");
        let opts = BridgeOptions {
            custom_nodes: vec![support],
            output_dir: Some(output.clone()),
            input_dir: Some(root.join("input")),
            temp_dir: Some(root.join("temp")),
            models_dir: Some(models.clone()),
            ..Default::default()
        };
        let bridge = Bridge::start(&opts).unwrap_or_else(|e| panic!("{e}"));
        let mut registry = Registry::new();
        extend(&mut registry, &models, &bridge);
        bridge.register(&mut registry);
        Env { bridge, registry, models, output, ckpt: ckpt.file_name().unwrap().to_string_lossy().into_owned() }
    })
}

/// Keeps every event of a run.
pub struct Collect(pub Mutex<Vec<Event>>);

impl Collect {
    pub fn new() -> Self {
        Collect(Mutex::new(Vec::new()))
    }
}

impl EventSink for Collect {
    fn emit(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

/// ComfyUI's interrupt flag is process-wide: a test that interrupts must not overlap tests that
/// run Python work. Every test holds [`shared`]; the interrupting test holds [`exclusive`].
static INTERRUPT_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    INTERRUPT_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

// (Only the binary with the interrupting test uses it.)
#[allow(dead_code)]
pub fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    INTERRUPT_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

/// What the bridge logs at `warn` and above while `f` runs on this thread, as text.
#[allow(dead_code)] // Only some binaries check warnings.
pub fn warnings_of<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone)]
    struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Default::default());
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (r, text)
}
