//! The Block Config nodes' slider sets (`docs/widen.md`, "Block configs") and arch tags
//! (`docs/decisions.md` D10).

use crate::arch::Arch;

/// One Block Config node: class name, display name, arch tag, block sliders in input order.
pub struct BlockConfigKind {
    pub class: &'static str,
    pub display: &'static str,
    pub arch: Arch,
    pub blocks: Vec<String>,
}

fn numbered(prefix: &str, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{prefix}{i:02}"))
}

fn named<'a>(names: &'a [&'a str]) -> impl Iterator<Item = String> + 'a {
    names.iter().map(|s| s.to_string())
}

pub const LAYER_TYPES: [&str; 3] = ["attention", "feed_forward", "norm"];

pub fn kinds() -> Vec<BlockConfigKind> {
    let sdxl = numbered("IN", 9)
        .chain(named(&["MID"]))
        .chain(numbered("OUT", 9))
        .chain(named(&["TIME_EMBED", "LABEL_EMB", "FINAL_OUT"]))
        .collect();
    let clip = numbered("CL", 12)
        .chain(named(&["CL_EMBED", "CL_FINAL"]))
        .chain(numbered("CG", 32))
        .chain(named(&["CG_EMBED", "CG_FINAL", "CG_PROJ"]))
        .collect();
    let zimage = numbered("L", 30)
        .chain(named(&["NOISE_REF0", "NOISE_REF1", "CTX_REF0", "CTX_REF1", "PATCH_EMBED", "FINAL_NORM"]))
        .collect();
    let qwen = numbered("TB", 60).chain(named(&["TIME_EMBED", "FINAL_NORM"])).collect();
    let flux = numbered("DB", 8)
        .chain(numbered("SB", 24))
        .chain(named(&["GUIDANCE_IN", "TIME_IN", "VECTOR_IN", "IMG_IN", "TXT_IN", "FINAL_LAYER"]))
        .collect();
    vec![
        BlockConfigKind { class: "WIDENBlockConfigSDXL", display: "WIDEN Block Config (SDXL)", arch: Arch::Sdxl, blocks: sdxl },
        BlockConfigKind {
            class: "WIDENBlockConfigSDXLCLIP",
            display: "WIDEN Block Config (SDXL CLIP)",
            arch: Arch::SdxlClip,
            blocks: clip,
        },
        BlockConfigKind {
            class: "WIDENBlockConfigZImage",
            display: "WIDEN Block Config (Z-Image)",
            arch: Arch::Zimage,
            blocks: zimage,
        },
        BlockConfigKind { class: "WIDENBlockConfigQwen", display: "WIDEN Block Config (Qwen)", arch: Arch::Qwen, blocks: qwen },
        BlockConfigKind { class: "WIDENBlockConfigFlux", display: "WIDEN Block Config (Flux)", arch: Arch::Flux, blocks: flux },
    ]
}
