use std::io::Write;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use comfyrs_testkit::fixtures::{write_fixtures, FixtureOptions};

use crate::config::Config;
use crate::FixturesArgs;

/// Writes the fixture set into the configured models root and lists what it wrote.
pub fn main(args: FixturesArgs, config: &Config) -> Result<ExitCode> {
    let models_dir = &config.models_dir;
    let archs = args
        .arch
        .iter()
        .map(|a| a.parse().map_err(|e: String| anyhow!("--arch {a}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let opts = FixtureOptions { full_size: args.full_size, archs, seed: args.seed, ..FixtureOptions::default() };
    let t = std::time::Instant::now();
    let files = write_fixtures(models_dir, &opts).map_err(|e| anyhow!("writing fixtures into {}: {e}", models_dir.display()))?;
    #[cfg(feature = "python")]
    let files = {
        // A tiny SD1.5 checkpoint that ComfyUI's own model detection accepts, for Python workflows.
        let mut files = files;
        if args.arch.is_empty() {
            files.push(comfyrs_testkit::sd15::ensure_tiny_sd15(models_dir).map_err(|e| anyhow!("writing the tiny SD1.5 checkpoint: {e}"))?);
            files.push(comfyrs_testkit::sd15::ensure_tiny_sd15_lora(models_dir).map_err(|e| anyhow!("writing the tiny SD1.5 LoRA: {e}"))?);
        }
        files
    };
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let mut out = std::io::stdout().lock();
    for f in &files {
        writeln!(out, "{}", f.display())?;
    }
    eprintln!("wrote {} files ({:.1} MiB) into {} in {:.1} s", files.len(), bytes as f64 / (1 << 20) as f64, models_dir.display(), t.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
