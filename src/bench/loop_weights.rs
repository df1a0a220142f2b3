//! `bench loop --reference`: where the two sides' images differ, whether their merged weights do,
//! key by key. Both Exits save the last recipe's merge (`save_model`); each file names the keys
//! its merge changed in its metadata (`__ecaj_affected_keys__`, docs/widen.md "Saving merged
//! models"), and the keys of the two files differ only by a prefix. Beside each other, both are
//! also measured against the same recipe evaluated in float64 (testkit's oracle), which says
//! which side the differences come from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use comfyrs_nodes::lora::{LoraSet, NameIndex};
use comfyrs_nodes::models::{MappedFile, MappedTensor};
use comfyrs_nodes::pack::{NativeModel, RecipeDomain};
use comfyrs_nodes::widen::WidenConfig;
use comfyrs_testkit::oracle;
use tch::{Kind, Tensor};

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
        let mut saved = Saved::open_model(path)?;
        let list = saved
            .file
            .metadata()
            .and_then(|m| m.get("__ecaj_affected_keys__"))
            .ok_or_else(|| anyhow!("{}: no __ecaj_affected_keys__ (not a saved WIDEN merge)", path.display()))?;
        saved.affected = serde_json::from_str::<Vec<String>>(list)?.iter().map(|k| unprefixed(k).to_string()).collect();
        Ok(saved)
    }

    /// Any model file (the base checkpoint), with no merged keys.
    fn open_model(path: &Path) -> Result<Saved> {
        let file = MappedFile::open(path).with_context(|| format!("opening {}", path.display()))?;
        let names = file.tensors().keys().map(|k| (unprefixed(k).to_string(), k.clone())).collect();
        Ok(Saved { file, names, affected: Vec::new() })
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

/// The keys both saved merges changed, in `a`'s order; an error when there are none (nothing to
/// compare).
fn merged_by_both(a: &Saved, b: &Saved) -> Result<Vec<String>> {
    let theirs: std::collections::HashSet<&String> = b.affected.iter().collect();
    let keys: Vec<String> = a.affected.iter().filter(|k| theirs.contains(k)).cloned().collect();
    if keys.is_empty() {
        bail!("the two saved merges have no merged key in common");
    }
    Ok(keys)
}

/// blake3 of a saved merge's merged keys (each key's name, shape and stored bytes, in the order
/// its metadata lists them), 16 hex digits: two runs of one recipe whose images differ have the
/// same digest when the difference is not the merge's.
pub(super) fn merged_digest(path: &Path) -> Result<String> {
    let saved = Saved::open(path)?;
    let mut h = blake3::Hasher::new();
    for k in &saved.affected {
        let name = saved.names.get(k).ok_or_else(|| anyhow!("{k} is listed as merged but missing from {}", path.display()))?;
        let meta = saved.file.meta(name).ok_or_else(|| anyhow!("{name}: no such tensor in {}", path.display()))?;
        h.update(k.as_bytes());
        h.update(format!("{:?}", meta.shape).as_bytes());
        h.update(saved.file.bytes(name)?);
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// Compares the merged keys of two saved merges of the same recipe.
pub(super) fn compare(ours: &Path, theirs: &Path) -> Result<WeightDiff> {
    let (a, b) = (Saved::open(ours)?, Saved::open(theirs)?);
    let mut rel = Vec::new();
    let (mut identical, mut max_abs, mut worst) = (0, 0f64, (String::new(), 0f64));
    let (mut beyond, mut values) = (0i64, 0i64);
    for k in &merged_by_both(&a, &b)? {
        let (x, y) = (a.tensor(k)?, b.tensor(k)?);
        if x.size() != y.size() {
            bail!("{k}: shapes differ ({:?} and {:?})", x.size(), y.size());
        }
        let step = rounding_step(&y);
        let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
        let d = &x - &y;
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
    let n = rel.len();
    rel.sort_by(f64::total_cmp);
    Ok(WeightDiff { keys: n, identical, max_abs, median_rel: rel[n / 2], worst, beyond_one_step: beyond, values })
}

/// The two merges column by column, as WIDEN ranks them (everything but a weight's output dim is
/// a column; docs/widen.md): where the two sides ranked a column differently, that column's
/// scale differs, and with it a share of its whole change; where they ranked it the same, what
/// is left of the difference is the last digits, within the values' rounding.
pub(super) struct ColumnDiff {
    /// Columns of the keys both merges changed (weights of two dims or more) that either merge
    /// moved off the base.
    pub columns: usize,
    /// Columns where the two sides differ by more than two rounding steps of their values (root
    /// mean square over the column): their scales differ, or their rounding does not explain it.
    pub beyond_rounding: usize,
    /// Columns one side left at the base and the other moved.
    pub one_side_only: usize,
    /// The largest share of a column's change the two sides disagree on,
    /// `‖ours − theirs‖ / ‖theirs − base‖`, over the columns beyond rounding, with where it is.
    pub worst: Option<(String, i64, f64)>,
}

impl std::fmt::Display for ColumnDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column by column, {} columns moved by either merge: {} differ beyond their rounding", self.columns, self.beyond_rounding)?;
        if let Some((key, col, share)) = &self.worst {
            write!(f, " (the most: {:.2}% of the change of {key}, column {col})", share * 100.0)?;
        }
        write!(f, ", {} moved by one side only", self.one_side_only)
    }
}

/// [`ColumnDiff`] of two saved merges of the same recipe on `base` (a model file).
pub(super) fn columns(ours: &Path, theirs: &Path, base: &Path) -> Result<ColumnDiff> {
    let (a, b, o) = (Saved::open(ours)?, Saved::open(theirs)?, Saved::open_model(base)?);
    let keys = merged_by_both(&a, &b)?;
    let mut d = ColumnDiff { columns: 0, beyond_rounding: 0, one_side_only: 0, worst: None };
    for k in &keys {
        let (x, y, z) = (a.tensor(k)?, b.tensor(k)?, o.tensor(k)?);
        if y.dim() < 2 {
            continue;
        }
        if x.size() != y.size() || z.size() != y.size() {
            bail!("{k}: shapes differ ({:?}, {:?} and the base's {:?})", x.size(), y.size(), z.size());
        }
        let out = y.size()[0];
        let step = rounding_step(&y);
        // [out, K] → per column (dim 0 reduced): the norms over the output rows.
        let col = |t: &Tensor| t.reshape([out, -1]).square().sum_dim_intlist(0, false, Kind::Double).sqrt();
        let (x, y, z) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double), z.to_kind(Kind::Double));
        let (apart, ours_moved, theirs_moved, floor) = (col(&(&x - &y)), col(&(&x - &z)), col(&(&y - &z)), col(&step) * 2.0);
        let moved = ours_moved.gt(0.0).logical_or(&theirs_moved.gt(0.0));
        d.columns += moved.sum(Kind::Int64).int64_value(&[]) as usize;
        d.one_side_only += ours_moved.gt(0.0).logical_xor(&theirs_moved.gt(0.0)).sum(Kind::Int64).int64_value(&[]) as usize;
        let beyond = apart.gt_tensor(&floor).logical_and(&moved);
        let n = beyond.sum(Kind::Int64).int64_value(&[]);
        if n == 0 {
            continue;
        }
        d.beyond_rounding += n as usize;
        // (A column only one side moved has no share: it is counted apart.)
        let both = beyond.logical_and(&ours_moved.gt(0.0)).logical_and(&theirs_moved.gt(0.0));
        let share = (&apart / theirs_moved.clamp_min(f64::MIN_POSITIVE)) * both.to_kind(Kind::Double);
        let (top, at) = share.max_dim(0, false);
        let top = top.double_value(&[]);
        if top > 0.0 && d.worst.as_ref().is_none_or(|w| top > w.2) {
            d.worst = Some((k.clone(), at.int64_value(&[]), top));
        }
    }
    Ok(d)
}

/// One rounding step of each value of `t` in its own dtype: 2^(exponent − mantissa bits), the
/// smallest normal exponent at least; float64.
fn rounding_step(t: &Tensor) -> Tensor {
    // (mantissa bits, smallest normal exponent)
    let (mantissa, min_exp) = match t.kind() {
        Kind::Half => (10.0, -14.0),
        Kind::BFloat16 => (7.0, -126.0),
        Kind::Float => (23.0, -126.0),
        _ => (52.0, -1022.0),
    };
    t.to_kind(Kind::Double).abs().clamp_min(f64::MIN_POSITIVE).log2().floor().clamp_min(min_exp).g_sub_scalar(mantissa).exp2()
}

/// The bench loop's recipe, for a float64 evaluation: the base, LoRAs 0 and 1 composed and merged
/// onto it at t 1, then LoRA 2 merged onto that at `t` (the workflow of `bench loop`).
#[derive(Clone, Debug)]
pub(super) struct LoopRecipe {
    /// A checkpoint or a diffusion model file.
    pub base: PathBuf,
    pub loras: [(PathBuf, f64); 3],
    pub t: f64,
}

/// The recipe's float64 result on one key at a time.
struct Oracle {
    base: Arc<NativeModel>,
    /// LoRAs 0 and 1, and LoRA 2.
    branches: [LoraSet; 2],
    last: LoraSet,
    t: f64,
}

impl Oracle {
    fn open(r: &LoopRecipe) -> Result<Oracle> {
        let base = NativeModel::open(&r.base, "oracle", RecipeDomain::Diffusion).map_err(|e| anyhow!("{}: {e}", r.base.display()))?;
        let index = NameIndex::from_shapes(base.arch(), &base.file().shapes());
        let set = |(path, strength): &(PathBuf, f64)| oracle::lora_set(path, base.arch(), &index, *strength).with_context(|| format!("reading {}", path.display()));
        let [l0, l1, l2] = &r.loras;
        Ok(Oracle { branches: [set(l0)?, set(l1)?], last: set(l2)?, t: r.t, base })
    }

    /// The base's value of `key` and the recipe's, both float64 (on the CPU).
    fn key(&self, key: &str) -> Result<(Tensor, Tensor)> {
        let base = self.base.file().tensor(key).map_err(|e| anyhow!("{key}: {e}"))?.to_kind(Kind::Double);
        let [b0, b1] = &self.branches;
        let exact = oracle::chain_key(&WidenConfig::default(), key, &base, &[b0, b1], &self.last, self.t)?;
        Ok((base, exact))
    }
}

/// Each side's distance to the float64 result, relative to how far the merge moved the key:
/// `‖side − exact‖ / ‖exact − base‖`, over the keys both sides merged and the merge moved.
pub(super) struct ExactDiff {
    pub keys: usize,
    /// (median, largest) for comfyrs, the reference, and the float64 result rounded to the
    /// file's dtype (how close a side can be).
    pub ours: (f64, f64),
    pub theirs: (f64, f64),
    pub rounding: (f64, f64),
    /// Keys where comfyrs is closer than the reference.
    pub ours_closer: usize,
}

impl std::fmt::Display for ExactDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "against the recipe in float64 (distance over the merge's own change, median / largest, {} keys): comfyrs {:.2e} / {:.2e}, \
             reference {:.2e} / {:.2e}, the float64 result rounded to the file's dtype {:.2e} / {:.2e}; comfyrs closer on {} of {} keys",
            self.keys, self.ours.0, self.ours.1, self.theirs.0, self.theirs.1, self.rounding.0, self.rounding.1, self.ours_closer, self.keys
        )
    }
}

/// [`ExactDiff`] of two saved merges of `recipe`, the keys spread over the cores (each thread
/// opens the files and LoRAs for itself).
pub(super) fn against_float64(ours: &Path, theirs: &Path, recipe: &LoopRecipe) -> Result<ExactDiff> {
    let (a, b) = (Saved::open(ours)?, Saved::open(theirs)?);
    let keys = merged_by_both(&a, &b)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(keys.len());
    let per = keys.len().div_ceil(threads);
    let rows: Vec<(f64, f64, f64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .chunks(per)
            .map(|part| {
                scope.spawn(move || -> Result<Vec<(f64, f64, f64)>> {
                    let (a, b, o) = (Saved::open(ours)?, Saved::open(theirs)?, Oracle::open(recipe)?);
                    let mut out = Vec::new();
                    for k in part {
                        let (base, exact) = o.key(k)?;
                        let moved = (&exact - &base).norm().double_value(&[]);
                        if moved == 0.0 {
                            continue;
                        }
                        let dist = |t: &Tensor| (t.to_kind(Kind::Double) - &exact).norm().double_value(&[]) / moved;
                        let (x, y) = (a.tensor(k)?, b.tensor(k)?);
                        out.push((dist(&x), dist(&y), dist(&exact.to_kind(y.kind()))));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow!("a comparison thread panicked"))?).collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let stat = |f: &dyn Fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), v.last().copied().unwrap_or(f64::NAN))
    };
    Ok(ExactDiff {
        keys: rows.len(),
        ours: stat(&|r| r.0),
        theirs: stat(&|r| r.1),
        rounding: stat(&|r| r.2),
        ours_closer: rows.iter().filter(|r| r.0 < r.1).count(),
    })
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

    /// The bench loop's recipe merged natively on tiny SDXL, saved as comfyrs's side, and again
    /// with one key moved off as the reference's: the float64 comparison finds comfyrs at the
    /// rounding floor and the moved key as the one where the two differ.
    #[test]
    fn both_sides_are_measured_against_the_recipe_in_float64() {
        use comfyrs_nodes::arch::{layout::LayoutSize, Arch};
        use comfyrs_nodes::models::writer::{encode_f32, write_all};
        use comfyrs_nodes::models::{FileDtype, ModelFolders};
        use comfyrs_nodes::pack::exit::evaluate;
        use comfyrs_nodes::pack::nodes::{compose_recipe, lora_recipe, merge_recipe};
        use comfyrs_nodes::pack::{MergeEngine, MergeSettings, RecipeKind, RecipeNode};
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("checkpoints").join(super::super::merge::ensure_sdxl_checkpoint(dir.path(), LayoutSize::Tiny).unwrap());
        let loras = super::super::merge::ensure_loras(dir.path(), Arch::Sdxl, LayoutSize::Tiny, 3).unwrap();
        let (strengths, t) = ([0.8, 0.5, 0.9], 0.7);
        let model = NativeModel::open(&ckpt, "base", RecipeDomain::Diffusion).unwrap();
        let base = RecipeNode::new(RecipeKind::Base { arch: model.arch(), domain: RecipeDomain::Diffusion, model: model.clone() });
        let l = |i: usize| lora_recipe(None, &loras[i], strengths[i], None).unwrap();
        let compose = compose_recipe(&l(1), Some(&compose_recipe(&l(0), None).unwrap())).unwrap();
        let m1 = merge_recipe(&base, &compose, 1.0, None, None).unwrap();
        let root = merge_recipe(&m1, &l(2), t, None, None).unwrap();
        let engine = MergeEngine::standalone(MergeSettings::on(tch::Device::Cpu)).unwrap();
        let merged = evaluate(&engine, &ModelFolders::new(dir.path()), &root, RecipeDomain::Diffusion, false).unwrap().model;
        let save = |path: &Path, moved: Option<&str>| {
            let tensors: Vec<_> = merged
                .overrides()
                .iter()
                .map(|(k, t)| {
                    let t = if Some(k.as_str()) == moved { t.to_kind(Kind::Float) * 1.01 } else { t.to_kind(Kind::Float) };
                    let v = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
                    (format!("model.{k}"), FileDtype::F16, t.size().iter().map(|&d| d as usize).collect(), encode_f32(&v, FileDtype::F16).unwrap())
                })
                .collect();
            let keys: Vec<&String> = tensors.iter().map(|t| &t.0).collect();
            let md = [("__ecaj_affected_keys__".to_string(), serde_json::to_string(&keys).unwrap())].into();
            write_all(path, &tensors, Some(&md)).unwrap();
        };
        let moved = merged.overrides().keys().next().unwrap().clone();
        let (ours, theirs) = (dir.path().join("ours.safetensors"), dir.path().join("theirs.safetensors"));
        save(&ours, None);
        save(&theirs, Some(&moved));
        let recipe = LoopRecipe {
            base: ckpt.clone(),
            loras: std::array::from_fn(|i| (dir.path().join("loras").join(&loras[i]), strengths[i])),
            t,
        };
        let d = against_float64(&ours, &theirs, &recipe).unwrap();
        eprintln!("{d}");
        assert!(d.keys > 100 && d.keys <= merged.overrides().len(), "{d}");
        // comfyrs merges in fp32 and rounds to fp16: about as close as fp16 can be.
        assert!(d.ours.0 <= 1.5 * d.rounding.0 + 1e-4 && d.ours.1 <= 1.5 * d.rounding.1 + 1e-3, "{d}");
        assert_eq!(d.ours_closer, 1, "only the moved key differs: {d}");
        assert!(d.theirs.1 > 10.0 * d.ours.1, "{d}");
        assert!(d.to_string().contains("comfyrs closer on 1 of"), "{d}");
    }

    /// A [3, 4] weight: one column moved the same by both sides, one a rounding step apart, one
    /// scaled by half on one side (as a column ranked differently would be), one moved by one side
    /// only.
    #[test]
    fn columns_ranked_differently_stand_out_from_rounding() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(format!("{n}.safetensors"));
        let step = 1.0 / 1024.0;
        let at = |cols: [f32; 4]| (0..3).flat_map(|_| cols).collect::<Vec<f32>>();
        let save2d = |name: &str, prefix: &str, v: Vec<f32>| {
            use comfyrs_nodes::models::writer::{encode_f32, write_all};
            use comfyrs_nodes::models::FileDtype;
            let key = format!("{prefix}diffusion_model.w");
            let md = [("__ecaj_affected_keys__".to_string(), serde_json::to_string(&[&key]).unwrap())].into();
            write_all(path(name), &[(key.clone(), FileDtype::F16, vec![3, 4], encode_f32(&v, FileDtype::F16).unwrap())], Some(&md)).unwrap();
        };
        save2d("base", "model.", at([1.0; 4]));
        save2d("ours", "model.", at([1.125, 1.125, 1.125, 1.0]));
        let mut theirs = at([1.125, 1.125, 1.0625, 1.125]);
        theirs[1] += step;
        save2d("theirs", "", theirs);
        let d = columns(&path("ours"), &path("theirs"), &path("base")).unwrap();
        assert_eq!((d.columns, d.beyond_rounding, d.one_side_only), (4, 2, 1), "{d}");
        let (key, col, share) = d.worst.clone().unwrap();
        assert_eq!((key.as_str(), col), ("diffusion_model.w", 2), "{d}");
        assert!((share - 1.0).abs() < 1e-9, "{d}");
        assert!(d.to_string().contains("2 differ beyond their rounding (the most: 100.00% of the change of diffusion_model.w, column 2)"), "{d}");
        // The same merge on both sides: nothing beyond rounding.
        let same = columns(&path("ours"), &path("ours"), &path("base")).unwrap();
        assert_eq!((same.columns, same.beyond_rounding, same.one_side_only, same.worst.is_none()), (3, 0, 0, true), "{same}");
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
