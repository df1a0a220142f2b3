//! LoRA loading for `sdxl`, `sdxl_clip`, `zimage`, `flux` and `qwen` (`docs/widen.md`, Part 3
//! ("LoRA files", "Key names"), with `docs/decisions.md` D12–D14 winning over the reference's
//! quirks).
//!
//! * Namings (D13): kohya `lora_unet_…` / `lora_te1_…` / `lora_te2_…`, diffusers / PEFT
//!   (`lora_A` / `lora_B`, `transformer.` / `unet.` / `text_encoder(_2).` prefixes, diffusers
//!   module names incl. Flux's), `diffusion_model.`-prefixed, LyCORIS `lycoris_…`,
//!   `lora_transformer_…`. See [`names`].
//! * Kinds (D12): LoRA with alpha/rank scaling, LoCon (delta takes the down factor's kernel),
//!   Tucker `lora_mid` (folded into a low-rank pair), LoKr (full or decomposed factors,
//!   `lokr_t2`), LoHa (with optional Tucker cores), DoRA (`dora_scale`,
//!   `lora_magnitude_vector`) on any of them.
//! * Fused targets (D14): Z-Image `attention.qkv`, Flux `{img,txt}_attn.qkv` and single-block
//!   `linear1` (q|k|v|mlp); row offsets come from the fused weight's shape (`rows / 3`; Flux
//!   `linear1`: `H = columns`, mlp rows after `3H`).
//!
//! Output: [`LoraFile`] (one file: base key → [`DeltaSpec`]s + a [`LoadReport`] counting every
//! module that was not applied) and [`LoraSet`] (files accumulated with strengths).

pub mod load;
pub mod names;
pub mod spec;

pub use load::{detect_lora_arch, guess_arch, DeltaMap, LoadOptions, LoadReport, LoraFile, LoraSet};
pub use names::{Component, LoraNaming, Lookup, NameIndex, Target};
pub use spec::{AdapterKind, DeltaForm, DeltaSpec, KronFactor, RowRange};
