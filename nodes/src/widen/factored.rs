//! A merge result kept as the product that formed it (docs/widen.md, "Low-rank evaluation"):
//! where every contribution of a filter or merge is low-rank, the result is exactly
//! `backbone + up · down` with `up = [U₁ … U_N]` and `down = [D₁·diag(S₁); …]`, one product over
//! the contributors' concatenated rank. Kept instead of (or beside) the full result, a key costs
//! `(out + K) · N·r` values instead of `out · K` (a tenth for SDXL's attention keys under two
//! rank-32 LoRAs), and the result comes back from the backbone with the one product that made it
//! in the first place: the same kernel on the same operands, so bit for bit the same values
//! (docs/architecture.md, "The WIDEN caches").

use tch::{Device, Kind, Tensor};

use super::error::{Result, WidenError};
use super::kernels::{add_product, add_product_split_bf16, fresh_copy};

/// `result = backbone + up · down` for a batch of keys: `up [B, out, R]`, `down [B, R, K]` (fp32,
/// on the compute device, as the merge's product read them; `R` is the merge's padded rank).
#[derive(Debug)]
pub struct Factored {
    pub up: Tensor,
    pub down: Tensor,
    /// The product ran as three bf16 products (`Product::SplitBf16` on CUDA).
    pub split_bf16: bool,
}

impl Factored {
    /// Key `i` of the batch (views: no copy).
    pub fn key(&self, i: i64) -> Result<Factored> {
        Ok(Factored { up: self.up.f_narrow(0, i, 1)?, down: self.down.f_narrow(0, i, 1)?, split_bf16: self.split_bf16 })
    }

    /// Another handle on the same tensors.
    pub fn shallow_clone(&self) -> Factored {
        Factored { up: self.up.shallow_clone(), down: self.down.shallow_clone(), split_bf16: self.split_bf16 }
    }

    pub fn on_device(&self) -> bool {
        self.up.device() != Device::Cpu
    }

    /// Bytes of the two factors.
    pub fn bytes(&self) -> usize {
        (self.up.numel() + self.down.numel()) * Kind::Float.elt_size_in_bytes()
    }

    /// The rank the product runs over (keys of one batch share it).
    pub fn rank(&self) -> i64 {
        self.up.size()[2]
    }

    /// Whether `other`'s keys can share a batch with these: the same shape, rank and product.
    pub fn fits(&self, other: &Factored) -> bool {
        self.up.size()[1..] == other.up.size()[1..] && self.down.size()[1..] == other.down.size()[1..] && self.split_bf16 == other.split_bf16
    }

    /// Keys of one shape and rank as one batch, in order (None for an empty list, or keys whose
    /// rank or shape differ).
    pub fn cat(parts: &[Factored]) -> Result<Option<Factored>> {
        let Some(first) = parts.first() else { return Ok(None) };
        if !parts.iter().all(|f| first.fits(f)) {
            return Ok(None);
        }
        let ups: Vec<&Tensor> = parts.iter().map(|f| &f.up).collect();
        let downs: Vec<&Tensor> = parts.iter().map(|f| &f.down).collect();
        Ok(Some(Factored { up: Tensor::f_cat(&ups, 0)?, down: Tensor::f_cat(&downs, 0)?, split_bf16: first.split_bf16 }))
    }

    /// The result again from the backbone the merge read: `backbone [B, *S]` fp32 on the compute
    /// device, the caller's own tensor (the result is written into it). On the CPU each key runs
    /// alone on fresh copies, as the merge did (docs/decisions.md D4: a key's values then do not
    /// depend on where it sat in a batch); on a GPU the batch runs as one product.
    pub fn rebuild(&self, backbone: Tensor) -> Result<Tensor> {
        let shape = backbone.size();
        let (us, ds) = (self.up.size(), self.down.size());
        let fits = shape.len() >= 3 && us.len() == 3 && {
            let k: i64 = shape[2..].iter().product();
            us == [shape[0], shape[1], us[2]] && ds == [shape[0], us[2], k]
        };
        if !fits {
            return Err(WidenError::Input(format!(
                "factors up {us:?} / down {ds:?} do not rebuild keys of shape {shape:?}"
            )));
        }
        let (batch, out, k) = (shape[0], shape[1], shape[2..].iter().product::<i64>());
        let product = |b: &Tensor, up: &Tensor, down: &Tensor| {
            if self.split_bf16 {
                add_product_split_bf16(b, up, down, true)
            } else {
                add_product(b, up, down, true)
            }
        };
        if backbone.device() != Device::Cpu {
            let b = backbone.f_reshape([batch, out, k])?;
            return Ok(product(&b, &self.up, &self.down)?.f_reshape(shape.as_slice())?);
        }
        let mut rows = Vec::with_capacity(batch as usize);
        for i in 0..batch {
            let one = |t: &Tensor| fresh_copy(&t.f_narrow(0, i, 1)?);
            let b = one(&backbone)?.f_reshape([1, out, k])?;
            rows.push(product(&b, &one(&self.up)?, &one(&self.down)?)?);
        }
        Ok(Tensor::f_cat(&rows, 0)?.f_reshape(shape.as_slice())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::widen::{Contribution, Widen, WidenConfig};

    fn randn(shape: &[i64], seed: i64) -> Tensor {
        tch::manual_seed(seed);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    }

    fn low_rank(batch: i64, out: i64, k: &[i64], r: i64, seed: i64) -> Contribution {
        let mut down = vec![batch, r];
        down.extend_from_slice(k);
        Contribution::low_rank(randn(&[batch, out, r], seed).f_mul_scalar(0.1).unwrap(), randn(&down, seed + 1))
    }

    /// The result rebuilt from the backbone and the kept product is the merge's result, bit for
    /// bit: filters and merges, linear and conv keys, contributors of different ranks (padded),
    /// t values that mask columns and one that keeps all.
    #[test]
    fn a_rebuilt_result_is_the_merge_result_bit_for_bit() {
        for (shape, k) in [(vec![3i64, 8, 6], vec![6i64]), (vec![2, 4, 3, 2, 2], vec![3, 2, 2])] {
            let (batch, out) = (shape[0], shape[1]);
            let backbone = randn(&shape, 7);
            for t in [0.5, 1.0, 2.0] {
                let w = Widen::new(WidenConfig::default().with_t(t), Device::Cpu).unwrap().with_products(true);
                for n in [1usize, 2, 3] {
                    let cs: Vec<Contribution> =
                        (0..n).map(|i| low_rank(batch, out, &k, 2 + i as i64, 10 * i as i64 + 1)).collect();
                    let merged = w.merge_with_report(backbone.copy(), &cs, None, &[]).unwrap();
                    let f = merged.factored.expect("every contribution is low-rank");
                    assert_eq!(f.rank(), n as i64 * (1 + n as i64), "padded to the largest rank, then side by side");
                    let again = f.rebuild(backbone.copy()).unwrap();
                    assert!(again.equal(&merged.result), "shape {shape:?}, t {t}, {n} contributors");
                    assert!(!again.equal(&backbone), "the product changed the keys");
                    // Key by key, from rows kept apart and put together again.
                    let rows: Vec<Factored> = (0..batch).map(|i| f.key(i).unwrap()).collect();
                    let whole = Factored::cat(&rows).unwrap().unwrap();
                    assert!(whole.rebuild(backbone.copy()).unwrap().equal(&merged.result));
                    let last = rows.last().unwrap().rebuild(backbone.narrow(0, batch - 1, 1).copy()).unwrap();
                    assert!(last.equal(&merged.result.narrow(0, batch - 1, 1)));
                }
            }
        }
    }

    /// Dense contributions, and the t ≤ 0 shortcut, leave nothing to rebuild from.
    #[test]
    fn only_low_rank_merges_keep_their_product() {
        let backbone = randn(&[2, 5, 4], 3);
        let w = Widen::new(WidenConfig::default(), Device::Cpu).unwrap().with_products(true);
        let dense = Contribution::Weights(backbone.f_add(&randn(&[2, 5, 4], 4).f_mul_scalar(0.1).unwrap()).unwrap());
        let mixed = [dense, low_rank(2, 5, &[4], 2, 5)];
        assert!(w.merge_with_report(backbone.copy(), &mixed, None, &[]).unwrap().factored.is_none());
        let off = Widen::new(WidenConfig::default().with_t(0.0), Device::Cpu).unwrap().with_products(true);
        assert!(off.merge_with_report(backbone.copy(), &[low_rank(2, 5, &[4], 2, 6)], None, &[]).unwrap().factored.is_none());
        // Not asked for, none.
        let plain = Widen::new(WidenConfig::default(), Device::Cpu).unwrap();
        assert!(plain.merge_with_report(backbone.copy(), &[low_rank(2, 5, &[4], 2, 7)], None, &[]).unwrap().factored.is_none());
        // Factors that do not fit the backbone are refused, not broadcast.
        let f = w.merge_with_report(backbone.copy(), &[low_rank(2, 5, &[4], 2, 7)], None, &[]).unwrap().factored.unwrap();
        assert!(f.rebuild(randn(&[2, 4, 5], 8)).is_err());
        assert!(f.rebuild(randn(&[2], 8)).is_err(), "a 1-D batch is refused, not a panic");
        assert!(Factored::cat(&[f.key(0).unwrap(), Factored { up: randn(&[1, 5, 3], 9), down: randn(&[1, 3, 4], 9), split_bf16: false }])
            .unwrap()
            .is_none());
    }
}
