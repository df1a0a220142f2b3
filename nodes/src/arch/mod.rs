//! Architectures: tags, detection from parameter names, key classification into blocks and
//! layer types, and the parameter layouts (names + shapes) of the real models and of tiny
//! stand-ins with the same structure.

pub mod classify;
pub mod detect;
pub mod layout;

pub use classify::{block_of, classify_key, layer_type_of, KeyClass, LayerType};
pub use detect::{detect_base_arch, detect_checkpoint_arch, detect_clip_arch};
pub use layout::{layout, Layout, LayoutSize, Param};

use std::fmt;
use std::str::FromStr;

/// Architecture tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// SDXL UNet (`diffusion_model.input_blocks…`).
    Sdxl,
    /// SDXL text encoders (`clip_l.transformer…`, `clip_g.transformer…`).
    SdxlClip,
    /// Z-Image (NextDiT / S3-DiT: `layers.N.attention.qkv`).
    Zimage,
    /// Flux.1 and Flux.2 (BFL naming: `double_blocks`, `single_blocks`).
    Flux,
    /// Qwen-Image (`transformer_blocks.N.attn.to_q`).
    Qwen,
}

impl Arch {
    pub const ALL: [Arch; 5] = [Arch::Sdxl, Arch::SdxlClip, Arch::Zimage, Arch::Flux, Arch::Qwen];

    pub fn tag(self) -> &'static str {
        match self {
            Arch::Sdxl => "sdxl",
            Arch::SdxlClip => "sdxl_clip",
            Arch::Zimage => "zimage",
            Arch::Flux => "flux",
            Arch::Qwen => "qwen",
        }
    }

    /// `sdxl_clip` is the text-encoder domain; all others are diffusion models.
    pub fn domain(self) -> Domain {
        match self {
            Arch::SdxlClip => Domain::Clip,
            _ => Domain::Diffusion,
        }
    }

    /// The registry lookup of `get_loader(arch, domain)`: domain `clip` → `"{arch}_clip"`.
    pub fn for_domain(tag: &str, domain: Domain) -> Result<Arch, String> {
        match domain {
            Domain::Clip => {
                let t = format!("{tag}_clip");
                t.parse::<Arch>().map_err(|_| {
                    format!(
                        "No CLIP LoRA loader for architecture '{tag}'. CLIP loaders are registered as '{tag}_clip'."
                    )
                })
            }
            Domain::Diffusion => tag.parse::<Arch>().map_err(|_| {
                format!("Unsupported architecture '{tag}'. Supported: flux, qwen, sdxl, sdxl_clip, zimage")
            }),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "sdxl" => Arch::Sdxl,
            "sdxl_clip" => Arch::SdxlClip,
            "zimage" => Arch::Zimage,
            "flux" => Arch::Flux,
            "qwen" => Arch::Qwen,
            other => {
                return Err(format!(
                    "Unsupported architecture '{other}'. Supported: flux, qwen, sdxl, sdxl_clip, zimage"
                ))
            }
        })
    }
}

/// Which part of a model a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    Diffusion,
    Clip,
}
