//! Delta specs: one adapter module's contribution to one base weight (or a row section of a
//! fused weight), kept in the most compact form the adapter kind allows.

use std::path::PathBuf;

use tch::{Device, Kind, Tensor};

use super::names::Component;
use crate::models::{FormatError, MappedTensor, Result};

/// Adapter kind of a module (`docs/decisions.md` D12). DoRA is orthogonal: see
/// [`DeltaSpec::dora_scale`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdapterKind {
    /// Plain LoRA: `up [out, r]`, `down [r, in]`.
    Lora,
    /// Conv LoRA: `down [r, in, kh, kw]`, `up [out, r, 1, 1]`; the delta takes the down
    /// factor's kernel size.
    LoCon,
    /// LoRA with a Tucker core (`lora_mid [r, r, kh, kw]`), folded into the down factor.
    Tucker,
    /// Kronecker product (`lokr_w1`, `lokr_w2`, optionally decomposed, optional `lokr_t2`).
    LoKr,
    /// Hadamard product of two low-rank products (`hada_w1_a/b`, `hada_w2_a/b`, optional
    /// Tucker cores `hada_t1/t2`).
    LoHa,
}

impl AdapterKind {
    pub fn tag(self) -> &'static str {
        match self {
            AdapterKind::Lora => "lora",
            AdapterKind::LoCon => "locon",
            AdapterKind::Tucker => "tucker",
            AdapterKind::LoKr => "lokr",
            AdapterKind::LoHa => "loha",
        }
    }
}

/// A row section `[start, start + len)` of a fused weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRange {
    pub start: i64,
    pub len: i64,
}

/// A LoKr factor: full, or low-rank `a @ b` (with an optional Tucker core `t`).
#[derive(Debug, Clone)]
pub enum KronFactor {
    Full(MappedTensor),
    Decomposed { a: MappedTensor, b: MappedTensor, t: Option<MappedTensor> },
}

/// The factors of a delta.
#[derive(Debug, Clone)]
pub enum DeltaForm {
    /// `delta = up @ down`, `up [out, r]`, `down [r, in·kh·kw]` (views of the file where
    /// possible: plain LoRA and LoCon factors are never copied).
    LowRank { up: MappedTensor, down: MappedTensor },
    /// `delta = kron(w1, w2)`.
    LoKr { w1: KronFactor, w2: KronFactor },
    /// `delta = (w1a @ w1b) ⊙ (w2a @ w2b)` (Tucker: `einsum(t, b, a)` per product).
    LoHa {
        w1a: MappedTensor,
        w1b: MappedTensor,
        w2a: MappedTensor,
        w2b: MappedTensor,
        t1: Option<MappedTensor>,
        t2: Option<MappedTensor>,
    },
}

impl Clone for MappedTensor {
    fn clone(&self) -> Self {
        self.clone_ref()
    }
}

/// One module's contribution to one base key.
#[derive(Debug, Clone)]
pub struct DeltaSpec {
    /// Host key of the base weight.
    pub target: String,
    /// The module name in the LoRA file.
    pub module: String,
    /// The LoRA file.
    pub file: PathBuf,
    pub kind: AdapterKind,
    pub form: DeltaForm,
    /// The file's scale: `alpha / rank` (1 without alpha; LoKr: `alpha / dim` only when a
    /// factor is decomposed).
    pub scale: f64,
    /// The strength the file was added with (node strength).
    pub strength: f64,
    /// Row section of a fused target (q|k|v of a fused attention projection, Flux `linear1`).
    pub rows: Option<RowRange>,
    pub component: Option<Component>,
    /// Swap the row halves of the delta (dense forms; low-rank forms have it folded into `up`).
    pub swap_halves: bool,
    /// Shape of the delta region: the target's shape, or `[rows.len, …]` for a fused section.
    pub shape: Vec<i64>,
    /// DoRA magnitude (`dora_scale` / PEFT `lora_magnitude_vector`). When set the delta
    /// depends on the base weight: use [`DeltaSpec::dora_delta`].
    pub dora_scale: Option<MappedTensor>,
}

fn as_compute(t: &Tensor, device: Device, kind: Kind) -> Result<Tensor> {
    Ok(t.f_to_device(device)?.f_to_kind(kind)?)
}

fn swap_rows(t: &Tensor) -> Result<Tensor> {
    let n = t.size()[0];
    let h = n / 2;
    Ok(Tensor::f_cat(&[t.f_narrow(0, h, n - h)?, t.f_narrow(0, 0, h)?], 0)?)
}

impl KronFactor {
    fn compute(&self, device: Device, kind: Kind) -> Result<Tensor> {
        match self {
            KronFactor::Full(w) => as_compute(w, device, kind),
            KronFactor::Decomposed { a, b, t: None } => {
                let a = as_compute(a, device, kind)?;
                let b = as_compute(b, device, kind)?;
                Ok(a.f_mm(&b.f_flatten(1, -1)?)?)
            }
            KronFactor::Decomposed { a, b, t: Some(t) } => {
                let (a, b, t) =
                    (as_compute(a, device, kind)?, as_compute(b, device, kind)?, as_compute(t, device, kind)?);
                Ok(Tensor::f_einsum("ijkl,jr,ip->prkl", &[t, b, a], None::<&[i64]>)?)
            }
        }
    }
    /// Rank of the decomposition (`b.shape[0]`), `None` for a full factor.
    pub fn rank(&self) -> Option<i64> {
        match self {
            KronFactor::Full(_) => None,
            KronFactor::Decomposed { b, .. } => Some(b.size()[0]),
        }
    }
    fn nbytes(&self) -> usize {
        match self {
            KronFactor::Full(w) => tensor_bytes(w),
            KronFactor::Decomposed { a, b, t } => {
                tensor_bytes(a) + tensor_bytes(b) + t.as_ref().map_or(0, |t| tensor_bytes(t))
            }
        }
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.kind().elt_size_in_bytes()
}

fn hada_product(a: &Tensor, b: &Tensor, t: Option<&MappedTensor>, device: Device, kind: Kind) -> Result<Tensor> {
    let a = as_compute(a, device, kind)?;
    let b = as_compute(b, device, kind)?;
    match t {
        None => Ok(a.f_mm(&b.f_flatten(1, -1)?)?),
        Some(t) => {
            let t = as_compute(t, device, kind)?;
            Ok(Tensor::f_einsum("ijkl,jr,ip->prkl", &[t, b, a], None::<&[i64]>)?)
        }
    }
}

impl DeltaSpec {
    /// `strength × scale`: the factor the raw product is multiplied by.
    pub fn effective_scale(&self) -> f64 {
        self.strength * self.scale
    }

    /// Rank of a low-rank form.
    pub fn rank(&self) -> Option<i64> {
        match &self.form {
            DeltaForm::LowRank { down, .. } => Some(down.size()[0]),
            DeltaForm::LoHa { w1b, .. } => Some(w1b.size()[0]),
            DeltaForm::LoKr { w1, w2 } => w2.rank().or(w1.rank()),
        }
    }

    /// True when the delta depends on the base weight (DoRA).
    pub fn needs_base(&self) -> bool {
        self.dora_scale.is_some()
    }

    /// `(up [out, r], down [r, in·kh·kw])` for low-rank specs without DoRA; the delta is
    /// `effective_scale() × up @ down` reshaped to `shape`.
    pub fn low_rank(&self) -> Option<(&Tensor, &Tensor)> {
        match (&self.form, &self.dora_scale) {
            (DeltaForm::LowRank { up, down }, None) => Some((up, down)),
            _ => None,
        }
    }

    /// Bytes held by the factors (file bytes for mapped views).
    pub fn nbytes(&self) -> usize {
        let f = match &self.form {
            DeltaForm::LowRank { up, down } => tensor_bytes(up) + tensor_bytes(down),
            DeltaForm::LoKr { w1, w2 } => w1.nbytes() + w2.nbytes(),
            DeltaForm::LoHa { w1a, w1b, w2a, w2b, t1, t2 } => {
                [w1a, w1b, w2a, w2b].iter().map(|t| tensor_bytes(t)).sum::<usize>()
                    + t1.as_ref().map_or(0, |t| tensor_bytes(t))
                    + t2.as_ref().map_or(0, |t| tensor_bytes(t))
            }
        };
        f + self.dora_scale.as_ref().map_or(0, |t| tensor_bytes(t))
    }

    fn err(&self, reason: String) -> FormatError {
        FormatError::LoraModule { path: self.file.clone(), module: self.module.clone(), reason }
    }

    /// The unscaled product of the factors, reshaped to `shape`, rows swapped if needed.
    pub fn raw_delta(&self, device: Device, kind: Kind) -> Result<Tensor> {
        let d = match &self.form {
            DeltaForm::LowRank { up, down } => {
                as_compute(up, device, kind)?.f_mm(&as_compute(down, device, kind)?)?
            }
            DeltaForm::LoKr { w1, w2 } => {
                // kron(w1 [a, b], w2 [c, d, kh, kw]) flattened to [a·c, b·d·kh·kw] equals the 2-D
                // Kronecker product of w1 with w2 flattened to [c, d·kh·kw].
                let a = w1.compute(device, kind)?.f_flatten(1, -1)?;
                let b = w2.compute(device, kind)?.f_flatten(1, -1)?;
                let (ar, ac) = (a.size()[0], a.size()[1]);
                let (br, bc) = (b.size()[0], b.size()[1]);
                Tensor::f_einsum("ij,kl->ikjl", &[a, b], None::<&[i64]>)?.f_reshape([ar * br, ac * bc])?
            }
            DeltaForm::LoHa { w1a, w1b, w2a, w2b, t1, t2 } => {
                let m1 = hada_product(w1a, w1b, t1.as_ref(), device, kind)?;
                let m2 = hada_product(w2a, w2b, t2.as_ref(), device, kind)?;
                m1.f_mul(&m2)?
            }
        };
        let numel: i64 = self.shape.iter().product();
        if d.numel() as i64 != numel {
            return Err(self.err(format!(
                "delta has {} elements ({:?}), target region {:?} has {numel}",
                d.numel(),
                d.size(),
                self.shape
            )));
        }
        let d = d.f_reshape(&self.shape)?;
        let low_rank_swapped = matches!(self.form, DeltaForm::LowRank { .. });
        if self.swap_halves && !low_rank_swapped {
            swap_rows(&d)
        } else {
            Ok(d)
        }
    }

    /// The delta of this spec (`effective_scale() × product`, shaped `shape`) in `kind` on
    /// `device`. Errors for DoRA specs (use [`dora_delta`](Self::dora_delta)).
    pub fn delta(&self, device: Device, kind: Kind) -> Result<Tensor> {
        if self.needs_base() {
            return Err(self.err("a DoRA delta depends on the base weight; use dora_delta".into()));
        }
        Ok(self.raw_delta(device, kind)?.f_mul_scalar(self.effective_scale())?)
    }

    /// The section of a full base weight this spec applies to (a view).
    pub fn region(&self, weight: &Tensor) -> Result<Tensor> {
        match self.rows {
            Some(r) => Ok(weight.f_narrow(0, r.start, r.len)?),
            None => Ok(weight.shallow_clone()),
        }
    }

    /// The DoRA-adjusted delta given the base region (`region(base)`), computed in the
    /// base region's float kind on its device:
    /// `W' = m ⊙ (W + s·ΔW) / ‖W + s·ΔW‖` with the norm taken per output row when the
    /// magnitude has `out` elements (`[out]`, `[out, 1]`), per input column otherwise
    /// (`[1, in]`, `[1, in, 1, 1]`); result `strength × (W' − W)`. `eps` (added to the norm)
    /// is the machine epsilon of `base_kind`, the base weight's storage dtype. Without DoRA
    /// this is [`delta`](Self::delta).
    pub fn dora_delta(&self, base_region: &Tensor, base_kind: Kind) -> Result<Tensor> {
        let device = base_region.device();
        let kind = match base_region.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        let Some(m) = &self.dora_scale else { return self.delta(device, kind) };
        let w = base_region.f_to_kind(kind)?;
        if w.size() != self.shape {
            return Err(self.err(format!("base region {:?} does not match the delta shape {:?}", w.size(), self.shape)));
        }
        let wc = w.f_add(&self.raw_delta(device, kind)?.f_mul_scalar(self.scale)?)?;
        let out = self.shape[0];
        let inp = self.shape.get(1).copied().unwrap_or(1);
        let m = as_compute(m, device, kind)?;
        let ones = vec![1i64; self.shape.len().saturating_sub(1)];
        let (norm, mag) = if m.size()[0] == out && m.numel() as i64 == out {
            let mut s = vec![out];
            s.extend(&ones);
            let n = wc.f_reshape([out, -1])?.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?.f_reshape(&s)?;
            (n, m.f_reshape(&s)?)
        } else if m.numel() as i64 == inp {
            let mut s = vec![1, inp];
            s.extend(ones.iter().skip(1));
            let n = wc
                .f_transpose(0, 1)?
                .f_reshape([inp, -1])?
                .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
                .f_reshape(&s)?;
            (n, m.f_reshape(&s)?)
        } else {
            return Err(self.err(format!(
                "dora_scale {:?} fits neither the output ({out}) nor the input ({inp}) axis",
                m.size()
            )));
        };
        let eps = match base_kind {
            Kind::Half => 9.765625e-4,
            Kind::BFloat16 => 7.8125e-3,
            Kind::Double => f64::EPSILON,
            _ => f32::EPSILON as f64,
        };
        let wd = wc.f_mul(&mag.f_div(&norm.f_add_scalar(eps)?)?)?;
        Ok(wd.f_sub(&w)?.f_mul_scalar(self.strength)?)
    }

    /// Add this spec's delta into `acc` (the full target weight in a float kind, same device),
    /// `base` being the unmodified base weight (only read for DoRA; `base_kind` its storage
    /// dtype). A delta with the region's element count but another shape (a 1×1 conv LoRA on
    /// a linear weight) is reshaped to the region.
    pub fn add_into(&self, acc: &mut Tensor, base: &Tensor, base_kind: Kind) -> Result<()> {
        let mut region = self.region(acc)?;
        let delta = if self.needs_base() {
            let b = self.region(base)?.f_reshape(&self.shape)?;
            self.dora_delta(&b, base_kind)?
        } else {
            self.delta(acc.device(), acc.kind())?
        };
        let delta = delta.f_to_kind(acc.kind())?;
        let delta = if delta.size() != region.size() {
            if delta.numel() != region.numel() {
                return Err(self.err(format!(
                    "delta {:?} does not fit the target region {:?}",
                    delta.size(),
                    region.size()
                )));
            }
            delta.f_reshape(region.size())?
        } else {
            delta
        };
        let _ = region.f_add_(&delta)?;
        Ok(())
    }
}
