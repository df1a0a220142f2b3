//! `comfyrs bench merge --reference PACK_DIR`: the benchmark's prompts, in the order they ran,
//! again in plain ComfyUI with the Python WIDEN node pack (src/bench/reference.rs), and the two
//! sides' times per row side by side.
//!
//! The pack's recipes start at a ComfyUI model: the native base input becomes ComfyUI's loader
//! (`UNETLoader` for a diffusion model file, `CheckpointLoaderSimple`'s CLIP for the text
//! encoders) and the pack's Entry. A cold run turns the pack's own cache off (`enable_cache`
//! false: it recomputes every key), as comfyrs's cold runs empty its caches; the slider changes
//! keep it on, as a user has it.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{json, Value as Json};

use super::median;
use super::reference::ReferenceRun;

/// One run of the benchmark, as it ran.
pub struct LoggedRun {
    /// The row it counts for; `None` for runs that only set the next one up.
    pub row: Option<String>,
    pub prompt: Json,
    /// Started from empty caches.
    pub cold: bool,
}

/// `prompt` (a `bench merge` prompt) as the pack runs it; `None` for what the pack cannot run
/// (a CLIP merge saved: its CLIP Exit does not save).
pub fn reference_prompt(prompt: &Json, cold: bool) -> Result<Option<Json>> {
    let mut p = prompt.as_object().cloned().unwrap_or_default();
    p.remove("sink");
    let Some(base) = p.get("base").cloned() else { bail!("a bench merge prompt without a node \"base\"") };
    let (loader, entry) = match base["class_type"].as_str() {
        Some("WIDENBaseInput") => (
            json!({"class_type": "UNETLoader", "inputs": {"unet_name": base["inputs"]["model_name"], "weight_dtype": "default"}}),
            json!({"class_type": "WIDENEntry", "inputs": {"model": ["base_loader", 0]}}),
        ),
        Some("WIDENCLIPBaseInput") => (
            json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": base["inputs"]["ckpt_name"]}}),
            json!({"class_type": "WIDENCLIPEntry", "inputs": {"clip": ["base_loader", 1]}}),
        ),
        other => bail!("a bench merge prompt whose base is {other:?}"),
    };
    p.insert("base_loader".into(), loader);
    p.insert("base".into(), entry);
    let Some(exit) = p.get_mut("exit") else { bail!("a bench merge prompt without a node \"exit\"") };
    match exit["class_type"].as_str() {
        Some("WIDENExit") => {
            if cold {
                exit["inputs"]["enable_cache"] = json!(false);
            }
        }
        Some("WIDENCLIPExit") => {
            if exit["inputs"]["save_model"].as_bool() == Some(true) {
                return Ok(None);
            }
            // The pack's CLIP Exit has only its recipe input; the others would be ignored, but a
            // cold run's unique model_name still makes ComfyUI run it again.
            for k in ["save_model", "save_workflow", "enable_cache"] {
                exit["inputs"].as_object_mut().map(|o| o.remove(k));
            }
        }
        other => bail!("a bench merge prompt whose Exit is {other:?}"),
    }
    Ok(Some(Json::Object(p)))
}

/// The runs the reference replays, in order, and the row each counts for.
pub fn reference_runs(log: &[LoggedRun]) -> Result<(Vec<Option<String>>, Vec<ReferenceRun>)> {
    let (mut rows, mut runs) = (Vec::new(), Vec::new());
    for (i, r) in log.iter().enumerate() {
        if let Some(prompt) = reference_prompt(&r.prompt, r.cold)? {
            let label = r.row.clone().unwrap_or_else(|| format!("run {} (sets up the next)", i + 1));
            rows.push(r.row.clone());
            runs.push(ReferenceRun { label, prompt, outputs: vec!["exit".into()] });
        }
    }
    Ok((rows, runs))
}

/// Per row: the median of the reference's Exit node seconds and of its whole prompts, from the
/// reference's line for each run (`rows[i]`: the row run i counts for).
pub fn reference_rows(rows: &[Option<String>], lines: &[Json]) -> BTreeMap<String, (f64, f64)> {
    let mut by_row: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for (row, j) in rows.iter().zip(lines) {
        let Some(row) = row else { continue };
        let e = by_row.entry(row.clone()).or_default();
        e.0.push(j["nodes"]["exit"].as_f64().unwrap_or(f64::NAN));
        e.1.push(j["total"].as_f64().unwrap_or(f64::NAN));
    }
    by_row.into_iter().map(|(k, (exit, total))| (k, (median(exit), median(total)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diffusion() -> Json {
        json!({
            "base": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "bench/flux_full_bf16.safetensors"}},
            "l0": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "a.safetensors", "strength": 1.0}},
            "m": {"class_type": "WIDENMerge", "inputs": {"base": ["base", 0], "target": ["l0", 0], "t_factor": 1.0}},
            "exit": {"class_type": "WIDENExit", "inputs": {"widen": ["m", 0], "model_name": "bench-cold-1"}},
            "sink": {"class_type": "BenchKeep", "inputs": {"model": ["exit", 0]}}
        })
    }

    #[test]
    fn a_diffusion_base_becomes_comfyuis_loader_and_the_packs_entry() {
        let p = reference_prompt(&diffusion(), true).unwrap().unwrap();
        assert_eq!(p["base_loader"]["class_type"], "UNETLoader");
        assert_eq!(p["base_loader"]["inputs"]["unet_name"], "bench/flux_full_bf16.safetensors");
        assert_eq!(p["base"], json!({"class_type": "WIDENEntry", "inputs": {"model": ["base_loader", 0]}}));
        assert!(p.get("sink").is_none(), "the benchmark's own output node is not the pack's");
        assert_eq!(p["m"], diffusion()["m"], "recipe nodes keep their ids and inputs");
        assert_eq!(p["exit"]["inputs"]["enable_cache"], false, "a cold run turns the pack's cache off");
        let warm = reference_prompt(&diffusion(), false).unwrap().unwrap();
        assert!(warm["exit"]["inputs"].get("enable_cache").is_none(), "a slider change keeps the pack's default");
    }

    #[test]
    fn a_clip_base_comes_from_the_checkpoints_clip_and_a_saved_clip_is_not_replayed() {
        let mut p = diffusion();
        p["base"] = json!({"class_type": "WIDENCLIPBaseInput", "inputs": {"ckpt_name": "bench/sdxl.safetensors"}});
        p["exit"] = json!({"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["m", 0], "model_name": "x", "enable_cache": true}});
        let r = reference_prompt(&p, true).unwrap().unwrap();
        assert_eq!(r["base_loader"], json!({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "bench/sdxl.safetensors"}}));
        assert_eq!(r["base"]["inputs"]["clip"], json!(["base_loader", 1]));
        assert_eq!(r["exit"]["inputs"], json!({"widen_clip": ["m", 0], "model_name": "x"}));
        p["exit"]["inputs"]["save_model"] = json!(true);
        assert!(reference_prompt(&p, true).unwrap().is_none());
    }

    #[test]
    fn rows_take_the_median_of_their_runs_and_set_up_runs_count_for_none() {
        let rows = [Some("W1".to_string()), None, Some("W1".to_string()), Some("W1".to_string())];
        let lines = [
            json!({"total": 5.0, "nodes": {"exit": 4.0}}),
            json!({"total": 100.0, "nodes": {"exit": 99.0}}),
            json!({"total": 7.0, "nodes": {"exit": 6.0}}),
            json!({"total": 6.0, "nodes": {"exit": 5.0}}),
        ];
        let medians = reference_rows(&rows, &lines);
        assert_eq!(medians.len(), 1);
        assert_eq!(medians["W1"], (5.0, 6.0));
    }
}
