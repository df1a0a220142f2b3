//! Key classification into blocks (Block Config sliders) and layer types
//! (`docs/widen.md`, "Key classification", with the fixes of `docs/decisions.md` D15).
//!
//! [`classify_key`] returns `None` only for keys it does not recognize at all. A recognized key
//! may still belong to no block slider (`block: None`, e.g. Flux.2's modulation shared by all
//! blocks, Z-Image's timestep and caption embedders) and have no layer type (`layer_type:
//! None`: convolutions, embeddings, modulation linears).
//!
//! D15 additions to the reference tables:
//! * Z-Image: `attention.qkv` / `attention.out` are attention; `x_embedder` and `x_pad_token`
//!   belong to `PATCH_EMBED`; `final_layer.*` and `norm_final` to `FINAL_NORM`; embedders
//!   (`t_embedder`, `cap_embedder`, `x_embedder`) have no layer type (the reference calls
//!   `t_embedder.mlp.*` feed-forward).
//! * Qwen: `img_mlp` / `txt_mlp` are feed-forward (the reference's `.proj` matched first);
//!   `time_text_embed.*` belongs to `TIME_EMBED`, `norm_out.*` and `proj_out.*` to
//!   `FINAL_NORM`; `img_in`, `txt_in`, `txt_norm` are recognized without a block.
//! * Flux.2: the shared `double_stream_modulation_*` / `single_stream_modulation` are
//!   recognized without a block.
//! * SDXL CLIP: `clip_l.transformer.text_projection` and `*.logit_scale` are recognized without
//!   a block.

use super::Arch;

/// Layer type of a key (the three layer-type sliders of every Block Config node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerType {
    Attention,
    FeedForward,
    Norm,
}

impl LayerType {
    pub fn name(self) -> &'static str {
        match self {
            LayerType::Attention => "attention",
            LayerType::FeedForward => "feed_forward",
            LayerType::Norm => "norm",
        }
    }
    pub fn from_name(s: &str) -> Option<LayerType> {
        match s {
            "attention" => Some(LayerType::Attention),
            "feed_forward" => Some(LayerType::FeedForward),
            "norm" => Some(LayerType::Norm),
            _ => None,
        }
    }
}

/// Classification of one recognized key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClass {
    /// Block slider name (`IN04`, `L12`, `DB03`, `CG_PROJ`, ...), `None` for keys outside all
    /// block sliders.
    pub block: Option<String>,
    pub layer_type: Option<LayerType>,
}

/// Classify `key` (a host key) for `arch`. `None` = not a key of this architecture.
pub fn classify_key(key: &str, arch: Arch) -> Option<KeyClass> {
    let block = match arch {
        Arch::Sdxl => sdxl_block(strip(key))?,
        Arch::SdxlClip => clip_block(key)?,
        Arch::Zimage => zimage_block(strip(key))?,
        Arch::Qwen => qwen_block(strip(key))?,
        Arch::Flux => flux_block(strip(key))?,
    };
    Some(KeyClass { block, layer_type: layer_type_of(key, arch) })
}

/// The block slider of `key`, if any.
pub fn block_of(key: &str, arch: Arch) -> Option<String> {
    classify_key(key, arch).and_then(|c| c.block)
}

fn strip(key: &str) -> &str {
    let k = key.strip_prefix("diffusion_model.").unwrap_or(key);
    k.strip_prefix("transformer.").unwrap_or(k)
}

/// `prefix` followed by a run of digits and a dot: the number.
fn index_after(s: &str, prefix: &str) -> Option<u64> {
    let rest = s.strip_prefix(prefix)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.as_bytes().get(digits) != Some(&b'.') {
        return None;
    }
    rest[..digits].parse().ok()
}

// Outer Option: recognized or not. Inner: the block.
type Block = Option<Option<String>>;

fn numbered(n: u64, max: Option<u64>, name: impl FnOnce(u64) -> String) -> Block {
    match max {
        Some(m) if n > m => Some(None),
        _ => Some(Some(name(n))),
    }
}

fn sdxl_block(k: &str) -> Block {
    if let Some(n) = index_after(k, "input_blocks.") {
        return numbered(n, Some(8), |n| format!("IN{n:02}"));
    }
    if let Some(n) = index_after(k, "output_blocks.") {
        return numbered(n, Some(8), |n| format!("OUT{n:02}"));
    }
    if k.starts_with("middle_block.") {
        return Some(Some("MID".into()));
    }
    if k.starts_with("time_embed") {
        return Some(Some("TIME_EMBED".into()));
    }
    if k.starts_with("label_emb") {
        return Some(Some("LABEL_EMB".into()));
    }
    if k.starts_with("out.") {
        return Some(Some("FINAL_OUT".into()));
    }
    None
}

fn zimage_block(k: &str) -> Block {
    for p in ["layers.", "blocks."] {
        if let Some(n) = index_after(k, p) {
            return numbered(n, Some(29), |n| format!("L{n:02}"));
        }
    }
    if let Some(n) = index_after(k, "noise_refiner.") {
        return Some(Some(format!("NOISE_REF{n}")));
    }
    if let Some(n) = index_after(k, "context_refiner.") {
        return Some(Some(format!("CTX_REF{n}")));
    }
    if ["patch_embed", "x_embedder", "x_pad_token"].iter().any(|p| k.starts_with(p)) {
        return Some(Some("PATCH_EMBED".into()));
    }
    if ["final_norm", "final_layer", "norm_final"].iter().any(|p| k.starts_with(p)) {
        return Some(Some("FINAL_NORM".into()));
    }
    if ["t_embedder", "cap_embedder", "cap_pad_token"].iter().any(|p| k.starts_with(p)) {
        return Some(None);
    }
    None
}

fn qwen_block(k: &str) -> Block {
    if let Some(n) = index_after(k, "transformer_blocks.") {
        return numbered(n, None, |n| format!("TB{n:02}"));
    }
    if k.starts_with("time_embed") || k.starts_with("time_text_embed") {
        return Some(Some("TIME_EMBED".into()));
    }
    if ["final_norm", "norm_out", "proj_out"].iter().any(|p| k.starts_with(p)) {
        return Some(Some("FINAL_NORM".into()));
    }
    if ["img_in", "txt_in", "txt_norm"].iter().any(|p| k.starts_with(p)) {
        return Some(None);
    }
    None
}

fn flux_block(k: &str) -> Block {
    if let Some(n) = index_after(k, "double_blocks.") {
        return numbered(n, None, |n| format!("DB{n:02}"));
    }
    if let Some(n) = index_after(k, "single_blocks.") {
        return numbered(n, None, |n| format!("SB{n:02}"));
    }
    for (p, name) in [
        ("guidance_in", "GUIDANCE_IN"),
        ("time_in", "TIME_IN"),
        ("vector_in", "VECTOR_IN"),
        ("img_in", "IMG_IN"),
        ("txt_in", "TXT_IN"),
        ("final_layer", "FINAL_LAYER"),
    ] {
        if k.starts_with(p) {
            return Some(Some(name.into()));
        }
    }
    if ["double_stream_modulation_img.", "double_stream_modulation_txt.", "single_stream_modulation."]
        .iter()
        .any(|p| k.starts_with(p))
    {
        return Some(None);
    }
    None
}

fn clip_block(k: &str) -> Block {
    for (enc, tag, max) in [("clip_l", "CL", 11), ("clip_g", "CG", 31)] {
        let Some(rest) = k.strip_prefix(enc).and_then(|r| r.strip_prefix('.')) else { continue };
        if let Some(n) = index_after(rest, "transformer.text_model.encoder.layers.") {
            return numbered(n, Some(max), |n| format!("{tag}{n:02}"));
        }
        if rest.starts_with("transformer.text_model.embeddings.") {
            return Some(Some(format!("{tag}_EMBED")));
        }
        if rest.starts_with("transformer.text_model.final_layer_norm") {
            return Some(Some(format!("{tag}_FINAL")));
        }
        if rest.starts_with("transformer.text_projection") {
            return Some(if enc == "clip_g" { Some("CG_PROJ".into()) } else { None });
        }
        if rest == "logit_scale" {
            return Some(None);
        }
    }
    None
}

/// Layer type of `key` for `arch` (docs/widen.md, "Key classification", with the D15 fixes).
/// `None` = none of the three.
pub fn layer_type_of(key: &str, arch: Arch) -> Option<LayerType> {
    let k = if arch == Arch::SdxlClip { key } else { strip(key) };
    if ["time_embed", "label_emb", "adaLN_modulation", "embedders"].iter().any(|p| k.contains(p)) {
        return None;
    }
    use LayerType::*;
    let (attn, ff, norm): (&[&str], &[&str], &[&str]) = match arch {
        Arch::Sdxl => (
            &["attn1", "attn2", "to_q", "to_k", "to_v", "to_out", "proj_in", "proj_out"],
            &[".ff.", "ff.net"],
            &[".norm", "_norm", "ln_"],
        ),
        Arch::Zimage => {
            if ["t_embedder", "cap_embedder", "x_embedder"].iter().any(|p| k.starts_with(p)) {
                return None;
            }
            (
                &["attention.qkv", "attention.out", "attn.qkv", "attn.out", "q_norm", "k_norm"],
                &["feed_forward", ".mlp.", ".w1.", ".w2.", ".w3.", ".fc1", ".fc2"],
                &[".norm", "_norm", ".ln", ".rms"],
            )
        }
        Arch::Qwen => {
            if k.contains("img_mlp") || k.contains("txt_mlp") {
                return Some(FeedForward);
            }
            (
                &[".attn.", "to_q", "to_k", "to_v", "to_out", ".qkv", ".proj"],
                &[".mlp.", ".ff.", ".gate_proj", ".up_proj", ".down_proj"],
                &[".norm", "_norm", ".ln", "img_mod", "txt_mod"],
            )
        }
        Arch::Flux => (
            &["img_attn", "txt_attn", ".qkv", ".proj", "query_norm", "key_norm"],
            &["img_mlp", "txt_mlp", "linear2"],
            &["img_mod", "txt_mod", "modulation"],
        ),
        Arch::SdxlClip => (
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"],
            &["mlp.fc1", "mlp.fc2"],
            &["layer_norm1", "layer_norm2", "final_layer_norm"],
        ),
    };
    if attn.iter().any(|p| k.contains(p)) {
        Some(Attention)
    } else if ff.iter().any(|p| k.contains(p)) {
        Some(FeedForward)
    } else if norm.iter().any(|p| k.contains(p)) {
        Some(Norm)
    } else {
        None
    }
}
