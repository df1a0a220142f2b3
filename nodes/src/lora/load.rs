//! Loading one LoRA file into delta specs, and accumulating files into sets.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use tch::{Kind, Tensor};

use super::names::{split_factor, Component, Factor, Lookup, NameIndex, Target};
use super::spec::{AdapterKind, DeltaForm, DeltaSpec, KronFactor, RowRange};
use crate::arch::Arch;
use crate::models::checkpoint::check_safetensors_ext;
use crate::models::{FileIdentity, FormatError, MappedFile, MappedTensor, Result};

/// Per-file accounting: nothing is dropped silently.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub file: PathBuf,
    pub arch: String,
    /// Tensor keys in the file.
    pub tensors: usize,
    /// Adapter modules found (keys grouped by module name).
    pub modules: usize,
    /// Modules that produced a delta spec.
    pub matched: usize,
    /// Matched modules per adapter kind.
    pub by_kind: BTreeMap<String, usize>,
    /// Matched modules with a DoRA magnitude.
    pub dora: usize,
    /// Modules whose name maps to no weight of the architecture / base model.
    pub unmatched: Vec<String>,
    /// Modules for another component (text-encoder modules in a diffusion load and vice versa).
    pub other_domain: Vec<String>,
    /// Modules that map but cannot be applied, with the reason (unsupported adapter parts,
    /// incomplete factor sets, shapes that do not fit the target, duplicates).
    pub unsupported: Vec<(String, String)>,
    /// Tensor keys that are not adapter factors at all.
    pub unknown_keys: Vec<String>,
}

impl LoadReport {
    /// Modules not applied (unmatched + other domain + unsupported).
    pub fn ignored(&self) -> usize {
        self.unmatched.len() + self.other_domain.len() + self.unsupported.len()
    }

    /// One line for logs and run summaries.
    pub fn summary(&self) -> String {
        let kinds: Vec<String> = self.by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let mut s = format!(
            "{}: {} of {} modules applied for {}",
            self.file.display(),
            self.matched,
            self.modules,
            self.arch
        );
        if !kinds.is_empty() {
            s.push_str(&format!(" ({})", kinds.join(", ")));
        }
        if self.dora > 0 {
            s.push_str(&format!(", {} with DoRA", self.dora));
        }
        let mut extra = Vec::new();
        if !self.unmatched.is_empty() {
            extra.push(format!("{} unmatched (e.g. {})", self.unmatched.len(), self.unmatched[0]));
        }
        if !self.other_domain.is_empty() {
            extra.push(format!("{} for another component (e.g. {})", self.other_domain.len(), self.other_domain[0]));
        }
        if !self.unsupported.is_empty() {
            extra.push(format!(
                "{} not applicable (e.g. {}: {})",
                self.unsupported.len(),
                self.unsupported[0].0,
                self.unsupported[0].1
            ));
        }
        if !self.unknown_keys.is_empty() {
            extra.push(format!("{} unknown keys (e.g. {})", self.unknown_keys.len(), self.unknown_keys[0]));
        }
        if !extra.is_empty() {
            s.push_str("; ignored: ");
            s.push_str(&extra.join(", "));
        }
        s
    }
}

/// Options of [`LoraFile::load_with`].
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Name index of the base model ([`NameIndex::from_shapes`]); targets are then validated
    /// against its shapes and fused offsets come from the fused weight's shape. `None`: the
    /// architecture's reference index (names of the full-size layouts, no shape checks).
    pub index: Option<&'a NameIndex>,
    /// Fail when nothing in the file applies (default true).
    pub require_match: bool,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions { index: None, require_match: true }
    }
}

/// One parsed LoRA file: delta specs per base key (scale = alpha/rank, strength 1).
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub path: PathBuf,
    pub identity: FileIdentity,
    pub arch: Arch,
    /// Base key → specs, in file order. Every factor is a view of the mapped file where the
    /// kind allows it.
    pub deltas: DeltaMap,
    pub report: LoadReport,
    file: Arc<MappedFile>,
}

#[derive(Default)]
struct Group {
    factors: HashMap<Factor, String>,
    unsupported: Vec<&'static str>,
}

impl LoraFile {
    /// Load with the architecture's reference index.
    pub fn load(path: impl AsRef<Path>, arch: Arch) -> Result<LoraFile> {
        Self::load_with(path, arch, &LoadOptions::default())
    }

    pub fn load_with(path: impl AsRef<Path>, arch: Arch, opts: &LoadOptions) -> Result<LoraFile> {
        let path = path.as_ref();
        check_safetensors_ext(path)?;
        let file = MappedFile::open(path)?;
        let index = opts.index.unwrap_or_else(|| NameIndex::reference(arch));
        if index.arch() != arch {
            return Err(FormatError::Other(format!(
                "name index is for '{}', not '{arch}'",
                index.arch()
            )));
        }
        let mut report = LoadReport {
            file: path.to_path_buf(),
            arch: arch.tag().to_string(),
            tensors: file.len(),
            ..Default::default()
        };
        let mut groups: IndexMap<String, Group> = IndexMap::new();
        for key in file.keys() {
            match split_factor(key) {
                Some((module, suffix, factor)) => {
                    let g = groups.entry(module.to_string()).or_default();
                    if factor == Factor::Unsupported {
                        g.unsupported.push(suffix);
                    } else {
                        g.factors.insert(factor, key.to_string());
                    }
                }
                None => report.unknown_keys.push(key.to_string()),
            }
        }
        report.modules = groups.len();
        let mut deltas: IndexMap<String, Vec<DeltaSpec>> = IndexMap::new();
        let mut seen: HashMap<(String, Option<Component>), (String, AdapterKind)> = HashMap::new();
        for (module, g) in &groups {
            let target = match index.lookup(module) {
                Lookup::Found(t) => t,
                Lookup::OtherDomain => {
                    report.other_domain.push(module.clone());
                    continue;
                }
                Lookup::NotFound => {
                    report.unmatched.push(module.clone());
                    continue;
                }
            };
            if !g.unsupported.is_empty() && g.factors.keys().all(|f| matches!(f, Factor::Alpha)) {
                report
                    .unsupported
                    .push((module.clone(), format!("unsupported adapter part(s): {}", g.unsupported.join(", "))));
                continue;
            }
            let spec = match build_spec(&file, module, g, &target, index) {
                Ok(s) => s,
                Err(reason) => {
                    report.unsupported.push((module.clone(), reason));
                    continue;
                }
            };
            if !g.unsupported.is_empty() {
                report.unsupported.push((
                    module.clone(),
                    format!("ignored unsupported part(s) {} (the {} factors apply)", g.unsupported.join(", "), spec.kind.tag()),
                ));
            }
            let slot = (target.key.clone(), target.comp);
            if let Some((prev, prev_kind)) = seen.insert(slot, (module.clone(), spec.kind)) {
                // The same target written twice (two namings of one module): the later wins.
                let list = deltas.get_mut(&target.key).expect("seen target has specs");
                list.retain(|s| s.module != prev);
                report.unsupported.push((prev.clone(), format!("duplicate of module '{module}' (the later one applies)")));
                report.matched -= 1;
                if let Some(n) = report.by_kind.get_mut(prev_kind.tag()) {
                    *n -= 1;
                    if *n == 0 {
                        report.by_kind.remove(prev_kind.tag());
                    }
                }
            }
            report.matched += 1;
            *report.by_kind.entry(spec.kind.tag().to_string()).or_default() += 1;
            deltas.entry(target.key.clone()).or_default().push(spec);
        }
        // Recount DoRA after duplicate removal.
        report.dora = deltas.values().flatten().filter(|s| s.dora_scale.is_some()).count();
        if deltas.is_empty() && opts.require_match {
            return Err(no_match_error(path, arch, &report, &groups));
        }
        // Mostly unmatched: if another architecture's names fit better, the LoRA is for that
        // architecture (a diffusers Flux LoRA shares `transformer_blocks.N.attn.to_q` with
        // Qwen-Image, but not the rest).
        if opts.require_match && report.unmatched.len() > report.matched {
            let in_domain: Vec<&str> = groups
                .keys()
                .map(|s| s.as_str())
                .filter(|m| !report.other_domain.iter().any(|o| o == m))
                .collect();
            if let Some((guess, n)) = best_arch(&in_domain, arch) {
                if n > report.matched {
                    return Err(FormatError::LoraWrongArch {
                        path: path.to_path_buf(),
                        arch: arch.tag().to_string(),
                        guess: guess.tag().to_string(),
                        matched: report.matched,
                        guess_matched: n,
                        modules: in_domain.len(),
                    });
                }
            }
        }
        Ok(LoraFile { path: path.to_path_buf(), identity: file.identity().clone(), arch, deltas: DeltaMap(deltas), report, file })
    }

    pub fn mapped_file(&self) -> &Arc<MappedFile> {
        &self.file
    }
}

fn no_match_error(path: &Path, arch: Arch, report: &LoadReport, groups: &IndexMap<String, Group>) -> FormatError {
    let mut detail = format!("{} tensors, {} adapter modules", report.tensors, report.modules);
    if report.modules == 0 {
        detail.push_str(" (no LoRA / LoCon / LoKr / LoHa factor keys found)");
    } else {
        let mut parts = Vec::new();
        if !report.unmatched.is_empty() {
            parts.push(format!("{} name no {arch} weight (e.g. '{}')", report.unmatched.len(), report.unmatched[0]));
        }
        if !report.other_domain.is_empty() {
            let what = if arch == Arch::SdxlClip { "the diffusion model" } else { "a text encoder" };
            parts.push(format!("{} are for {what} (e.g. '{}')", report.other_domain.len(), report.other_domain[0]));
        }
        if !report.unsupported.is_empty() {
            parts.push(format!(
                "{} cannot be applied (e.g. '{}': {})",
                report.unsupported.len(),
                report.unsupported[0].0,
                report.unsupported[0].1
            ));
        }
        detail.push_str(": ");
        detail.push_str(&parts.join("; "));
        let modules: Vec<&str> = groups.keys().map(|s| s.as_str()).collect();
        if let Some(guess) = guess_arch(&modules, arch) {
            detail.push_str(&format!(". It looks like a '{guess}' LoRA"));
        }
    }
    FormatError::LoraNoMatch { path: path.to_path_buf(), arch: arch.tag().to_string(), detail }
}

/// The architecture whose reference names match most of `modules` (other than `not`).
pub fn guess_arch(modules: &[&str], not: Arch) -> Option<Arch> {
    best_arch(modules, not).map(|(a, _)| a)
}

fn best_arch(modules: &[&str], not: Arch) -> Option<(Arch, usize)> {
    let mut best = None;
    let mut best_n = 0;
    for a in Arch::ALL {
        if a == not {
            continue;
        }
        let idx = NameIndex::reference(a);
        let n = modules.iter().filter(|m| matches!(idx.lookup(m), Lookup::Found(_))).count();
        if n > best_n {
            best_n = n;
            best = Some((a, n));
        }
    }
    best
}

/// Guess a LoRA file's architecture from its module names (reference layouts).
pub fn detect_lora_arch(path: impl AsRef<Path>) -> Result<Option<Arch>> {
    let file = MappedFile::open(path.as_ref())?;
    let mut modules: Vec<&str> = file.keys().filter_map(|k| split_factor(k).map(|(m, _, _)| m)).collect();
    modules.dedup();
    let mut best = None;
    let mut best_n = 0;
    for a in Arch::ALL {
        let idx = NameIndex::reference(a);
        let n = modules.iter().filter(|m| matches!(idx.lookup(m), Lookup::Found(_))).count();
        if n > best_n {
            best_n = n;
            best = Some(a);
        }
    }
    Ok(best)
}

fn alpha_of(file: &Arc<MappedFile>, g: &Group) -> Option<f64> {
    let key = g.factors.get(&Factor::Alpha)?;
    let m = file.meta(key)?;
    if m.numel() != 1 {
        return None;
    }
    file.to_f64_vec(key).ok()?.first().copied()
}

fn shape_of(t: &Tensor) -> Vec<i64> {
    t.size()
}

fn build_spec(
    file: &Arc<MappedFile>,
    module: &str,
    g: &Group,
    target: &Target,
    index: &NameIndex,
) -> std::result::Result<DeltaSpec, String> {
    let get = |f: Factor| -> std::result::Result<Option<MappedTensor>, String> {
        match g.factors.get(&f) {
            None => Ok(None),
            Some(k) => file.tensor(k).map(Some).map_err(|e| e.to_string()),
        }
    };
    let has = |fs: &[Factor]| fs.iter().any(|f| g.factors.contains_key(f));
    let alpha = alpha_of(file, g);
    let dora = get(Factor::DoraScale)?;

    let (kind, form, scale, inferred): (AdapterKind, DeltaForm, f64, Vec<i64>) = if has(&[Factor::Up, Factor::Down]) {
        let (Some(up), Some(down)) = (get(Factor::Up)?, get(Factor::Down)?) else {
            return Err("incomplete LoRA pair (only one of up/down)".into());
        };
        let (us, ds) = (shape_of(&up), shape_of(&down));
        if !(us.len() == 2 || us.len() == 4) || !(ds.len() == 2 || ds.len() == 4) {
            return Err(format!("unsupported factor ranks: up {us:?}, down {ds:?}"));
        }
        if us.len() == 4 && (us[2] != 1 || us[3] != 1) {
            return Err(format!("up factor {us:?} has a spatial kernel"));
        }
        let r = ds[0];
        let out = us[0];
        let up2 = up.try_map_view(|t| t.f_reshape([out, -1])).map_err(|e| e.to_string())?;
        match get(Factor::Mid)? {
            Some(mid) => {
                let ms = shape_of(&mid);
                if ms.len() != 4 || ms[1] != r || ms[0] != up2.size()[1] {
                    return Err(format!("Tucker core {ms:?} does not fit up {us:?} / down {ds:?}"));
                }
                if ds.len() == 4 && (ds[2] != 1 || ds[3] != 1) {
                    return Err(format!("Tucker down factor {ds:?} must be 1×1"));
                }
                let inp = ds[1];
                // down'[a, c, y, x] = Σ_b mid[a, b, y, x] · down[b, c]
                let folded = (|| -> std::result::Result<Tensor, tch::TchError> {
                    let m = mid.f_to_kind(Kind::Float)?;
                    let d = down.f_reshape([r, inp])?.f_to_kind(Kind::Float)?;
                    Tensor::f_einsum("abyx,bc->acyx", &[m, d], None::<&[i64]>)?.f_reshape([ms[0], -1])
                })()
                .map_err(|e| e.to_string())?;
                let scale = alpha.map_or(1.0, |a| a / r as f64);
                (
                    AdapterKind::Tucker,
                    DeltaForm::LowRank { up: up2, down: MappedTensor::owned(folded) },
                    scale,
                    vec![out, inp, ms[2], ms[3]],
                )
            }
            None => {
                if up2.size()[1] != r {
                    return Err(format!("rank mismatch: up {us:?}, down {ds:?}"));
                }
                let down2 = down.try_map_view(|t| t.f_reshape([r, -1])).map_err(|e| e.to_string())?;
                let scale = alpha.map_or(1.0, |a| a / r as f64);
                let (kind, shape) = if ds.len() == 4 {
                    (AdapterKind::LoCon, vec![out, ds[1], ds[2], ds[3]])
                } else {
                    (AdapterKind::Lora, vec![out, ds[1]])
                };
                (kind, DeltaForm::LowRank { up: up2, down: down2 }, scale, shape)
            }
        }
    } else if has(&[Factor::HadaW1A, Factor::HadaW1B, Factor::HadaW2A, Factor::HadaW2B]) {
        let (Some(w1a), Some(w1b), Some(w2a), Some(w2b)) =
            (get(Factor::HadaW1A)?, get(Factor::HadaW1B)?, get(Factor::HadaW2A)?, get(Factor::HadaW2B)?)
        else {
            return Err("incomplete LoHa factors (need hada_w1_a/b and hada_w2_a/b)".into());
        };
        let t1 = get(Factor::HadaT1)?;
        let t2 = get(Factor::HadaT2)?;
        if t1.is_some() != t2.is_some() {
            return Err("LoHa with only one Tucker core".into());
        }
        let rank = w1b.size()[0];
        let shape = match &t1 {
            Some(t) => {
                let ts = t.size();
                if ts.len() != 4 {
                    return Err(format!("LoHa Tucker core {ts:?} must be 4-D"));
                }
                vec![w1a.size()[1], w1b.size()[1], ts[2], ts[3]]
            }
            None => {
                let b = w1b.size();
                vec![w1a.size()[0], b[1..].iter().product()]
            }
        };
        let scale = alpha.map_or(1.0, |a| a / rank as f64);
        (AdapterKind::LoHa, DeltaForm::LoHa { w1a, w1b, w2a, w2b, t1, t2 }, scale, shape)
    } else if has(&[
        Factor::LokrW1,
        Factor::LokrW1A,
        Factor::LokrW1B,
        Factor::LokrW2,
        Factor::LokrW2A,
        Factor::LokrW2B,
    ]) {
        let w1 = match (get(Factor::LokrW1)?, get(Factor::LokrW1A)?, get(Factor::LokrW1B)?) {
            (Some(w), _, _) => KronFactor::Full(w),
            (None, Some(a), Some(b)) => KronFactor::Decomposed { a, b, t: None },
            _ => return Err("incomplete LoKr factors (need lokr_w1 or lokr_w1_a/b)".into()),
        };
        let w2 = match (get(Factor::LokrW2)?, get(Factor::LokrW2A)?, get(Factor::LokrW2B)?) {
            (Some(w), _, _) => KronFactor::Full(w),
            (None, Some(a), Some(b)) => KronFactor::Decomposed { a, b, t: get(Factor::LokrT2)? },
            _ => return Err("incomplete LoKr factors (need lokr_w2 or lokr_w2_a/b)".into()),
        };
        let dims = |f: &KronFactor| -> Vec<i64> {
            match f {
                KronFactor::Full(w) => w.size(),
                KronFactor::Decomposed { a, b, t: None } => vec![a.size()[0], b.size()[1..].iter().product()],
                KronFactor::Decomposed { a, b, t: Some(t) } => {
                    let ts = t.size();
                    vec![a.size()[1], b.size()[1], ts[2], ts[3]]
                }
            }
        };
        let (d1, d2) = (dims(&w1), dims(&w2));
        if d1.len() != 2 {
            return Err(format!("LoKr w1 {d1:?} must be 2-D"));
        }
        let mut shape = vec![d1[0] * d2[0], d1[1] * d2[1]];
        shape.extend_from_slice(&d2[2..]);
        let dim = w2.rank().or(w1.rank());
        let scale = match (alpha, dim) {
            (Some(a), Some(d)) => a / d as f64,
            _ => 1.0,
        };
        (AdapterKind::LoKr, DeltaForm::LoKr { w1, w2 }, scale, shape)
    } else if !g.unsupported.is_empty() {
        return Err(format!("unsupported adapter part(s): {}", g.unsupported.join(", ")));
    } else {
        let parts: Vec<String> = g.factors.keys().map(|f| format!("{f:?}")).collect();
        return Err(format!("no complete adapter factors (found: {})", parts.join(", ")));
    };

    let numel: i64 = inferred.iter().product();
    // Resolve the region (rows of a fused target, shape checks against the base).
    let (rows, shape) = match (target.comp, index.shape(&target.key)) {
        (None, Some(base)) => {
            let base_numel: i64 = base.iter().product();
            if base_numel != numel {
                return Err(format!("delta {inferred:?} does not fit base weight {base:?} ({})", target.key));
            }
            (None, base.to_vec())
        }
        (None, None) => (None, inferred.clone()),
        (Some(c), base) => {
            let out = inferred[0];
            let per_row: i64 = inferred[1..].iter().product();
            let linear1 = target.key.ends_with("linear1.weight");
            let (start, len, rest) = match base {
                Some(b) => {
                    let (rows_total, cols) = (b[0], b.get(1).copied().unwrap_or(1));
                    let (start, len) = if linear1 {
                        match c {
                            Component::Mlp => (3 * cols, rows_total - 3 * cols),
                            _ => (c.index() as i64 * cols, cols),
                        }
                    } else {
                        if c == Component::Mlp || rows_total % 3 != 0 {
                            return Err(format!("cannot place component {} in {} {b:?}", c.name(), target.key));
                        }
                        let seg = rows_total / 3;
                        (c.index() as i64 * seg, seg)
                    };
                    (start, len, b[1..].to_vec())
                }
                None => {
                    let h = inferred.get(1).copied().unwrap_or(out);
                    let start = c.index() as i64 * h;
                    let len = if c == Component::Mlp { out } else { h };
                    (start, len, inferred[1..].to_vec())
                }
            };
            let region_numel = len * rest.iter().product::<i64>();
            if out * per_row != region_numel || len <= 0 {
                return Err(format!(
                    "component {} delta {inferred:?} does not fit rows {start}..{} of {}",
                    c.name(),
                    start + len,
                    target.key
                ));
            }
            let mut shape = vec![len];
            shape.extend(rest);
            (Some(RowRange { start, len }), shape)
        }
    };

    // Fold the half swap into a low-rank up factor (small copy).
    let form = match form {
        DeltaForm::LowRank { up, down } if target.swap_halves => {
            let n = up.size()[0];
            let h = n / 2;
            let swapped = (|| -> std::result::Result<Tensor, tch::TchError> {
                Tensor::f_cat(&[up.f_narrow(0, h, n - h)?, up.f_narrow(0, 0, h)?], 0)
            })()
            .map_err(|e| e.to_string())?;
            DeltaForm::LowRank { up: MappedTensor::owned(swapped), down }
        }
        other => other,
    };
    if let Some(d) = &dora {
        let n = d.numel() as i64;
        let out = shape[0];
        let inp = shape.get(1).copied().unwrap_or(1);
        if n != out && n != inp {
            return Err(format!("dora_scale {:?} fits neither {out} outputs nor {inp} inputs", d.size()));
        }
    }
    Ok(DeltaSpec {
        target: target.key.clone(),
        module: module.to_string(),
        file: file.path().to_path_buf(),
        kind,
        form,
        scale,
        strength: 1.0,
        rows,
        component: target.comp,
        swap_halves: target.swap_halves,
        shape,
        dora_scale: dora,
    })
}

/// Delta specs by base key, in the order keys were first seen: what a LoRA file holds, and
/// what a set of them accumulates.
#[derive(Debug, Clone, Default)]
pub struct DeltaMap(IndexMap<String, Vec<DeltaSpec>>);

impl DeltaMap {
    /// Affected base keys, in order.
    pub fn affected_keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|s| s.as_str())
    }

    /// Specs of one base key (none when the key is not affected).
    pub fn specs(&self, key: &str) -> &[DeltaSpec] {
        self.0.get(key).map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Bytes of all factors held (mapped file bytes, not copies).
    pub fn loaded_bytes(&self) -> usize {
        self.0.values().flatten().map(DeltaSpec::nbytes).sum()
    }

    /// Number of affected keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// (base key, specs) pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<DeltaSpec>)> {
        self.0.iter()
    }
}

/// LoRA files accumulated with strengths (one LoRA node chain).
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    /// Base key → specs of all files (strength folded into each spec's `strength`).
    pub deltas: DeltaMap,
    pub reports: Vec<LoadReport>,
}

impl LoraSet {
    pub fn new() -> Self {
        LoraSet::default()
    }

    /// Add a loaded file at `strength` (specs share the file's mapped factors).
    pub fn add(&mut self, file: &LoraFile, strength: f64) {
        for (key, specs) in file.deltas.iter() {
            let list = self.deltas.0.entry(key.clone()).or_default();
            for s in specs {
                let mut s = s.clone();
                s.strength *= strength;
                list.push(s);
            }
        }
        self.reports.push(file.report.clone());
    }

    /// True when every spec of `key` is low-rank without DoRA (the WIDEN low-rank path).
    pub fn is_low_rank(&self, key: &str) -> bool {
        self.deltas.specs(key).iter().all(|s| s.low_rank().is_some())
    }

    /// The set's total delta on `key` as a dense tensor of the base shape (`base`: the base
    /// weight, read for row sections and DoRA), in `kind` on `base`'s device.
    pub fn dense_delta(&self, key: &str, base: &Tensor, kind: Kind) -> Result<Tensor> {
        let mut acc = Tensor::f_zeros(base.size(), (kind, base.device()))?;
        let b = base.f_to_kind(kind)?;
        for s in self.deltas.specs(key) {
            s.add_into(&mut acc, &b, base.kind())?;
        }
        Ok(acc)
    }
}
