//! `bench loop --reference`: where the two sides' images differ, whether their merged weights do,
//! key by key. Both Exits save the last recipe's merge (`save_model`); each file names the keys
//! its merge changed in its metadata (`__ecaj_affected_keys__`, docs/widen.md "Saving merged
//! models"), and the keys of the two files differ only by a prefix.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use comfyrs_nodes::models::{MappedFile, MappedTensor};
use tch::Kind;

/// How far apart the merged weights of the two sides are.
pub(super) struct WeightDiff {
    /// Keys both merges changed.
    pub keys: usize,
    /// Keys with the same bits on both sides.
    pub identical: usize,
    /// The largest |ours − theirs| over every value.
    pub max_abs: f64,
    /// ‖ours − theirs‖ / ‖theirs‖, median over the keys, and the worst key with its value.
    pub median_rel: f64,
    pub worst: (String, f64),
    /// Values, of all merged keys, that differ by more than one rounding step of their dtype
    /// (where they differ by at most one, the two merges agree up to the last rounding).
    pub beyond_one_step: i64,
    pub values: i64,
}

impl std::fmt::Display for WeightDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} merged keys, {} of them bit for bit the same; largest difference {:.3e}, relative difference median {:.3e}, \
             largest {:.3e} ({}); {} of {} values more than one rounding step apart",
            self.keys, self.identical, self.max_abs, self.median_rel, self.worst.1, self.worst.0, self.beyond_one_step, self.values
        )
    }
}

/// A saved merge (memory-mapped), its tensors' names by their unprefixed form, and the keys its
/// merge changed (unprefixed: ComfyUI's `diffusion_model.…` names).
struct Saved {
    file: Arc<MappedFile>,
    names: HashMap<String, String>,
    affected: Vec<String>,
}

impl Saved {
    fn open(path: &Path) -> Result<Saved> {
        let file = MappedFile::open(path).with_context(|| format!("opening {}", path.display()))?;
        let list = file
            .metadata()
            .and_then(|m| m.get("__ecaj_affected_keys__"))
            .ok_or_else(|| anyhow!("{}: no __ecaj_affected_keys__ (not a saved WIDEN merge)", path.display()))?;
        let affected = serde_json::from_str::<Vec<String>>(list)?.iter().map(|k| unprefixed(k).to_string()).collect();
        let names = file.tensors().keys().map(|k| (unprefixed(k).to_string(), k.clone())).collect();
        Ok(Saved { file, names, affected })
    }

    fn tensor(&self, key: &str) -> Result<MappedTensor> {
        let name = self.names.get(key).ok_or_else(|| anyhow!("{key} is listed as merged but missing from a file"))?;
        Ok(self.file.tensor(name)?)
    }
}

/// A key without the prefix a whole-model file puts before the diffusion model's keys.
fn unprefixed(k: &str) -> &str {
    k.find("diffusion_model.").map_or(k, |i| &k[i..])
}

/// Compares the merged keys of two saved merges of the same recipe.
pub(super) fn compare(ours: &Path, theirs: &Path) -> Result<WeightDiff> {
    let (a, b) = (Saved::open(ours)?, Saved::open(theirs)?);
    let theirs_keys: std::collections::HashSet<&String> = b.affected.iter().collect();
    let mut rel = Vec::new();
    let (mut identical, mut max_abs, mut worst) = (0, 0f64, (String::new(), 0f64));
    let (mut beyond, mut values) = (0i64, 0i64);
    for k in a.affected.iter().filter(|k| theirs_keys.contains(k)) {
        let (x, y) = (a.tensor(k)?, b.tensor(k)?);
        if x.size() != y.size() {
            bail!("{k}: shapes differ ({:?} and {:?})", x.size(), y.size());
        }
        // (mantissa bits, smallest normal exponent)
        let (mantissa, min_exp) = match y.kind() {
            Kind::Half => (10.0, -14.0),
            Kind::BFloat16 => (7.0, -126.0),
            Kind::Float => (23.0, -126.0),
            _ => (52.0, -1022.0),
        };
        let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
        let d = &x - &y;
        // One step at |y|: 2^(exponent − mantissa bits), the smallest normal exponent at least.
        let step = y.abs().clamp_min(f64::MIN_POSITIVE).log2().floor().clamp_min(min_exp).g_sub_scalar(mantissa).exp2();
        beyond += d.abs().gt_tensor(&(step * 1.0001)).sum(Kind::Int64).int64_value(&[]);
        values += y.numel() as i64;
        let abs = d.abs().max().double_value(&[]);
        if abs == 0.0 {
            identical += 1;
        }
        let r = d.norm().double_value(&[]) / y.norm().double_value(&[]).max(f64::MIN_POSITIVE);
        if r > worst.1 {
            worst = (k.clone(), r);
        }
        max_abs = max_abs.max(abs);
        rel.push(r);
    }
    if rel.is_empty() {
        bail!("the two saved merges have no merged key in common");
    }
    let n = rel.len();
    rel.sort_by(f64::total_cmp);
    Ok(WeightDiff { keys: n, identical, max_abs, median_rel: rel[n / 2], worst, beyond_one_step: beyond, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A saved merge of fp16 keys, all of them listed as merged.
    fn save(path: &Path, prefix: &str, values: &[(&str, Vec<f32>)]) {
        use comfyrs_nodes::models::writer::{encode_f32, write_all};
        use comfyrs_nodes::models::FileDtype;
        let tensors: Vec<_> = values
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), FileDtype::F16, vec![v.len()], encode_f32(v, FileDtype::F16).unwrap()))
            .collect();
        let keys: Vec<&String> = tensors.iter().map(|t| &t.0).collect();
        let md = [("__ecaj_affected_keys__".to_string(), serde_json::to_string(&keys).unwrap())].into();
        write_all(path, &tensors, Some(&md)).unwrap();
    }

    #[test]
    fn merged_keys_compare_across_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        save(&ours, "model.", &[("diffusion_model.x", vec![1.0, 2.0]), ("diffusion_model.y", vec![1.0, 1.0])]);
        save(&theirs, "", &[("diffusion_model.x", vec![1.0, 2.0]), ("diffusion_model.y", vec![1.0, 1.5])]);
        let (near, step) = (dir.path().join("c.safetensors"), 1.0 / 1024.0);
        save(&near, "", &[("diffusion_model.x", vec![1.0 + step, 2.0]), ("diffusion_model.y", vec![1.0, 1.0])]);
        let d = compare(&ours, &near).unwrap();
        assert_eq!((d.identical, d.beyond_one_step, d.values), (1, 0, 4), "one fp16 step apart: {d}");
        let d = compare(&ours, &theirs).unwrap();
        assert_eq!((d.keys, d.identical), (2, 1));
        assert!((d.max_abs - 0.5).abs() < 1e-9, "{}", d.max_abs);
        assert_eq!(d.worst.0, "diffusion_model.y");
        assert_eq!((d.beyond_one_step, d.values), (1, 4));
        assert!(d.to_string().contains("2 merged keys, 1 of them bit for bit the same"), "{d}");
    }
}
