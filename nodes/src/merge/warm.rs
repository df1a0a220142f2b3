//! A CUDA device's one-time start-up, paid before the first merge needs it
//! (docs/widen.md, "Device start-up").

use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use super::engine::MergeEngine;
use crate::widen::{Contribution, Widen, WidenConfig};

impl MergeEngine {
    /// On a CUDA device, starts a thread that does what the first merge of a process would
    /// otherwise wait for: the context, the BLAS handles, the kernels of the merge math in each
    /// base dtype, and the page-locked staging buffers. Returns at once (`None` on the CPU); a
    /// merge that starts meanwhile waits only for what is not done yet. Nothing it runs draws
    /// random numbers, so no generator a sampler seeds is moved.
    pub fn warm_up(self: &Arc<Self>) -> Option<std::thread::JoinHandle<Duration>> {
        let Device::Cuda(_) = self.device() else { return None };
        let engine = self.clone();
        std::thread::Builder::new()
            .name("comfyrs-warm-up".into())
            .spawn(move || {
                let t = Instant::now();
                if let Err(e) = warm(&engine) {
                    // Only the first merge gets slower; it will report a real failure itself.
                    tracing::debug!("device warm-up stopped early: {e}");
                }
                let took = t.elapsed();
                tracing::debug!("device {:?} warmed up in {:.2} s", engine.device(), took.as_secs_f64());
                took
            })
            .ok()
    }
}

/// Small tensors through the paths an Exit takes: upload in the storage dtype, widening to
/// fp32, the filter and the merge on low-rank and dense contributions for a linear and a conv
/// key, narrowing back.
fn warm(engine: &MergeEngine) -> Result<(), Box<dyn std::error::Error>> {
    let device = engine.device();
    let widen = Widen::new(WidenConfig::default(), device)?;
    // Deterministic values (no random generator is touched).
    let values = |shape: &[i64], phase: f64| -> Result<Tensor, tch::TchError> {
        let n: i64 = shape.iter().product();
        Tensor::f_arange(n, (Kind::Float, Device::Cpu))?.f_mul_scalar(0.37)?.f_add_scalar(phase)?.f_sin()?.f_mul_scalar(0.02)?.f_view(shape)
    };
    for kind in [Kind::Half, Kind::BFloat16, Kind::Float] {
        for key in [&[64i64, 32][..], &[16, 8, 3, 3][..]] {
            let host = [values(key, 0.0)?.f_to_kind(kind)?, values(key, 1.0)?.f_to_kind(kind)?];
            let refs: Vec<&Tensor> = host.iter().collect();
            let base = super::transfer::upload(engine, &refs)?.f_to_kind(Kind::Float)?;
            let mut full = vec![2i64];
            full.extend_from_slice(key);
            let (out, cols) = (key[0], key[1..].iter().product::<i64>());
            let low_rank = |phase: f64| -> Result<Contribution, tch::TchError> {
                Ok(Contribution::low_rank(values(&[2, out, 4], phase)?.f_to_device(device)?, values(&[2, 4, cols], phase + 0.5)?.f_to_device(device)?))
            };
            let dense = Contribution::Weights(base.f_add(&values(&full, 2.0)?.f_to_device(device)?)?);
            let names = ["warm-up", "warm-up"];
            let filtered = widen.filter(&base, &low_rank(3.0)?, &names)?;
            let (merged, _) = widen.merge_with_stats(crate::widen::kernels::fresh_copy(&base)?, &[low_rank(4.0)?, low_rank(5.0)?], None, &names)?;
            let (mixed, _) = widen.merge_with_stats(crate::widen::kernels::fresh_copy(&base)?, &[low_rank(6.0)?, dense], None, &names)?;
            for t in [filtered, merged, mixed] {
                let _narrowed = t.f_to_kind(kind)?.f_to_device(Device::Cpu)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::MergeSettings;

    /// The same steps run on the CPU (where `warm_up` itself does nothing): shapes, dtypes and
    /// the merge calls stay valid as the math changes.
    #[test]
    fn the_warm_up_steps_run_on_the_cpu_and_the_cpu_starts_no_thread() {
        let engine = MergeEngine::standalone(MergeSettings::on(Device::Cpu)).unwrap();
        warm(&engine).unwrap();
        assert!(engine.warm_up().is_none());
    }
}
