//! Every key-mapping example table of docs/widen.md, "Key names", with the docs/decisions.md
//! D13, D14 fixes where the reference drops or crashes, plus scaling and fused-offset rules on real
//! files.

mod formats_util;

use std::path::Path;

use comfyrs_nodes::arch::layout::{layout, LayoutSize};
use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::lora::names::{split_factor, Factor};
use comfyrs_nodes::lora::{AdapterKind, Component, LoadOptions, Lookup, LoraFile, LoraSet, NameIndex, RowRange, Target};
use comfyrs_nodes::models::writer::{encode_f32, write_all};
use comfyrs_nodes::models::{FileDtype, FormatError};
use indexmap::IndexMap;

fn map(arch: Arch, key: &str) -> Option<Target> {
    NameIndex::reference(arch).map_key(key)
}

/// (LoRA key, expected base key without `diffusion_model.`, component, swap).
fn check(arch: Arch, rows: &[(&str, Option<&str>, Option<Component>)]) {
    for (key, want, comp) in rows {
        let got = map(arch, key);
        match want {
            Some(w) => {
                let t = got.unwrap_or_else(|| panic!("{arch}: {key} did not map"));
                let full = if arch == Arch::SdxlClip { w.to_string() } else { format!("diffusion_model.{w}") };
                assert_eq!(t.key, full, "{arch}: {key}");
                assert_eq!(t.comp, *comp, "{arch}: {key} component");
            }
            None => assert_eq!(got, None, "{arch}: {key} must not map"),
        }
    }
}

const UP: &str = ".lora_up.weight";

#[test]
fn sdxl_kohya_table() {
    let k = |s: &str| format!("{s}{UP}");
    let t = "lora_unet_input_blocks_4_1_transformer_blocks_0";
    let rows: Vec<(String, Option<&str>, Option<Component>)> = vec![
        (k(&format!("{t}_attn1_to_q")), Some("input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"), None),
        (k(&format!("{t}_attn1_to_out_0")), Some("input_blocks.4.1.transformer_blocks.0.attn1.to_out.0.weight"), None),
        (k("lora_unet_input_blocks_4_1_proj_in"), Some("input_blocks.4.1.proj_in.weight"), None),
        (k("lora_unet_input_blocks_1_0_in_layers_2"), Some("input_blocks.1.0.in_layers.2.weight"), None),
        (k("lora_unet_input_blocks_1_0_emb_layers_1"), Some("input_blocks.1.0.emb_layers.1.weight"), None),
        (k("lora_unet_input_blocks_4_0_skip_connection"), Some("input_blocks.4.0.skip_connection.weight"), None),
        (k("lora_unet_input_blocks_3_0_op"), Some("input_blocks.3.0.op.weight"), None),
        (k("lora_unet_output_blocks_2_2_conv"), Some("output_blocks.2.2.conv.weight"), None),
        (
            k("lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k"),
            Some("middle_block.1.transformer_blocks.0.attn2.to_k.weight"),
            None,
        ),
        (k("lora_unet_time_embed_0"), Some("time_embed.0.weight"), None),
        (k("lora_unet_label_emb_0_0"), Some("label_emb.0.0.weight"), None),
        (k("lora_unet_out_2"), Some("out.2.weight"), None),
        // D13: ff_net → ff.net (the reference keeps ff_net and drops the weight).
        (k(&format!("{t}_ff_net_0_proj")), Some("input_blocks.4.1.transformer_blocks.0.ff.net.0.proj.weight"), None),
        (k(&format!("{t}_ff_net_2")), Some("input_blocks.4.1.transformer_blocks.0.ff.net.2.weight"), None),
        // Not SDXL modules.
        (k("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_proj"), None, None),
        (k("lora_unet_input_blocks_12_0_op"), None, None),
    ];
    let rows: Vec<(&str, Option<&str>, Option<Component>)> = rows.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
    check(Arch::Sdxl, &rows);
}

#[test]
fn sdxl_diffusers_and_prefixed_names() {
    check(
        Arch::Sdxl,
        &[
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", Some("input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"), None),
            ("unet.down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.lora_B.weight", Some("input_blocks.8.1.transformer_blocks.9.ff.net.2.weight"), None),
            ("lora_unet_down_blocks_2_attentions_1_proj_out.lora_down.weight", Some("input_blocks.8.1.proj_out.weight"), None),
            ("unet.down_blocks.0.resnets.1.conv1.lora_A.weight", Some("input_blocks.2.0.in_layers.2.weight"), None),
            ("unet.down_blocks.0.downsamplers.0.conv.lora_A.weight", Some("input_blocks.3.0.op.weight"), None),
            ("unet.down_blocks.1.resnets.0.conv_shortcut.lora_A.weight", Some("input_blocks.4.0.skip_connection.weight"), None),
            ("unet.mid_block.resnets.0.conv1.lora_A.weight", Some("middle_block.0.in_layers.2.weight"), None),
            ("unet.mid_block.attentions.0.proj_in.lora_A.weight", Some("middle_block.1.proj_in.weight"), None),
            ("unet.mid_block.resnets.1.time_emb_proj.lora_A.weight", Some("middle_block.2.emb_layers.1.weight"), None),
            ("unet.up_blocks.0.upsamplers.0.conv.lora_A.weight", Some("output_blocks.2.2.conv.weight"), None),
            ("unet.up_blocks.1.upsamplers.0.conv.lora_A.weight", Some("output_blocks.5.2.conv.weight"), None),
            ("unet.up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_v.lora_A.weight", Some("output_blocks.5.1.transformer_blocks.1.attn2.to_v.weight"), None),
            ("unet.up_blocks.2.resnets.2.conv2.lora_A.weight", Some("output_blocks.8.0.out_layers.3.weight"), None),
            ("unet.up_blocks.2.resnets.0.conv_shortcut.lora_A.weight", Some("output_blocks.6.0.skip_connection.weight"), None),
            ("unet.conv_in.lora_A.weight", Some("input_blocks.0.0.weight"), None),
            ("unet.conv_out.lora_A.weight", Some("out.2.weight"), None),
            ("unet.time_embedding.linear_1.lora_A.weight", Some("time_embed.0.weight"), None),
            ("unet.add_embedding.linear_2.lora_A.weight", Some("label_emb.0.2.weight"), None),
            ("diffusion_model.output_blocks.5.2.conv.lora_down.weight", Some("output_blocks.5.2.conv.weight"), None),
            ("base_model.model.unet.mid_block.attentions.0.proj_out.lora_A.default.weight", Some("middle_block.1.proj_out.weight"), None),
            ("lycoris_input_blocks_7_1_transformer_blocks_3_attn2_to_out_0.lora_up.weight", Some("input_blocks.7.1.transformer_blocks.3.attn2.to_out.0.weight"), None),
        ],
    );
    let idx = NameIndex::reference(Arch::Sdxl);
    assert_eq!(idx.lookup("lora_te1_text_model_encoder_layers_0_mlp_fc1"), Lookup::OtherDomain);
    assert_eq!(idx.lookup("text_encoder_2.text_model.encoder.layers.0.mlp.fc1"), Lookup::OtherDomain);
}

#[test]
fn sdxl_clip_table() {
    check(
        Arch::SdxlClip,
        &[
            ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", Some("clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"), None),
            ("lora_te1_text_model_encoder_layers_11_mlp_fc1.lora_down.weight", Some("clip_l.transformer.text_model.encoder.layers.11.mlp.fc1.weight"), None),
            ("lora_te2_text_model_encoder_layers_5_self_attn_out_proj.alpha", Some("clip_g.transformer.text_model.encoder.layers.5.self_attn.out_proj.weight"), None),
            ("lora_te2_text_model_encoder_layers_31_mlp_fc2.lora_up.weight", Some("clip_g.transformer.text_model.encoder.layers.31.mlp.fc2.weight"), None),
            // D13: diffusers / PEFT and host names.
            ("text_encoder.text_model.encoder.layers.3.self_attn.k_proj.lora_A.weight", Some("clip_l.transformer.text_model.encoder.layers.3.self_attn.k_proj.weight"), None),
            ("text_encoder_2.text_model.encoder.layers.30.self_attn.v_proj.lora_B.weight", Some("clip_g.transformer.text_model.encoder.layers.30.self_attn.v_proj.weight"), None),
            ("clip_g.transformer.text_model.encoder.layers.1.mlp.fc1.lora_down.weight", Some("clip_g.transformer.text_model.encoder.layers.1.mlp.fc1.weight"), None),
            ("lora_te2_text_projection.lora_up.weight", Some("clip_g.transformer.text_projection.weight"), None),
            // CLIP-L has 12 layers; SD1-style single-encoder names are not SDXL.
            ("lora_te1_text_model_encoder_layers_12_mlp_fc1.lora_up.weight", None, None),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", None, None),
        ],
    );
    let idx = NameIndex::reference(Arch::SdxlClip);
    assert_eq!(idx.lookup("lora_unet_input_blocks_4_1_proj_in"), Lookup::OtherDomain);
    assert_eq!(idx.lookup("lora_te_text_model_encoder_layers_0_mlp_fc1"), Lookup::NotFound);
}

#[test]
fn zimage_table() {
    use Component::*;
    check(
        Arch::Zimage,
        &[
            ("transformer.layers.0.attention.to_q.lora_A.weight", Some("layers.0.attention.qkv.weight"), Some(Q)),
            ("diffusion_model.layers.12.attention.to_k.lora_B.weight", Some("layers.12.attention.qkv.weight"), Some(K)),
            ("transformer.context_refiner.0.attention.to_v.lora_B.weight", Some("context_refiner.0.attention.qkv.weight"), Some(V)),
            ("transformer.layers.3.attention.to_out.0.lora_A.weight", Some("layers.3.attention.out.weight"), None),
            ("transformer.layers.3.feed_forward.w1.lora_A.weight", Some("layers.3.feed_forward.w1.weight"), None),
            ("diffusion_model.layers.3.adaLN_modulation.0.lora_down.weight", Some("layers.3.adaLN_modulation.0.weight"), None),
            ("lycoris_layers_0_attention_to_q.lora_down.weight", Some("layers.0.attention.qkv.weight"), Some(Q)),
            ("lycoris_layers_0_attention_to_out_0.lora_up.weight", Some("layers.0.attention.out.weight"), None),
            ("lycoris_noise_refiner_1_feed_forward_w2.lora_up.weight", Some("noise_refiner.1.feed_forward.w2.weight"), None),
            ("transformer.layers.0.attention.qkv.lora_A.weight", Some("layers.0.attention.qkv.weight"), None),
            // D13: kohya names (the reference has no Z-Image kohya support).
            ("lora_unet_layers_0_attention_to_k.lora_down.weight", Some("layers.0.attention.qkv.weight"), Some(K)),
            ("lora_unet_layers_29_feed_forward_w3.lora_down.weight", Some("layers.29.feed_forward.w3.weight"), None),
            ("lora_unet_noise_refiner_0_adaLN_modulation_0.lora_down.weight", Some("noise_refiner.0.adaLN_modulation.0.weight"), None),
            ("transformer.all_x_embedder.2-1.lora_A.weight", Some("x_embedder.weight"), None),
            ("transformer.layers.30.attention.to_q.lora_A.weight", None, None),
        ],
    );
}

#[test]
fn qwen_table() {
    check(
        Arch::Qwen,
        &[
            ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", Some("transformer_blocks.0.attn.to_q.weight"), None),
            ("transformer_blocks.0.img_mlp.net.0.proj.lora_B.weight", Some("transformer_blocks.0.img_mlp.net.0.proj.weight"), None),
            ("diffusion_model.transformer_blocks.0.attn.to_out.0.lora_A.weight", Some("transformer_blocks.0.attn.to_out.0.weight"), None),
            ("lora_unet_transformer_blocks_5_attn_to_q.lora_down.weight", Some("transformer_blocks.5.attn.to_q.weight"), None),
            ("lora_unet_transformer_blocks_5_img_mod_1.lora_down.weight", Some("transformer_blocks.5.img_mod.1.weight"), None),
            // Fixed: the reference splits img_mlp and add_q_proj at their underscores.
            ("lora_unet_transformer_blocks_5_img_mlp_net_0_proj.lora_down.weight", Some("transformer_blocks.5.img_mlp.net.0.proj.weight"), None),
            ("lora_unet_transformer_blocks_5_attn_add_q_proj.lora_down.weight", Some("transformer_blocks.5.attn.add_q_proj.weight"), None),
            ("lycoris_transformer_blocks_59_txt_mlp_net_2.lora_up.weight", Some("transformer_blocks.59.txt_mlp.net.2.weight"), None),
            ("lora_unet_transformer_blocks_7_attn_to_add_out.lora_up.weight", Some("transformer_blocks.7.attn.to_add_out.weight"), None),
            // The reference maps this to a non-existent key (dropped later); here it is unmatched
            // (and counted in the load report).
            ("lycoris_transformer_blocks_10_mlp_down_proj.lora_down.weight", None, None),
        ],
    );
}

#[test]
fn flux_table() {
    use Component::*;
    check(
        Arch::Flux,
        &[
            ("transformer.double_blocks.0.img_attn.to_q.lora_A.weight", Some("double_blocks.0.img_attn.qkv.weight"), Some(Q)),
            ("transformer.double_blocks.0.txt_attn.to_v.lora_B.weight", Some("double_blocks.0.txt_attn.qkv.weight"), Some(V)),
            ("lora_unet_double_blocks_1_img_attn_to_k.lora_down.weight", Some("double_blocks.1.img_attn.qkv.weight"), Some(K)),
            ("lora_unet_double_blocks_1_img_attn_qkv.lora_down.weight", Some("double_blocks.1.img_attn.qkv.weight"), None),
            ("lora_unet_double_blocks_1_img_attn_proj.lora_down.weight", Some("double_blocks.1.img_attn.proj.weight"), None),
            ("lora_unet_double_blocks_1_img_mlp_0.lora_down.weight", Some("double_blocks.1.img_mlp.0.weight"), None),
            ("lora_unet_double_blocks_1_img_mod_lin.lora_down.weight", Some("double_blocks.1.img_mod.lin.weight"), None),
            ("lora_unet_single_blocks_0_linear1_to_q.lora_down.weight", Some("single_blocks.0.linear1.weight"), Some(Q)),
            ("lora_unet_single_blocks_0_linear1_proj_mlp.lora_down.weight", Some("single_blocks.0.linear1.weight"), Some(Mlp)),
            ("transformer.single_blocks.3.to_k.lora_A.weight", Some("single_blocks.3.linear1.weight"), Some(K)),
            ("lora_unet_single_blocks_0_linear1.lora_down.weight", Some("single_blocks.0.linear1.weight"), None),
            ("lora_unet_single_blocks_0_linear2.lora_down.weight", Some("single_blocks.0.linear2.weight"), None),
            // D13: real diffusers Flux names (the reference drops them).
            ("transformer.transformer_blocks.0.attn.to_q.lora_A.weight", Some("double_blocks.0.img_attn.qkv.weight"), Some(Q)),
            ("transformer.transformer_blocks.2.attn.add_k_proj.lora_A.weight", Some("double_blocks.2.txt_attn.qkv.weight"), Some(K)),
            ("transformer.transformer_blocks.2.attn.to_out.0.lora_A.weight", Some("double_blocks.2.img_attn.proj.weight"), None),
            ("transformer.transformer_blocks.2.attn.to_add_out.lora_A.weight", Some("double_blocks.2.txt_attn.proj.weight"), None),
            ("transformer.transformer_blocks.2.ff_context.net.2.lora_A.weight", Some("double_blocks.2.txt_mlp.2.weight"), None),
            ("transformer.transformer_blocks.2.ff.net.0.proj.lora_A.weight", Some("double_blocks.2.img_mlp.0.weight"), None),
            ("transformer.transformer_blocks.0.norm1.linear.lora_A.weight", Some("double_blocks.0.img_mod.lin.weight"), None),
            ("transformer.transformer_blocks.0.norm1_context.linear.lora_A.weight", Some("double_blocks.0.txt_mod.lin.weight"), None),
            ("transformer.single_transformer_blocks.3.attn.to_v.lora_A.weight", Some("single_blocks.3.linear1.weight"), Some(V)),
            ("transformer.single_transformer_blocks.3.proj_mlp.lora_A.weight", Some("single_blocks.3.linear1.weight"), Some(Mlp)),
            ("transformer.single_transformer_blocks.37.proj_out.lora_A.weight", Some("single_blocks.37.linear2.weight"), None),
            ("transformer.single_transformer_blocks.0.norm.linear.lora_A.weight", Some("single_blocks.0.modulation.lin.weight"), None),
            ("transformer.x_embedder.lora_A.weight", Some("img_in.weight"), None),
            ("transformer.context_embedder.lora_A.weight", Some("txt_in.weight"), None),
            ("transformer.time_text_embed.guidance_embedder.linear_2.lora_A.weight", Some("guidance_in.out_layer.weight"), None),
            ("transformer.proj_out.lora_A.weight", Some("final_layer.linear.weight"), None),
            ("lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight", Some("single_blocks.0.linear1.weight"), Some(Q)),
            ("diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight", Some("double_blocks.0.img_attn.qkv.weight"), None),
            // Flux.2 shared modulation (BFL names).
            ("lora_unet_double_stream_modulation_img_lin.lora_down.weight", Some("double_stream_modulation_img.lin.weight"), None),
        ],
    );
    let t = map(Arch::Flux, "transformer.norm_out.linear.lora_A.weight").unwrap();
    assert_eq!(t.key, "diffusion_model.final_layer.adaLN_modulation.1.weight");
    assert!(t.swap_halves, "diffusers norm_out.linear has shift/scale swapped");
}

#[test]
fn factor_suffixes() {
    let cases = [
        ("a.b.lora_up.weight", "a.b", Factor::Up),
        ("a.b.lora_down.weight", "a.b", Factor::Down),
        ("a.lora_A.weight", "a", Factor::Down),
        ("a.lora_B.weight", "a", Factor::Up),
        ("a.lora_A.default.weight", "a", Factor::Down),
        ("a.lora.up.weight", "a", Factor::Up),
        ("a.lora_linear_layer.down.weight", "a", Factor::Down),
        ("a.lora_mid.weight", "a", Factor::Mid),
        ("lora_unet_x.alpha", "lora_unet_x", Factor::Alpha),
        ("lora_unet_x.dora_scale", "lora_unet_x", Factor::DoraScale),
        ("a.lora_magnitude_vector", "a", Factor::DoraScale),
        ("x.hada_w1_a", "x", Factor::HadaW1A),
        ("x.hada_t2", "x", Factor::HadaT2),
        ("x.lokr_w1", "x", Factor::LokrW1),
        ("x.lokr_w2_b", "x", Factor::LokrW2B),
        ("x.lokr_t2", "x", Factor::LokrT2),
        ("x.diff", "x", Factor::Unsupported),
        ("x.diff_b", "x", Factor::Unsupported),
        ("x.lora_up.bias", "x", Factor::Unsupported),
    ];
    for (k, m, f) in cases {
        let (module, _, factor) = split_factor(k).unwrap_or_else(|| panic!("{k}"));
        assert_eq!((module, factor), (m, f), "{k}");
    }
    assert_eq!(split_factor("model.weight"), None);
    assert_eq!(split_factor("alpha"), None);
}

fn f32b(v: &[f32]) -> Vec<u8> {
    encode_f32(v, FileDtype::F32).unwrap()
}

fn write_lora(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let t: Vec<(String, FileDtype, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, s, v)| (n.to_string(), FileDtype::F32, s.clone(), f32b(v))).collect();
    write_all(path, &t, None).unwrap();
}

fn ramp(n: usize, s: f32) -> Vec<f32> {
    (0..n).map(|i| ((i % 7) as f32 - 3.0) * s).collect()
}

#[test]
fn scale_is_strength_times_alpha_over_rank() {
    let dir = tempfile::tempdir().unwrap();
    let m = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q";
    let p1 = dir.path().join("noalpha.safetensors");
    write_lora(&p1, &[(&format!("{m}.lora_up.weight"), vec![640, 8], ramp(640 * 8, 0.01)), (&format!("{m}.lora_down.weight"), vec![8, 640], ramp(8 * 640, 0.01))]);
    let p2 = dir.path().join("alpha.safetensors");
    write_lora(
        &p2,
        &[
            (&format!("{m}.lora_up.weight"), vec![640, 8], ramp(640 * 8, 0.01)),
            (&format!("{m}.lora_down.weight"), vec![8, 640], ramp(8 * 640, 0.01)),
            (&format!("{m}.alpha"), vec![], vec![16.0]),
        ],
    );
    let key = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight";
    let mut set = LoraSet::new();
    let f1 = LoraFile::load(&p1, Arch::Sdxl).unwrap();
    let f2 = LoraFile::load(&p2, Arch::Sdxl).unwrap();
    set.add(&f1, 0.5);
    set.add(&f2, 0.5);
    let specs = set.deltas.specs(key);
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].effective_scale(), 0.5);
    assert_eq!(specs[1].effective_scale(), 1.0);
    assert_eq!(specs[0].kind, AdapterKind::Lora);
    assert_eq!(specs[0].rank(), Some(8));
    let (up, down) = specs[0].low_rank().unwrap();
    assert_eq!((up.size(), down.size()), (vec![640, 8], vec![8, 640]));
    // Factors are views of the mapped file; loaded_bytes counts them exactly.
    assert_eq!(f1.deltas.loaded_bytes(), 2 * 640 * 8 * 4);
    assert!(f1.mapped_file().contains_ptr(up) && f1.mapped_file().contains_ptr(down));
    assert_eq!(set.deltas.loaded_bytes(), f1.deltas.loaded_bytes() + f2.deltas.loaded_bytes());
    assert_eq!(set.deltas.affected_keys().collect::<Vec<_>>(), vec![key]);
    assert_eq!(set.reports.len(), 2);
}

fn full_shapes(arch: Arch) -> IndexMap<String, Vec<i64>> {
    layout(arch, LayoutSize::Full).params.iter().map(|p| (p.key.clone(), p.shape.iter().map(|&d| d as i64).collect())).collect()
}

#[test]
fn zimage_qkv_offsets_from_the_fused_shape() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("z.safetensors");
    let d = 3840usize;
    let mut t = Vec::new();
    let names: Vec<String> = ["to_q", "to_v"].iter().map(|s| format!("transformer.layers.0.attention.{s}")).collect();
    for n in &names {
        t.push((format!("{n}.lora_A.weight"), vec![1, d], ramp(d, 0.01)));
        t.push((format!("{n}.lora_B.weight"), vec![d, 1], ramp(d, 0.01)));
    }
    let tt: Vec<(&str, Vec<usize>, Vec<f32>)> = t.iter().map(|(a, b, c)| (a.as_str(), b.clone(), c.clone())).collect();
    write_lora(&p, &tt);
    let idx = NameIndex::from_shapes(Arch::Zimage, &full_shapes(Arch::Zimage));
    let f = LoraFile::load_with(&p, Arch::Zimage, &LoadOptions { index: Some(&idx), require_match: true }).unwrap();
    let key = "diffusion_model.layers.0.attention.qkv.weight";
    assert_eq!(f.deltas.affected_keys().collect::<Vec<_>>(), vec![key], "one fused key");
    let specs = f.deltas.specs(key);
    assert_eq!(specs.len(), 2, "partial QKV: only q and v");
    assert_eq!(specs[0].component, Some(Component::Q));
    assert_eq!(specs[0].rows, Some(RowRange { start: 0, len: 3840 }));
    assert_eq!(specs[1].component, Some(Component::V));
    assert_eq!(specs[1].rows, Some(RowRange { start: 7680, len: 3840 }));
    assert_eq!(specs[1].shape, vec![3840, 3840]);
    // D14: a narrow fused qkv (a tiny model) gets rows/3 offsets, not the 3840 constants.
    let mut narrow = IndexMap::new();
    narrow.insert(key.to_string(), vec![3 * 3840, 3840]);
    narrow.insert("diffusion_model.layers.1.attention.qkv.weight".to_string(), vec![96, 32]);
    let idx2 = NameIndex::from_shapes(Arch::Zimage, &narrow);
    let p2 = dir.path().join("z_small.safetensors");
    write_lora(
        &p2,
        &[
            ("transformer.layers.1.attention.to_k.lora_A.weight", vec![2, 32], ramp(64, 0.1)),
            ("transformer.layers.1.attention.to_k.lora_B.weight", vec![32, 2], ramp(64, 0.1)),
        ],
    );
    let f2 = LoraFile::load_with(&p2, Arch::Zimage, &LoadOptions { index: Some(&idx2), require_match: true }).unwrap();
    assert_eq!(f2.deltas.specs("diffusion_model.layers.1.attention.qkv.weight")[0].rows, Some(RowRange { start: 32, len: 32 }));
}

#[test]
fn flux_linear1_offsets_use_the_hidden_width() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.safetensors");
    let h = 3072usize;
    let m = 12288usize;
    let n = "lora_unet_single_blocks_0_linear1";
    write_lora(
        &p,
        &[
            (&format!("{n}_to_q.lora_down.weight"), vec![1, h], ramp(h, 0.01)),
            (&format!("{n}_to_q.lora_up.weight"), vec![h, 1], ramp(h, 0.01)),
            (&format!("{n}_to_k.lora_down.weight"), vec![1, h], ramp(h, 0.01)),
            (&format!("{n}_to_k.lora_up.weight"), vec![h, 1], ramp(h, 0.01)),
            (&format!("{n}_to_v.lora_down.weight"), vec![1, h], ramp(h, 0.01)),
            (&format!("{n}_to_v.lora_up.weight"), vec![h, 1], ramp(h, 0.01)),
            (&format!("{n}_proj_mlp.lora_down.weight"), vec![1, h], ramp(h, 0.01)),
            (&format!("{n}_proj_mlp.lora_up.weight"), vec![m, 1], ramp(m, 0.01)),
            ("lora_unet_double_blocks_0_txt_attn_to_v.lora_down.weight", vec![1, h], ramp(h, 0.01)),
            ("lora_unet_double_blocks_0_txt_attn_to_v.lora_up.weight", vec![h, 1], ramp(h, 0.01)),
        ],
    );
    let want = [(Component::Q, 0, h), (Component::K, h, h), (Component::V, 2 * h, h), (Component::Mlp, 3 * h, m)];
    let idx = NameIndex::from_shapes(Arch::Flux, &full_shapes(Arch::Flux));
    for opts in [LoadOptions { index: Some(&idx), require_match: true }, LoadOptions::default()] {
        let f = LoraFile::load_with(&p, Arch::Flux, &opts).unwrap();
        let specs = f.deltas.specs("diffusion_model.single_blocks.0.linear1.weight");
        assert_eq!(specs.len(), 4);
        for (s, (c, start, len)) in specs.iter().zip(want) {
            assert_eq!(s.component, Some(c));
            assert_eq!(s.rows, Some(RowRange { start: start as i64, len: len as i64 }), "{c:?}");
        }
        let v = &f.deltas.specs("diffusion_model.double_blocks.0.txt_attn.qkv.weight")[0];
        assert_eq!(v.rows, Some(RowRange { start: 2 * h as i64, len: h as i64 }));
    }
}

#[test]
fn unmatched_modules_are_counted_and_empty_files_fail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.safetensors");
    let m = "lora_unet_input_blocks_4_1_proj_in";
    write_lora(
        &p,
        &[
            (&format!("{m}.lora_up.weight"), vec![640, 2], ramp(1280, 0.01)),
            (&format!("{m}.lora_down.weight"), vec![2, 640], ramp(1280, 0.01)),
            ("lora_unet_no_such_module.lora_up.weight", vec![4, 2], ramp(8, 0.1)),
            ("lora_unet_no_such_module.lora_down.weight", vec![2, 4], ramp(8, 0.1)),
            ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", vec![4, 2], ramp(8, 0.1)),
            ("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", vec![2, 4], ramp(8, 0.1)),
            ("lora_unet_input_blocks_4_1_proj_out.lora_up.weight", vec![640, 2], ramp(1280, 0.01)),
            ("lora_unet_input_blocks_5_1_proj_out.diff", vec![4], ramp(4, 0.1)),
            ("some_random_tensor", vec![3], ramp(3, 0.1)),
        ],
    );
    let f = LoraFile::load(&p, Arch::Sdxl).unwrap();
    let r = &f.report;
    assert_eq!(r.tensors, 9);
    assert_eq!(r.modules, 5);
    assert_eq!(r.matched, 1);
    assert_eq!(r.unmatched, vec!["lora_unet_no_such_module"]);
    assert_eq!(r.other_domain, vec!["lora_te1_text_model_encoder_layers_0_mlp_fc1"]);
    assert_eq!(r.unsupported.len(), 2, "{:?}", r.unsupported);
    assert!(r.unsupported.iter().any(|(m, why)| m.ends_with("proj_out") && why.contains("incomplete")));
    assert!(r.unsupported.iter().any(|(m, why)| m.ends_with("5_1_proj_out") && why.contains("diff")));
    assert_eq!(r.unknown_keys, vec!["some_random_tensor"]);
    assert_eq!(r.ignored(), 4);
    let s = r.summary();
    assert!(s.contains("1 of 5 modules") && s.contains("1 unmatched") && s.contains("1 unknown keys"), "{s}");

    // The same file for another architecture matches nothing: an error naming file and arch,
    // with a guess of what it is.
    let err = LoraFile::load(&p, Arch::Flux).unwrap_err();
    assert!(matches!(err, FormatError::LoraNoMatch { .. }));
    let msg = err.to_string();
    assert!(msg.contains("mixed.safetensors") && msg.contains("'flux'") && msg.contains("looks like a 'sdxl' LoRA"), "{msg}");
    // A UNet-only file in the CLIP pipeline: error by default, empty with require_match off.
    let clip = LoraFile::load(&p, Arch::SdxlClip);
    assert!(clip.is_ok(), "this file has one text-encoder module");
    let unet_only = dir.path().join("unet_only.safetensors");
    write_lora(&unet_only, &[(&format!("{m}.lora_up.weight"), vec![640, 2], ramp(1280, 0.01)), (&format!("{m}.lora_down.weight"), vec![2, 640], ramp(1280, 0.01))]);
    let err = LoraFile::load(&unet_only, Arch::SdxlClip).unwrap_err().to_string();
    assert!(err.contains("'sdxl_clip'") && err.contains("diffusion model"), "{err}");
    let empty = LoraFile::load_with(&unet_only, Arch::SdxlClip, &LoadOptions { index: None, require_match: false }).unwrap();
    assert_eq!(empty.deltas.len(), 0);
    assert_eq!(empty.report.other_domain.len(), 1);
    // Not a LoRA at all.
    let notlora = dir.path().join("weights.safetensors");
    write_lora(&notlora, &[("diffusion_model.input_blocks.0.0.weight", vec![2], vec![1.0, 2.0])]);
    let err = LoraFile::load(&notlora, Arch::Sdxl).unwrap_err().to_string();
    assert!(err.contains("no LoRA") && err.contains("weights.safetensors"), "{err}");
}

#[test]
fn corrupted_lora_and_wrong_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lora.safetensors");
    let m = "lora_unet_input_blocks_4_1_proj_in";
    write_lora(&p, &[(&format!("{m}.lora_up.weight"), vec![640, 2], ramp(1280, 0.01)), (&format!("{m}.lora_down.weight"), vec![2, 640], ramp(1280, 0.01))]);
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut_lora.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = LoraFile::load(&cut, Arch::Sdxl).unwrap_err();
    assert!(matches!(err, FormatError::Truncated { .. }) && err.to_string().contains("cut_lora.safetensors"), "{err}");
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!").unwrap();
    let err = LoraFile::load(&garbage, Arch::Sdxl).unwrap_err();
    assert!(matches!(err, FormatError::Corrupt { .. }) && err.to_string().contains("garbage.safetensors"), "{err}");
    let ckpt = dir.path().join("lora.pt");
    std::fs::write(&ckpt, b"x").unwrap();
    assert!(matches!(LoraFile::load(&ckpt, Arch::Sdxl).unwrap_err(), FormatError::UnsupportedFormat { .. }));
    // Shapes that do not fit the base model are reported, not applied.
    let mut shapes = IndexMap::new();
    shapes.insert("diffusion_model.input_blocks.4.1.proj_in.weight".to_string(), vec![320i64, 320]);
    let idx = NameIndex::from_shapes(Arch::Sdxl, &shapes);
    let err = LoraFile::load_with(&p, Arch::Sdxl, &LoadOptions { index: Some(&idx), require_match: true }).unwrap_err();
    assert!(err.to_string().contains("does not fit base weight"), "{err}");
}

#[test]
fn duplicate_modules_and_wrong_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dup.safetensors");
    write_lora(
        &p,
        &[
            ("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", vec![640, 2], ramp(1280, 0.01)),
            ("lora_unet_input_blocks_4_1_proj_in.lora_down.weight", vec![2, 640], ramp(1280, 0.01)),
            ("diffusion_model.input_blocks.4.1.proj_in.hada_w1_a", vec![640, 2], ramp(1280, 0.01)),
            ("diffusion_model.input_blocks.4.1.proj_in.hada_w1_b", vec![2, 640], ramp(1280, 0.01)),
            ("diffusion_model.input_blocks.4.1.proj_in.hada_w2_a", vec![640, 2], ramp(1280, 0.01)),
            ("diffusion_model.input_blocks.4.1.proj_in.hada_w2_b", vec![2, 640], ramp(1280, 0.01)),
        ],
    );
    let f = LoraFile::load(&p, Arch::Sdxl).unwrap();
    let specs = f.deltas.specs("diffusion_model.input_blocks.4.1.proj_in.weight");
    assert_eq!(specs.len(), 1, "the later module wins");
    assert_eq!(specs[0].kind, AdapterKind::LoHa);
    assert_eq!(f.report.matched, 1);
    assert_eq!(f.report.by_kind.get("loha"), Some(&1));
    assert_eq!(f.report.by_kind.get("lora"), None);
    assert!(f.report.unsupported[0].1.contains("duplicate"), "{:?}", f.report.unsupported);

    // A diffusers Flux LoRA shares attention names with Qwen-Image; loaded as Qwen it is
    // recognized as a Flux LoRA instead of being applied partially.
    let q = dir.path().join("flux_diffusers.safetensors");
    let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for m in [
        "transformer.transformer_blocks.0.attn.to_q",
        "transformer.transformer_blocks.0.ff.net.0.proj",
        "transformer.transformer_blocks.0.norm1.linear",
        "transformer.single_transformer_blocks.0.attn.to_q",
        "transformer.single_transformer_blocks.0.proj_mlp",
    ] {
        t.push((format!("{m}.lora_A.weight"), vec![1, 3072], ramp(3072, 0.01)));
        t.push((format!("{m}.lora_B.weight"), vec![3072, 1], ramp(3072, 0.01)));
    }
    let tt: Vec<(&str, Vec<usize>, Vec<f32>)> = t.iter().map(|(a, b, c)| (a.as_str(), b.clone(), c.clone())).collect();
    write_lora(&q, &tt);
    assert_eq!(LoraFile::load(&q, Arch::Flux).unwrap().report.matched, 5);
    let err = LoraFile::load(&q, Arch::Qwen).unwrap_err();
    assert!(matches!(err, FormatError::LoraWrongArch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("flux_diffusers.safetensors") && msg.contains("'qwen'") && msg.contains("'flux'"), "{msg}");
    let lenient = LoraFile::load_with(&q, Arch::Qwen, &LoadOptions { index: None, require_match: false }).unwrap();
    assert_eq!(lenient.report.matched, 1);
    assert_eq!(lenient.report.unmatched.len(), 4);
}

#[test]
fn module_names_are_unambiguous() {
    for arch in Arch::ALL {
        assert_eq!(NameIndex::reference(arch).collisions(), &[] as &[String], "{arch}");
        let tiny: IndexMap<String, Vec<i64>> = layout(arch, LayoutSize::Tiny)
            .params
            .iter()
            .map(|p| (p.key.clone(), p.shape.iter().map(|&d| d as i64).collect()))
            .collect();
        assert!(NameIndex::from_shapes(arch, &tiny).collisions().is_empty(), "{arch}");
    }
}
