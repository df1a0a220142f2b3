//! A LoRA set's low-rank factors for a chunk of keys, assembled with a handful of operations per
//! LoRA instead of per key: in the common case every key of a group carries the same LoRAs at the
//! same ranks, so each LoRA's `up` and `down` factors are stacked over the chunk in their storage
//! dtype, moved in one transfer each and scaled on the device.

use tch::{Device, Kind, Tensor};

use crate::lora::DeltaSpec;
use crate::widen::Contribution;

/// `keys` with their delta specs in this set and the per-key strength multiplier (block config).
/// `None` when the keys differ in LoRAs, ranks or row sections (the caller builds them one by one).
pub fn uniform_low_rank(
    specs: &[&[DeltaSpec]],
    multipliers: &[f64],
    shape: &[i64],
    device: Device,
) -> Result<Option<Contribution>, tch::TchError> {
    let out = shape[0];
    let k: i64 = shape[1..].iter().product();
    let Some(first) = specs.first() else { return Ok(None) };
    if first.is_empty() {
        return Ok(None);
    }
    let ranks: Vec<i64> = match first.iter().map(|s| s.low_rank().map(|(_, d)| d.size()[0])).collect() {
        Some(r) => r,
        None => return Ok(None),
    };
    let uniform = specs.iter().all(|ss| {
        ss.len() == ranks.len()
            && ss.iter().zip(&ranks).all(|(s, &r)| {
                s.rows.is_none()
                    && s.low_rank().is_some_and(|(u, d)| {
                        d.size()[0] == r && u.numel() as i64 == out * r && d.numel() as i64 == r * k
                    })
            })
    });
    if !uniform {
        return Ok(None);
    }
    let (mut ups, mut downs) = (Vec::with_capacity(ranks.len()), Vec::with_capacity(ranks.len()));
    for (j, &r) in ranks.iter().enumerate() {
        let factor = |up: bool, dims: [i64; 2]| -> Result<Tensor, tch::TchError> {
            let views: Vec<Tensor> = specs
                .iter()
                .map(|ss| {
                    let (u, d) = ss[j].low_rank().expect("checked low-rank");
                    (if up { u } else { d }).f_reshape(dims)
                })
                .collect::<Result<_, _>>()?;
            Tensor::f_stack(&views, 0)?.f_to_device(device)?.f_to_kind(Kind::Float)
        };
        // The same fp32 products as scaling key by key (`x · (scale as f32)`), so results do not
        // depend on which path built them.
        let scales: Vec<f32> =
            specs.iter().zip(multipliers).map(|(ss, m)| (ss[j].effective_scale() * m) as f32).collect();
        let scales = Tensor::f_from_slice(&scales)?.f_to_device(device)?.f_reshape([-1, 1, 1])?;
        ups.push(factor(true, [out, r])?.f_mul(&scales)?);
        downs.push(factor(false, [r, k])?);
    }
    Ok(Some(Contribution::low_rank(Tensor::f_cat(&ups, 2)?, Tensor::f_cat(&downs, 1)?)))
}
