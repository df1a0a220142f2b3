//! The worked examples of docs/widen.md, "Part 1: the math" (values produced by the reference)
//! and the hand-checkable cases of each decision where comfyrs departs from it
//! (docs/decisions.md D1–D5).

mod widen_common;

use comfyrs_nodes::widen::disentangle::{direction_divergence, disentangle, safe_norm};
use comfyrs_nodes::widen::eps::{adaptive_eps, base_eps, DEGENERATE_NORM};
use comfyrs_nodes::widen::ranking::{minmax, percentile, rank, zscore};
use comfyrs_nodes::widen::{calibration, sparsity, Calibration, Contribution, Ranking, Sparsity, WidenConfig, WidenError};
use comfyrs_testkit::oracle;
use tch::{Kind, Tensor};
use widen_common::*;

const GOLD: f64 = 1.5e-6;

// ---- numerical helpers ("Numerical constants") ----

#[test]
fn base_epsilon_by_dtype() {
    assert_eq!(base_eps(Kind::Float), 1e-12);
    assert_eq!(base_eps(Kind::Half), 1e-6);
    assert_eq!(base_eps(Kind::BFloat16), 1e-6);
}

#[test]
fn adaptive_epsilon_is_per_key() {
    // D4: key 0 has mean|x| = 1e3 → 1e-5; key 1 is tiny → the base epsilon. The reference would
    // give both keys the batch-wide value.
    let x = t(&[1e3, -1e3, 1e-9, 0.0], &[2, 2]);
    assert_eq!(vals(&adaptive_eps(&x).unwrap()), vec![1e-5f32 as f64, 1e-12f32 as f64]);
    let alone = adaptive_eps(&x.narrow(0, 1, 1)).unwrap();
    assert_eq!(vals(&alone), vec![1e-12f32 as f64]);
    assert_eq!(
        vals(&adaptive_eps(&x.to_kind(Kind::Half)).unwrap())[1],
        1e-6f32 as f64,
        "fp16 tensors use the fp16 base epsilon"
    );
}

#[test]
fn safe_norm_keeps_tiny_columns() {
    let w = t(&[1e-30, 0.0], &[2, 1]);
    let n = vals(&safe_norm(&w, 0).unwrap());
    assert!((n[0] - 1e-30).abs() < 1e-36, "{n:?}");
    assert_eq!(DEGENERATE_NORM, 64.0 * 1.175_494_4e-38_f32 as f64, "64 × the smallest normal fp32");
}

// ---- disentanglement and divergence ("Magnitude and direction", "Direction divergence") ----

#[test]
fn disentangle_worked_example() {
    let w = t(&[3.0, 0.0, 1e-30, 4.0, 0.0, 0.0], &[1, 2, 3]);
    let (m, d) = disentangle(&w).unwrap();
    assert_eq!(m.size(), vec![1, 1, 3]);
    let m = vals(&m);
    assert_close(&m[..2], &[5.0, 0.0], 1e-6);
    assert!((m[2] - 1e-30).abs() < 1e-36);
    assert_close(&vals(&d), &[0.6, 0.0, 1.0, 0.8, 0.0, 0.0], 1e-6);
}

#[test]
fn disentangle_reconstructs_and_handles_conv_and_vectors() {
    tch::manual_seed(1);
    for shape in [vec![3, 5, 4], vec![2, 6, 3, 5], vec![2, 4, 3, 3, 3]] {
        let w = Tensor::randn(shape.as_slice(), (Kind::Float, tch::Device::Cpu));
        let (m, d) = disentangle(&w).unwrap();
        let back = &m * &d;
        assert!(back.allclose(&w, 0.0, 1e-5, false), "m·D ≠ W for {shape:?}");
    }
    let (m, d) = disentangle(&t(&[-2.0, 0.0, 3.0], &[1, 3])).unwrap();
    assert_eq!(vals(&m), vec![2.0, 0.0, 3.0]);
    assert_eq!(vals(&d), vec![-1.0, 0.0, 1.0]);
    assert!(disentangle(&t(&[1.0, 2.0], &[2])).is_err(), "scalar parameters are unsupported");
}

#[test]
fn divergence_worked_example_and_zero_columns() {
    // Columns: [0.6, 0.8] vs [1, 0] → 0.4; a zero column against a zero column → 1 (maximal).
    let d1 = t(&[0.6, 0.0, 0.8, 0.0], &[1, 2, 2]);
    let d2 = t(&[1.0, 0.0, 0.0, 0.0], &[1, 2, 2]);
    assert_close(&vals(&direction_divergence(&d1, &d2).unwrap()), &[0.4, 1.0], 1e-6);
}

// ---- ranking ("Ranking") ----

#[test]
fn percentile_gives_ties_the_mid_rank() {
    // D2: the reference gives [0.8, 0.4, 1.0, 0.2, 0.6] (ties by index); the two 0.3 share 0.9.
    let x = t(&[0.3, 0.1, 0.3, 0.0, 0.2], &[1, 5]);
    assert_close(&vals(&percentile(&x).unwrap().rank), &[0.9, 0.4, 0.9, 0.2, 0.6], 1e-7);
    // An all-equal map is uniform at the mean rank (K+1)/(2K), whatever the order.
    assert_close(&vals(&percentile(&t(&[0.0; 4], &[1, 4])).unwrap().rank), &[0.625; 4], 0.0);
    assert_eq!(vals(&percentile(&t(&[7.0], &[1, 1])).unwrap().rank), vec![1.0]);
    // Per key: the second row's ranks do not see the first row.
    let two = t(&[1.0, 2.0, 3.0, 3.0, 3.0, 1.0], &[2, 3]);
    assert_close(&vals(&percentile(&two).unwrap().rank), &[1.0 / 3.0, 2.0 / 3.0, 1.0, 5.0 / 6.0, 5.0 / 6.0, 1.0 / 3.0], 1e-7);
}

#[test]
fn percentile_mean_is_exact_for_any_ties() {
    let x = t(&[0.5, 0.5, 0.1, 0.9, 0.5, 0.1, 0.2], &[1, 7]);
    let r = percentile(&x).unwrap();
    let sum: f64 = vals(r.numer.as_ref().unwrap()).iter().sum();
    assert_eq!(sum, 7.0 * 8.0, "Σn = K(K+1), so mean rank = (K+1)/(2K)");
}

#[test]
fn zscore_and_minmax_worked_examples() {
    let x = t(&[0.3, 0.1, 0.3, 0.0, 0.2], &[1, 5]);
    assert_close(&vals(&zscore(&x).unwrap()), &[0.715115, 0.351245, 0.715115, 0.200923, 0.538273], GOLD);
    assert_close(&vals(&minmax(&x).unwrap()), &[1.0, 0.333333, 1.0, 0.0, 0.666667], GOLD);
    assert_close(&vals(&minmax(&t(&[2.0; 3], &[1, 3])).unwrap()), &[0.0; 3], 0.0);
    // One position: no spread. 0.5 instead of the reference's NaN.
    assert_eq!(vals(&zscore(&t(&[3.0], &[1, 1])).unwrap()), vec![0.5]);
    // Soft is percentile in the batched path.
    assert_eq!(vals(&rank(&x, Ranking::Soft).unwrap().rank), vals(&rank(&x, Ranking::Percentile).unwrap().rank));
}

// ---- sparsity ("Sparsity") ----

fn columns(cols: &[&[f32]]) -> Tensor {
    // [N, 1, P]: one position per given column.
    let n = cols[0].len();
    let mut v = Vec::new();
    for i in 0..n {
        for c in cols {
            v.push(c[i]);
        }
    }
    t(&v, &[n as i64, 1, cols.len() as i64])
}

fn by_column(x: &Tensor) -> Vec<Vec<f64>> {
    let (n, p) = (x.size()[0] as usize, x.size()[2] as usize);
    let v = vals(x);
    (0..p).map(|c| (0..n).map(|i| v[i * p + c]).collect()).collect()
}

#[test]
fn softmax_and_sparsemax_worked_examples() {
    let x = columns(&[&[0.9, 0.1], &[0.5, 0.45], &[0.2, 0.8]]);
    let act = sparsity::all_active(&x).unwrap();
    let soft = by_column(&sparsity::softmax(&x, &act).unwrap());
    for (got, want) in soft.iter().zip([[0.689974, 0.310026], [0.512497, 0.487503], [0.354344, 0.645656]]) {
        assert_close(got, &want, GOLD);
    }
    let sparse = by_column(&sparsity::sparsemax(&x, &act).unwrap());
    for (got, want) in sparse.iter().zip([[0.9, 0.1], [0.525, 0.475], [0.2, 0.8]]) {
        assert_close(got, &want, GOLD);
    }
    let x3 = columns(&[&[1.0, 0.25, 0.5], &[0.2, 0.0, 0.1]]);
    let s3 = by_column(&sparsity::sparsemax(&x3, &sparsity::all_active(&x3).unwrap()).unwrap());
    assert_close(&s3[0], &[0.75, 0.0, 0.25], GOLD);
    assert_close(&s3[1], &[0.433333, 0.233333, 0.333333], GOLD);
}

#[test]
fn entmax_is_exact_sparse_and_on_the_simplex() {
    // D1. [0.9, 0.1] → [0.771, 0.229] (the reference's reversed bisection gives [0.623, 0.377]).
    let x = columns(&[&[0.9, 0.1], &[3.0, 0.0], &[0.5, 0.45]]);
    let act = sparsity::all_active(&x).unwrap();
    let e = by_column(&sparsity::entmax15(&x, &act).unwrap());
    // Hand solution: τ = 0.25 − sqrt(0.46) for support {1, 2}, p = (x/2 − τ)².
    let tau = 0.25 - 0.46f64.sqrt();
    assert_close(&e[0], &[(0.45 - tau).powi(2), (0.05 - tau).powi(2)], 1e-6);
    assert_close(&e[1], &[1.0, 0.0], 0.0);
    assert_eq!(e[1][1], 0.0, "a spread of 3 leaves the second entry exactly out of the support");
    for col in &e {
        assert!((col.iter().sum::<f64>() - 1.0).abs() < 1e-6, "{col:?} does not sum to 1");
    }
}

#[test]
fn entmax_matches_a_bisection_on_random_columns() {
    tch::manual_seed(7);
    let x = Tensor::randn([6, 4, 50], (Kind::Float, tch::Device::Cpu)) * 2.0;
    let act = sparsity::all_active(&x).unwrap();
    let e = sparsity::entmax15(&x, &act).unwrap();
    let xs = vals(&x);
    let ev = vals(&e);
    let mut zeros = 0;
    for pos in 0..200 {
        let col: Vec<f64> = (0..6).map(|i| xs[i * 200 + pos]).collect();
        let want = oracle::entmax15(&col);
        let got: Vec<f64> = (0..6).map(|i| ev[i * 200 + pos]).collect();
        assert_close(&got, &want, 1e-6);
        assert!((got.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        zeros += got.iter().filter(|&&p| p == 0.0).count();
    }
    assert!(zeros > 100, "entmax on spread-out inputs is sparse (got {zeros} zeros)");
}

#[test]
fn inactive_contributors_get_no_weight() {
    // D3 inside the sparsity maps: an inactive row neither receives weight nor normalizes others.
    let x = columns(&[&[0.9, 0.1, 0.5]]);
    let act = t(&[1.0, 0.0, 1.0], &[3, 1, 1]).to_kind(Kind::Bool);
    for method in [Sparsity::Softmax, Sparsity::Sparsemax, Sparsity::Entmax] {
        let got = by_column(&sparsity::apply(method, &x, &act).unwrap())[0].clone();
        let want = match method {
            Sparsity::Softmax => oracle::softmax(&[0.9, 0.5]),
            Sparsity::Sparsemax => oracle::sparsemax(&[0.9, 0.5]),
            Sparsity::Entmax => oracle::entmax15(&[0.9, 0.5]),
        };
        assert_close(&got, &[want[0], 0.0, want[1]], 1e-6);
    }
    let none = t(&[0.0; 3], &[3, 1, 1]).to_kind(Kind::Bool);
    for method in [Sparsity::Softmax, Sparsity::Sparsemax, Sparsity::Entmax] {
        assert_eq!(vals(&sparsity::apply(method, &x, &none).unwrap()), vec![0.0; 3]);
    }
}

// ---- calibration ("Importance masks and calibration") ----

#[test]
fn calibration_worked_example() {
    let p = t(&[0.679179, 0.320821], &[2, 1, 1]);
    let mask = t(&[1.0, 0.0], &[2, 1, 1]).to_kind(Kind::Bool);
    let cfg = WidenConfig::default();
    assert_close(&vals(&calibration::calibrate(&p, &mask, &cfg).unwrap()), &[0.757105, 0.242895], GOLD);
    let mult = WidenConfig { calibration: Calibration::Multiplicative, s_calibration: 2.0, ..cfg.clone() };
    let m = vals(&calibration::calibrate(&p, &mask, &mult).unwrap());
    assert_close(&m, &[2.0 * 0.679179 / (2.0 * 0.679179 + 0.320821), 0.320821 / (2.0 * 0.679179 + 0.320821)], 1e-6);
    let off = WidenConfig { calibration: Calibration::from_name("something else"), ..cfg };
    assert_eq!(vals(&calibration::calibrate(&p, &mask, &off).unwrap()), vals(&p));
}

// ---- filter ("The filter") ----

const DELTA_1D: [f32; 6] = [0.8, -0.4, 0.1, 0.0, 0.2, -0.05];

#[test]
fn filter_1d_worked_examples() {
    let base = Tensor::zeros([1, 6], (Kind::Float, tch::Device::Cpu));
    let applied = t(&DELTA_1D, &[1, 6]);
    let cases: [(f64, [f64; 6]); 4] = [
        (1.0, [0.8, -0.4, 0.085714, 0.0, 0.2, -0.028571]),
        (0.5, [0.8, -0.4, 0.1, 0.0, 0.2, -0.05]),
        (1.5, [0.8, -0.380952, 0.057143, 0.0, 0.152381, -0.019048]),
        (2.5, [0.548571, -0.228571, 0.034286, 0.0, 0.091429, -0.011429]),
    ];
    for (tf, want) in cases {
        let got = cpu(cfg_t(tf)).filter_delta(&applied, &base, &["bias"]).unwrap();
        assert_close(&vals(&got), &want, GOLD);
    }
}

fn base_2d() -> Tensor {
    t(&[1.0, 0.0, 2.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0], &[1, 3, 4])
}

#[test]
fn filter_2d_worked_example() {
    let applied = t(&[1.5, 0.0, 2.0, 1.1, 0.0, 1.0, 0.1, 1.0, 1.0, 0.5, 0.0, 0.3], &[1, 3, 4]);
    let got = cpu(cfg_t(1.0)).filter_delta(&applied, &base_2d(), &[]).unwrap();
    assert_close(&vals(&got), &[1.5, 0.0, 2.0, 1.1, 0.0, 1.0, 0.04, 1.0, 1.0, 0.5, 0.0, 0.3], GOLD);
    let z = cpu(WidenConfig { ranking: Ranking::ZScore, ..cfg_t(1.0) }).filter_delta(&applied, &base_2d(), &[]).unwrap();
    assert_close(&vals(&sub(&z, &base_2d())), &[0.5, 0.0, 0.0, 0.084456, 0.0, 0.0, 0.050901, 0.0, 0.0, -0.5, 0.0, 0.253369], GOLD);
    let m = cpu(WidenConfig { ranking: Ranking::MinMax, ..cfg_t(1.0) }).filter_delta(&applied, &base_2d(), &[]).unwrap();
    assert_close(&vals(&sub(&m, &base_2d())), &[0.5, 0.0, 0.0, 0.068949, 0.0, 0.0, 0.0, 0.0, 0.0, -0.5, 0.0, 0.206848], GOLD);
}

#[test]
fn filter_single_column_scales_by_one_over_t() {
    let base = t(&[1.0, 1.0, 1.0], &[1, 3, 1]);
    let applied = t(&[2.0, 3.0, 1.0], &[1, 3, 1]);
    for (tf, want) in [(0.5, [2.0, 3.0, 1.0]), (1.0, [2.0, 3.0, 1.0]), (2.0, [1.5, 2.0, 1.0])] {
        assert_close(&vals(&cpu(cfg_t(tf)).filter_delta(&applied, &base, &[]).unwrap()), &want, 1e-6);
    }
}

#[test]
fn filter_passes_flat_keys_and_matches_per_key_in_mixed_batches() {
    // Key 0: constant-magnitude delta (flat → passes). Key 1: a varied delta (filtered).
    let base = Tensor::zeros([2, 6], (Kind::Float, tch::Device::Cpu));
    let applied = t(&[0.5, -0.5, 0.5, 0.5, -0.5, 0.5, 0.8, -0.4, 0.1, 0.0, 0.2, -0.05], &[2, 6]);
    let w = cpu(cfg_t(1.0));
    let got = w.filter_delta(&applied, &base, &[]).unwrap();
    assert_eq!(vals(&got.narrow(0, 0, 1)), vals(&applied.narrow(0, 0, 1)));
    assert_close(&vals(&got.narrow(0, 1, 1)), &[0.8, -0.4, 0.085714, 0.0, 0.2, -0.028571], GOLD);
}

// ---- merge ("The merge") ----

fn deltas_2d() -> (Tensor, Tensor) {
    let a = t(&[0.5, 0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 0.0, 0.0, -0.5, 0.0, 0.3], &[1, 3, 4]);
    let b = t(&[0.0, 0.3, 0.0, 0.0, 0.2, 0.0, 0.0, -0.4, 0.0, 0.0, 0.6, 0.0], &[1, 3, 4]);
    (a, b)
}

fn merge_2d(cfg: WidenConfig) -> Vec<f64> {
    let (da, db) = deltas_2d();
    let base = base_2d();
    let out = cpu(cfg).merge_weights(&[&base + &da, &base + &db], &base, &[]).unwrap();
    vals(&sub(&out, &base))
}

#[test]
fn merge_2d_worked_example() {
    let want = [0.329820, 0.086786, 0.0, 0.038703, 0.068072, 0.0, 0.025848, -0.245186, 0.0, -0.355357, 0.444911, 0.116110];
    assert_close(&merge_2d(cfg_t(1.0)), &want, GOLD);
}

#[test]
fn merge_2d_settings_table() {
    let base = cfg_t(1.0);
    let table: Vec<(WidenConfig, [f64; 12])> = vec![
        (cfg_t(0.01), [0.25, 0.15, 0.0, 0.05, 0.1, 0.0, 0.05, -0.2, 0.0, -0.25, 0.3, 0.15]),
        (cfg_t(2.0), [0.310339, 0.122305, 0.0, 0.043877, 0.075864, 0.0, 0.034918, -0.224492, 0.0, -0.296159, 0.390491, 0.131631]),
        (
            WidenConfig { sparsity: Sparsity::Sparsemax, ..base.clone() },
            [0.378472, 0.070909, 0.0, 0.035, 0.048611, 0.0, 0.015556, -0.26, 0.0, -0.381818, 0.506667, 0.105],
        ),
        (
            WidenConfig { calibration: Calibration::Multiplicative, s_calibration: 2.0, ..base.clone() },
            [0.34278, 0.076944, 0.0, 0.036635, 0.062888, 0.0, 0.021188, -0.253461, 0.0, -0.37176, 0.472874, 0.109904],
        ),
        (
            WidenConfig { s_calibration: 2.0, ..base.clone() },
            [0.355985, 0.050759, 0.0, 0.03294, 0.057606, 0.0, 0.014852, -0.268241, 0.0, -0.415402, 0.510891, 0.098819],
        ),
        (
            WidenConfig { ranking: Ranking::ZScore, ..base.clone() },
            [0.317967, 0.088599, 0.0, 0.030182, 0.072813, 0.0, 0.035729, -0.279272, 0.0, -0.352335, 0.385623, 0.090546],
        ),
        (
            WidenConfig { ranking: Ranking::MinMax, ..base.clone() },
            [0.344452, 0.076286, 0.0, 0.02756, 0.062219, 0.0, 0.031676, -0.289758, 0.0, -0.372856, 0.409941, 0.082681],
        ),
        (
            WidenConfig { calibration: Calibration::Off, ..base.clone() },
            [0.310339, 0.122305, 0.0, 0.043877, 0.075864, 0.0, 0.034918, -0.224492, 0.0, -0.296159, 0.390491, 0.131631],
        ),
    ];
    for (cfg, want) in table {
        let label = format!("{cfg:?}");
        let got = merge_2d(cfg);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= GOLD, "{label}: index {i}: got {g}, want {w}");
        }
    }
}

#[test]
fn merge_2d_exact_entmax_matches_the_oracle() {
    // The reference's entmax row is its reversed-bisection quirk; D1's entmax is checked against
    // the float64 oracle (which solves entmax by bisection).
    let cfg = WidenConfig { sparsity: Sparsity::Entmax, ..cfg_t(1.0) };
    let (da, db) = deltas_2d();
    let base = base_2d();
    let want = oracle::merge_batch(&cfg, &base, &[&base + &da, &base + &db]);
    assert_close(&merge_2d(cfg), &vals(&sub(&want, &base)), 1e-6);
}

fn base_1d() -> Tensor {
    t(&[0.0, 1.0, 0.5, -1.0], &[1, 4])
}

#[test]
fn merge_1d_worked_examples() {
    let base = base_1d();
    let a = &base + t(&[0.4, 0.0, 0.1, 0.2], &[1, 4]);
    let b = &base + t(&[0.0, 0.3, 0.2, -0.1], &[1, 4]);
    for tf in [1.0, 3.0] {
        let got = cpu(cfg_t(tf)).merge_weights(&[a.shallow_clone(), b.shallow_clone()], &base, &[]).unwrap();
        assert_close(&vals(&got), &[0.271672, 1.203754, 0.656218, -0.931347], GOLD);
    }
    let sm = WidenConfig { sparsity: Sparsity::Sparsemax, ..cfg_t(1.0) };
    let got = cpu(sm).merge_weights(&[a.shallow_clone(), b.shallow_clone()], &base, &[]).unwrap();
    assert_close(&vals(&got), &[0.35, 1.2625, 0.6625, -0.9125], GOLD);
}

// ---- D3 non-contributors ----

#[test]
fn a_zero_delta_contributor_is_excluded_per_key() {
    // Reference: [0.271672, 1.0, 0.543782, -0.912435] (the zero branch takes a softmax share).
    // D3: only A contributes, so the key gets filter_delta(A): ranks of |A| = [1, .25, .5, .75],
    // threshold 0.625 → 0.4 and 0.2 kept, 0.1 scaled by 0.5/0.625 = 0.8.
    let base = base_1d();
    let a = &base + t(&[0.4, 0.0, 0.1, 0.2], &[1, 4]);
    let w = cpu(cfg_t(1.0));
    let got = w.merge_weights(&[a.shallow_clone(), base.shallow_clone()], &base, &[]).unwrap();
    assert_close(&vals(&got), &[0.4, 1.0, 0.58, -0.8], 1e-6);
    assert_eq!(vals(&got), vals(&w.filter_delta(&a, &base, &[]).unwrap()), "bit-identical to the filter");
    // 2-D, in a batch where the other key has both contributors.
    let (da, db) = deltas_2d();
    let b2 = Tensor::cat(&[base_2d(), base_2d()], 0);
    let wa = &b2 + Tensor::cat(&[&da, &da], 0);
    let wb = &b2 + Tensor::cat(&[&db, &(&db * 0.0)], 0);
    let got = w.merge_weights(&[wa.shallow_clone(), wb], &b2, &[]).unwrap();
    let want0 = [0.329820, 0.086786, 0.0, 0.038703, 0.068072, 0.0, 0.025848, -0.245186, 0.0, -0.355357, 0.444911, 0.116110];
    assert_close(&vals(&sub(&got.narrow(0, 0, 1), &base_2d())), &want0, GOLD);
    let filtered = w.filter_delta(&(&base_2d() + &da), &base_2d(), &[]).unwrap();
    assert_eq!(vals(&got.narrow(0, 1, 1)), vals(&filtered));
}

#[test]
fn no_contributor_left_gives_the_backbone() {
    let base = base_2d();
    let got = cpu(cfg_t(1.0)).merge_weights(&[base.copy(), base.copy()], &base, &[]).unwrap();
    assert_eq!(vals(&got), vals(&base));
}

// ---- D5 t_factor ----

#[test]
fn t_factor_cases() {
    let (da, db) = deltas_2d();
    let base = base_2d();
    let (a, b) = (&base + &da, &base + &db);
    // t == 0: backbone only, for both operations.
    let zero = cpu(cfg_t(0.0));
    assert_eq!(vals(&zero.filter_delta(&a, &base, &[]).unwrap()), vals(&base));
    assert_eq!(vals(&zero.merge_weights(&[a.shallow_clone(), b.shallow_clone()], &base, &[]).unwrap()), vals(&base));
    // t < 0: WIDEN off. The filter passes the contribution, the merge adds the deltas.
    let off = cpu(cfg_t(-1.0));
    assert_eq!(vals(&off.filter_delta(&a, &base, &[]).unwrap()), vals(&a));
    let sum = vals(&off.merge_weights(&[a.shallow_clone(), b.shallow_clone()], &base, &[]).unwrap());
    assert_close(&sum, &vals(&(&base + &da + &db)), 1e-7);
    // Low-rank contributions follow the same rules.
    let up = t(&[1.0, 0.0, 2.0], &[1, 3, 1]);
    let down = t(&[0.1, 0.2, 0.0, -0.1], &[1, 1, 4]);
    let lr = Contribution::low_rank(up.shallow_clone(), down.shallow_clone());
    assert_eq!(vals(&zero.filter(&base, &lr, &[]).unwrap()), vals(&base));
    let applied = &base + up.bmm(&down);
    assert_close(&vals(&off.filter(&base, &lr, &[]).unwrap()), &vals(&applied), 1e-7);
}

// ---- errors and fallbacks ("Fallbacks") ----

#[test]
fn unsupported_ranks_fall_back() {
    // Scalar parameters (batched: [B]) and 5-D ones take the fallback.
    let w = cpu(cfg_t(1.0));
    let base = t(&[1.0, 2.0], &[2]);
    let applied = t(&[1.5, 2.5], &[2]);
    assert_eq!(vals(&w.filter_delta(&applied, &base, &["s0", "s1"]).unwrap()), vals(&applied));
    let merged = w.merge_weights(&[&base + 1.0, &base + 3.0], &base, &["s0", "s1"]).unwrap();
    assert_eq!(vals(&merged), vals(&(&base + 2.0)));
    let b5 = Tensor::ones([1, 2, 2, 2, 2, 2], (Kind::Float, tch::Device::Cpu));
    let merged = w.merge_weights(&[&b5 + 1.0, &b5 + 3.0], &b5, &["five_d"]).unwrap();
    assert_eq!(vals(&merged), vals(&(&b5 + 2.0)));
}

#[test]
fn mismatched_shapes_fall_back_or_fail() {
    let w = cpu(cfg_t(1.0));
    let base = base_2d();
    // The filter's fallback is the contribution itself; a merge whose fallback cannot stack the
    // inputs fails with the error.
    let odd = Tensor::ones([1, 3, 5], (Kind::Float, tch::Device::Cpu));
    assert_eq!(vals(&w.filter_delta(&odd, &base, &["k"]).unwrap()), vals(&odd));
    assert!(w.merge_weights(&[odd.shallow_clone(), base.shallow_clone()], &base, &["k"]).is_err());
    // Low-rank factors that do not fit the key: the fallback cannot form them either.
    let lr = Contribution::low_rank(Tensor::ones([1, 2, 1], (Kind::Float, tch::Device::Cpu)), Tensor::ones([1, 1, 4], (Kind::Float, tch::Device::Cpu)));
    assert!(w.filter(&base, &lr, &["k"]).is_err());
}

#[test]
fn empty_lists_and_bad_settings_are_errors() {
    let w = cpu(cfg_t(1.0));
    let err = w.merge_weights(&[], &base_2d(), &[]).unwrap_err();
    assert!(matches!(err, WidenError::EmptyWeights));
    assert!(err.to_string().contains("weights_list must not be empty"));
    let err = "bogus".parse::<Sparsity>().unwrap_err().to_string();
    for name in ["'softmax'", "'sparsemax'", "'entmax'", "bogus"] {
        assert!(err.contains(name), "{err}");
    }
    assert!("nope".parse::<Ranking>().unwrap_err().to_string().contains("Unknown strategy: nope"));
    assert!(comfyrs_nodes::widen::Widen::new(cfg_t(f64::NAN), tch::Device::Cpu).is_err());
}

#[test]
fn defaults_are_the_references() {
    let c = WidenConfig::default();
    assert_eq!((c.t_factor, c.s_calibration, c.renorm_eps), (1.0, 1.0, 1e-12));
    assert_eq!((c.ranking, c.sparsity, c.calibration), (Ranking::Percentile, Sparsity::Softmax, Calibration::Overwrite));
}

// ---- in-place evaluation ----

#[test]
fn operations_leave_the_backbone_alone_and_reusing_gives_the_same_result() {
    // On the compute device already and fp32: the operations' working copy would alias it.
    let base = base_2d().to_device(test_device());
    let before = base.copy();
    let up = t(&[1.0, 0.5, -2.0], &[1, 3, 1]);
    let down = t(&[0.1, 0.2, 0.0, -0.1], &[1, 1, 4]);
    let (da, _) = deltas_2d();
    let parts = [
        Contribution::low_rank(up.shallow_clone(), down.shallow_clone()),
        Contribution::Weights(&base + da.to_device(test_device())),
    ];
    let w = cpu(cfg_t(1.0));
    let merged = w.merge(&base, &parts, &["k"]).unwrap();
    let filtered = w.filter(&base, &parts[0], &["k"]).unwrap();
    assert!(base.equal(&before), "merge/filter must not write into the caller's backbone");
    let merged_reusing = w.merge_reusing(base.copy(), &parts, &["k"]).unwrap();
    let filtered_reusing = w.filter_reusing(base.copy(), &parts[0], &["k"]).unwrap();
    assert_eq!(vals(&merged_reusing), vals(&merged));
    assert_eq!(vals(&filtered_reusing), vals(&filtered));
    assert!(base.equal(&before));
}

// ---- reused statistics ----

#[test]
fn merges_redone_from_kept_statistics_equal_fresh_ones_at_any_t() {
    tch::manual_seed(7);
    // A batch of 3 keys with a low-rank contributor and a dense one.
    let base = Tensor::randn([3, 6, 5], (tch::Kind::Float, tch::Device::Cpu)).to_device(test_device());
    let parts = || {
        vec![
            Contribution::low_rank(
                Tensor::randn([3, 6, 2], (tch::Kind::Float, tch::Device::Cpu)).to_device(test_device()) * 0.1,
                Tensor::randn([3, 2, 5], (tch::Kind::Float, tch::Device::Cpu)).to_device(test_device()),
            ),
            Contribution::Weights(&base + Tensor::randn([3, 6, 5], (tch::Kind::Float, tch::Device::Cpu)).to_device(test_device()) * 0.05),
        ]
    };
    let parts = parts();
    let first = cpu(cfg_t(1.0));
    let (_, stats) = first.merge_with_stats(base.copy(), &parts, None, &[]).unwrap();
    let stats = stats.expect("2-D keys have column statistics");
    for t_factor in [0.3, 1.0, 2.5] {
        let w = cpu(cfg_t(t_factor));
        let fresh = w.merge(&base, &parts, &[]).unwrap();
        let (reused, _) = w.merge_with_stats(base.copy(), &parts, Some(&stats), &[]).unwrap();
        assert_eq!(vals(&reused), vals(&fresh), "t = {t_factor}");
        // One contributor: the filter, the same way.
        let (_, one) = w.merge_with_stats(base.copy(), &parts[..1], None, &[]).unwrap();
        let (again, _) = w.merge_with_stats(base.copy(), &parts[..1], one.as_ref(), &[]).unwrap();
        assert_eq!(vals(&again), vals(&w.filter(&base, &parts[0], &[]).unwrap()), "filter, t = {t_factor}");
    }
    // Statistics of another merge are refused, not silently replaced by a fallback.
    let err = first.merge_with_stats(base.copy(), &parts[..1], Some(&stats), &[]).unwrap_err();
    assert!(err.to_string().contains("known statistics have shape"), "{err}");
}
