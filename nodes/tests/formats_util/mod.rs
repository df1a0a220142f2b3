//! Helpers shared by the `formats_*` tests: raw safetensors reading (independent of the
//! crate's mmap reader) and naive float64 reference computations.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

/// A tensor read as f64 straight from the file bytes.
#[derive(Debug, Clone)]
pub struct Raw {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Raw {
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// As a 2-D matrix `[shape[0], rest]`.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    pub fn cols(&self) -> usize {
        self.numel() / self.rows().max(1)
    }
}

/// Read every float tensor of a safetensors file with the `safetensors` crate and `half`.
pub fn read_raw(path: &Path) -> HashMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let b = view.data();
        let data: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            safetensors::Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            safetensors::Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            _ => continue,
        };
        out.insert(name, Raw { shape: view.shape().to_vec(), data });
    }
    out
}

/// `a [n, k] @ b [k, m]`.
pub fn matmul(a: &[f64], n: usize, k: usize, b: &[f64], m: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * k);
    assert_eq!(b.len(), k * m);
    let mut c = vec![0.0; n * m];
    for i in 0..n {
        for p in 0..k {
            let x = a[i * k + p];
            if x == 0.0 {
                continue;
            }
            for j in 0..m {
                c[i * m + j] += x * b[p * m + j];
            }
        }
    }
    c
}

/// Kronecker product of `a [ar, ac]` and `b [br, bc]` → `[ar·br, ac·bc]`.
pub fn kron(a: &[f64], ar: usize, ac: usize, b: &[f64], br: usize, bc: usize) -> Vec<f64> {
    let mut out = vec![0.0; ar * br * ac * bc];
    let w = ac * bc;
    for i in 0..ar {
        for j in 0..ac {
            for k in 0..br {
                for l in 0..bc {
                    out[(i * br + k) * w + j * bc + l] = a[i * ac + j] * b[k * bc + l];
                }
            }
        }
    }
    out
}

/// Tucker product `m[p, r, y, x] = Σ_i Σ_j t[i, j, y, x] · b[j, r] · a[i, p]`
/// (`t [R1, R2, kh, kw]`, `b [R2, nr]`, `a [R1, np]`) → `[np, nr, kh, kw]` flattened.
pub fn tucker(t: &Raw, b: &Raw, a: &Raw) -> (Vec<f64>, Vec<usize>) {
    let (r1, r2, kh, kw) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let nr = b.shape[1];
    let np = a.shape[1];
    let mut out = vec![0.0; np * nr * kh * kw];
    for p in 0..np {
        for r in 0..nr {
            for y in 0..kh {
                for x in 0..kw {
                    let mut s = 0.0;
                    for i in 0..r1 {
                        for j in 0..r2 {
                            s += t.data[((i * r2 + j) * kh + y) * kw + x] * b.data[j * nr + r] * a.data[i * np + p];
                        }
                    }
                    out[((p * nr + r) * kh + y) * kw + x] = s;
                }
            }
        }
    }
    (out, vec![np, nr, kh, kw])
}

/// Max |a - b| / max |b| (relative to the reference's magnitude).
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn tensor_f64(t: &tch::Tensor) -> Vec<f64> {
    let t = t.to_kind(tch::Kind::Double).contiguous().view(-1);
    Vec::<f64>::try_from(&t).unwrap()
}
