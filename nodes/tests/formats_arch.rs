//! Architecture layouts, detection, key classification (docs/decisions.md D15) and
//! checkpoint normalization (D16).

mod formats_util;

use std::collections::BTreeSet;

use comfyrs_nodes::arch::layout::{all_layouts, flux2_layout, layout, openclip_text, sdxl_checkpoint_layout, ClipDims, LayoutSize};
use comfyrs_nodes::arch::{
    block_of, classify_key, detect_base_arch, detect_checkpoint_arch, detect_clip_arch, layer_type_of, Arch,
    LayerType,
};
use comfyrs_testkit::fixtures::{write_base_model, write_sdxl_checkpoint};
use comfyrs_nodes::models::checkpoint::{normalize_diffusion_key, openclip_to_host};
use comfyrs_nodes::models::{CheckpointDomain, CheckpointFile, CheckpointLayout, FileDtype, FormatError};

/// Block slider names of each Block Config node (docs/widen.md, "Block configs").
fn sliders(arch: Arch) -> Vec<String> {
    let r = |p: &'static str, n: usize| (0..n).map(move |i| format!("{p}{i:02}"));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match arch {
        Arch::Sdxl => r("IN", 9).chain(s(&["MID"])).chain(r("OUT", 9)).chain(s(&["TIME_EMBED", "LABEL_EMB", "FINAL_OUT"])).collect(),
        Arch::SdxlClip => r("CL", 12)
            .chain(s(&["CL_EMBED", "CL_FINAL"]))
            .chain(r("CG", 32))
            .chain(s(&["CG_EMBED", "CG_FINAL", "CG_PROJ"]))
            .collect(),
        Arch::Zimage => r("L", 30)
            .chain(s(&["NOISE_REF0", "NOISE_REF1", "CTX_REF0", "CTX_REF1", "PATCH_EMBED", "FINAL_NORM"]))
            .collect(),
        Arch::Qwen => r("TB", 60).chain(s(&["TIME_EMBED", "FINAL_NORM"])).collect(),
        Arch::Flux => r("DB", 8)
            .chain(r("SB", 24))
            .chain(s(&["GUIDANCE_IN", "TIME_IN", "VECTOR_IN", "IMG_IN", "TXT_IN", "FINAL_LAYER"]))
            .collect(),
    }
}

/// Keys that legitimately belong to no block slider (recognized, shared or without a slider).
fn blockless(arch: Arch, key: &str) -> bool {
    match arch {
        Arch::Zimage => ["t_embedder", "cap_embedder", "cap_pad_token"].iter().any(|p| key.contains(p)),
        Arch::Qwen => ["img_in", "txt_in", "txt_norm"].iter().any(|p| key.contains(p)),
        Arch::Flux => key.contains("stream_modulation"),
        Arch::SdxlClip => key.ends_with("logit_scale") || key.starts_with("clip_l.transformer.text_projection"),
        Arch::Sdxl => false,
    }
}

#[test]
fn every_key_of_every_layout_classifies() {
    for arch in Arch::ALL {
        for size in [LayoutSize::Full, LayoutSize::Tiny] {
            for l in all_layouts(arch, size) {
                let mut hit = BTreeSet::new();
                for p in &l.params {
                    let c = classify_key(&p.key, arch)
                        .unwrap_or_else(|| panic!("{} {}: unclassified key {}", arch, l.variant, p.key));
                    match &c.block {
                        Some(b) => {
                            hit.insert(b.clone());
                        }
                        None => assert!(blockless(arch, &p.key), "{}: {} has no block", l.variant, p.key),
                    }
                }
                if size == LayoutSize::Full && l.variant != "flux2" {
                    for s in sliders(arch) {
                        assert!(hit.contains(&s), "{}: slider {s} matches no key", l.variant);
                    }
                }
            }
        }
    }
}

#[test]
fn layouts_have_the_real_parameter_counts() {
    // Published parameter counts: SDXL UNet 2,567,463,684; Flux.1-dev 11,901,408,320;
    // CLIP-L text model 123,060,480; OpenCLIP bigG text tower 694,659,840 (+ logit_scale).
    assert_eq!(layout(Arch::Sdxl, LayoutSize::Full).numel(), 2_567_463_684);
    assert_eq!(layout(Arch::Sdxl, LayoutSize::Full).params.len(), 1680);
    assert_eq!(layout(Arch::Flux, LayoutSize::Full).numel(), 11_901_408_320);
    let l = comfyrs_nodes::arch::layout::clip_text_model(&ClipDims::clip_l(LayoutSize::Full), "");
    assert_eq!(l.iter().map(|p| p.numel()).sum::<usize>(), 123_060_480);
    let g = openclip_text(&ClipDims::clip_g(LayoutSize::Full), "");
    assert_eq!(g.iter().map(|p| p.numel()).sum::<usize>(), 694_659_841);
    // Z-Image ~6.15B, Qwen-Image ~20.4B.
    let z = layout(Arch::Zimage, LayoutSize::Full).numel();
    assert!((6.1e9..6.2e9).contains(&(z as f64)), "{z}");
    let q = layout(Arch::Qwen, LayoutSize::Full).numel();
    assert!((20.3e9..20.5e9).contains(&(q as f64)), "{q}");
    // Z-Image's fused QKV is 11520 × 3840.
    let zl = layout(Arch::Zimage, LayoutSize::Full);
    assert_eq!(zl.get("diffusion_model.layers.0.attention.qkv.weight").unwrap().shape, vec![11520, 3840]);
    let f = layout(Arch::Flux, LayoutSize::Full);
    assert_eq!(f.get("diffusion_model.single_blocks.0.linear1.weight").unwrap().shape, vec![21504, 3072]);
    let f2 = flux2_layout(LayoutSize::Full);
    assert_eq!(f2.get("diffusion_model.single_blocks.23.linear1.weight").unwrap().shape, vec![9 * 4096, 4096]);
}

#[test]
fn the_full_size_checkpoint_has_a_complete_vae() {
    // ComfyUI builds the SDXL VAE (the LDM AutoencoderKL, 83,653,863 parameters) from the
    // checkpoint's `first_stage_model.*` keys; the loop benchmark decodes with it.
    let vae: Vec<_> = sdxl_checkpoint_layout(LayoutSize::Full).into_iter().filter(|(p, _)| p.key.starts_with("first_stage_model.")).collect();
    assert_eq!(vae.iter().map(|(p, _)| p.numel()).sum::<usize>(), 83_653_863);
    let keys: BTreeSet<&str> = vae.iter().map(|(p, _)| p.key.as_str()).collect();
    for k in ["first_stage_model.encoder.down.1.block.0.nin_shortcut.weight", "first_stage_model.decoder.up.3.upsample.conv.weight", "first_stage_model.decoder.mid.attn_1.proj_out.bias", "first_stage_model.post_quant_conv.weight"] {
        assert!(keys.contains(k), "{k} missing");
    }
    assert!(!keys.contains("first_stage_model.decoder.up.0.upsample.conv.weight"), "the last decoder level does not upsample");
}

#[test]
fn sdxl_attention_targets_count_582() {
    let l = layout(Arch::Sdxl, LayoutSize::Full);
    let n = l
        .params
        .iter()
        .filter(|p| p.shape.len() == 2 && layer_type_of(&p.key, Arch::Sdxl) == Some(LayerType::Attention))
        .count();
    assert_eq!(n, 582);
}

#[test]
fn block_classification_examples() {
    let d = |k: &str| format!("diffusion_model.{k}");
    assert_eq!(block_of(&d("input_blocks.4.1.proj_in.weight"), Arch::Sdxl).as_deref(), Some("IN04"));
    assert_eq!(block_of(&d("input_blocks.9.0.op.weight"), Arch::Sdxl), None);
    assert_eq!(block_of(&d("middle_block.1.norm.weight"), Arch::Sdxl).as_deref(), Some("MID"));
    assert_eq!(block_of(&d("output_blocks.8.0.skip_connection.weight"), Arch::Sdxl).as_deref(), Some("OUT08"));
    assert_eq!(block_of(&d("time_embed.0.weight"), Arch::Sdxl).as_deref(), Some("TIME_EMBED"));
    assert_eq!(block_of(&d("label_emb.0.0.weight"), Arch::Sdxl).as_deref(), Some("LABEL_EMB"));
    assert_eq!(block_of(&d("out.2.weight"), Arch::Sdxl).as_deref(), Some("FINAL_OUT"));
    assert_eq!(block_of(&d("layers.7.attention.qkv.weight"), Arch::Zimage).as_deref(), Some("L07"));
    assert_eq!(block_of("transformer.blocks.3.x.weight", Arch::Zimage).as_deref(), Some("L03"));
    assert_eq!(block_of(&d("layers.30.attention.qkv.weight"), Arch::Zimage), None);
    assert_eq!(block_of(&d("noise_refiner.1.feed_forward.w1.weight"), Arch::Zimage).as_deref(), Some("NOISE_REF1"));
    assert_eq!(block_of(&d("context_refiner.0.attention.out.weight"), Arch::Zimage).as_deref(), Some("CTX_REF0"));
    assert_eq!(block_of(&d("noise_refiner.weight"), Arch::Zimage), None);
    // D15: real Z-Image structural keys.
    assert_eq!(block_of(&d("x_embedder.weight"), Arch::Zimage).as_deref(), Some("PATCH_EMBED"));
    assert_eq!(block_of(&d("final_layer.linear.weight"), Arch::Zimage).as_deref(), Some("FINAL_NORM"));
    assert_eq!(block_of(&d("transformer_blocks.100.attn.to_q.weight"), Arch::Qwen).as_deref(), Some("TB100"));
    assert_eq!(block_of(&d("time_text_embed.timestep_embedder.linear_1.weight"), Arch::Qwen).as_deref(), Some("TIME_EMBED"));
    assert_eq!(block_of(&d("norm_out.linear.weight"), Arch::Qwen).as_deref(), Some("FINAL_NORM"));
    assert_eq!(block_of(&d("double_blocks.18.img_attn.qkv.weight"), Arch::Flux).as_deref(), Some("DB18"));
    assert_eq!(block_of("transformer.single_blocks.37.linear1.weight", Arch::Flux).as_deref(), Some("SB37"));
    assert_eq!(block_of(&d("guidance_in.in_layer.weight"), Arch::Flux).as_deref(), Some("GUIDANCE_IN"));
    assert_eq!(block_of(&d("final_layer.linear.weight"), Arch::Flux).as_deref(), Some("FINAL_LAYER"));
    let c = classify_key(&d("double_stream_modulation_img.lin.weight"), Arch::Flux).unwrap();
    assert_eq!(c.block, None, "Flux.2 shared modulation belongs to no block");
    let cl = "clip_l.transformer.text_model.";
    assert_eq!(block_of(&format!("{cl}encoder.layers.11.mlp.fc1.weight"), Arch::SdxlClip).as_deref(), Some("CL11"));
    assert_eq!(block_of(&format!("{cl}encoder.layers.12.mlp.fc1.weight"), Arch::SdxlClip), None);
    assert_eq!(block_of(&format!("{cl}embeddings.token_embedding.weight"), Arch::SdxlClip).as_deref(), Some("CL_EMBED"));
    assert_eq!(block_of(&format!("{cl}final_layer_norm.bias"), Arch::SdxlClip).as_deref(), Some("CL_FINAL"));
    assert_eq!(block_of("clip_g.transformer.text_model.encoder.layers.31.self_attn.q_proj.weight", Arch::SdxlClip).as_deref(), Some("CG31"));
    assert_eq!(block_of("clip_g.transformer.text_projection.weight", Arch::SdxlClip).as_deref(), Some("CG_PROJ"));
    assert!(classify_key("something.else.weight", Arch::Sdxl).is_none());
    assert!(classify_key("diffusion_model.input_blocks.0.0.weight", Arch::Flux).is_none());
}

#[test]
fn layer_type_examples_with_d15_fixes() {
    use LayerType::*;
    let d = |k: &str| format!("diffusion_model.{k}");
    let cases: &[(&str, Arch, Option<LayerType>)] = &[
        ("input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", Arch::Sdxl, Some(Attention)),
        ("input_blocks.4.1.transformer_blocks.0.norm1.weight", Arch::Sdxl, Some(Norm)),
        ("input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight", Arch::Sdxl, Some(FeedForward)),
        ("input_blocks.4.1.proj_in.weight", Arch::Sdxl, Some(Attention)),
        ("input_blocks.1.0.in_layers.0.weight", Arch::Sdxl, None),
        ("time_embed.0.weight", Arch::Sdxl, None),
        ("layers.5.q_norm.weight", Arch::Zimage, Some(Attention)),
        ("layers.5.adaLN_modulation.1.weight", Arch::Zimage, None),
        ("layers.5.attention.qkv.weight", Arch::Zimage, Some(Attention)),
        ("layers.5.attention.out.weight", Arch::Zimage, Some(Attention)),
        ("layers.5.attention.k_norm.weight", Arch::Zimage, Some(Attention)),
        ("layers.5.feed_forward.w3.weight", Arch::Zimage, Some(FeedForward)),
        ("layers.5.ffn_norm2.weight", Arch::Zimage, Some(Norm)),
        ("t_embedder.mlp.0.weight", Arch::Zimage, None),
        ("transformer_blocks.0.img_mlp.net.0.proj.weight", Arch::Qwen, Some(FeedForward)),
        ("transformer_blocks.0.txt_mlp.net.2.weight", Arch::Qwen, Some(FeedForward)),
        ("transformer_blocks.0.attn.add_q_proj.weight", Arch::Qwen, Some(Attention)),
        ("transformer_blocks.0.attn.to_out.0.weight", Arch::Qwen, Some(Attention)),
        ("transformer_blocks.0.img_mod.1.weight", Arch::Qwen, Some(Norm)),
        ("double_blocks.0.img_attn.qkv.weight", Arch::Flux, Some(Attention)),
        ("double_blocks.0.txt_attn.norm.key_norm.scale", Arch::Flux, Some(Attention)),
        ("double_blocks.0.img_mlp.0.weight", Arch::Flux, Some(FeedForward)),
        ("single_blocks.0.linear2.weight", Arch::Flux, Some(FeedForward)),
        ("single_blocks.0.modulation.lin.weight", Arch::Flux, Some(Norm)),
        ("double_blocks.0.txt_mod.lin.weight", Arch::Flux, Some(Norm)),
        ("single_blocks.0.linear1.weight", Arch::Flux, None),
    ];
    for (k, a, want) in cases {
        assert_eq!(layer_type_of(&d(k), *a), *want, "{a} {k}");
    }
    let cg = "clip_g.transformer.text_model.encoder.layers.3.";
    assert_eq!(layer_type_of(&format!("{cg}self_attn.v_proj.weight"), Arch::SdxlClip), Some(Attention));
    assert_eq!(layer_type_of(&format!("{cg}mlp.fc2.bias"), Arch::SdxlClip), Some(FeedForward));
    assert_eq!(layer_type_of(&format!("{cg}layer_norm1.weight"), Arch::SdxlClip), Some(Norm));
    assert_eq!(layer_type_of("clip_l.transformer.text_model.final_layer_norm.weight", Arch::SdxlClip), Some(Norm));
    assert_eq!(layer_type_of("clip_l.transformer.text_model.embeddings.token_embedding.weight", Arch::SdxlClip), None);
}

#[test]
fn base_detection_rules() {
    for arch in [Arch::Sdxl, Arch::Zimage, Arch::Flux, Arch::Qwen] {
        for size in [LayoutSize::Full, LayoutSize::Tiny] {
            for l in all_layouts(arch, size) {
                assert_eq!(detect_base_arch(l.keys()), Some(arch), "{}", l.variant);
                assert_eq!(detect_checkpoint_arch(l.keys()), Some(arch), "{}", l.variant);
            }
        }
    }
    for size in [LayoutSize::Full, LayoutSize::Tiny] {
        assert_eq!(detect_clip_arch(layout(Arch::SdxlClip, size).keys()), Some(Arch::SdxlClip));
    }
    assert_eq!(detect_clip_arch(["clip_l.x"]), None);
    // Z-Image needs a noise_refiner key; layers alone are not Z-Image.
    assert_eq!(detect_base_arch(["diffusion_model.layers.0.attention.qkv.weight"]), None);
    assert_eq!(
        detect_base_arch(["diffusion_model.layers.0.a", "diffusion_model.noise_refiner.0.b"]),
        Some(Arch::Zimage)
    );
    // SDXL needs input, middle and output blocks.
    assert_eq!(detect_base_arch(["diffusion_model.input_blocks.0.0.weight", "diffusion_model.middle_block.0.x"]), None);
    // Qwen needs 60 keys containing transformer_blocks; 59 is not enough.
    let keys59: Vec<String> = (0..59).map(|i| format!("diffusion_model.transformer_blocks.{i}.attn.to_q.weight")).collect();
    assert_eq!(detect_base_arch(keys59.iter().map(|s| s.as_str())), None);
    let mut keys60 = keys59.clone();
    keys60.push("diffusion_model.transformer_blocks.59.attn.to_q.weight".into());
    assert_eq!(detect_base_arch(keys60.iter().map(|s| s.as_str())), Some(Arch::Qwen));
    // Order: base = … flux → qwen; checkpoint = … qwen → flux.
    let mut both = keys60.clone();
    both.push("diffusion_model.double_blocks.0.img_attn.qkv.weight".into());
    assert_eq!(detect_base_arch(both.iter().map(|s| s.as_str())), Some(Arch::Flux));
    assert_eq!(detect_checkpoint_arch(both.iter().map(|s| s.as_str())), Some(Arch::Qwen));
}

#[test]
fn diffusion_key_normalization() {
    let cases = [
        ("model.diffusion_model.input_blocks.0.0.weight", true, Some("diffusion_model.input_blocks.0.0.weight")),
        ("diffusion_model.x.weight", true, Some("diffusion_model.x.weight")),
        ("transformer.layers.0.x", true, Some("diffusion_model.layers.0.x")),
        ("model.transformer.layers.0.x", true, Some("diffusion_model.layers.0.x")),
        ("first_stage_model.encoder.conv_in.weight", true, None),
        ("model.first_stage_model.x", true, None),
        ("conditioner.embedders.0.transformer.x", true, None),
        ("cond_stage_model.transformer.x", true, None),
        ("encoder.conv_in.weight", false, None),
        ("decoder.x", false, None),
        ("quant_conv.weight", false, None),
        ("post_quant_conv.weight", false, None),
        ("alphas_cumprod", true, None),
        // D16: unprefixed diffusion-model files.
        ("double_blocks.0.img_attn.qkv.weight", false, Some("diffusion_model.double_blocks.0.img_attn.qkv.weight")),
        ("transformer_blocks.0.attn.to_q.weight", false, Some("diffusion_model.transformer_blocks.0.attn.to_q.weight")),
    ];
    for (k, prefixed, want) in cases {
        assert_eq!(normalize_diffusion_key(k, prefixed).as_deref(), want, "{k}");
    }
}

#[test]
fn checkpoint_files_prefixed_unprefixed_and_ldm() {
    let dir = tempfile::tempdir().unwrap();
    let seed = 7;
    let sdxl = layout(Arch::Sdxl, LayoutSize::Tiny);
    let unpref = write_base_model(&dir.path().join("sdxl.safetensors"), &sdxl, FileDtype::F16, seed, false).unwrap();
    let pref = write_base_model(&dir.path().join("sdxl_p.safetensors"), &sdxl, FileDtype::F16, seed, true).unwrap();
    let ldm = write_sdxl_checkpoint(&dir.path().join("sdxl_ldm.safetensors"), LayoutSize::Tiny, FileDtype::F16, seed).unwrap();
    let want: Vec<&str> = sdxl.keys().collect();
    let mut files = Vec::new();
    for (p, lay) in [(&unpref, CheckpointLayout::Unprefixed), (&pref, CheckpointLayout::Prefixed), (&ldm, CheckpointLayout::Prefixed)] {
        let c = CheckpointFile::open(p, CheckpointDomain::Diffusion).unwrap();
        assert_eq!(c.layout(), lay);
        assert_eq!(c.arch(), Some(Arch::Sdxl), "{}", p.display());
        let mut keys: Vec<&str> = c.keys().collect();
        keys.sort_unstable();
        let mut w = want.clone();
        w.sort_unstable();
        assert_eq!(keys, w, "{}: host keys", p.display());
        files.push(c);
    }
    // The LDM checkpoint's VAE and text encoders are excluded from the diffusion domain.
    assert!(files[2].skipped().iter().any(|k| k.starts_with("first_stage_model.")));
    assert!(files[2].skipped().iter().any(|k| k.starts_with("conditioner.embedders.1.model.")));
    // Same seed → same UNet values in all three layouts; tensors are zero-copy views.
    let k = "diffusion_model.output_blocks.2.2.conv.weight";
    let a = files[0].tensor(k).unwrap();
    assert!(a.is_mapped());
    for f in &files[1..] {
        let b = f.tensor(k).unwrap();
        assert!(b.is_mapped());
        assert_eq!(formats_util::tensor_f64(&a), formats_util::tensor_f64(&b));
    }
    assert_eq!(files[0].shape(k).unwrap(), vec![32, 32, 3, 3]);
    assert_eq!(files[0].dtype(k), Some(FileDtype::F16));
    // get_weights: request order, and a clear error listing missing keys.
    let ws = files[0].get_weights(&["diffusion_model.out.2.bias", "diffusion_model.out.0.weight"]).unwrap();
    assert_eq!(ws[0].size(), vec![4]);
    assert_eq!(ws[1].size(), vec![8]);
    let missing: Vec<String> = (0..12).map(|i| format!("diffusion_model.nope.{i}")).collect();
    let err = files[0].get_weights(&missing).unwrap_err();
    assert!(matches!(err, FormatError::MissingKeys { .. }));
    let msg = err.to_string();
    assert!(msg.contains("is missing 12 key(s)") && msg.contains("  - diffusion_model.nope.0") && msg.contains("... and 2 more"), "{msg}");
    assert!(msg.contains("sdxl.safetensors"));

    for arch in [Arch::Zimage, Arch::Flux, Arch::Qwen] {
        for l in all_layouts(arch, LayoutSize::Tiny) {
            let p = write_base_model(&dir.path().join(format!("{}.safetensors", l.variant)), &l, FileDtype::BF16, seed, false).unwrap();
            let c = CheckpointFile::open(&p, CheckpointDomain::Diffusion).unwrap();
            assert_eq!(c.arch(), Some(arch), "{}", l.variant);
            assert_eq!(c.len(), l.params.len());
            assert_eq!(c.shapes().len(), l.params.len());
        }
    }
}

#[test]
fn clip_checkpoint_with_openclip_g() {
    let dir = tempfile::tempdir().unwrap();
    let ldm = write_sdxl_checkpoint(&dir.path().join("sdxl_ldm.safetensors"), LayoutSize::Tiny, FileDtype::F32, 3).unwrap();
    let c = CheckpointFile::open(&ldm, CheckpointDomain::Clip).unwrap();
    assert_eq!(c.layout(), CheckpointLayout::Conditioner);
    assert_eq!(c.arch(), Some(Arch::SdxlClip));
    assert!(c.has_clip_l() && c.has_clip_g());
    // Host layout minus the CLIP-L projection / logit scale a real SDXL checkpoint lacks.
    let host = layout(Arch::SdxlClip, LayoutSize::Tiny);
    let mut want: Vec<&str> = host
        .keys()
        .filter(|k| !k.starts_with("clip_l.transformer.text_projection") && *k != "clip_l.logit_scale")
        .collect();
    want.sort_unstable();
    let mut got: Vec<&str> = c.keys().collect();
    got.sort_unstable();
    assert_eq!(got, want);
    assert!(c.skipped().iter().any(|k| k.ends_with("position_ids")), "int64 position_ids skipped");
    assert!(c.skipped().iter().any(|k| k.starts_with("model.diffusion_model.")));
    for k in &want {
        assert_eq!(c.shape(k).unwrap(), host.get(k).unwrap().shape, "{k}");
    }
    // q/k/v are row slices of in_proj_weight, text_projection is transposed; all zero-copy.
    let raw = formats_util::read_raw(&ldm);
    let inp = &raw["conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_weight"];
    let w = 24;
    for (i, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let t = c.tensor(&format!("clip_g.transformer.text_model.encoder.layers.2.self_attn.{p}.weight")).unwrap();
        assert!(t.is_mapped());
        assert_eq!(formats_util::tensor_f64(&t), inp.data[i * w * w..(i + 1) * w * w].to_vec(), "{p}");
        let b = c.tensor(&format!("clip_g.transformer.text_model.encoder.layers.2.self_attn.{p}.bias")).unwrap();
        let bias = &raw["conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_bias"];
        assert_eq!(formats_util::tensor_f64(&b), bias.data[i * w..(i + 1) * w].to_vec());
    }
    let proj = &raw["conditioner.embedders.1.model.text_projection"];
    let t = c.tensor("clip_g.transformer.text_projection.weight").unwrap();
    let got = formats_util::tensor_f64(&t);
    for i in 0..w {
        for j in 0..w {
            assert_eq!(got[i * w + j], proj.data[j * w + i]);
        }
    }
    let fc1 = c.tensor("clip_g.transformer.text_model.encoder.layers.0.mlp.fc1.weight").unwrap();
    assert_eq!(formats_util::tensor_f64(&fc1), raw["conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight"].data);
    let l = c.tensor("clip_l.transformer.text_model.encoder.layers.1.self_attn.out_proj.weight").unwrap();
    assert_eq!(
        formats_util::tensor_f64(&l),
        raw["conditioner.embedders.0.transformer.text_model.encoder.layers.1.self_attn.out_proj.weight"].data
    );
    assert_eq!(openclip_to_host("transformer.resblocks.x.ln_1.weight", 0), None);
    assert_eq!(openclip_to_host("attn_mask", 0), None);
}

#[test]
fn clip_checkpoint_errors_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("three.safetensors");
    let f32b = |n: usize| comfyrs_nodes::models::writer::encode_f32(&vec![0.5; n], FileDtype::F32).unwrap();
    comfyrs_nodes::models::writer::write_all(
        &p,
        &[
            ("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into(), FileDtype::F32, vec![2], f32b(2)),
            ("conditioner.embedders.2.model.x".into(), FileDtype::F32, vec![2], f32b(2)),
            ("model.conditioner.embedders.5.model.y".into(), FileDtype::F32, vec![2], f32b(2)),
        ],
        None,
    )
    .unwrap();
    let err = CheckpointFile::open(&p, CheckpointDomain::Clip).err().unwrap();
    assert!(matches!(err, FormatError::UnexpectedEmbedders { .. }));
    assert!(err.to_string().contains("[2, 5]") && err.to_string().contains("embedders.0 (CLIP-L)"), "{err}");
    // Only L: allowed, arch not SDXL.
    let q = dir.path().join("only_l.safetensors");
    comfyrs_nodes::models::writer::write_all(
        &q,
        &[("model.conditioner.embedders.0.transformer.text_model.final_layer_norm.weight".into(), FileDtype::F32, vec![2], f32b(2))],
        None,
    )
    .unwrap();
    let c = CheckpointFile::open(&q, CheckpointDomain::Clip).unwrap();
    assert!(c.has_clip_l() && !c.has_clip_g());
    assert_eq!(c.arch(), None);
    assert!(c.contains("clip_l.transformer.text_model.final_layer_norm.weight"));
    // Only safetensors.
    for ext in ["ckpt", "pt"] {
        let bad = dir.path().join(format!("model.{ext}"));
        std::fs::write(&bad, b"x").unwrap();
        let err = CheckpointFile::open(&bad, CheckpointDomain::Diffusion).err().unwrap();
        assert!(matches!(err, FormatError::UnsupportedFormat { .. }));
        let msg = err.to_string();
        assert!(msg.contains(&format!("Got: .{ext}")) && msg.contains("convert your"), "{msg}");
    }
    // A truncated checkpoint names the file.
    let ldm = write_sdxl_checkpoint(&dir.path().join("ok.safetensors"), LayoutSize::Tiny, FileDtype::F16, 1).unwrap();
    let bytes = std::fs::read(&ldm).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = CheckpointFile::open(&cut, CheckpointDomain::Diffusion).err().unwrap();
    assert!(matches!(err, FormatError::Truncated { .. }) && err.to_string().contains("cut.safetensors"), "{err}");
}
