//! Helpers shared by the WIDEN integration tests.
#![allow(dead_code)]

use comfyrs_nodes::widen::{Widen, WidenConfig};
use tch::{Device, Kind, Tensor};

pub fn t(values: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values).reshape(shape)
}

pub fn vals(x: &Tensor) -> Vec<f64> {
    comfyrs_nodes::widen::oracle::to_f64(x)
}

pub fn cpu(cfg: WidenConfig) -> Widen {
    Widen::new(cfg, Device::Cpu).expect("valid config")
}

pub fn cfg_t(t: f64) -> WidenConfig {
    WidenConfig { t_factor: t, ..WidenConfig::default() }
}

#[track_caller]
pub fn assert_close(got: &[f64], want: &[f64], atol: f64) {
    assert_eq!(got.len(), want.len(), "length: got {got:?}, want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol, "index {i}: got {g}, want {w} (atol {atol})\n got {got:?}\nwant {want:?}");
    }
}

/// `‖a − b‖∞ / ‖b‖∞`, with the norm of `b` floored at `floor`.
pub fn rel_inf(a: &[f64], b: &[f64], floor: f64) -> f64 {
    let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(floor, f64::max);
    err / scale
}

pub fn sub(a: &Tensor, b: &Tensor) -> Tensor {
    a.to_kind(Kind::Double) - b.to_kind(Kind::Double)
}

pub fn assert_finite(x: &Tensor) {
    let v = vals(x);
    assert!(v.iter().all(|x| x.is_finite()), "non-finite values in {v:?}");
}
