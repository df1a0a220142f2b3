//! The report of a merge (docs/widen.md, "Report"): per block and layer type, how much of each
//! contributor's delta the merge kept and its share of what was kept, the mean magnitude and
//! direction divergences the merge ranked, and the keys it left at the backbone. Built from the
//! per-key figures the Exit's root merge computed ([`crate::widen::summary`]), small enough to
//! travel with the merged MODEL, in the Exit's UI output and in a saved file's metadata
//! ([`METADATA_KEY`]), so the picture can be drawn again without merging.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::arch::{classify_key, Arch};
use crate::widen::summary::{DIRECTION, FIGURES, MAGNITUDE, SCALE};

/// The saved file's metadata entry holding the report as JSON.
pub const METADATA_KEY: &str = "__comfyrs_report__";

/// Block and layer-type name of keys outside every block slider or layer type.
pub const OTHER: &str = "other";

/// What a report is about, known before any figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportMeta {
    /// The merge in words (base, contributors, t_factor).
    pub title: String,
    /// The base's architecture tag (`sdxl`, `zimage`, ...).
    pub arch: String,
    /// One label per contributor of the root merge, in the merge's order.
    pub contributors: Vec<String>,
}

/// One block × layer type of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub block: String,
    pub layer: String,
    /// Keys of the group with figures.
    pub keys: usize,
    /// Keys of the group the merge left exactly at the backbone.
    pub at_backbone: usize,
    /// Per contributor: its share of the scales the merge kept, averaged over the group's keys
    /// that moved (each key's shares sum to 1).
    pub share: Vec<f64>,
    /// Per contributor: the mean of its scales (how much of its delta the merge kept).
    pub kept: Vec<f64>,
    /// Per contributor: mean magnitude divergence over the group's 2-D+ keys (`None`: none).
    pub magnitude: Vec<Option<f64>>,
    /// Per contributor: mean direction divergence (`1 − cos`) over the group's 2-D+ keys.
    pub direction: Vec<Option<f64>>,
}

/// A merge's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeReport {
    #[serde(flatten)]
    pub meta: ReportMeta,
    /// Keys the merge changes.
    pub keys: usize,
    /// Keys without figures: the merge fell back or ran with WIDEN off (`t < 0`), or their
    /// cached result's figures were evicted.
    pub without_figures: usize,
    /// Groups in block order, then layer type, `other` last.
    pub groups: Vec<GroupReport>,
    /// The keys the merge left exactly at the backbone, sorted.
    pub at_backbone: Vec<String>,
}

/// Sort key of a block or layer name: `other` after the named ones.
fn order(name: &str) -> (bool, &str) {
    (name == OTHER, name)
}

#[derive(Default)]
struct Sums {
    keys: usize,
    at_backbone: usize,
    moved: usize,
    share: Vec<f64>,
    kept: Vec<f64>,
    /// Sums and counts of the divergences (1-D keys have none).
    magnitude: Vec<(f64, usize)>,
    direction: Vec<(f64, usize)>,
}

impl MergeReport {
    /// Aggregates per-key figures (`N × FIGURES` values per key, as [`crate::widen::summary`]
    /// lays them out) over blocks and layer types of `arch`. `keys` are all the keys the merge
    /// changes; those missing from `figures` are counted as without figures.
    pub fn build(meta: ReportMeta, arch: Arch, keys: &[String], figures: &BTreeMap<String, Vec<f32>>) -> MergeReport {
        let n = meta.contributors.len();
        let stride = FIGURES as usize;
        let mut groups: BTreeMap<(String, String), Sums> = BTreeMap::new();
        let mut at_backbone = Vec::new();
        let mut without = 0;
        for key in keys {
            let Some(f) = figures.get(key).filter(|f| f.len() == n * stride) else {
                without += 1;
                continue;
            };
            let class = classify_key(key, arch);
            let block = class.as_ref().and_then(|c| c.block.clone()).unwrap_or_else(|| OTHER.into());
            let layer = class.and_then(|c| c.layer_type).map(|l| l.name().to_string()).unwrap_or_else(|| OTHER.into());
            let g = groups.entry((block, layer)).or_insert_with(|| Sums {
                share: vec![0.0; n],
                kept: vec![0.0; n],
                magnitude: vec![(0.0, 0); n],
                direction: vec![(0.0, 0); n],
                ..Default::default()
            });
            g.keys += 1;
            let kept: Vec<f64> = (0..n).map(|i| f[i * stride + SCALE] as f64).collect();
            let total: f64 = kept.iter().sum();
            if total == 0.0 {
                g.at_backbone += 1;
                at_backbone.push(key.clone());
            } else {
                g.moved += 1;
                for (share, k) in g.share.iter_mut().zip(&kept) {
                    *share += k / total;
                }
            }
            for i in 0..n {
                g.kept[i] += kept[i];
                for (slot, at) in [(&mut g.magnitude[i], MAGNITUDE), (&mut g.direction[i], DIRECTION)] {
                    let v = f[i * stride + at] as f64;
                    if v.is_finite() {
                        slot.0 += v;
                        slot.1 += 1;
                    }
                }
            }
        }
        let mut groups: Vec<GroupReport> = groups
            .into_iter()
            .map(|((block, layer), s)| {
                let mean = |(sum, count): (f64, usize)| (count > 0).then(|| sum / count as f64);
                GroupReport {
                    block,
                    layer,
                    keys: s.keys,
                    at_backbone: s.at_backbone,
                    share: s.share.iter().map(|v| if s.moved > 0 { v / s.moved as f64 } else { 0.0 }).collect(),
                    kept: s.kept.iter().map(|v| v / s.keys as f64).collect(),
                    magnitude: s.magnitude.into_iter().map(mean).collect(),
                    direction: s.direction.into_iter().map(mean).collect(),
                }
            })
            .collect();
        groups.sort_by(|a, b| (order(&a.block), order(&a.layer)).cmp(&(order(&b.block), order(&b.layer))));
        at_backbone.sort();
        MergeReport { meta, keys: keys.len(), without_figures: without, groups, at_backbone }
    }

    /// Blocks in the report's order.
    pub fn blocks(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for g in &self.groups {
            if !v.contains(&g.block.as_str()) {
                v.push(&g.block);
            }
        }
        v
    }

    /// Layer types in the report's order.
    pub fn layers(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.groups.iter().map(|g| g.layer.as_str()).collect();
        v.sort_by_key(|l| order(l));
        v.dedup();
        v
    }

    /// Per contributor over the whole merge: share (weighted by moved keys), and mean magnitude
    /// and direction divergences (weighted by keys).
    pub fn totals(&self) -> Vec<(f64, Option<f64>, Option<f64>)> {
        let n = self.meta.contributors.len();
        (0..n)
            .map(|i| {
                let (mut share, mut moved) = (0.0, 0usize);
                let (mut dm, mut dd, mut with) = (0.0, 0.0, 0usize);
                for g in &self.groups {
                    let m = g.keys - g.at_backbone;
                    share += g.share[i] * m as f64;
                    moved += m;
                    if let (Some(a), Some(b)) = (g.magnitude[i], g.direction[i]) {
                        dm += a * g.keys as f64;
                        dd += b * g.keys as f64;
                        with += g.keys;
                    }
                }
                let share = if moved > 0 { share / moved as f64 } else { 0.0 };
                let div = |x: f64| (with > 0).then(|| x / with as f64);
                (share, div(dm), div(dd))
            })
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serializes")
    }

    pub fn from_json(s: &str) -> Result<MergeReport, serde_json::Error> {
        serde_json::from_str(s)
    }

    /// The report as a plain-text table (the WIDEN Report node's STRING output).
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(s, "{}", m.title);
        let _ = writeln!(
            s,
            "{} keys merged, {} left at the backbone, {} without figures ({})",
            self.keys,
            self.at_backbone.len(),
            self.without_figures,
            m.arch
        );
        let _ = writeln!(s, "contributors:");
        let fmt = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        for (i, (c, (share, dm, dd))) in m.contributors.iter().zip(self.totals()).enumerate() {
            let _ = writeln!(s, "  #{} {c}: share {:.1}%, magnitude {}, direction {}", i + 1, share * 100.0, fmt(dm), fmt(dd));
        }
        let _ = write!(s, "{:<10} {:<13} {:>5} {:>5}", "block", "layer", "keys", "base");
        for i in 0..m.contributors.len() {
            let _ = write!(s, " {:>7} {:>8} {:>8}", format!("share#{}", i + 1), format!("mag#{}", i + 1), format!("dir#{}", i + 1));
        }
        s.push('\n');
        for g in &self.groups {
            let _ = write!(s, "{:<10} {:<13} {:>5} {:>5}", g.block, g.layer, g.keys, g.at_backbone);
            for i in 0..m.contributors.len() {
                let _ = write!(s, " {:>6.1}% {:>8} {:>8}", g.share[i] * 100.0, fmt(g.magnitude[i]), fmt(g.direction[i]));
            }
            s.push('\n');
        }
        if !self.at_backbone.is_empty() {
            let _ = writeln!(s, "left at the backbone:");
            for k in &self.at_backbone {
                let _ = writeln!(s, "  {k}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ReportMeta {
        ReportMeta { title: "test".into(), arch: "sdxl".into(), contributors: vec!["a".into(), "b".into()] }
    }

    /// Figures of one key: (kept scale, magnitude, direction) per contributor.
    fn fig(per: &[(f32, f32, f32)]) -> Vec<f32> {
        per.iter().flat_map(|&(s, m, d)| [s, m, d]).collect()
    }

    #[test]
    fn keys_are_grouped_by_block_and_layer_with_shares_and_backbone_keys() {
        let q = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight";
        let k = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_k.weight";
        let ff = "diffusion_model.input_blocks.4.1.transformer_blocks.0.ff.net.2.weight";
        let t = "diffusion_model.time_embed.0.bias";
        let unknown = "something.else";
        let keys: Vec<String> = [q, k, ff, t, unknown, "diffusion_model.out.2.weight"].iter().map(|s| s.to_string()).collect();
        let mut figures = BTreeMap::new();
        // q: a kept 3x what b kept; k: equal; ff: only b; time_embed (1-D): nothing kept.
        figures.insert(q.to_string(), fig(&[(0.75, 1.0, 0.1), (0.25, 3.0, 0.3)]));
        figures.insert(k.to_string(), fig(&[(0.5, 2.0, 0.2), (0.5, 1.0, 0.5)]));
        figures.insert(ff.to_string(), fig(&[(0.0, 0.0, 1.0), (0.8, 4.0, 0.4)]));
        figures.insert(t.to_string(), fig(&[(0.0, f32::NAN, f32::NAN), (0.0, f32::NAN, f32::NAN)]));
        figures.insert(unknown.to_string(), fig(&[(0.1, 1.0, 1.0), (0.3, 1.0, 1.0)]));
        let r = MergeReport::build(meta(), Arch::Sdxl, &keys, &figures);
        assert_eq!(r.keys, 6);
        assert_eq!(r.without_figures, 1, "out.2 has no figures");
        assert_eq!(r.at_backbone, vec![t.to_string()]);
        let g = |b: &str, l: &str| r.groups.iter().find(|g| g.block == b && g.layer == l).unwrap_or_else(|| panic!("{b}/{l}: {:?}", r.groups));
        let attn = g("IN04", "attention");
        assert_eq!((attn.keys, attn.at_backbone), (2, 0));
        assert!((attn.share[0] - 0.625).abs() < 1e-9 && (attn.share[1] - 0.375).abs() < 1e-9, "{attn:?}");
        assert!((attn.kept[0] - 0.625).abs() < 1e-7, "{attn:?}");
        assert!((attn.magnitude[1].unwrap() - 2.0).abs() < 1e-9 && (attn.direction[1].unwrap() - 0.4).abs() < 1e-7, "{attn:?}");
        let ffg = g("IN04", "feed_forward");
        assert_eq!(ffg.share, vec![0.0, 1.0]);
        let time = g("TIME_EMBED", OTHER);
        assert_eq!((time.keys, time.at_backbone), (1, 1));
        assert_eq!(time.magnitude, vec![None, None], "1-D keys have no divergences");
        assert_eq!(time.share, vec![0.0, 0.0]);
        let other = g(OTHER, OTHER);
        assert!((other.share[1] - 0.75).abs() < 1e-6);
        // Named blocks and layers first, `other` last.
        assert_eq!(r.blocks(), vec!["IN04", "TIME_EMBED", OTHER]);
        assert_eq!(r.layers(), vec!["attention", "feed_forward", OTHER]);
        // Totals weight each group by its moved keys.
        let totals = r.totals();
        let want_b = (0.375 * 2.0 + 1.0 + 0.75) / 4.0;
        assert!((totals[1].0 - want_b).abs() < 1e-6, "{totals:?}");
        // JSON round trip (what the metadata and the UI carry).
        assert_eq!(MergeReport::from_json(&r.to_json()).unwrap(), r);
        let text = r.to_text();
        assert!(text.contains("IN04") && text.contains("62.5%") && text.contains(t), "{text}");
    }
}
