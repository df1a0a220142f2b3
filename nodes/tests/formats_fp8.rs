//! fp8 model files (docs/widen.md, "Model formats"): both fp8 dtypes read zero-copy and written
//! back byte for byte, the encoder agreeing with libtorch's cast, and ComfyUI's scaled fp8 layout
//! read as value × scale with its companions kept out of the weights.

use comfyrs_nodes::arch::{layout, Arch, LayoutSize};
use comfyrs_nodes::models::fp8::Fp8;
use comfyrs_nodes::models::writer::{encode_f32, write_all};
use comfyrs_nodes::models::{CheckpointDomain, CheckpointFile, FileDtype, MappedFile};
use comfyrs_testkit::fixtures::{write_base_model, write_scaled_fp8_model, Rng};
use tch::{Kind, Tensor};

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view(-1)).unwrap()
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let c = t.contiguous();
    let n = c.numel();
    let mut buf = vec![0u8; n * c.kind().elt_size_in_bytes()];
    c.copy_data_u8(&mut buf, n);
    buf
}

#[test]
fn fp8_files_round_trip_through_tch() {
    let dir = tempfile::tempdir().unwrap();
    // Values across the range: normal, subnormal, zero, negative, beyond the maximum.
    let mut values = Rng::new(5).values(4032, 0.0, 3.0);
    values.extend([0.0, -0.0, 1e-3, -2e-3, 1e5, -1e5, 448.0, 57344.0]);
    for (dtype, kind, fp8) in [(FileDtype::F8E4M3, Kind::Float8e4m3fn, Fp8::E4M3), (FileDtype::F8E5M2, Kind::Float8e5m2, Fp8::E5M2)] {
        assert_eq!(dtype.kind(), Some(kind));
        assert_eq!(FileDtype::from_kind(kind), Some(dtype));
        assert_eq!(dtype.size(), 1);
        let bytes = encode_f32(&values, dtype).unwrap();
        let path = dir.path().join(format!("{}.safetensors", dtype.name()));
        write_all(&path, &[("w".into(), dtype, vec![40, 101], bytes.clone())], None).unwrap();
        let f = MappedFile::open(&path).unwrap();
        assert_eq!(f.meta("w").unwrap().dtype, dtype);
        let t = f.tensor("w").unwrap();
        assert_eq!(t.kind(), kind);
        assert_eq!(t.size(), [40, 101]);
        assert!(t.is_mapped(), "read zero-copy");
        // libtorch's widening and the independent decoder agree on every value.
        let via_tch = f32s(&t);
        let direct = f.to_f64_vec("w").unwrap();
        for (a, b) in via_tch.iter().zip(&direct) {
            assert_eq!(*a as f64, *b);
        }
        // Saturation, not NaN or infinity.
        assert_eq!(via_tch[values.len() - 4], fp8.max());
        assert_eq!(via_tch[values.len() - 3], -fp8.max());
        // Written back from the tensor: the same bytes, and read again the same tensor.
        assert_eq!(bytes_of(&t), bytes);
        let back = dir.path().join(format!("{}_back.safetensors", dtype.name()));
        write_all(&back, &[("w".into(), FileDtype::from_kind(t.kind()).unwrap(), vec![40, 101], bytes_of(&t))], None).unwrap();
        let g = MappedFile::open(&back).unwrap();
        assert!(g.tensor("w").unwrap().to_kind(Kind::Float).equal(&t.to_kind(Kind::Float)));
        // Our encoder rounds as libtorch's cast does for every value in range.
        let in_range: Vec<f32> = values.iter().copied().filter(|v| v.abs() <= fp8.max()).collect();
        let cast = Tensor::from_slice(&in_range).to_kind(kind);
        assert_eq!(bytes_of(&cast), encode_f32(&in_range, dtype).unwrap(), "{dtype}");
    }
}

#[test]
fn scaled_fp8_reads_value_times_scale_and_hides_its_companions() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(Arch::Sdxl, LayoutSize::Tiny);
    let plain = write_base_model(&dir.path().join("f32.safetensors"), &l, FileDtype::F32, 3, false).unwrap();
    let scaled = write_scaled_fp8_model(&dir.path().join("scaled.safetensors"), &l, FileDtype::F8E4M3, 3, false).unwrap();
    let p = CheckpointFile::open(&plain, CheckpointDomain::Diffusion).unwrap();
    let s = CheckpointFile::open(&scaled, CheckpointDomain::Diffusion).unwrap();
    // The same host keys and architecture: scales, input scales and the marker are no weights.
    assert_eq!(s.keys().collect::<Vec<_>>(), p.keys().collect::<Vec<_>>());
    assert_eq!(s.arch(), Some(Arch::Sdxl));
    assert!(s.is_scaled() && !p.is_scaled());
    assert!(s.companions().contains_key("diffusion_model.scaled_fp8"));
    assert!(s.skipped().is_empty());
    let mut n_scaled = 0;
    for k in p.keys() {
        let want = f32s(&p.tensor(k).unwrap());
        let t = s.tensor(k).unwrap();
        match s.scale(k).unwrap() {
            Some(scale) => {
                n_scaled += 1;
                assert_eq!(t.kind(), Kind::Float8e4m3fn, "{k}");
                assert!(t.is_mapped(), "{k}: zero-copy");
                let sk = s.scale_key(k).unwrap();
                assert_eq!(sk, format!("{}.scale_weight", k.strip_suffix(".weight").unwrap()));
                assert!(s.companions().contains_key(sk) && !s.contains(sk));
                let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert!((scale - amax / 448.0).abs() <= 1e-6 * scale, "{k}: {scale}");
                // value × scale is the weight up to e4m3fn's rounding: half a step, at most 2^-4
                // of the value in the normal range, 2^-10 × scale below it.
                for (q, w) in f32s(&t).iter().zip(&want) {
                    let got = q * scale;
                    assert!((got - w).abs() <= w.abs() / 16.0 + scale / 1024.0 + 1e-6 * w.abs(), "{k}: {got} vs {w}");
                }
            }
            None => {
                assert_eq!(t.kind(), Kind::BFloat16, "{k}");
                assert!(!(k.ends_with(".weight") && p.shape(k).unwrap().len() >= 2), "{k}");
            }
        }
    }
    assert!(n_scaled > 10, "{n_scaled}");
    // Without an fp8 weight beside it, a `scale_weight` is an ordinary key.
    let path = dir.path().join("odd.safetensors");
    let tensors = vec![
        ("input_blocks.0.0.weight".to_string(), FileDtype::F32, vec![2, 2], encode_f32(&[1.0, 2.0, 3.0, 4.0], FileDtype::F32).unwrap()),
        ("input_blocks.0.0.scale_weight".to_string(), FileDtype::F32, vec![], encode_f32(&[2.0], FileDtype::F32).unwrap()),
    ];
    write_all(&path, &tensors, None).unwrap();
    let c = CheckpointFile::open(&path, CheckpointDomain::Diffusion).unwrap();
    assert!(c.contains("diffusion_model.input_blocks.0.0.scale_weight") && !c.is_scaled());
    assert_eq!(c.scale("diffusion_model.input_blocks.0.0.weight").unwrap(), None);
    // A scale with several values is refused, naming it.
    let path = dir.path().join("per_channel.safetensors");
    let tensors = vec![
        ("x.weight".to_string(), FileDtype::F8E4M3, vec![2, 2], encode_f32(&[1.0, 2.0, 3.0, 4.0], FileDtype::F8E4M3).unwrap()),
        ("x.scale_weight".to_string(), FileDtype::F32, vec![2], encode_f32(&[2.0, 3.0], FileDtype::F32).unwrap()),
    ];
    write_all(&path, &tensors, None).unwrap();
    let c = CheckpointFile::open(&path, CheckpointDomain::Diffusion).unwrap();
    let e = c.scale("diffusion_model.x.weight").unwrap_err().to_string();
    assert!(e.contains("x.scale_weight") && e.contains("2 values"), "{e}");
}
