//! The run's report (docs/widen.md, "Report"): the root merge's per-key figures, read from the
//! device once at the end of the run, kept in the subtree cache next to each key's result (so a
//! run that takes the result from the cache still reports it), and aggregated over blocks and
//! layer types.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Tensor};

use crate::merge::engine::MergeEngine;
use crate::merge::report::{MergeReport, ReportMeta};
use crate::recipe::{PackError, Recipe, RecipeKind};

use super::analysis::Analysis;

/// The subtree-cache entry of a key's figures: derived from the hash of the key's result.
fn figures_hash(result_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"report figures");
    h.update(result_hash);
    *h.finalize().as_bytes()
}

/// The report of `root` (a Merge) from the figures computed in this run (`computed`: keys and
/// `[B, N, FIGURES]` on the device) and, for the other keys, the cache's.
pub(super) fn report(
    engine: &MergeEngine,
    a: &Analysis,
    root: &Recipe,
    device: Device,
    computed: Vec<(Vec<String>, Tensor)>,
    use_cache: bool,
) -> Result<MergeReport, PackError> {
    let mut figures: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    if !computed.is_empty() {
        let all = Tensor::f_cat(&computed.iter().map(|(_, t)| t).collect::<Vec<_>>(), 0)?;
        let host = Vec::<f32>::try_from(&all.f_to_device(Device::Cpu)?.f_flatten(0, -1)?)?;
        let per_key = host.len() / all.size()[0].max(1) as usize;
        let mut row = 0;
        for (keys, t) in &computed {
            let mut group = Vec::with_capacity(keys.len());
            for (i, k) in keys.iter().enumerate() {
                if use_cache {
                    group.push((figures_hash(&a.key_hash(root, k, device)), t.f_select(0, i as i64)?));
                }
                figures.insert(k.clone(), host[row * per_key..(row + 1) * per_key].to_vec());
                row += 1;
            }
            // Views of the chunk's figures: one group (cache.rs).
            engine.subtrees.insert_all_cold(group);
        }
    }
    if use_cache {
        let missing: Vec<&String> = a.keys.iter().filter(|k| !figures.contains_key(*k)).collect();
        let found: Vec<(&String, Tensor)> =
            missing.into_iter().filter_map(|k| engine.subtrees.get(&figures_hash(&a.key_hash(root, k, device))).map(|t| (k, t))).collect();
        if !found.is_empty() {
            let rows: Vec<Tensor> = found.iter().map(|(_, t)| t.f_to_device(Device::Cpu)).collect::<Result<_, _>>()?;
            let host = Vec::<f32>::try_from(&Tensor::f_stack(&rows, 0)?.f_flatten(0, -1)?)?;
            let per_key = host.len() / found.len();
            for (j, (k, _)) in found.iter().enumerate() {
                figures.insert((*k).clone(), host[j * per_key..(j + 1) * per_key].to_vec());
            }
        }
    }
    Ok(MergeReport::build(meta(a, root), a.arch, &a.keys, &figures))
}

/// The merge in words: its base, contributors and t_factor.
fn meta(a: &Analysis, root: &Recipe) -> ReportMeta {
    let RecipeKind::Merge { base, target, t_factor, block_config, .. } = &root.kind else {
        unreachable!("a report is made for a Merge")
    };
    let mut leaves = Vec::new();
    a.leaves(target, &mut leaves);
    let contributors: Vec<String> = leaves.iter().map(|l| label(a, l)).collect();
    let base_name = match &base.kind {
        RecipeKind::Base { model, .. } => stem(model.name()),
        _ => "a merged model".to_string(),
    };
    let blocks = if block_config.is_some() { " with a block config" } else { "" };
    ReportMeta {
        title: format!("WIDEN merge on {base_name}: {} contributor(s), t_factor {t_factor}{blocks}", contributors.len()),
        arch: a.arch.tag().to_string(),
        contributors,
    }
}

fn label(a: &Analysis, leaf: &Recipe) -> String {
    match &leaf.kind {
        RecipeKind::Lora { loras, .. } => {
            let parts: Vec<String> = loras.iter().map(|e| format!("{} ×{}", stem(&e.path), e.strength)).collect();
            if parts.is_empty() { "LoRA (none)".to_string() } else { parts.join(" + ") }
        }
        RecipeKind::Model { path, strength, .. } => format!("{} ×{strength}", stem(path)),
        RecipeKind::Merge { target, .. } => {
            let mut inner = Vec::new();
            a.leaves(target, &mut inner);
            format!("merge of {}", inner.iter().map(|l| label(a, l)).collect::<Vec<_>>().join(", "))
        }
        RecipeKind::Base { model, .. } => stem(model.name()),
        RecipeKind::Compose { .. } => "compose".to_string(),
    }
}

/// A file name without folders and extension.
fn stem(name: &str) -> String {
    Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| name.to_string())
}
