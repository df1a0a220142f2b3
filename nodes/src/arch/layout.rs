//! Parameter layouts (names + shapes) of the supported architectures, generated
//! programmatically (`docs/widen.md`, "Parameter layouts"), in full size and as tiny stand-ins with
//! the same structure (same module names, small widths, fewer repeated blocks).
//!
//! Keys are host keys: diffusion models with the `diffusion_model.` prefix, text encoders with
//! `clip_l.` / `clip_g.`. [`sdxl_checkpoint_layout`] gives the on-disk layout of a full SDXL
//! LDM checkpoint (UNet, CLIP-L in HF layout, CLIP-G in OpenCLIP layout, the VAE: complete at full size, a stub at tiny size).

use super::Arch;

/// One parameter: key and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub shape: Vec<usize>,
}

impl Param {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Full size (the real model) or tiny (same structure, small dims).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayoutSize {
    Full,
    Tiny,
}

/// The parameters of one model.
#[derive(Debug, Clone)]
pub struct Layout {
    pub arch: Arch,
    /// Variant name (`sdxl`, `flux1`, `flux2`, ...).
    pub variant: &'static str,
    pub size: LayoutSize,
    pub params: Vec<Param>,
}

impl Layout {
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.key.as_str())
    }
    pub fn numel(&self) -> usize {
        self.params.iter().map(Param::numel).sum()
    }
    pub fn get(&self, key: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.key == key)
    }
}

struct B {
    prefix: String,
    params: Vec<Param>,
}

impl B {
    fn new(prefix: &str) -> Self {
        B { prefix: prefix.to_string(), params: Vec::new() }
    }
    fn p(&mut self, key: impl AsRef<str>, shape: &[usize]) {
        self.params.push(Param { key: format!("{}{}", self.prefix, key.as_ref()), shape: shape.to_vec() });
    }
    /// Linear `[out, inp]` (+ bias).
    fn lin(&mut self, m: impl AsRef<str>, out: usize, inp: usize, bias: bool) {
        let m = m.as_ref();
        self.p(format!("{m}.weight"), &[out, inp]);
        if bias {
            self.p(format!("{m}.bias"), &[out]);
        }
    }
    /// Norm with weight (+ bias).
    fn norm(&mut self, m: impl AsRef<str>, c: usize, bias: bool) {
        let m = m.as_ref();
        self.p(format!("{m}.weight"), &[c]);
        if bias {
            self.p(format!("{m}.bias"), &[c]);
        }
    }
    fn conv(&mut self, m: impl AsRef<str>, out: usize, inp: usize, k: usize) {
        let m = m.as_ref();
        self.p(format!("{m}.weight"), &[out, inp, k, k]);
        self.p(format!("{m}.bias"), &[out]);
    }
}

/// The layout of `arch` at `size` (Flux: Flux.1-dev; see [`flux2_layout`]).
pub fn layout(arch: Arch, size: LayoutSize) -> Layout {
    let params = match arch {
        Arch::Sdxl => sdxl_unet(&SdxlDims::new(size), "diffusion_model."),
        Arch::SdxlClip => sdxl_clip(size),
        Arch::Zimage => zimage(&ZimageDims::new(size)),
        Arch::Flux => flux(&FluxDims::flux1(size)),
        Arch::Qwen => qwen(&QwenDims::new(size)),
    };
    let variant = match arch {
        Arch::Sdxl => "sdxl",
        Arch::SdxlClip => "sdxl_clip",
        Arch::Zimage => "zimage",
        Arch::Flux => "flux1",
        Arch::Qwen => "qwen",
    };
    Layout { arch, variant, size, params }
}

/// Flux.2 (Klein 9B at full size: H 4096, 8 double + 24 single blocks, SwiGLU MLP ratio 3,
/// shared modulation, no biases).
pub fn flux2_layout(size: LayoutSize) -> Layout {
    Layout { arch: Arch::Flux, variant: "flux2", size, params: flux(&FluxDims::flux2(size)) }
}

/// Every layout of an architecture (Flux: Flux.1 and Flux.2).
pub fn all_layouts(arch: Arch, size: LayoutSize) -> Vec<Layout> {
    let mut v = vec![layout(arch, size)];
    if arch == Arch::Flux {
        v.push(flux2_layout(size));
    }
    v
}

// ---------------------------------------------------------------------------------------------
// SDXL UNet

/// SDXL UNet dimensions.
#[derive(Debug, Clone)]
pub struct SdxlDims {
    pub ch: usize,
    pub mult: [usize; 3],
    /// Transformer depth per level (0 = no SpatialTransformer).
    pub depth: [usize; 3],
    pub mid_depth: usize,
    pub time: usize,
    pub context: usize,
    pub adm: usize,
    pub in_ch: usize,
    pub out_ch: usize,
}

impl SdxlDims {
    pub fn new(size: LayoutSize) -> Self {
        match size {
            LayoutSize::Full => SdxlDims {
                ch: 320,
                mult: [1, 2, 4],
                depth: [0, 2, 10],
                mid_depth: 10,
                time: 1280,
                context: 2048,
                adm: 2816,
                in_ch: 4,
                out_ch: 4,
            },
            LayoutSize::Tiny => SdxlDims {
                ch: 8,
                mult: [1, 2, 4],
                depth: [0, 1, 2],
                mid_depth: 2,
                time: 32,
                context: 16,
                adm: 24,
                in_ch: 4,
                out_ch: 4,
            },
        }
    }
}

fn res_block(b: &mut B, p: &str, cin: usize, cout: usize, time: usize) {
    b.norm(format!("{p}.in_layers.0"), cin, true);
    b.conv(format!("{p}.in_layers.2"), cout, cin, 3);
    b.lin(format!("{p}.emb_layers.1"), cout, time, true);
    b.norm(format!("{p}.out_layers.0"), cout, true);
    b.conv(format!("{p}.out_layers.3"), cout, cout, 3);
    if cin != cout {
        b.conv(format!("{p}.skip_connection"), cout, cin, 1);
    }
}

fn spatial_transformer(b: &mut B, p: &str, c: usize, depth: usize, ctx: usize) {
    b.norm(format!("{p}.norm"), c, true);
    b.lin(format!("{p}.proj_in"), c, c, true);
    for i in 0..depth {
        let t = format!("{p}.transformer_blocks.{i}");
        b.lin(format!("{t}.attn1.to_q"), c, c, false);
        b.lin(format!("{t}.attn1.to_k"), c, c, false);
        b.lin(format!("{t}.attn1.to_v"), c, c, false);
        b.lin(format!("{t}.attn1.to_out.0"), c, c, true);
        b.lin(format!("{t}.ff.net.0.proj"), 8 * c, c, true);
        b.lin(format!("{t}.ff.net.2"), c, 4 * c, true);
        b.lin(format!("{t}.attn2.to_q"), c, c, false);
        b.lin(format!("{t}.attn2.to_k"), c, ctx, false);
        b.lin(format!("{t}.attn2.to_v"), c, ctx, false);
        b.lin(format!("{t}.attn2.to_out.0"), c, c, true);
        b.norm(format!("{t}.norm1"), c, true);
        b.norm(format!("{t}.norm2"), c, true);
        b.norm(format!("{t}.norm3"), c, true);
    }
    b.lin(format!("{p}.proj_out"), c, c, true);
}

/// The SDXL UNet with `prefix` (`diffusion_model.` for host keys).
pub fn sdxl_unet(d: &SdxlDims, prefix: &str) -> Vec<Param> {
    let mut b = B::new(prefix);
    let t = d.time;
    b.lin("time_embed.0", t, d.ch, true);
    b.lin("time_embed.2", t, t, true);
    b.lin("label_emb.0.0", t, d.adm, true);
    b.lin("label_emb.0.2", t, t, true);
    b.conv("input_blocks.0.0", d.ch, d.in_ch, 3);
    let mut skips = vec![d.ch];
    let mut cur = d.ch;
    let mut n = 1;
    for level in 0..3 {
        let c = d.ch * d.mult[level];
        for _ in 0..2 {
            res_block(&mut b, &format!("input_blocks.{n}.0"), cur, c, t);
            cur = c;
            if d.depth[level] > 0 {
                spatial_transformer(&mut b, &format!("input_blocks.{n}.1"), c, d.depth[level], d.context);
            }
            skips.push(cur);
            n += 1;
        }
        if level < 2 {
            b.conv(format!("input_blocks.{n}.0.op"), c, c, 3);
            skips.push(c);
            n += 1;
        }
    }
    res_block(&mut b, "middle_block.0", cur, cur, t);
    spatial_transformer(&mut b, "middle_block.1", cur, d.mid_depth, d.context);
    res_block(&mut b, "middle_block.2", cur, cur, t);
    let mut n = 0;
    for level in (0..3).rev() {
        let c = d.ch * d.mult[level];
        for i in 0..3 {
            let skip = skips.pop().expect("skip channels");
            res_block(&mut b, &format!("output_blocks.{n}.0"), cur + skip, c, t);
            cur = c;
            let mut sub = 1;
            if d.depth[level] > 0 {
                spatial_transformer(&mut b, &format!("output_blocks.{n}.1"), c, d.depth[level], d.context);
                sub = 2;
            }
            if level > 0 && i == 2 {
                b.conv(format!("output_blocks.{n}.{sub}.conv"), c, c, 3);
            }
            n += 1;
        }
    }
    b.norm("out.0", d.ch, true);
    b.conv("out.2", d.out_ch, d.ch, 3);
    b.params
}

// ---------------------------------------------------------------------------------------------
// SDXL text encoders

/// CLIP text-model dimensions.
#[derive(Debug, Clone)]
pub struct ClipDims {
    pub width: usize,
    pub layers: usize,
    pub mlp: usize,
    pub vocab: usize,
    pub positions: usize,
}

impl ClipDims {
    pub fn clip_l(size: LayoutSize) -> Self {
        match size {
            LayoutSize::Full => ClipDims { width: 768, layers: 12, mlp: 3072, vocab: 49408, positions: 77 },
            LayoutSize::Tiny => ClipDims { width: 16, layers: 2, mlp: 32, vocab: 64, positions: 8 },
        }
    }
    pub fn clip_g(size: LayoutSize) -> Self {
        match size {
            LayoutSize::Full => ClipDims { width: 1280, layers: 32, mlp: 5120, vocab: 49408, positions: 77 },
            LayoutSize::Tiny => ClipDims { width: 24, layers: 3, mlp: 48, vocab: 64, positions: 8 },
        }
    }
}

/// HF CLIPTextModel parameters under `prefix` (e.g. `clip_l.transformer.text_model.`).
pub fn clip_text_model(d: &ClipDims, prefix: &str) -> Vec<Param> {
    let mut b = B::new(prefix);
    let w = d.width;
    b.p("embeddings.token_embedding.weight", &[d.vocab, w]);
    b.p("embeddings.position_embedding.weight", &[d.positions, w]);
    for i in 0..d.layers {
        let l = format!("encoder.layers.{i}");
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            b.lin(format!("{l}.self_attn.{proj}"), w, w, true);
        }
        b.norm(format!("{l}.layer_norm1"), w, true);
        b.lin(format!("{l}.mlp.fc1"), d.mlp, w, true);
        b.lin(format!("{l}.mlp.fc2"), w, d.mlp, true);
        b.norm(format!("{l}.layer_norm2"), w, true);
    }
    b.norm("final_layer_norm", w, true);
    b.params
}

fn sdxl_clip(size: LayoutSize) -> Vec<Param> {
    let l = ClipDims::clip_l(size);
    let g = ClipDims::clip_g(size);
    let mut v = clip_text_model(&l, "clip_l.transformer.text_model.");
    v.push(Param { key: "clip_l.transformer.text_projection.weight".into(), shape: vec![l.width, l.width] });
    v.push(Param { key: "clip_l.logit_scale".into(), shape: vec![] });
    v.extend(clip_text_model(&g, "clip_g.transformer.text_model."));
    v.push(Param { key: "clip_g.transformer.text_projection.weight".into(), shape: vec![g.width, g.width] });
    v.push(Param { key: "clip_g.logit_scale".into(), shape: vec![] });
    v
}

/// OpenCLIP text-tower parameters under `prefix` (e.g. `conditioner.embedders.1.model.`), the
/// layout real SDXL checkpoints use for CLIP-G.
pub fn openclip_text(d: &ClipDims, prefix: &str) -> Vec<Param> {
    let mut b = B::new(prefix);
    let w = d.width;
    b.p("token_embedding.weight", &[d.vocab, w]);
    b.p("positional_embedding", &[d.positions, w]);
    for i in 0..d.layers {
        let r = format!("transformer.resblocks.{i}");
        b.norm(format!("{r}.ln_1"), w, true);
        b.p(format!("{r}.attn.in_proj_weight"), &[3 * w, w]);
        b.p(format!("{r}.attn.in_proj_bias"), &[3 * w]);
        b.lin(format!("{r}.attn.out_proj"), w, w, true);
        b.norm(format!("{r}.ln_2"), w, true);
        b.lin(format!("{r}.mlp.c_fc"), d.mlp, w, true);
        b.lin(format!("{r}.mlp.c_proj"), w, d.mlp, true);
    }
    b.norm("ln_final", w, true);
    b.p("text_projection", &[w, w]);
    b.p("logit_scale", &[]);
    b.params
}

/// Parameters of a full SDXL LDM checkpoint as stored on disk: `model.diffusion_model.*`,
/// `conditioner.embedders.0.transformer.text_model.*` (CLIP-L, HF layout, with an int64
/// `position_ids` buffer as real files have), `conditioner.embedders.1.model.*` (CLIP-G,
/// OpenCLIP layout) and the VAE (`first_stage_model.*`: complete at full size, a stub of a few
/// representative tensors at tiny size; the merge never reads it). The bool marks integer (I64) buffers.
pub fn sdxl_checkpoint_layout(size: LayoutSize) -> Vec<(Param, bool)> {
    let mut v: Vec<(Param, bool)> =
        sdxl_unet(&SdxlDims::new(size), "model.diffusion_model.").into_iter().map(|p| (p, false)).collect();
    let l = ClipDims::clip_l(size);
    v.extend(
        clip_text_model(&l, "conditioner.embedders.0.transformer.text_model.").into_iter().map(|p| (p, false)),
    );
    v.push((
        Param {
            key: "conditioner.embedders.0.transformer.text_model.embeddings.position_ids".into(),
            shape: vec![1, l.positions],
        },
        true,
    ));
    v.extend(
        openclip_text(&ClipDims::clip_g(size), "conditioner.embedders.1.model.").into_iter().map(|p| (p, false)),
    );
    let params = match size {
        LayoutSize::Full => sdxl_vae(),
        LayoutSize::Tiny => {
            let mut b = B::new("first_stage_model.");
            b.conv("encoder.conv_in", 4, 3, 3);
            b.conv("encoder.conv_out", 8, 4, 3);
            b.conv("quant_conv", 8, 8, 1);
            b.conv("post_quant_conv", 4, 4, 1);
            b.conv("decoder.conv_in", 4, 4, 3);
            b.conv("decoder.conv_out", 3, 4, 3);
            b.params
        }
    };
    v.extend(params.into_iter().map(|p| (p, false)));
    v
}

/// The SDXL VAE (the LDM AutoencoderKL: 128 channels × [1, 2, 4, 4], two ResNet blocks per
/// encoder level and three per decoder level, one attention block in each middle, 4 latent
/// channels) under `first_stage_model.`, complete, so that ComfyUI's checkpoint loader builds it
/// from a full-size fixture and decodes the sampler's latents with it (the loop of
/// docs/widen.md, The loop on a GPU).
fn sdxl_vae() -> Vec<Param> {
    const MULT: [usize; 4] = [1, 2, 4, 4];
    const CH: usize = 128;
    let mut b = B::new("first_stage_model.");
    let resnet = |b: &mut B, m: &str, inp: usize, out: usize| {
        b.norm(format!("{m}.norm1"), inp, true);
        b.conv(format!("{m}.conv1"), out, inp, 3);
        b.norm(format!("{m}.norm2"), out, true);
        b.conv(format!("{m}.conv2"), out, out, 3);
        if inp != out {
            b.conv(format!("{m}.nin_shortcut"), out, inp, 1);
        }
    };
    let middle = |b: &mut B, m: &str, c: usize| {
        resnet(b, &format!("{m}.block_1"), c, c);
        b.norm(format!("{m}.attn_1.norm"), c, true);
        for proj in ["q", "k", "v", "proj_out"] {
            b.conv(format!("{m}.attn_1.{proj}"), c, c, 1);
        }
        resnet(b, &format!("{m}.block_2"), c, c);
    };
    let top = CH * MULT[MULT.len() - 1];
    b.conv("encoder.conv_in", CH, 3, 3);
    let mut inp = CH;
    for (i, m) in MULT.iter().enumerate() {
        let out = CH * m;
        for j in 0..2 {
            resnet(&mut b, &format!("encoder.down.{i}.block.{j}"), inp, out);
            inp = out;
        }
        if i + 1 < MULT.len() {
            b.conv(format!("encoder.down.{i}.downsample.conv"), out, out, 3);
        }
    }
    middle(&mut b, "encoder.mid", top);
    b.norm("encoder.norm_out", top, true);
    b.conv("encoder.conv_out", 8, top, 3);
    b.conv("quant_conv", 8, 8, 1);
    b.conv("post_quant_conv", 4, 4, 1);
    b.conv("decoder.conv_in", top, 4, 3);
    middle(&mut b, "decoder.mid", top);
    let mut inp = top;
    for (i, m) in MULT.iter().enumerate().rev() {
        let out = CH * m;
        for j in 0..3 {
            resnet(&mut b, &format!("decoder.up.{i}.block.{j}"), inp, out);
            inp = out;
        }
        if i > 0 {
            b.conv(format!("decoder.up.{i}.upsample.conv"), out, out, 3);
        }
    }
    b.norm("decoder.norm_out", CH, true);
    b.conv("decoder.conv_out", 3, CH, 3);
    b.params
}

// ---------------------------------------------------------------------------------------------
// Z-Image

/// Z-Image (NextDiT with Z-Image modulation) dimensions.
#[derive(Debug, Clone)]
pub struct ZimageDims {
    pub dim: usize,
    pub layers: usize,
    pub refiners: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub mod_dim: usize,
    pub t_hidden: usize,
    pub t_freq: usize,
    pub cap: usize,
    pub patch: usize,
}

impl ZimageDims {
    pub fn new(size: LayoutSize) -> Self {
        match size {
            LayoutSize::Full => ZimageDims {
                dim: 3840,
                layers: 30,
                refiners: 2,
                head_dim: 128,
                ffn: 10240,
                mod_dim: 256,
                t_hidden: 1024,
                t_freq: 256,
                cap: 2560,
                patch: 64,
            },
            LayoutSize::Tiny => ZimageDims {
                dim: 32,
                layers: 3,
                refiners: 2,
                head_dim: 16,
                ffn: 48,
                mod_dim: 8,
                t_hidden: 16,
                t_freq: 8,
                cap: 24,
                patch: 16,
            },
        }
    }
}

fn zimage_block(b: &mut B, p: &str, d: &ZimageDims, modulation: bool) {
    let dim = d.dim;
    b.lin(format!("{p}.attention.qkv"), 3 * dim, dim, false);
    b.lin(format!("{p}.attention.out"), dim, dim, false);
    b.norm(format!("{p}.attention.q_norm"), d.head_dim, false);
    b.norm(format!("{p}.attention.k_norm"), d.head_dim, false);
    b.lin(format!("{p}.feed_forward.w1"), d.ffn, dim, false);
    b.lin(format!("{p}.feed_forward.w2"), dim, d.ffn, false);
    b.lin(format!("{p}.feed_forward.w3"), d.ffn, dim, false);
    b.norm(format!("{p}.attention_norm1"), dim, false);
    b.norm(format!("{p}.ffn_norm1"), dim, false);
    b.norm(format!("{p}.attention_norm2"), dim, false);
    b.norm(format!("{p}.ffn_norm2"), dim, false);
    if modulation {
        b.lin(format!("{p}.adaLN_modulation.0"), 4 * dim, d.mod_dim, true);
    }
}

fn zimage(d: &ZimageDims) -> Vec<Param> {
    let mut b = B::new("diffusion_model.");
    b.lin("x_embedder", d.dim, d.patch, true);
    b.lin("t_embedder.mlp.0", d.t_hidden, d.t_freq, true);
    b.lin("t_embedder.mlp.2", d.mod_dim, d.t_hidden, true);
    b.norm("cap_embedder.0", d.cap, false);
    b.lin("cap_embedder.1", d.dim, d.cap, true);
    for i in 0..d.refiners {
        zimage_block(&mut b, &format!("noise_refiner.{i}"), d, true);
    }
    for i in 0..d.refiners {
        zimage_block(&mut b, &format!("context_refiner.{i}"), d, false);
    }
    for i in 0..d.layers {
        zimage_block(&mut b, &format!("layers.{i}"), d, true);
    }
    b.lin("final_layer.linear", d.patch, d.dim, true);
    b.lin("final_layer.adaLN_modulation.1", d.dim, d.mod_dim, true);
    b.p("x_pad_token", &[1, d.dim]);
    b.p("cap_pad_token", &[1, d.dim]);
    b.params
}

// ---------------------------------------------------------------------------------------------
// Qwen-Image

/// Qwen-Image (MMDiT) dimensions.
#[derive(Debug, Clone)]
pub struct QwenDims {
    pub dim: usize,
    pub blocks: usize,
    pub head_dim: usize,
    pub mlp: usize,
    pub txt: usize,
    pub patch: usize,
    pub t_freq: usize,
}

impl QwenDims {
    pub fn new(size: LayoutSize) -> Self {
        match size {
            LayoutSize::Full => {
                QwenDims { dim: 3072, blocks: 60, head_dim: 128, mlp: 12288, txt: 3584, patch: 64, t_freq: 256 }
            }
            LayoutSize::Tiny => QwenDims { dim: 32, blocks: 3, head_dim: 16, mlp: 64, txt: 24, patch: 16, t_freq: 8 },
        }
    }
}

fn qwen(d: &QwenDims) -> Vec<Param> {
    let mut b = B::new("diffusion_model.");
    let dim = d.dim;
    b.lin("img_in", dim, d.patch, true);
    b.norm("txt_norm", d.txt, false);
    b.lin("txt_in", dim, d.txt, true);
    b.lin("time_text_embed.timestep_embedder.linear_1", dim, d.t_freq, true);
    b.lin("time_text_embed.timestep_embedder.linear_2", dim, dim, true);
    for i in 0..d.blocks {
        let p = format!("transformer_blocks.{i}");
        b.lin(format!("{p}.img_mod.1"), 6 * dim, dim, true);
        b.lin(format!("{p}.txt_mod.1"), 6 * dim, dim, true);
        for m in ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"] {
            b.lin(format!("{p}.attn.{m}"), dim, dim, true);
        }
        b.lin(format!("{p}.attn.to_out.0"), dim, dim, true);
        b.lin(format!("{p}.attn.to_add_out"), dim, dim, true);
        for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
            b.norm(format!("{p}.attn.{n}"), d.head_dim, false);
        }
        for s in ["img_mlp", "txt_mlp"] {
            b.lin(format!("{p}.{s}.net.0.proj"), d.mlp, dim, true);
            b.lin(format!("{p}.{s}.net.2"), dim, d.mlp, true);
        }
    }
    b.lin("norm_out.linear", 2 * dim, dim, true);
    b.lin("proj_out", d.patch, dim, true);
    b.params
}

// ---------------------------------------------------------------------------------------------
// Flux

/// Flux dimensions (Flux.1 or Flux.2).
#[derive(Debug, Clone)]
pub struct FluxDims {
    pub hidden: usize,
    pub double: usize,
    pub single: usize,
    pub head_dim: usize,
    /// MLP hidden width (Flux.2: the SwiGLU width; the first projection has 2× rows).
    pub mlp: usize,
    pub swiglu: bool,
    pub bias: bool,
    pub patch: usize,
    pub txt: usize,
    /// `vector_in` width (Flux.1 only; 0 = absent).
    pub vec: usize,
    pub guidance: bool,
    pub t_freq: usize,
    /// Flux.2: modulation shared across blocks.
    pub shared_modulation: bool,
}

impl FluxDims {
    pub fn flux1(size: LayoutSize) -> Self {
        match size {
            LayoutSize::Full => FluxDims {
                hidden: 3072,
                double: 19,
                single: 38,
                head_dim: 128,
                mlp: 12288,
                swiglu: false,
                bias: true,
                patch: 64,
                txt: 4096,
                vec: 768,
                guidance: true,
                t_freq: 256,
                shared_modulation: false,
            },
            LayoutSize::Tiny => FluxDims {
                hidden: 32,
                double: 2,
                single: 3,
                head_dim: 16,
                mlp: 128,
                swiglu: false,
                bias: true,
                patch: 16,
                txt: 24,
                vec: 12,
                guidance: true,
                t_freq: 8,
                shared_modulation: false,
            },
        }
    }
    pub fn flux2(size: LayoutSize) -> Self {
        match size {
            LayoutSize::Full => FluxDims {
                hidden: 4096,
                double: 8,
                single: 24,
                head_dim: 128,
                mlp: 3 * 4096,
                swiglu: true,
                bias: false,
                patch: 128,
                txt: 12288,
                vec: 0,
                guidance: false,
                t_freq: 256,
                shared_modulation: true,
            },
            LayoutSize::Tiny => FluxDims {
                hidden: 32,
                double: 2,
                single: 3,
                head_dim: 16,
                mlp: 96,
                swiglu: true,
                bias: false,
                patch: 16,
                txt: 24,
                vec: 0,
                guidance: false,
                t_freq: 8,
                shared_modulation: true,
            },
        }
    }
    /// Rows of the first MLP projection (`img_mlp.0`) and the MLP part of `linear1`.
    pub fn mlp_in(&self) -> usize {
        if self.swiglu {
            2 * self.mlp
        } else {
            self.mlp
        }
    }
}

fn flux(d: &FluxDims) -> Vec<Param> {
    let mut b = B::new("diffusion_model.");
    let h = d.hidden;
    let bias = d.bias;
    b.lin("img_in", h, d.patch, bias);
    b.lin("time_in.in_layer", h, d.t_freq, bias);
    b.lin("time_in.out_layer", h, h, bias);
    if d.vec > 0 {
        b.lin("vector_in.in_layer", h, d.vec, bias);
        b.lin("vector_in.out_layer", h, h, bias);
    }
    if d.guidance {
        b.lin("guidance_in.in_layer", h, d.t_freq, bias);
        b.lin("guidance_in.out_layer", h, h, bias);
    }
    b.lin("txt_in", h, d.txt, bias);
    if d.shared_modulation {
        b.lin("double_stream_modulation_img.lin", 6 * h, h, bias);
        b.lin("double_stream_modulation_txt.lin", 6 * h, h, bias);
        b.lin("single_stream_modulation.lin", 3 * h, h, bias);
    }
    for i in 0..d.double {
        let p = format!("double_blocks.{i}");
        for s in ["img", "txt"] {
            if !d.shared_modulation {
                b.lin(format!("{p}.{s}_mod.lin"), 6 * h, h, bias);
            }
            b.lin(format!("{p}.{s}_attn.qkv"), 3 * h, h, bias);
            b.p(format!("{p}.{s}_attn.norm.query_norm.scale"), &[d.head_dim]);
            b.p(format!("{p}.{s}_attn.norm.key_norm.scale"), &[d.head_dim]);
            b.lin(format!("{p}.{s}_attn.proj"), h, h, bias);
            b.lin(format!("{p}.{s}_mlp.0"), d.mlp_in(), h, bias);
            b.lin(format!("{p}.{s}_mlp.2"), h, d.mlp, bias);
        }
    }
    for i in 0..d.single {
        let p = format!("single_blocks.{i}");
        b.lin(format!("{p}.linear1"), 3 * h + d.mlp_in(), h, bias);
        b.lin(format!("{p}.linear2"), h, h + d.mlp, bias);
        b.p(format!("{p}.norm.query_norm.scale"), &[d.head_dim]);
        b.p(format!("{p}.norm.key_norm.scale"), &[d.head_dim]);
        if !d.shared_modulation {
            b.lin(format!("{p}.modulation.lin"), 3 * h, h, bias);
        }
    }
    b.lin("final_layer.linear", d.patch, h, bias);
    b.lin("final_layer.adaLN_modulation.1", 2 * h, h, bias);
    b.params
}
