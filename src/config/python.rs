//! `python`: when the embedded ComfyUI starts.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PythonMode {
    /// Only when a workflow needs a node comfyrs does not run natively.
    #[default]
    Auto,
    Always,
    Never,
}

impl FromStr for PythonMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(PythonMode::Auto),
            "always" => Ok(PythonMode::Always),
            "never" => Ok(PythonMode::Never),
            _ => Err(format!("unknown python mode '{s}'; accepts auto, always or never")),
        }
    }
}

impl fmt::Display for PythonMode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            PythonMode::Auto => "auto",
            PythonMode::Always => "always",
            PythonMode::Never => "never",
        })
    }
}
