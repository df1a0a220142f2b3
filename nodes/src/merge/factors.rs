//! A LoRA set's low-rank factors for a chunk of keys, assembled with a handful of operations per
//! LoRA instead of per key: in the common case every key of a group carries the same LoRAs at the
//! same ranks, so each LoRA's `up` and `down` factors are stacked over the chunk in their storage
//! dtype, moved in one transfer each and scaled on the device.
//!
//! On a GPU the unscaled factors stay in device memory (the engine's factor cache, keyed by file
//! identity and module; a rank-32 SDXL attention LoRA is ~90 MB), so a strength or t slider never
//! moves a LoRA over the host link again.

use tch::{Kind, Tensor};

use crate::lora::DeltaSpec;
use crate::widen::Contribution;

use super::engine::MergeEngine;
use super::transfer::upload;

/// One factor of every key, stacked on the engine's device in storage dtype: from the factor
/// cache where it has them (`ids`: the content identity of each key's factor), the rest in one
/// upload.
fn stacked_factor(engine: &MergeEngine, views: &[Tensor], ids: Option<&[[u8; 32]]>) -> Result<Tensor, tch::TchError> {
    let factors = engine.factor_cache();
    let Some(ids) = ids.filter(|_| engine.device().is_cuda()) else {
        let refs: Vec<&Tensor> = views.iter().collect();
        return upload(engine, &refs);
    };
    let mut rows: Vec<Option<Tensor>> = ids.iter().map(|id| factors.get(id)).collect();
    let missing: Vec<usize> = (0..views.len()).filter(|&i| rows[i].is_none()).collect();
    if !missing.is_empty() {
        let refs: Vec<&Tensor> = missing.iter().map(|&i| &views[i]).collect();
        let fresh = upload(engine, &refs)?;
        // Views of one upload: cached as one group, which goes as a whole (cache.rs).
        let mut group = Vec::with_capacity(missing.len());
        for (j, &i) in missing.iter().enumerate() {
            let row = fresh.f_select(0, j as i64)?;
            group.push((ids[i], row.shallow_clone()));
            rows[i] = Some(row);
        }
        factors.insert_all(group);
    }
    let rows: Vec<Tensor> = rows.into_iter().map(|r| r.expect("filled")).collect();
    Tensor::f_stack(&rows, 0)
}

/// `keys` with their delta specs in this set and the per-key strength multiplier (block config).
/// `None` when the keys differ in LoRAs, ranks or row sections (the caller builds them one by one).
///
/// `files`: each LoRA file's identity (`FileIdentity::fingerprint`), which makes its factors
/// cacheable on the device; a factor whose file is not listed is uploaded every time.
pub fn uniform_low_rank(
    engine: &MergeEngine,
    specs: &[&[DeltaSpec]],
    multipliers: &[f64],
    shape: &[i64],
    files: &[FilePrint],
) -> Result<Option<Contribution>, tch::TchError> {
    let device = engine.device();
    let identity = |s: &DeltaSpec| file_print(files, s);
    let out = shape[0];
    let k: i64 = shape[1..].iter().product();
    let Some(first) = specs.first() else {
        return Ok(None);
    };
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
    // The whole contribution of a chunk seen before (a slider elsewhere in the recipe moved):
    // one lookup instead of a lookup, a reshape and a hash per key and LoRA, and no kernels.
    let memo = device.is_cuda().then(|| chunk_identity(specs, multipliers, shape, files)).flatten();
    if let Some((up_id, down_id)) = &memo {
        if let (Some(up), Some(down)) = (engine.factor_cache().get(up_id), engine.factor_cache().get(down_id)) {
            return Ok(Some(Contribution::low_rank(up, down)));
        }
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
            let ids: Option<Vec<[u8; 32]>> = specs
                .iter()
                .map(|ss| {
                    let s = &ss[j];
                    let file = identity(s)?;
                    let mut h = blake3::Hasher::new();
                    for part in [file, s.module.as_str(), s.target.as_str(), if up { "up" } else { "down" }] {
                        h.update(part.as_bytes());
                        h.update(&[0]);
                    }
                    Some(*h.finalize().as_bytes())
                })
                .collect();
            stacked_factor(engine, &views, ids.as_deref())?.f_to_kind(Kind::Float)
        };
        // The same fp32 products as scaling key by key (`x · (scale as f32)`), so results do not
        // depend on which path built them.
        let scales: Vec<f32> =
            specs.iter().zip(multipliers).map(|(ss, m)| (ss[j].effective_scale() * m) as f32).collect();
        let up = factor(true, [out, r])?;
        ups.push(if scales.windows(2).all(|w| w[0] == w[1]) {
            // One strength for the whole group (no block config): no host → device copy, which
            // from pageable memory would wait for all queued GPU work and stall the pipeline.
            up.f_mul_scalar(f64::from(scales[0]))?
        } else {
            up.f_mul(&Tensor::f_from_slice(&scales)?.f_to_device(device)?.f_reshape([-1, 1, 1])?)?
        });
        downs.push(factor(false, [r, k])?);
    }
    let (up, down) = (Tensor::f_cat(&ups, 2)?, Tensor::f_cat(&downs, 1)?);
    if let Some((up_id, down_id)) = memo {
        engine.factor_cache().insert(up_id, up.shallow_clone());
        engine.factor_cache().insert(down_id, down.shallow_clone());
    }
    Ok(Some(Contribution::low_rank(up, down)))
}

/// A LoRA file's path and its identity (path, size, mtime) as text.
pub type FilePrint<'a> = (&'a std::path::Path, String);

fn file_print<'a>(files: &'a [FilePrint], spec: &DeltaSpec) -> Option<&'a str> {
    files.iter().find(|(path, _)| *path == spec.file).map(|(_, print)| print.as_str())
}

/// Content identity of a chunk's assembled factors (`up`, `down`): every key's LoRA files,
/// modules and scales, in order. `None` where a factor's file is unknown.
fn chunk_identity(specs: &[&[DeltaSpec]], multipliers: &[f64], shape: &[i64], files: &[FilePrint]) -> Option<([u8; 32], [u8; 32])> {
    let mut h = blake3::Hasher::new();
    h.update(b"chunk factors");
    for d in shape {
        h.update(&d.to_le_bytes());
    }
    for (ss, m) in specs.iter().zip(multipliers) {
        for s in ss.iter() {
            for part in [file_print(files, s)?, s.module.as_str(), s.target.as_str()] {
                h.update(part.as_bytes());
                h.update(&[0]);
            }
            // The scale as applied (fp32), so equal scales share an entry.
            h.update(&((s.effective_scale() * m) as f32).to_bits().to_le_bytes());
        }
        h.update(b"|");
    }
    let (mut up, mut down) = (h.clone(), h);
    up.update(b"up");
    down.update(b"down");
    Some((*up.finalize().as_bytes(), *down.finalize().as_bytes()))
}
