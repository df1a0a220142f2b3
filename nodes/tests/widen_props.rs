//! Property tests of the WIDEN operations on random shapes and values, against the float64
//! oracle (`comfyrs_testkit::oracle`), on the dense and the low-rank path.
//!
//! Tolerances (`docs/decisions.md` D21, D22): column statistics within 1e-5 and merged deltas
//! within 1e-4, relative to the key's largest value. Ranks are discontinuous where two statistics
//! tie, so merge cases whose float64 statistics have distinct values closer than 1e-4 (relative)
//! are skipped: there fp32 and float64 may legitimately order them differently.

mod widen_common;

use comfyrs_testkit::oracle::{self, Shape};
use comfyrs_nodes::widen::{Calibration, Contribution, Sparsity, Widen, WidenConfig};
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};
use widen_common::*;

/// A random key shape after the batch dim: a vector, Linear, Conv1d or Conv2d.
fn key_shape() -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        (2i64..24).prop_map(|n| vec![n]),
        (1i64..10, 1i64..12).prop_map(|(o, i)| vec![o, i]),
        (1i64..8, 1i64..5, 1i64..4).prop_map(|(o, i, k)| vec![o, i, k]),
        (1i64..8, 1i64..4, 1i64..3, 1i64..3).prop_map(|(o, i, h, w)| vec![o, i, h, w]),
    ]
}

fn columns_shape() -> impl Strategy<Value = Vec<i64>> {
    key_shape().prop_filter("2-D+ keys", |s| s.len() >= 2)
}

fn batched(b: i64, s: &[i64]) -> Vec<i64> {
    let mut v = vec![b];
    v.extend_from_slice(s);
    v
}

/// One contributor as the test builds it: either dense weights or low-rank factors, plus its
/// float64 weights for the oracle.
struct Contributor {
    contribution: Contribution,
    exact: Tensor,
}

/// A random contributor for backbone `b` (`[B, *S]` fp32). `scale` is the delta's size relative
/// to the backbone; `zero_keys` lists keys where it changes nothing (D3).
fn contributor(rng: &mut SplitMix, b: &Tensor, low_rank: bool, scale: f64, zero_keys: &[i64]) -> Contributor {
    let size = b.size();
    let (batch, out) = (size[0], size[1]);
    let mut keep = vec![1f32; batch as usize];
    for &k in zero_keys {
        keep[k as usize] = 0.0;
    }
    if low_rank && size.len() >= 3 {
        let k: i64 = size[2..].iter().product();
        let r = 1 + rng.below(4) as i64;
        let up = rng.tensor(&[batch, out, r], scale) * t(&keep, &[batch, 1, 1]);
        let down = rng.tensor(&[batch, r, k], 1.0);
        let exact = b.to_kind(Kind::Double)
            + up.to_kind(Kind::Double).bmm(&down.to_kind(Kind::Double)).reshape(size.as_slice());
        Contributor { contribution: Contribution::low_rank(up, down), exact }
    } else {
        let keep_shape: Vec<i64> = std::iter::once(batch).chain(std::iter::repeat_n(1, size.len() - 1)).collect();
        let delta = rng.tensor(&size, scale) * t(&keep, &keep_shape);
        let w = b + delta;
        Contributor { exact: w.to_kind(Kind::Double), contribution: Contribution::Weights(w) }
    }
}

/// Whether every distinct pair of values in each list is separated by more than `rel` of the
/// list's largest magnitude.
fn well_separated(lists: &[Vec<f64>], rel: f64) -> bool {
    lists.iter().all(|x| {
        let mut v = x.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let scale = v.iter().map(|a| a.abs()).fold(0.0, f64::max);
        v.windows(2).all(|w| w[0] == w[1] || w[1] - w[0] > rel * scale)
    })
}

/// The oracle's ranked quantities of every contributor on every key (column statistics or
/// element magnitudes), to tell tie-prone cases.
fn ranked_quantities(b: &Tensor, ws: &[Tensor]) -> Vec<Vec<f64>> {
    let size = b.size();
    let shape = Shape::of_batched(&size);
    let bv = vals(b);
    let mut lists = Vec::new();
    for w in ws {
        let wv = vals(w);
        match shape {
            Shape::Vector(n) => {
                for key in 0..size[0] as usize {
                    let r = key * n..(key + 1) * n;
                    lists.push(wv[r.clone()].iter().zip(&bv[r]).map(|(x, y)| (x - y).abs()).collect());
                }
            }
            Shape::Columns { out, k } => {
                for key in 0..size[0] as usize {
                    let r = key * out * k..(key + 1) * out * k;
                    let (dm, dd) = oracle::column_stats(&bv[r.clone()], &wv[r], out, k);
                    lists.push(dm);
                    lists.push(dd);
                }
            }
        }
    }
    lists
}

/// Per key, the error of the merged delta `‖(got − b) − (want − b)‖∞` over what is allowed:
/// `rel · ‖want − b‖∞` plus the fp32 rounding of the result itself (`4ε·‖want‖∞`: a delta far
/// below the weights' own precision cannot be resolved more finely than that). The largest ratio
/// over the batch; at most 1 passes.
fn worst_key_error(got: &Tensor, want: &Tensor, b: &Tensor, rel: f64) -> f64 {
    let batch = b.size()[0];
    (0..batch)
        .map(|i| {
            let g = vals(&sub(&got.get(i), &b.get(i)));
            let w = vals(&sub(&want.get(i), &b.get(i)));
            let total = vals(&want.get(i));
            let err = g.iter().zip(&w).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            let delta = w.iter().map(|y| y.abs()).fold(0.0, f64::max);
            let weights = total.iter().map(|y| y.abs()).fold(0.0, f64::max);
            err / (rel * delta + 4.0 * f32::EPSILON as f64 * weights + 1e-30)
        })
        .fold(0.0, f64::max)
}

fn check_stats(b: &Tensor, c: Contributor) -> Result<(), TestCaseError> {
    let size = b.size();
    let stats = cpu(WidenConfig::default()).column_stats(b, &[c.contribution]).unwrap();
    let Shape::Columns { out, k } = Shape::of_batched(&size) else { unreachable!() };
    let (bv, wv) = (vals(b), vals(&c.exact));
    let (dm, dd) = (vals(&stats.dm.get(0)), vals(&stats.dd.get(0)));
    let m = out * k;
    for key in 0..size[0] as usize {
        let (want_dm, want_dd) = oracle::column_stats(&bv[key * m..(key + 1) * m], &wv[key * m..(key + 1) * m], out, k);
        let e_dm = rel_inf(&dm[key * k..(key + 1) * k], &want_dm, 1e-30);
        let e_dd = rel_inf(&dd[key * k..(key + 1) * k], &want_dd, 1e-30);
        prop_assert!(e_dm <= 1e-5, "magnitude divergence off by {e_dm:e}");
        prop_assert!(e_dd <= 1e-5, "direction divergence off by {e_dd:e}");
    }
    Ok(())
}

fn config_strategy() -> impl Strategy<Value = WidenConfig> {
    (
        prop::sample::select(vec![-1.0, 0.0, 0.3, 0.8, 1.0, 1.3, 2.0, 3.0]),
        prop::sample::select(vec![Sparsity::Softmax, Sparsity::Sparsemax, Sparsity::Entmax]),
        prop::sample::select(vec![Calibration::Overwrite, Calibration::Multiplicative, Calibration::Off]),
        prop::sample::select(vec![1.0, 2.0, 0.5]),
    )
        .prop_map(|(t, sparsity, calibration, s)| WidenConfig {
            t_factor: t,
            sparsity,
            calibration,
            s_calibration: s,
            ..WidenConfig::default()
        })
}

/// `n` cases unless PROPTEST_CASES asks for another number (for long local runs).
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(cases(48))]

    /// D21 statistics on the dense path within 1e-5 of float64 (relative to the key's largest
    /// value), on any shape.
    #[test]
    fn dense_column_stats_match_float64(
        shape in columns_shape(), batch in 1i64..4, seed in any::<u64>(),
        scale in prop::sample::select(vec![1e-3, 1e-2, 0.1, 1.0]),
    ) {
        let mut rng = SplitMix::new(seed);
        let b = rng.tensor(&batched(batch, &shape), 1.0);
        let c = contributor(&mut rng, &b, false, scale, &[]);
        check_stats(&b, c)?;
    }

    /// The same from low-rank factors, where `a` comes from `P = Uᵀ·B` in fp32 (the dense path
    /// sums exact products in float64). That bounds the relative precision by the conditioning
    /// of the two differences the statistics measure: `1 − cos ∝ ‖Δ⊥‖²` loses ~1e-7/sin²(Δ, B),
    /// and `mW − mB ∝ 2a + c` loses ~1e-7·c/|2a + c|. So this property is stated for LoRA-sized
    /// deltas (≤ 0.1 of the weights), outputs of 8 and more (every LoRA target; at 2 outputs a
    /// random delta lies within a few degrees of its backbone column several percent of the time)
    /// and keys with several columns (errors are relative to the key's largest statistic).
    #[test]
    fn low_rank_column_stats_match_float64(
        out in 8i64..24, rest in prop::sample::select(vec![vec![5], vec![3, 2], vec![2, 2, 2], vec![9]]),
        batch in 1i64..3, seed in any::<u64>(), scale in prop::sample::select(vec![1e-3, 1e-2, 0.1]),
    ) {
        let mut rng = SplitMix::new(seed);
        let shape: Vec<i64> = std::iter::once(out).chain(rest).collect();
        let b = rng.tensor(&batched(batch, &shape), 1.0);
        let c = contributor(&mut rng, &b, true, scale, &[]);
        check_stats(&b, c)?;
    }

    /// Filter and merge, dense and low-rank and mixed, against float64: merged deltas within 1e-4.
    #[test]
    fn merge_matches_float64(
        shape in key_shape(), batch in 1i64..4, n in 1usize..5, seed in any::<u64>(),
        cfg in config_strategy(), low_rank_mask in 0u8..16, zero_mask in 0u16..4096,
        scale in prop::sample::select(vec![1e-2, 0.1, 1.0]),
    ) {
        let mut rng = SplitMix::new(seed);
        let size = batched(batch, &shape);
        let b = rng.tensor(&size, 1.0);
        let contributors: Vec<Contributor> = (0..n)
            .map(|i| {
                // Each (contributor, key) is a non-contributor with probability 1/4 (D3).
                let zeros: Vec<i64> = (0..batch).filter(|key| (zero_mask >> (3 * i + *key as usize)) & 3 == 0).collect();
                contributor(&mut rng, &b, low_rank_mask >> i & 1 == 1, scale, &zeros)
            })
            .collect();
        let exact: Vec<Tensor> = contributors.iter().map(|c| c.exact.shallow_clone()).collect();
        prop_assume!(well_separated(&ranked_quantities(&b, &exact), 1e-4));
        let want = oracle::merge_batch(&cfg, &b, &exact);
        let w = cpu(cfg.clone());
        let parts: Vec<Contribution> = contributors.into_iter().map(|c| c.contribution).collect();
        let got = host(if n == 1 { w.filter(&b, &parts[0], &[]).unwrap() } else { w.merge(&b, &parts, &[]).unwrap() });
        prop_assert_eq!(got.size(), size);
        let err = worst_key_error(&got, &want, &b, 1e-4);
        prop_assert!(err <= 1.0, "merged delta off by {err} × the 1e-4 tolerance ({cfg:?}, n = {n})");
    }

    /// The low-rank path and the dense path give the same merge.
    #[test]
    fn low_rank_equals_dense(
        shape in columns_shape(), batch in 1i64..3, n in 1usize..5, seed in any::<u64>(),
        t_factor in prop::sample::select(vec![0.5, 1.0, 2.0]),
    ) {
        let mut rng = SplitMix::new(seed);
        let size = batched(batch, &shape);
        let b = rng.tensor(&size, 1.0);
        let contributors: Vec<Contributor> = (0..n).map(|_| contributor(&mut rng, &b, true, 0.1, &[])).collect();
        let exact: Vec<Tensor> = contributors.iter().map(|c| c.exact.shallow_clone()).collect();
        prop_assume!(well_separated(&ranked_quantities(&b, &exact), 1e-4));
        let dense: Vec<Contribution> = exact.iter().map(|e| Contribution::Weights(e.to_kind(Kind::Float))).collect();
        let low: Vec<Contribution> = contributors.into_iter().map(|c| c.contribution).collect();
        let w = cpu(cfg_t(t_factor));
        let got_low = host(w.merge(&b, &low, &[]).unwrap());
        let got_dense = host(w.merge(&b, &dense, &[]).unwrap());
        let err = worst_key_error(&got_low, &got_dense, &b, 1e-4);
        prop_assert!(err <= 1.0, "low-rank vs dense: {err} × the 1e-4 tolerance");
    }

    /// D4: a key's result does not depend on its batch: batch of 1 == batch of N, bit for bit.
    #[test]
    fn batch_of_one_equals_batch_of_n(
        shape in key_shape(), batch in 2i64..5, n in 1usize..4, seed in any::<u64>(),
        cfg in config_strategy(), low_rank in any::<bool>(),
    ) {
        // Bit-identity is a CPU guarantee (D4); CUDA kernels may differ in the last bit.
        if test_device() != Device::Cpu {
            return Ok(());
        }
        let mut rng = SplitMix::new(seed);
        let size = batched(batch, &shape);
        let b = rng.tensor(&size, 1.0);
        let contributors: Vec<Contributor> = (0..n)
            .map(|i| contributor(&mut rng, &b, low_rank, 0.1, if i == 0 { &[1] } else { &[] }))
            .collect();
        let parts: Vec<&Contribution> = contributors.iter().map(|c| &c.contribution).collect();
        let w = cpu(cfg);
        let all = run_merge(&w, &b, &parts);
        for key in 0..batch {
            let one: Vec<Contribution> = parts.iter().map(|c| slice_key(c, key)).collect();
            let alone = run_merge(&w, &b.narrow(0, key, 1), &one.iter().collect::<Vec<_>>());
            prop_assert!(alone.equal(&all.narrow(0, key, 1)), "key {key} differs alone vs in a batch of {batch}");
        }
    }

    /// Contributor order does not matter.
    #[test]
    fn merge_is_invariant_to_contributor_order(
        shape in key_shape(), n in 2usize..5, seed in any::<u64>(), cfg in config_strategy(),
    ) {
        let mut rng = SplitMix::new(seed);
        let size = batched(2, &shape);
        let b = rng.tensor(&size, 1.0);
        let contributors: Vec<Contributor> = (0..n).map(|i| contributor(&mut rng, &b, i % 2 == 0, 0.1, &[])).collect();
        let parts: Vec<&Contribution> = contributors.iter().map(|c| &c.contribution).collect();
        let w = cpu(cfg);
        let forward = run_merge(&w, &b, &parts);
        let mut reversed = parts.clone();
        reversed.reverse();
        reversed.rotate_left(1);
        let backward = run_merge(&w, &b, &reversed);
        // Only the summation order differs: fp32 rounding.
        let err = worst_key_error(&backward, &forward, &b, 1e-5);
        prop_assert!(err <= 1.0, "order changed the merge by {err} × 1e-5");
    }

    /// D5: t == 0 gives the backbone exactly; t < 0 gives the contribution (filter) or the sum of
    /// the deltas (merge).
    #[test]
    fn t_factor_at_or_below_zero(
        shape in key_shape(), n in 1usize..4, seed in any::<u64>(), t_neg in -3.0f64..-1e-6,
        low_rank in any::<bool>(),
    ) {
        let mut rng = SplitMix::new(seed);
        let size = batched(2, &shape);
        let b = rng.tensor(&size, 1.0);
        let contributors: Vec<Contributor> = (0..n).map(|_| contributor(&mut rng, &b, low_rank, 0.1, &[])).collect();
        let parts: Vec<&Contribution> = contributors.iter().map(|c| &c.contribution).collect();
        prop_assert!(run_merge(&cpu(cfg_t(0.0)), &b, &parts).equal(&b));
        let off = run_merge(&cpu(cfg_t(t_neg)), &b, &parts);
        let mut want = b.to_kind(Kind::Double);
        for c in &contributors {
            want += &c.exact - b.to_kind(Kind::Double);
        }
        let err = worst_key_error(&off, &want, &b, 1e-5);
        prop_assert!(err <= 1.0, "t < 0 should add the deltas: off by {err} × 1e-5");
        if n == 1 {
            if let Contribution::Weights(w) = parts[0] {
                prop_assert!(off.equal(w), "t < 0 filter passes the contribution unchanged");
            }
        }
    }

    /// Sparsity maps put each position on the simplex of its active contributors.
    #[test]
    fn sparsity_outputs_are_on_the_simplex(
        n in 1i64..9, positions in 1i64..40, seed in any::<u64>(), spread in 0.1f64..5.0,
        active_bits in any::<u64>(),
    ) {
        use comfyrs_nodes::widen::sparsity;
        let mut rng = SplitMix::new(seed);
        let x = rng.tensor(&[n, 1, positions], spread);
        let act: Vec<f32> = (0..n).map(|i| (active_bits >> i & 1) as f32).collect();
        let active = t(&act, &[n, 1, 1]).to_kind(Kind::Bool);
        let any = act.iter().any(|&a| a > 0.0);
        for method in [Sparsity::Softmax, Sparsity::Sparsemax, Sparsity::Entmax] {
            let p = sparsity::apply(method, &x, &active).unwrap();
            let pv = vals(&p);
            let xv = vals(&x);
            for pos in 0..positions as usize {
                let col: Vec<f64> = (0..n as usize).map(|i| pv[i * positions as usize + pos]).collect();
                prop_assert!(col.iter().all(|&v| v >= 0.0 && v.is_finite()), "{method}: {col:?}");
                let total: f64 = col.iter().sum();
                prop_assert!((total - if any { 1.0 } else { 0.0 }).abs() < 1e-5, "{method}: sums to {total}");
                let idx: Vec<usize> = (0..n as usize).filter(|&i| act[i] > 0.0).collect();
                prop_assert!((0..n as usize).filter(|i| act[*i] == 0.0).all(|i| col[i] == 0.0));
                if any {
                    let xs: Vec<f64> = idx.iter().map(|&i| xv[i * positions as usize + pos]).collect();
                    let want = match method {
                        Sparsity::Softmax => oracle::softmax(&xs),
                        Sparsity::Sparsemax => oracle::sparsemax(&xs),
                        Sparsity::Entmax => oracle::entmax15(&xs),
                    };
                    let got: Vec<f64> = idx.iter().map(|&i| col[i]).collect();
                    prop_assert!(rel_inf(&got, &want, 1.0) < 1e-5, "{method}: {got:?} vs {want:?}");
                }
            }
        }
    }

    /// Degenerate inputs: zero columns, identical contributors, a single column, huge and tiny
    /// magnitudes, fp16 storage — finite results in the backbone's dtype.
    #[test]
    fn degenerate_inputs_stay_finite(
        shape in key_shape(), seed in any::<u64>(), cfg in config_strategy(),
        magnitude in prop::sample::select(vec![1e-30f64, 1e-12, 1.0, 1e12, 1e30]),
        case in 0usize..4, half in any::<bool>(),
    ) {
        let mut rng = SplitMix::new(seed);
        let size = batched(2, &shape);
        let magnitude = if half { magnitude.clamp(1e-3, 1e3) } else { magnitude };
        let mut b = rng.tensor(&size, magnitude);
        // Zero columns (or elements) in the backbone.
        let zero_cols: Vec<f32> = (0..*size.last().unwrap()).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        b *= t(&zero_cols, &[*size.last().unwrap()]);
        let delta = rng.tensor(&size, magnitude * 0.1);
        let w1 = match case {
            0 => &b + &delta,
            1 => b.zeros_like(),                       // a contributor that zeroes everything
            2 => &b * &t(&zero_cols, &[*size.last().unwrap()]) + &delta * 0.0, // == backbone
            _ => (&b + &delta) * t(&zero_cols, &[*size.last().unwrap()]),
        };
        let w2 = w1.copy();                             // identical contributors
        let w3 = &b + rng.tensor(&size, magnitude * 0.1);
        let kind = if half { Kind::Half } else { Kind::Float };
        let (b, w1, w2, w3) = (b.to_kind(kind), w1.to_kind(kind), w2.to_kind(kind), w3.to_kind(kind));
        let w = cpu(cfg);
        for got in [
            w.filter_delta(&w1, &b, &["k"]).unwrap(),
            w.merge_weights(&[w1.shallow_clone(), w2.shallow_clone()], &b, &["k"]).unwrap(),
            w.merge_weights(&[w1.shallow_clone(), w2.shallow_clone(), w3.shallow_clone()], &b, &["k"]).unwrap(),
        ] {
            prop_assert_eq!(got.kind(), kind);
            assert_finite(&got);
        }
        if size.len() >= 3 && !half && magnitude <= 1e12 {
            let out = size[1];
            let k: i64 = size[2..].iter().product();
            let up = rng.tensor(&[2, out, 2], magnitude.sqrt() * 0.1);
            let down = rng.tensor(&[2, 2, k], magnitude.sqrt());
            let lr = Contribution::low_rank(up, down);
            let zero = Contribution::low_rank(Tensor::zeros([2, out, 1], (Kind::Float, Device::Cpu)), Tensor::ones([2, 1, k], (Kind::Float, Device::Cpu)));
            assert_finite(&w.filter(&b, &lr, &["k"]).unwrap());
            assert_finite(&w.merge(&b, &[lr, zero], &["k"]).unwrap());
        }
    }
}

fn run_merge(w: &Widen, b: &Tensor, parts: &[&Contribution]) -> Tensor {
    let owned: Vec<Contribution> = parts.iter().map(|c| clone_contribution(c)).collect();
    host(if owned.len() == 1 { w.filter(b, &owned[0], &[]).unwrap() } else { w.merge(b, &owned, &[]).unwrap() })
}

fn clone_contribution(c: &Contribution) -> Contribution {
    match c {
        Contribution::Weights(w) => Contribution::Weights(w.shallow_clone()),
        Contribution::LowRank { up, down } => Contribution::low_rank(up.shallow_clone(), down.shallow_clone()),
    }
}

fn slice_key(c: &Contribution, key: i64) -> Contribution {
    match c {
        // copies, so the single-key inputs do not share storage (or strides) with the batch
        Contribution::Weights(w) => Contribution::Weights(w.narrow(0, key, 1).copy()),
        Contribution::LowRank { up, down } => Contribution::low_rank(up.narrow(0, key, 1).copy(), down.narrow(0, key, 1).copy()),
    }
}

/// D21's target on a full-size SDXL key (640×640, weights ~0.02, LoRA deltas a few percent of
/// them): the merged delta of one, two and four LoRAs within 1e-4 of float64, on both paths,
/// measured norm-wise as D21 states it. (Element-wise, a key with K columns can differ by ~1/K on
/// the few columns whose statistics tie within fp32 precision and swap adjacent ranks; that is
/// printed for information.)
#[test]
fn full_size_merge_matches_float64_normwise() {
    let mut rng = SplitMix::new(640);
    let (out, k) = (640i64, 640i64);
    let b = rng.tensor(&[1, out, k], 0.02);
    for n in [1usize, 2, 4] {
        let factors: Vec<(Tensor, Tensor)> = (0..n)
            .map(|i| {
                let r = [16i64, 32, 8, 24][i];
                (rng.tensor(&[1, out, r], 0.05), rng.tensor(&[1, r, k], 0.01))
            })
            .collect();
        let exact: Vec<Tensor> = factors
            .iter()
            .map(|(u, d)| b.to_kind(Kind::Double) + u.to_kind(Kind::Double).bmm(&d.to_kind(Kind::Double)))
            .collect();
        let cfg = WidenConfig::default();
        let want = oracle::merge_batch(&cfg, &b, &exact);
        let want_delta = sub(&want, &b);
        let w = cpu(cfg);
        let low: Vec<Contribution> = factors.iter().map(|(u, d)| Contribution::low_rank(u.shallow_clone(), d.shallow_clone())).collect();
        let dense: Vec<Contribution> = exact.iter().map(|e| Contribution::Weights(e.to_kind(Kind::Float))).collect();
        for (path, parts) in [("low-rank", &low), ("dense", &dense)] {
            let got = host(if n == 1 { w.filter(&b, &parts[0], &[]).unwrap() } else { w.merge(&b, parts, &[]).unwrap() });
            let err = sub(&got, &want);
            let rel = (err.square().sum(Kind::Double).double_value(&[]) / want_delta.square().sum(Kind::Double).double_value(&[])).sqrt();
            let rel_inf = err.abs().max().double_value(&[]) / want_delta.abs().max().double_value(&[]);
            println!("N = {n}, {path}: relative error {rel:.2e} (element-wise max {rel_inf:.2e})");
            assert!(rel <= 1e-4, "N = {n}, {path}: merged delta off by {rel:e} relative to float64");
        }
    }
}

/// Diagnostic for the benchmark's `rel. diff` column (not a pass/fail property): on keys like the
/// benchmark's (16 keys of K = 1280 columns, 8 LoRAs), compares the low-rank path, fed the exact factors, and
/// the dense path, fed the fp32-rounded weights `fl(B + U·D)`, each with the float64 oracle of its
/// own input and with the other's.
#[test]
#[ignore = "diagnostic; run with --ignored --nocapture"]
fn rank_ties_explain_low_rank_vs_dense_differences() {
    let mut rng = SplitMix::new(1280);
    let (keys, out, k, n, r) = (16i64, 1280i64, 1280i64, 8usize, 16i64);
    let b = rng.tensor(&[keys, out, k], 0.02);
    let factors: Vec<(Tensor, Tensor)> =
        (0..n).map(|_| (rng.tensor(&[keys, out, r], 0.01), rng.tensor(&[keys, r, k], 0.01))).collect();
    let exact: Vec<Tensor> = factors.iter().map(|(u, d)| b.to_kind(Kind::Double) + u.to_kind(Kind::Double).bmm(&d.to_kind(Kind::Double))).collect();
    let rounded: Vec<Tensor> = exact.iter().map(|e| e.to_kind(Kind::Float)).collect();
    let cfg = WidenConfig::default();
    let want_exact = oracle::merge_batch(&cfg, &b, &exact);
    let want_rounded = oracle::merge_batch(&cfg, &b, &rounded);
    let w = cpu(cfg);
    let low = host(w.merge(&b, &factors.iter().map(|(u, d)| Contribution::low_rank(u.shallow_clone(), d.shallow_clone())).collect::<Vec<_>>(), &[]).unwrap());
    let dense = host(w.merge(&b, &rounded.iter().map(|x| Contribution::Weights(x.shallow_clone())).collect::<Vec<_>>(), &[]).unwrap());
    let rel = |x: &Tensor, y: &Tensor| {
        let e = sub(x, y).square().sum(Kind::Double).double_value(&[]);
        let s = sub(y, &b).square().sum(Kind::Double).double_value(&[]);
        (e / s).sqrt()
    };
    println!("low-rank vs float64(exact input):   {:.1e}", rel(&low, &want_exact));
    assert!(rel(&low, &want_exact) <= 1e-4, "low-rank merge off its float64 evaluation");
    println!("dense    vs float64(rounded input): {:.1e}", rel(&dense, &want_rounded));
    println!("float64(rounded) vs float64(exact): {:.1e}", rel(&want_rounded, &want_exact));
    println!("low-rank vs dense:                  {:.1e}", rel(&low, &dense));
    for key in 0..keys {
        let (l, d, we, wr) = (low.get(key), dense.get(key), want_exact.get(key), want_rounded.get(key));
        let bk = b.get(key);
        let relk = |x: &Tensor, y: &Tensor| {
            (sub(x, y).square().sum(Kind::Double).double_value(&[]) / sub(y, &bk).square().sum(Kind::Double).double_value(&[])).sqrt()
        };
        println!(
            "key {key:2}: low-rank/exact {:.1e}  dense/rounded {:.1e}  exact/rounded {:.1e}",
            relk(&l, &we),
            relk(&d, &wr),
            relk(&wr, &we)
        );
    }
}

/// The low-rank statistics are float64-accurate by default (D21 on the low-rank path): on a
/// 512×512 key with four LoRAs, `dm` and `dd` within 1e-7 of the float64 definitions. (fp32
/// statistics are ~1e-6 off here, enough to swap nearly equal columns' ranks.)
#[test]
fn low_rank_statistics_are_float64_accurate() {
    use comfyrs_nodes::widen::Statistics;
    let mut rng = SplitMix::new(512);
    let (out, k) = (512i64, 512i64);
    let b = rng.tensor(&[1, out, k], 0.02);
    let factors: Vec<(Tensor, Tensor)> = (0..4).map(|_| (rng.tensor(&[1, out, 16], 0.01), rng.tensor(&[1, 16, k], 0.01))).collect();
    let parts: Vec<Contribution> = factors.iter().map(|(u, d)| Contribution::low_rank(u.shallow_clone(), d.shallow_clone())).collect();
    let bv = vals(&b);
    let worst = |stats: &comfyrs_nodes::widen::ColumnStats| {
        let mut worst: f64 = 0.0;
        for (n, (u, d)) in factors.iter().enumerate() {
            let w = b.to_kind(Kind::Double) + u.to_kind(Kind::Double).bmm(&d.to_kind(Kind::Double));
            let (dm, dd) = oracle::column_stats(&bv, &vals(&w), out as usize, k as usize);
            worst = worst.max(rel_inf(&vals(&stats.dm.get(n as i64)), &dm, 1e-30));
            worst = worst.max(rel_inf(&vals(&stats.dd.get(n as i64)), &dd, 1e-30));
        }
        worst
    };
    let exact = worst(&cpu(WidenConfig::default()).column_stats(&b, &parts).unwrap());
    let fast = worst(&cpu(WidenConfig::default()).with_statistics(Statistics::Fp32).column_stats(&b, &parts).unwrap());
    println!("low-rank statistics: float64 {exact:.1e}, fp32 {fast:.1e}");
    assert!(exact <= 1e-7, "float64 low-rank statistics off by {exact:e}");
}
