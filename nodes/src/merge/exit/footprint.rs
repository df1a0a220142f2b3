//! How much working memory one key of a chunk takes while the chunk computes, in fp32 copies of
//! the key: what sizes the chunks under the memory limits (docs/architecture.md, "Memory").
//!
//! A merge holds its base (`cur`), its result, and the temporaries of adding the contributions;
//! each contribution that enters as full weights adds its own copies (the weights, their delta
//! and the statistics' temporaries). A LoRA that enters as low-rank factors adds only the
//! factors, kilobytes per key: counting it as full weights planned Z-Image's seven-LoRA compose
//! in 46 chunks of one or two keys under a 24 GiB limit where 5 fit.

use crate::recipe::{Recipe, RecipeKind};

use super::analysis::{ptr, Analysis};

/// fp32 copies a merge holds whatever its contributions: its base, the result, the sum of the
/// low-rank products and the copy a base shared with the cache needs before it is written into.
const PER_MERGE: u64 = 5;
/// fp32 copies per contribution entering as full weights (the weights, the delta, one
/// temporary of the statistics).
const PER_DENSE: u64 = 3;

/// The most fp32 copies of a key held at once while `root` is evaluated for `keys` (keys of one
/// group: every set touches all of them in the same form).
pub(super) fn copies_per_key(a: &Analysis, root: &Recipe, keys: &[String]) -> u64 {
    match &root.kind {
        RecipeKind::Merge { base, target, backbone, .. } => {
            let mut leaves = Vec::new();
            a.leaves(target, &mut leaves);
            // As the evaluation does: factors only against the merge's own base.
            let low_rank = |leaf: &Recipe| -> bool {
                backbone.is_none()
                    && matches!(leaf.kind, RecipeKind::Lora { .. })
                    && a.sets.get(&ptr(leaf)).is_some_and(|set| keys.iter().all(|k| a.low_rank_ok(set, k)))
            };
            let dense = leaves.iter().filter(|l| !low_rank(l)).count() as u64;
            let own = PER_MERGE + PER_DENSE * dense;
            // The base is computed first, with nothing of this merge held; a backbone and merged
            // leaves are computed while its base is held.
            let nested = leaves
                .iter()
                .filter(|l| l.is_merge())
                .map(|l| 1 + copies_per_key(a, l, keys))
                .chain(backbone.iter().map(|b| 1 + copies_per_key(a, b, keys)))
                .max()
                .unwrap_or(0);
            own.max(copies_per_key(a, base, keys)).max(nested)
        }
        _ => 1,
    }
}
