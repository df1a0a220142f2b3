//! `write_fixtures`: the file set, determinism, use as a models root, and every written LoRA
//! loading against the written base model of its architecture (and not against others).

use std::collections::BTreeMap;

use comfyrs_nodes::arch::Arch;
use comfyrs_testkit::fixtures::{write_fixtures, FixtureKind, FixtureOptions, Rng};
use comfyrs_nodes::lora::{LoadOptions, LoraFile, LoraNaming, NameIndex};
use comfyrs_nodes::models::{CheckpointDomain, CheckpointFile, FileDtype, FormatError, MappedFile, ModelFolders};

#[test]
fn rng_is_deterministic_and_order_independent() {
    let a = Rng::for_names(1, &["base", "x"]).values(5, 0.0, 1.0);
    let b = Rng::for_names(1, &["base", "x"]).values(5, 0.0, 1.0);
    let c = Rng::for_names(2, &["base", "x"]).values(5, 0.0, 1.0);
    let d = Rng::for_names(1, &["basex"]).values(5, 0.0, 1.0);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, d);
    let v = Rng::new(3).values(100_000, 2.0, 0.5);
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
    assert!((mean - 2.0).abs() < 0.01 && (var.sqrt() - 0.5).abs() < 0.01, "{mean} {var}");
}

#[test]
fn tiny_fixture_set_loads_and_is_deterministic() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let opts = FixtureOptions { dtypes: vec![FileDtype::F16, FileDtype::F32], ..FixtureOptions::default() };
    let files = write_fixtures(dir.path(), &opts).unwrap();
    let lora_count: usize = Arch::ALL.iter().map(|&a| LoraNaming::for_arch(a).len() * FixtureKind::ALL.len()).sum();
    let loras: Vec<_> = files.iter().filter(|p| p.starts_with(dir.path().join("loras"))).collect();
    assert_eq!(loras.len(), lora_count);
    for f in &files {
        assert!(f.is_file(), "{}", f.display());
    }
    // As a models root.
    let folders = ModelFolders::new(dir.path());
    let ckpts = folders.list("checkpoints").unwrap();
    assert_eq!(ckpts, vec!["tiny/sdxl_ldm_f16.safetensors", "tiny/sdxl_ldm_f32.safetensors"]);
    let dms = folders.list("diffusion_models").unwrap();
    for v in ["sdxl", "zimage", "flux1", "flux2", "qwen"] {
        assert!(dms.contains(&format!("tiny/{v}_f16.safetensors")), "{dms:?}");
        assert!(dms.contains(&format!("tiny/{v}_prefixed_f32.safetensors")), "{dms:?}");
    }
    assert_eq!(folders.list("loras").unwrap().len(), lora_count);

    // Bases by architecture (CLIP: the LDM checkpoint's text encoders).
    let mut bases: BTreeMap<Arch, CheckpointFile> = BTreeMap::new();
    for arch in Arch::ALL {
        let (name, kind, domain) = match arch {
            Arch::SdxlClip => ("tiny/sdxl_ldm_f16.safetensors", "checkpoints", CheckpointDomain::Clip),
            Arch::Flux => ("tiny/flux1_f16.safetensors", "diffusion_models", CheckpointDomain::Diffusion),
            a => (match a { Arch::Sdxl => "tiny/sdxl_f16.safetensors", Arch::Zimage => "tiny/zimage_f16.safetensors", _ => "tiny/qwen_f16.safetensors" }, "diffusion_models", CheckpointDomain::Diffusion),
        };
        let c = CheckpointFile::open(folders.resolve(kind, name).unwrap(), domain).unwrap();
        assert_eq!(c.arch(), Some(arch), "{name}");
        bases.insert(arch, c);
    }
    let indexes: BTreeMap<Arch, NameIndex> = bases.iter().map(|(a, c)| (*a, NameIndex::from_shapes(*a, &c.shapes()))).collect();
    for arch in Arch::ALL {
        for name in folders.list("loras").unwrap().iter().filter(|n| n.starts_with(&format!("{}/", arch.tag()))) {
            let p = folders.resolve("loras", name).unwrap();
            let f = LoraFile::load_with(&p, arch, &LoadOptions { index: Some(&indexes[&arch]), require_match: true })
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let r = &f.report;
            // CLIP LoRAs written against the host layout include CLIP-L's projection, which an
            // SDXL checkpoint does not have: reported as unmatched, never dropped silently.
            let allowed: usize = if arch == Arch::SdxlClip { 1 } else { 0 };
            assert!(r.unmatched.len() <= allowed && r.unsupported.is_empty(), "{name}: {}", r.summary());
            assert!(r.matched > 0);
            // Wrong architecture: an error naming the file and the architecture, or (for names
            // two architectures share, e.g. Flux / Qwen `img_in`) most modules unmatched.
            for other in Arch::ALL.iter().filter(|o| **o != arch && !(arch == Arch::Sdxl && **o == Arch::SdxlClip) && !(arch == Arch::SdxlClip && **o == Arch::Sdxl)) {
                match LoraFile::load_with(&p, *other, &LoadOptions { index: Some(&indexes[other]), require_match: true }) {
                    Err(e) => {
                        assert!(
                            matches!(e, FormatError::LoraNoMatch { .. } | FormatError::LoraWrongArch { .. }),
                            "{name} as {other}: {e}"
                        );
                        let msg = e.to_string();
                        assert!(msg.contains(name.rsplit('/').next().unwrap()) && msg.contains(&format!("'{other}'")), "{msg}");
                    }
                    Ok(w) => assert!(
                        w.report.matched * 4 < w.report.modules,
                        "{name} as {other}: {}",
                        w.report.summary()
                    ),
                }
            }
        }
    }

    // Same options → byte-identical files.
    let dir2 = tempfile::tempdir().unwrap();
    let opts2 = FixtureOptions { archs: vec![Arch::Zimage], kinds: vec![FixtureKind::LoKr], dtypes: vec![FileDtype::BF16], ..FixtureOptions::default() };
    let a = write_fixtures(dir2.path().join("a"), &opts2).unwrap();
    let b = write_fixtures(dir2.path().join("b"), &opts2).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{}", x.display());
    }
    // The fixture LoRA deltas are small relative to the base, like real LoRAs.
    let base = CheckpointFile::open(dir2.path().join("a/diffusion_models/tiny/zimage_bf16.safetensors"), CheckpointDomain::Diffusion).unwrap();
    let lora = LoraFile::load(dir2.path().join("a/loras/zimage/tiny/zimage_kohya_lokr.safetensors"), Arch::Zimage).unwrap();
    let key = "diffusion_model.layers.1.feed_forward.w2.weight";
    let d = lora.deltas.specs(key)[0].delta(tch::Device::Cpu, tch::Kind::Float).unwrap();
    let w = base.tensor(key).unwrap().to_kind(tch::Kind::Float);
    let ratio = d.norm().double_value(&[]) / w.norm().double_value(&[]);
    assert!((1e-3..1e-1).contains(&ratio), "delta/base norm ratio {ratio}");
    // Fixture metadata names the fixture.
    let m = MappedFile::open(&a[0]).unwrap();
    assert!(m.metadata().unwrap()["comfyrs.fixture"].contains("seed=0"));
}

#[test]
fn full_size_loras_map_with_real_shapes() {
    use comfyrs_nodes::arch::layout::{layout, LayoutSize};
    use comfyrs_testkit::fixtures::{write_lora, LoraFixture, LoraTargets};
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    for arch in Arch::ALL {
        let l = layout(arch, LayoutSize::Full);
        let shapes = l.params.iter().map(|p| (p.key.clone(), p.shape.iter().map(|&d| d as i64).collect())).collect();
        let idx = NameIndex::from_shapes(arch, &shapes);
        for naming in [LoraNaming::Kohya, LoraNaming::Diffusers] {
            let spec = LoraFixture { arch, naming, kind: FixtureKind::Lora, rank: 1, dtype: FileDtype::BF16, seed: 9, targets: LoraTargets::Attention };
            let p = dir.path().join(format!("{}_{}.safetensors", arch.tag(), naming.tag()));
            let man = write_lora(&p, &l, &spec).unwrap();
            let f = LoraFile::load_with(&p, arch, &LoadOptions { index: Some(&idx), require_match: true }).unwrap();
            assert_eq!(f.report.matched, man.entries.len(), "{arch} {}: {}", naming.tag(), f.report.summary());
            assert_eq!(f.report.ignored(), 0);
            if arch == Arch::Sdxl && naming == LoraNaming::Kohya {
                assert_eq!(man.entries.len(), 582, "the benchmark's attention targets");
            }
            if arch == Arch::Zimage && naming == LoraNaming::Diffusers {
                let s = f.deltas.specs("diffusion_model.layers.29.attention.qkv.weight");
                let rows: Vec<_> = s.iter().map(|s| (s.rows.unwrap().start, s.rows.unwrap().len)).collect();
                assert_eq!(rows, vec![(0, 3840), (3840, 3840), (7680, 3840)]);
            }
        }
    }
    // Variants: distinct files with distinct values.
    let opts = FixtureOptions {
        archs: vec![Arch::Qwen],
        namings: vec![LoraNaming::Kohya],
        kinds: vec![FixtureKind::Lora],
        dtypes: vec![FileDtype::F16],
        variants: 3,
        ..FixtureOptions::default()
    };
    let files = write_fixtures(dir.path().join("v"), &opts).unwrap();
    let loras: Vec<_> = files.iter().filter(|p| p.to_string_lossy().contains("/loras/")).collect();
    assert_eq!(loras.len(), 3);
    assert!(loras[2].ends_with("qwen_kohya_lora_2.safetensors"));
    assert_ne!(std::fs::read(loras[0]).unwrap(), std::fs::read(loras[1]).unwrap());
}

/// Writes the full-size SDXL UNet (fp16, ~5.1 GB) and checks it streams: run with
/// `cargo test -p comfyrs-nodes --test formats_fixtures -- --ignored` (disk and minutes).
#[test]
#[ignore]
fn full_size_sdxl_streams_to_disk() {
    use comfyrs_nodes::arch::layout::{layout, LayoutSize};
    use comfyrs_testkit::fixtures::write_base_model;
    let dir = tempfile::tempdir_in(std::env::var("COMFYRS_FIXTURE_TMP").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let l = layout(Arch::Sdxl, LayoutSize::Full);
    let t = std::time::Instant::now();
    let p = write_base_model(&dir.path().join("sdxl_f16.safetensors"), &l, FileDtype::F16, 0, false).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&p).unwrap().len();
    assert!(size > 2 * 2_567_463_684, "{size}");
    let c = CheckpointFile::open(&p, CheckpointDomain::Diffusion).unwrap();
    assert_eq!(c.arch(), Some(Arch::Sdxl));
    assert_eq!(c.len(), 1680);
    eprintln!("full-size SDXL fp16: {size} bytes in {secs:.1} s");
}
