//! The reference side of the benchmarks that have one (`bench loop`, `bench merge`): their
//! prompts in plain ComfyUI (`COMFYUI_PATH`) with the Python WIDEN node pack, in a Python process
//! of their own that runs `reference.py`, one ComfyUI executor for all of them.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};

/// One prompt for the reference: a label for its progress line, the prompt, and the node ids it
/// executes (ComfyUI runs what those need).
pub struct ReferenceRun {
    pub label: String,
    pub prompt: Json,
    pub outputs: Vec<String>,
}

/// Where the reference's Python, pack and ComfyUI are.
pub struct ReferenceSetup<'a> {
    pub pack: &'a Path,
    pub python: &'a Path,
    /// The models folder (checkpoints, loras, diffusion_models under it).
    pub models_dir: &'a Path,
    /// ComfyUI's output folder for this run.
    pub output: &'a Path,
}

/// The flags of the benchmarks that have a reference.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ReferenceArgs {
    /// Also run the same prompts, in the same order, in plain ComfyUI (`COMFYUI_PATH`) with the
    /// Python WIDEN node pack found in this folder, and put both sides in each row.
    #[arg(long, value_name = "PACK_DIR")]
    pub reference: Option<PathBuf>,
    /// The Python that runs the reference [default: the project's venv].
    #[arg(long, value_name = "PYTHON")]
    pub reference_python: Option<PathBuf>,
}

impl ReferenceArgs {
    /// The Python for the reference: `--reference-python`, else the project's venv.
    pub fn python(&self) -> Result<PathBuf> {
        self.reference_python.clone().or_else(crate::venv::python).ok_or_else(|| anyhow!("no Python for the reference: pass --reference-python"))
    }
}

/// Runs `runs` in order; one JSON object per run, as `reference.py` prints it (`total`,
/// `first_step`, `image`, `nodes`: each node's seconds, `image_path`). `progress` makes each
/// run's line on stderr.
pub fn run(setup: &ReferenceSetup, runs: &[ReferenceRun], progress: impl Fn(&str, &Json) -> String) -> Result<Vec<Json>> {
    let comfy = std::env::var_os("COMFYUI_PATH").ok_or_else(|| anyhow!("--reference runs plain ComfyUI: set COMFYUI_PATH to a ComfyUI checkout"))?;
    // The driver works from ComfyUI's folder: every path it gets is absolute.
    let absolute = |p: &Path| p.canonicalize().with_context(|| format!("--reference: {} is not there", p.display()));
    let (pack, models_dir) = (absolute(setup.pack)?, absolute(setup.models_dir)?);
    if !pack.join("__init__.py").is_file() {
        bail!("--reference {}: not a ComfyUI custom node pack (no __init__.py); pass the Python WIDEN node pack's folder", pack.display());
    }
    std::fs::create_dir_all(setup.output)?;
    let script = setup.output.join("reference.py");
    std::fs::write(&script, include_str!("reference.py"))?;
    let items: Vec<Json> = runs.iter().map(|r| json!({"prompt": r.prompt, "outputs": r.outputs})).collect();
    let mut child = std::process::Command::new(setup.python)
        .arg(&script)
        .arg(&pack)
        .arg(&models_dir)
        .arg(absolute(setup.output)?)
        .env("COMFYUI_PATH", &comfy)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", setup.python.display()))?;
    child.stdin.take().expect("piped").write_all(serde_json::to_string(&items)?.as_bytes())?;
    let mut out = Vec::new();
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    for (line, run) in stdout.lines().zip(runs) {
        let j: Json = serde_json::from_str(&line?)?;
        eprintln!("reference: {}: {}", run.label, progress(&run.label, &j));
        out.push(j);
    }
    let status = child.wait()?;
    if !status.success() || out.len() != runs.len() {
        bail!("the reference stopped after {} of {} prompts ({status}); its error is above", out.len(), runs.len());
    }
    Ok(out)
}
