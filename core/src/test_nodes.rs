//! Not ComfyUI's: nodes for testing and benchmarking a deployment without models. `TestWait`
//! takes a fixed time (the work of a sampler, without one) and `TestSaveText` writes an output
//! file the way ComfyUI's SaveImage names its files. The binary registers them when
//! `COMFYRS_TEST_NODES=1` (docs/scale-out.md, "Testing and benchmarking"); the server's tests
//! use them too.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyrs_runtime::{Args, CallOutput, ExecContext, InputSpec, NodeClass, NodeError, NodeSchema, OutputSpec, Registry, Value};
use serde_json::{json, Map};

/// The environment variable that adds these nodes to the binary's registry.
pub const ENV: &str = "COMFYRS_TEST_NODES";

/// Whether the environment asks for the test nodes.
pub fn wanted() -> bool {
    std::env::var_os(ENV).is_some_and(|v| v == "1")
}

pub fn register(reg: &mut Registry) {
    let wait = NodeSchema::new("TestWait", "Wait (test)", "testing")
        .description("Waits ms milliseconds, reporting progress and honouring interrupts, and passes value through.")
        .input(InputSpec::int("ms", 10, 0, 600_000))
        .input(InputSpec::string("value", ""))
        .output(OutputSpec::new("STRING"));
    reg.register(Arc::new(Wait(Arc::new(wait))));
    let save = NodeSchema::new("TestSaveText", "Save text (test)", "testing")
        .description("Writes text to PREFIX_NNNNN_.txt in the output folder, numbered as SaveImage numbers its files.")
        .input(InputSpec::string("text", ""))
        .input(InputSpec::string("filename_prefix", "comfyrs"))
        .output_node();
    reg.register(Arc::new(SaveText(Arc::new(save))));
}

struct Wait(Arc<NodeSchema>);

impl NodeClass for Wait {
    fn schema(&self) -> Arc<NodeSchema> {
        self.0.clone()
    }
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        let ms = args.int("ms")? as u64;
        let start = Instant::now();
        let total = Duration::from_millis(ms);
        while start.elapsed() < total {
            ctx.check_interrupt()?;
            ctx.progress(start.elapsed().as_millis() as u64, ms);
            std::thread::sleep((total - start.elapsed().min(total)).min(Duration::from_millis(5)));
        }
        Ok(CallOutput::values([args.get("value").cloned().unwrap_or(Value::None)]))
    }
}

struct SaveText(Arc<NodeSchema>);

impl NodeClass for SaveText {
    fn schema(&self) -> Arc<NodeSchema> {
        self.0.clone()
    }
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        let text = args.string("text")?;
        let prefix = args.string("filename_prefix")?;
        let (subfolder, stem) = match prefix.rsplit_once('/') {
            Some((dir, stem)) => (dir.to_string(), stem.to_string()),
            None => (String::new(), prefix.to_string()),
        };
        if subfolder.split('/').any(|p| p == "..") || stem.is_empty() {
            return Err(NodeError::msg(format!("filename_prefix {prefix:?} must name a file inside the output folder")));
        }
        let dir = ctx.output_dir.join(&subfolder);
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::msg(format!("cannot create {}: {e}", dir.display())))?;
        let filename = format!("{stem}_{:05}_.txt", next_counter(&dir, &stem));
        let path = dir.join(&filename);
        std::fs::write(&path, text.as_bytes()).map_err(|e| NodeError::msg(format!("cannot write {}: {e}", path.display())))?;
        let mut ui = Map::new();
        ui.insert("files".into(), json!([{"filename": filename, "subfolder": subfolder, "type": "output"}]));
        ui.insert("text".into(), json!([text]));
        Ok(CallOutput::values([]).with_ui(ui))
    }
}

/// One past the highest `STEM_NNNNN_` number in `dir` (1 in an empty folder), as SaveImage
/// counts: every process numbers from its own folder, so two workers pick the same names.
fn next_counter(dir: &Path, stem: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 1 };
    let highest = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix(stem)?.strip_prefix('_')?.split('_').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    highest + 1
}
