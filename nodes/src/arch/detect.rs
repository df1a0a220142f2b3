//! Architecture detection from parameter names (`docs/widen.md`, "Architecture detection").

use super::Arch;

fn is_zimage(keys: &[&str]) -> bool {
    keys.iter().any(|k| k.contains("diffusion_model.layers."))
        && keys.iter().any(|k| k.contains("noise_refiner"))
}

fn is_sdxl(keys: &[&str]) -> bool {
    ["diffusion_model.input_blocks.", "diffusion_model.middle_block.", "diffusion_model.output_blocks."]
        .iter()
        .all(|p| keys.iter().any(|k| k.contains(p)))
}

fn is_flux(keys: &[&str]) -> bool {
    keys.iter().any(|k| k.contains("double_blocks"))
}

fn is_qwen(keys: &[&str]) -> bool {
    keys.iter().filter(|k| k.contains("transformer_blocks")).count() >= 60
}

/// Base model (host state-dict keys, `diffusion_model.` prefixed): first match of
/// zimage → sdxl → flux → qwen (docs/widen.md, "Architecture detection"). `None` when nothing
/// matches.
pub fn detect_base_arch<'a, I: IntoIterator<Item = &'a str>>(keys: I) -> Option<Arch> {
    let keys: Vec<&str> = keys.into_iter().collect();
    if is_zimage(&keys) {
        Some(Arch::Zimage)
    } else if is_sdxl(&keys) {
        Some(Arch::Sdxl)
    } else if is_flux(&keys) {
        Some(Arch::Flux)
    } else if is_qwen(&keys) {
        Some(Arch::Qwen)
    } else {
        None
    }
}

/// CLIP (host keys): SDXL iff keys starting with `clip_l.` and with `clip_g.` both exist
/// (docs/widen.md, "Architecture detection").
pub fn detect_clip_arch<'a, I: IntoIterator<Item = &'a str>>(keys: I) -> Option<Arch> {
    let mut l = false;
    let mut g = false;
    for k in keys {
        l |= k.starts_with("clip_l.");
        g |= k.starts_with("clip_g.");
    }
    (l && g).then_some(Arch::SdxlClip)
}

/// Checkpoint files, on normalized (`diffusion_model.`-prefixed) keys: zimage → sdxl → qwen →
/// flux (docs/widen.md, "Architecture detection": qwen before flux). `None` = unknown.
pub fn detect_checkpoint_arch<'a, I: IntoIterator<Item = &'a str>>(keys: I) -> Option<Arch> {
    let keys: Vec<&str> = keys.into_iter().collect();
    if is_zimage(&keys) {
        Some(Arch::Zimage)
    } else if is_sdxl(&keys) {
        Some(Arch::Sdxl)
    } else if is_qwen(&keys) {
        Some(Arch::Qwen)
    } else if is_flux(&keys) {
        Some(Arch::Flux)
    } else {
        None
    }
}
