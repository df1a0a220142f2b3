//! The project's Python venv (scripts/setup.sh records it as COMFYRS_VENV), where the web
//! frontend package and ComfyUI's dependencies are installed.

use std::path::PathBuf;

/// The venv: COMFYRS_VENV at run time, else the one this binary was built against.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os("COMFYRS_VENV").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| option_env!("COMFYRS_VENV").map(PathBuf::from))
}

/// The venv's Python interpreter, when it exists.
pub fn python() -> Option<PathBuf> {
    dir().map(|d| d.join("bin").join("python")).filter(|p| p.is_file())
}
