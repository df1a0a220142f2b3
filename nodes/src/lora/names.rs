//! LoRA key naming: splitting file keys into (module, factor) and mapping module names in
//! every supported naming (`docs/decisions.md` D13) to base-model keys.
//!
//! Mapping is driven by the base model's own key list (or, without one, by the architecture's
//! full-size layout): every weight key contributes its native module name and the aliases other
//! tools use for it (diffusers names, split q/k/v of fused projections, ...). LoRA module names
//! are looked up in that index, dotted as they are, or with underscores (kohya `lora_unet_…`,
//! `lora_te1_…`, LyCORIS `lycoris_…`, `lora_transformer_…`) against the underscored form of
//! each alias. Because every candidate is a real module name, there is no tokenizer to get
//! wrong (SDXL `ff_net` → `ff.net`, Qwen `img_mlp`, `add_q_proj` map correctly).

use std::collections::HashMap;
use std::sync::OnceLock;

use indexmap::IndexMap;

use crate::arch::layout::{all_layouts, LayoutSize};
use crate::arch::{Arch, Domain};

/// A row section of a fused projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Q,
    K,
    V,
    /// The MLP rows of Flux's single-block `linear1` (after q|k|v).
    Mlp,
}

impl Component {
    pub fn index(self) -> usize {
        match self {
            Component::Q => 0,
            Component::K => 1,
            Component::V => 2,
            Component::Mlp => 3,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Component::Q => "q",
            Component::K => "k",
            Component::V => "v",
            Component::Mlp => "mlp",
        }
    }
}

/// Namespace of a module name: diffusion model or one of the text encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ns {
    Diffusion,
    /// CLIP-L (`lora_te1_`, `text_encoder.`, `clip_l.`).
    Te1,
    /// CLIP-G (`lora_te2_`, `text_encoder_2.`, `clip_g.`).
    Te2,
    /// A single-encoder (SD1-style `lora_te_`) text encoder: never an SDXL key.
    TeSingle,
}

impl Ns {
    pub fn domain(self) -> Domain {
        match self {
            Ns::Diffusion => Domain::Diffusion,
            _ => Domain::Clip,
        }
    }
}

/// Where a LoRA module lands in the base model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host key of the weight (`diffusion_model.….weight`, `clip_l.….weight`).
    pub key: String,
    /// Row section of a fused weight.
    pub comp: Option<Component>,
    /// Swap the two row halves of the delta (diffusers Flux `norm_out.linear` stores
    /// shift/scale in the opposite order of BFL `final_layer.adaLN_modulation.1`).
    pub swap_halves: bool,
}

/// One name a module is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub ns: Ns,
    /// Dotted module path in that namespace (no prefix, no `.weight`).
    pub name: String,
    pub comp: Option<Component>,
    pub swap_halves: bool,
    /// A diffusers-style name (as opposed to the native / BFL / LDM name).
    pub diffusers: bool,
}

/// Naming conventions a LoRA file may use (for writing fixtures and describing files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraNaming {
    /// kohya / A1111: `lora_unet_<underscored native name>`, `lora_te1_…`, `lora_te2_…`,
    /// `.lora_down.weight` / `.lora_up.weight` / `.alpha`.
    Kohya,
    /// diffusers / PEFT: `transformer.<diffusers name>` (`unet.` for SDXL, `text_encoder.` /
    /// `text_encoder_2.` for CLIP), `.lora_A.weight` / `.lora_B.weight`, no alpha.
    Diffusers,
    /// ComfyUI style: `diffusion_model.<native name>` (`clip_l.transformer.…` for CLIP),
    /// `.lora_down.weight` / `.lora_up.weight` / `.alpha`.
    DiffusionModel,
    /// LyCORIS: `lycoris_<underscored native name>` (diffusion models only).
    Lycoris,
}

impl LoraNaming {
    pub const ALL: [LoraNaming; 4] =
        [LoraNaming::Kohya, LoraNaming::Diffusers, LoraNaming::DiffusionModel, LoraNaming::Lycoris];
    pub fn tag(self) -> &'static str {
        match self {
            LoraNaming::Kohya => "kohya",
            LoraNaming::Diffusers => "diffusers",
            LoraNaming::DiffusionModel => "diffusion_model",
            LoraNaming::Lycoris => "lycoris",
        }
    }
    /// Namings that exist for an architecture.
    pub fn for_arch(arch: Arch) -> Vec<LoraNaming> {
        match arch {
            Arch::SdxlClip => vec![LoraNaming::Kohya, LoraNaming::Diffusers, LoraNaming::DiffusionModel],
            _ => LoraNaming::ALL.to_vec(),
        }
    }
}

/// Factor role of a file key's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Factor {
    Up,
    Down,
    Mid,
    Alpha,
    DoraScale,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
    /// Recognized adapter parts this loader does not apply (full diffs, bias deltas, GLoRA,
    /// norm adapters); reported as unsupported.
    Unsupported,
}

/// Known factor suffixes (after the module name and a dot). Longest first where one is a
/// suffix of another.
const FACTORS: &[(&str, Factor)] = &[
    ("lora_linear_layer.down.weight", Factor::Down),
    ("lora_linear_layer.up.weight", Factor::Up),
    ("lora_A.default.weight", Factor::Down),
    ("lora_B.default.weight", Factor::Up),
    ("lora_down.weight", Factor::Down),
    ("lora_up.weight", Factor::Up),
    ("lora_mid.weight", Factor::Mid),
    ("lora_A.weight", Factor::Down),
    ("lora_B.weight", Factor::Up),
    ("lora.down.weight", Factor::Down),
    ("lora.up.weight", Factor::Up),
    ("lora_magnitude_vector", Factor::DoraScale),
    ("dora_scale", Factor::DoraScale),
    ("alpha", Factor::Alpha),
    ("hada_w1_a", Factor::HadaW1A),
    ("hada_w1_b", Factor::HadaW1B),
    ("hada_w2_a", Factor::HadaW2A),
    ("hada_w2_b", Factor::HadaW2B),
    ("hada_t1", Factor::HadaT1),
    ("hada_t2", Factor::HadaT2),
    ("lokr_w1_a", Factor::LokrW1A),
    ("lokr_w1_b", Factor::LokrW1B),
    ("lokr_w2_a", Factor::LokrW2A),
    ("lokr_w2_b", Factor::LokrW2B),
    ("lokr_w1", Factor::LokrW1),
    ("lokr_w2", Factor::LokrW2),
    ("lokr_t2", Factor::LokrT2),
    ("lora_down.bias", Factor::Unsupported),
    ("lora_up.bias", Factor::Unsupported),
    ("lora_A.bias", Factor::Unsupported),
    ("lora_B.bias", Factor::Unsupported),
    ("diff_b", Factor::Unsupported),
    ("diff", Factor::Unsupported),
    ("set_weight", Factor::Unsupported),
    ("a1.weight", Factor::Unsupported),
    ("a2.weight", Factor::Unsupported),
    ("b1.weight", Factor::Unsupported),
    ("b2.weight", Factor::Unsupported),
    ("w_norm", Factor::Unsupported),
    ("b_norm", Factor::Unsupported),
    ("on_input", Factor::Unsupported),
];

/// Split a file key into (module, factor suffix, factor). `None`: not an adapter key.
pub fn split_factor(key: &str) -> Option<(&str, &'static str, Factor)> {
    for (suffix, f) in FACTORS {
        if let Some(head) = key.strip_suffix(suffix) {
            if let Some(module) = head.strip_suffix('.') {
                if !module.is_empty() {
                    return Some((module, suffix, *f));
                }
            }
        }
    }
    None
}

/// How a module name is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Dotted,
    Underscored,
}

/// Parse a module name into (namespace, style, path without naming prefixes).
pub fn parse_module(m: &str) -> (Ns, Style, &str) {
    for (p, ns) in [
        ("lora_unet_", Ns::Diffusion),
        ("lora_te1_", Ns::Te1),
        ("lora_te2_", Ns::Te2),
        ("lora_te_", Ns::TeSingle),
        ("lycoris_", Ns::Diffusion),
        ("lora_transformer_", Ns::Diffusion),
    ] {
        if let Some(rest) = m.strip_prefix(p) {
            return (ns, Style::Underscored, rest);
        }
    }
    let m = m.strip_prefix("base_model.model.").unwrap_or(m);
    let m = m.strip_prefix("text_encoders.").unwrap_or(m);
    for (p, ns) in [
        ("text_encoder_2.", Ns::Te2),
        ("text_encoder.", Ns::Te1),
        ("clip_l.transformer.", Ns::Te1),
        ("clip_g.transformer.", Ns::Te2),
        ("clip_l.", Ns::Te1),
        ("clip_g.", Ns::Te2),
    ] {
        if let Some(rest) = m.strip_prefix(p) {
            return (ns, Style::Dotted, rest);
        }
    }
    let m = ["model.diffusion_model.", "diffusion_model."]
        .iter()
        .find_map(|p| m.strip_prefix(p))
        .unwrap_or(m);
    let m = ["transformer.", "unet."].iter().find_map(|p| m.strip_prefix(p)).unwrap_or(m);
    (Ns::Diffusion, Style::Dotted, m)
}

// ---------------------------------------------------------------------------------------------
// Aliases per architecture

/// The names a base weight's module is known by. `module` is the host key without
/// `diffusion_model.` and `.weight` (CLIP: the full host key without `.weight`).
pub fn aliases(arch: Arch, module: &str) -> Vec<Alias> {
    let native = |ns: Ns, name: &str| Alias {
        ns,
        name: name.to_string(),
        comp: None,
        swap_halves: false,
        diffusers: false,
    };
    let mut v = Vec::new();
    match arch {
        Arch::SdxlClip => {
            for (p, ns) in [("clip_l.transformer.", Ns::Te1), ("clip_g.transformer.", Ns::Te2)] {
                if let Some(rest) = module.strip_prefix(p) {
                    v.push(native(ns, rest));
                }
            }
        }
        Arch::Sdxl => {
            v.push(native(Ns::Diffusion, module));
            if let Some(d) = sdxl_to_diffusers(module) {
                v.push(Alias { diffusers: true, ..native(Ns::Diffusion, &d) });
            }
        }
        Arch::Qwen => {
            v.push(native(Ns::Diffusion, module));
            v.push(Alias { diffusers: true, ..native(Ns::Diffusion, module) });
        }
        Arch::Zimage => {
            v.push(native(Ns::Diffusion, module));
            if let Some(base) = module.strip_suffix(".attention.qkv") {
                for (s, c) in [("to_q", Component::Q), ("to_k", Component::K), ("to_v", Component::V)] {
                    v.push(Alias {
                        comp: Some(c),
                        diffusers: true,
                        ..native(Ns::Diffusion, &format!("{base}.attention.{s}"))
                    });
                }
            } else if let Some(base) = module.strip_suffix(".attention.out") {
                v.push(Alias { diffusers: true, ..native(Ns::Diffusion, &format!("{base}.attention.to_out.0")) });
            } else if module == "x_embedder" {
                v.push(Alias { diffusers: true, ..native(Ns::Diffusion, "all_x_embedder.2-1") });
            } else if let Some(rest) = module.strip_prefix("final_layer.") {
                v.push(Alias { diffusers: true, ..native(Ns::Diffusion, &format!("all_final_layer.2-1.{rest}")) });
            } else {
                v.push(Alias { diffusers: true, ..native(Ns::Diffusion, module) });
            }
        }
        Arch::Flux => {
            v.push(native(Ns::Diffusion, module));
            v.extend(flux_aliases(module));
        }
    }
    v
}

const QKV: [(&str, Component); 3] = [("to_q", Component::Q), ("to_k", Component::K), ("to_v", Component::V)];

fn flux_aliases(m: &str) -> Vec<Alias> {
    let a = |name: String, comp: Option<Component>, diffusers: bool| Alias {
        ns: Ns::Diffusion,
        name,
        comp,
        swap_halves: false,
        diffusers,
    };
    let mut v = Vec::new();
    let idx = |p: &str| -> Option<(String, String)> {
        let rest = m.strip_prefix(p)?;
        let (n, tail) = rest.split_once('.')?;
        n.bytes().all(|b| b.is_ascii_digit()).then(|| (n.to_string(), tail.to_string()))
    };
    if let Some((n, tail)) = idx("double_blocks.") {
        let d = format!("transformer_blocks.{n}");
        for s in ["img", "txt"] {
            if tail == format!("{s}_attn.qkv") {
                for (q, c) in QKV {
                    // BFL names with split projections (reference tables).
                    v.push(a(format!("double_blocks.{n}.{s}_attn.{q}"), Some(c), false));
                }
            }
        }
        let diff: &[(String, Option<Component>)] = &match tail.as_str() {
            "img_attn.qkv" => QKV.iter().map(|(q, c)| (format!("{d}.attn.{q}"), Some(*c))).collect::<Vec<_>>(),
            "txt_attn.qkv" => [("add_q_proj", Component::Q), ("add_k_proj", Component::K), ("add_v_proj", Component::V)]
                .iter()
                .map(|(q, c)| (format!("{d}.attn.{q}"), Some(*c)))
                .collect(),
            "img_attn.proj" => vec![(format!("{d}.attn.to_out.0"), None)],
            "txt_attn.proj" => vec![(format!("{d}.attn.to_add_out"), None)],
            "img_mlp.0" => vec![(format!("{d}.ff.net.0.proj"), None)],
            "img_mlp.2" => vec![(format!("{d}.ff.net.2"), None)],
            "txt_mlp.0" => vec![(format!("{d}.ff_context.net.0.proj"), None)],
            "txt_mlp.2" => vec![(format!("{d}.ff_context.net.2"), None)],
            "img_mod.lin" => vec![(format!("{d}.norm1.linear"), None)],
            "txt_mod.lin" => vec![(format!("{d}.norm1_context.linear"), None)],
            _ => vec![],
        };
        for (name, comp) in diff {
            v.push(a(name.clone(), *comp, true));
        }
    } else if let Some((n, tail)) = idx("single_blocks.") {
        let d = format!("single_transformer_blocks.{n}");
        match tail.as_str() {
            "linear1" => {
                let parts = [
                    ("to_q", Component::Q),
                    ("to_k", Component::K),
                    ("to_v", Component::V),
                    ("proj_mlp", Component::Mlp),
                ];
                for (q, c) in parts {
                    v.push(a(format!("single_blocks.{n}.linear1.{q}"), Some(c), false));
                    v.push(a(format!("single_blocks.{n}.{q}"), Some(c), false));
                    let dn = if c == Component::Mlp { format!("{d}.proj_mlp") } else { format!("{d}.attn.{q}") };
                    v.push(a(dn, Some(c), true));
                }
            }
            "linear2" => v.push(a(format!("{d}.proj_out"), None, true)),
            "modulation.lin" => v.push(a(format!("{d}.norm.linear"), None, true)),
            _ => {}
        }
    } else {
        let top: Option<&str> = match m {
            "img_in" => Some("x_embedder"),
            "txt_in" => Some("context_embedder"),
            "time_in.in_layer" => Some("time_text_embed.timestep_embedder.linear_1"),
            "time_in.out_layer" => Some("time_text_embed.timestep_embedder.linear_2"),
            "vector_in.in_layer" => Some("time_text_embed.text_embedder.linear_1"),
            "vector_in.out_layer" => Some("time_text_embed.text_embedder.linear_2"),
            "guidance_in.in_layer" => Some("time_text_embed.guidance_embedder.linear_1"),
            "guidance_in.out_layer" => Some("time_text_embed.guidance_embedder.linear_2"),
            "final_layer.linear" => Some("proj_out"),
            _ => None,
        };
        if let Some(t) = top {
            v.push(a(t.to_string(), None, true));
        }
        if m == "final_layer.adaLN_modulation.1" {
            v.push(Alias { swap_halves: true, ..a("norm_out.linear".into(), None, true) });
        }
    }
    v
}

/// SDXL LDM module path → diffusers UNet module path.
pub fn sdxl_to_diffusers(m: &str) -> Option<String> {
    let fixed = match m {
        "time_embed.0" => Some("time_embedding.linear_1"),
        "time_embed.2" => Some("time_embedding.linear_2"),
        "label_emb.0.0" => Some("add_embedding.linear_1"),
        "label_emb.0.2" => Some("add_embedding.linear_2"),
        "input_blocks.0.0" => Some("conv_in"),
        "out.0" => Some("conv_norm_out"),
        "out.2" => Some("conv_out"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    fn res(rest: &str) -> Option<String> {
        for (from, to) in [
            ("in_layers.0", "norm1"),
            ("in_layers.2", "conv1"),
            ("emb_layers.1", "time_emb_proj"),
            ("out_layers.0", "norm2"),
            ("out_layers.3", "conv2"),
            ("skip_connection", "conv_shortcut"),
        ] {
            if rest == from {
                return Some(to.to_string());
            }
        }
        None
    }
    let split3 = |p: &str| -> Option<(usize, usize, String)> {
        let rest = m.strip_prefix(p)?;
        let mut it = rest.splitn(3, '.');
        let n = it.next()?.parse().ok()?;
        let s = it.next()?.parse().ok()?;
        Some((n, s, it.next()?.to_string()))
    };
    if let Some((n, s, rest)) = split3("input_blocks.") {
        if n == 0 {
            return None;
        }
        let (level, i) = ((n - 1) / 3, (n - 1) % 3);
        if i == 2 {
            return (s == 0 && rest == "op").then(|| format!("down_blocks.{level}.downsamplers.0.conv"));
        }
        return match s {
            0 => res(&rest).map(|r| format!("down_blocks.{level}.resnets.{i}.{r}")),
            1 => Some(format!("down_blocks.{level}.attentions.{i}.{rest}")),
            _ => None,
        };
    }
    if let Some(rest) = m.strip_prefix("middle_block.") {
        let (s, rest) = rest.split_once('.')?;
        return match s {
            "0" => res(rest).map(|r| format!("mid_block.resnets.0.{r}")),
            "1" => Some(format!("mid_block.attentions.0.{rest}")),
            "2" => res(rest).map(|r| format!("mid_block.resnets.1.{r}")),
            _ => None,
        };
    }
    if let Some((n, s, rest)) = split3("output_blocks.") {
        let (level, i) = (n / 3, n % 3);
        if s >= 1 && rest == "conv" {
            return Some(format!("up_blocks.{level}.upsamplers.0.conv"));
        }
        return match s {
            0 => res(&rest).map(|r| format!("up_blocks.{level}.resnets.{i}.{r}")),
            1 => Some(format!("up_blocks.{level}.attentions.{i}.{rest}")),
            _ => None,
        };
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The index

/// Result of looking up one module name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Target),
    /// The name belongs to another component (a text encoder in a diffusion load, ...).
    OtherDomain,
    NotFound,
}

/// Module-name index of one base model (or of an architecture's reference layouts).
#[derive(Debug, Clone)]
pub struct NameIndex {
    arch: Arch,
    dotted: HashMap<(Ns, String), Target>,
    underscored: HashMap<(Ns, String), Target>,
    shapes: Option<IndexMap<String, Vec<i64>>>,
    /// Names that two different targets claim (the first one is kept).
    collisions: Vec<String>,
}

fn module_of(arch: Arch, key: &str) -> Option<String> {
    let m = key.strip_suffix(".weight")?;
    if arch == Arch::SdxlClip {
        Some(m.to_string())
    } else {
        Some(m.strip_prefix("diffusion_model.")?.to_string())
    }
}

impl NameIndex {
    fn build<'a>(arch: Arch, keys: impl Iterator<Item = &'a str>, shapes: Option<IndexMap<String, Vec<i64>>>) -> Self {
        let mut dotted: HashMap<(Ns, String), Target> = HashMap::new();
        let mut underscored: HashMap<(Ns, String), Target> = HashMap::new();
        let mut collisions = Vec::new();
        for key in keys {
            if let Some(s) = shapes.as_ref().and_then(|s| s.get(key)) {
                if s.len() < 2 {
                    continue;
                }
            }
            let Some(module) = module_of(arch, key) else { continue };
            for al in aliases(arch, &module) {
                let t = Target { key: key.to_string(), comp: al.comp, swap_halves: al.swap_halves };
                for (map, name) in [(&mut underscored, al.name.replace('.', "_")), (&mut dotted, al.name.clone())] {
                    match map.get(&(al.ns, name.clone())) {
                        Some(prev) if *prev != t => collisions.push(name),
                        Some(_) => {}
                        None => {
                            map.insert((al.ns, name), t.clone());
                        }
                    }
                }
            }
        }
        NameIndex { arch, dotted, underscored, shapes, collisions }
    }

    /// Index over a base model's keys and shapes (the Exit's case: targets are validated).
    pub fn from_shapes(arch: Arch, shapes: &IndexMap<String, Vec<i64>>) -> Self {
        Self::build(arch, shapes.keys().map(|s| s.as_str()), Some(shapes.clone()))
    }

    /// Index over key names only.
    pub fn from_keys<'a>(arch: Arch, keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self::build(arch, keys.into_iter(), None)
    }

    /// The architecture's reference index: names of its full-size layouts (Flux: Flux.1 and
    /// Flux.2), no shapes. Built once.
    pub fn reference(arch: Arch) -> &'static NameIndex {
        static CACHE: OnceLock<Vec<(Arch, NameIndex)>> = OnceLock::new();
        let all = CACHE.get_or_init(|| {
            Arch::ALL
                .iter()
                .map(|&a| {
                    let layouts = all_layouts(a, LayoutSize::Full);
                    let keys: Vec<&str> = layouts.iter().flat_map(|l| l.keys()).collect();
                    (a, NameIndex::from_keys(a, keys))
                })
                .collect()
        });
        &all.iter().find(|(a, _)| *a == arch).expect("every arch indexed").1
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Module names (dotted or underscored) that two different weights would claim; the first
    /// weight keeps the name. Empty for every supported layout (tested).
    pub fn collisions(&self) -> &[String] {
        &self.collisions
    }

    /// Base shapes, when the index was built from a base model.
    pub fn shapes(&self) -> Option<&IndexMap<String, Vec<i64>>> {
        self.shapes.as_ref()
    }

    pub fn shape(&self, key: &str) -> Option<&[i64]> {
        self.shapes.as_ref()?.get(key).map(|v| v.as_slice())
    }

    /// Look up a module name (as written in the file, naming prefixes included).
    pub fn lookup(&self, module: &str) -> Lookup {
        let (ns, style, rest) = parse_module(module);
        if ns.domain() != self.arch.domain() {
            return Lookup::OtherDomain;
        }
        let map = match style {
            Style::Dotted => &self.dotted,
            Style::Underscored => &self.underscored,
        };
        match map.get(&(ns, rest.to_string())) {
            Some(t) => Lookup::Found(t.clone()),
            None => Lookup::NotFound,
        }
    }

    /// Map a full file key (module + factor suffix) to its target; `None` when the key is not
    /// an adapter factor or does not map.
    pub fn map_key(&self, file_key: &str) -> Option<Target> {
        let (module, _, _) = split_factor(file_key)?;
        match self.lookup(module) {
            Lookup::Found(t) => Some(t),
            _ => None,
        }
    }
}

/// Module names (one per row section) a LoRA in `naming` uses for the base weight `key`.
/// Empty when the naming cannot address that weight.
pub fn module_names(arch: Arch, naming: LoraNaming, key: &str) -> Vec<(String, Option<Component>, bool)> {
    let Some(module) = module_of(arch, key) else { return vec![] };
    let als = aliases(arch, &module);
    let native: Vec<&Alias> = als.iter().filter(|a| !a.diffusers && a.comp.is_none()).take(1).collect();
    let mut out = Vec::new();
    match naming {
        LoraNaming::Kohya | LoraNaming::Lycoris => {
            for a in native {
                let u = a.name.replace('.', "_");
                let name = match (arch, a.ns, naming) {
                    (Arch::SdxlClip, Ns::Te1, LoraNaming::Kohya) => format!("lora_te1_{u}"),
                    (Arch::SdxlClip, Ns::Te2, LoraNaming::Kohya) => format!("lora_te2_{u}"),
                    (Arch::SdxlClip, _, _) => continue,
                    (_, _, LoraNaming::Kohya) => format!("lora_unet_{u}"),
                    _ => format!("lycoris_{u}"),
                };
                out.push((name, None, false));
            }
        }
        LoraNaming::DiffusionModel => {
            for a in native {
                let name = match a.ns {
                    Ns::Te1 => format!("clip_l.transformer.{}", a.name),
                    Ns::Te2 => format!("clip_g.transformer.{}", a.name),
                    _ => format!("diffusion_model.{}", a.name),
                };
                out.push((name, None, false));
            }
        }
        LoraNaming::Diffusers => {
            let diff: Vec<&Alias> = als.iter().filter(|a| a.diffusers).collect();
            let chosen: Vec<&Alias> = match arch {
                Arch::SdxlClip => als.iter().collect(),
                _ => diff,
            };
            for a in chosen {
                let name = match (arch, a.ns) {
                    (Arch::SdxlClip, Ns::Te1) => format!("text_encoder.{}", a.name),
                    (Arch::SdxlClip, Ns::Te2) => format!("text_encoder_2.{}", a.name),
                    (Arch::Sdxl, _) => format!("unet.{}", a.name),
                    _ => format!("transformer.{}", a.name),
                };
                out.push((name, a.comp, a.swap_halves));
            }
        }
    }
    out
}
