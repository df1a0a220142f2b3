//! Helpers shared by the WIDEN integration tests.
#![allow(dead_code)]

use comfyrs_nodes::widen::{Widen, WidenConfig};
use tch::{Device, Kind, Tensor};

pub fn t(values: &[f32], shape: &[i64]) -> Tensor {
    Tensor::from_slice(values).reshape(shape)
}

pub fn vals(x: &Tensor) -> Vec<f64> {
    comfyrs_testkit::oracle::to_f64(x)
}

/// The device the tests compute on: `WIDEN_TEST_DEVICE=cuda` runs them on the GPU, otherwise CPU.
pub fn test_device() -> Device {
    match std::env::var("WIDEN_TEST_DEVICE").as_deref() {
        Ok("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    }
}

/// WIDEN with `cfg` on the test device (inputs are built on the CPU and moved by the operations).
pub fn cpu(cfg: WidenConfig) -> Widen {
    Widen::new(cfg, test_device()).expect("valid config")
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
    a.to_device(Device::Cpu).to_kind(Kind::Double) - b.to_device(Device::Cpu).to_kind(Kind::Double)
}

/// A result back on the CPU, to compare with CPU tensors.
pub fn host(x: Tensor) -> Tensor {
    x.to_device(Device::Cpu)
}

pub fn assert_finite(x: &Tensor) {
    let v = vals(x);
    assert!(v.iter().all(|x| x.is_finite()), "non-finite values in {v:?}");
}

/// A small deterministic generator (SplitMix64), so a proptest case is reproducible from its seed
/// without touching libtorch's global RNG (tests run in parallel).
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * scale) as f32).collect()
    }
    /// A `[shape]` fp32 tensor of N(0, scale²) values.
    pub fn tensor(&mut self, shape: &[i64], scale: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        t(&self.normals(n as usize, scale), shape)
    }
}
