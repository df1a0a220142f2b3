//! Test fixtures: a random-weight tiny SD1.5 checkpoint that ComfyUI's own model detection
//! accepts as SD1.5.
//!
//! No model can be downloaded in CI, so the tests make one. ComfyUI detects the UNet layout from
//! the tensor shapes (`comfy/model_detection.py`: model channels from `input_blocks.0.0`, levels
//! from the downsample `op` layers, transformer depth from `transformer_blocks`, context size
//! from `attn2.to_k`) and matches it against `supported_models.SD15` (context 768, 320 model
//! channels, conv proj_in, no ADM). This checkpoint has the smallest such UNet: two levels
//! (channel_mult [1, 1]), one res block per level, a transformer only on the first level and in
//! the middle. The text encoder is the full CLIP-L layout (ComfyUI builds it from a fixed
//! config) and the VAE is a TAESD, which ComfyUI recognises by `taesd_decoder.1.weight`.
//!
//! ComfyUI allocates layers without initializing them, so every parameter it builds is present
//! here (except CLIP's `text_projection`, which ComfyUI sets to the identity itself): a missing
//! key would leave uninitialized memory and make runs irreproducible. Values are deterministic
//! (each tensor seeded from its name), stored as float16: about 325 MB.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, View};

/// Bumped when the generated content changes (cached files carry it in their name).
pub const TINY_SD15_VERSION: u32 = 2;

/// The file name the checkpoint is written under.
pub fn tiny_sd15_name() -> String {
    format!("comfyrs-tiny-sd15-v{TINY_SD15_VERSION}.safetensors")
}

/// One tensor to generate.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every element this value (norm weights 1, norm biases 0, scalars).
    Fill(f32),
    /// Uniform with this standard deviation.
    Uniform(f32),
    /// Uniform, standard deviation `gain / sqrt(fan_in)` (fan_in: the product of the dims after
    /// the first).
    FanIn(f32),
}

struct Keys(Vec<TensorSpec>);

impl Keys {
    fn add(&mut self, name: String, shape: &[usize], init: Init) {
        self.0.push(TensorSpec { name, shape: shape.to_vec(), init });
    }
    fn linear(&mut self, p: &str, out: usize, inp: usize, bias: bool) {
        self.add(format!("{p}.weight"), &[out, inp], Init::FanIn(1.0));
        if bias {
            self.add(format!("{p}.bias"), &[out], Init::Uniform(0.01));
        }
    }
    fn conv(&mut self, p: &str, out: usize, inp: usize, k: usize, bias: bool) {
        self.add(format!("{p}.weight"), &[out, inp, k, k], Init::FanIn(1.0));
        if bias {
            self.add(format!("{p}.bias"), &[out], Init::Uniform(0.01));
        }
    }
    fn norm(&mut self, p: &str, c: usize) {
        self.add(format!("{p}.weight"), &[c], Init::Fill(1.0));
        self.add(format!("{p}.bias"), &[c], Init::Fill(0.0));
    }
    /// `ResBlock` of ComfyUI's openaimodel (time embedding 1280).
    fn resblock(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(&format!("{p}.in_layers.0"), cin);
        self.conv(&format!("{p}.in_layers.2"), cout, cin, 3, true);
        self.linear(&format!("{p}.emb_layers.1"), cout, 1280, true);
        self.norm(&format!("{p}.out_layers.0"), cout);
        self.conv(&format!("{p}.out_layers.3"), cout, cout, 3, true);
        if cin != cout {
            self.conv(&format!("{p}.skip_connection"), cout, cin, 1, true);
        }
    }
    /// `SpatialTransformer` with one block, conv proj_in/out, cross-attention over 768.
    fn transformer(&mut self, p: &str, c: usize) {
        self.norm(&format!("{p}.norm"), c);
        self.conv(&format!("{p}.proj_in"), c, c, 1, true);
        let b = format!("{p}.transformer_blocks.0");
        for q in ["to_q", "to_k", "to_v"] {
            self.linear(&format!("{b}.attn1.{q}"), c, c, false);
        }
        self.linear(&format!("{b}.attn1.to_out.0"), c, c, true);
        self.linear(&format!("{b}.ff.net.0.proj"), c * 8, c, true);
        self.linear(&format!("{b}.ff.net.2"), c, c * 4, true);
        self.linear(&format!("{b}.attn2.to_q"), c, c, false);
        self.linear(&format!("{b}.attn2.to_k"), c, 768, false);
        self.linear(&format!("{b}.attn2.to_v"), c, 768, false);
        self.linear(&format!("{b}.attn2.to_out.0"), c, c, true);
        for n in ["norm1", "norm2", "norm3"] {
            self.norm(&format!("{b}.{n}"), c);
        }
        self.conv(&format!("{p}.proj_out"), c, c, 1, true);
    }
}

/// Every tensor of the tiny SD1.5 checkpoint, in a fixed order.
pub fn tiny_sd15_keys() -> Vec<TensorSpec> {
    let mut k = Keys(Vec::new());
    // UNet.
    let u = "model.diffusion_model";
    let c = 320;
    k.linear(&format!("{u}.time_embed.0"), 1280, c, true);
    k.linear(&format!("{u}.time_embed.2"), 1280, 1280, true);
    k.conv(&format!("{u}.input_blocks.0.0"), c, 4, 3, true);
    k.resblock(&format!("{u}.input_blocks.1.0"), c, c);
    k.transformer(&format!("{u}.input_blocks.1.1"), c);
    k.conv(&format!("{u}.input_blocks.2.0.op"), c, c, 3, true);
    k.resblock(&format!("{u}.input_blocks.3.0"), c, c);
    k.resblock(&format!("{u}.middle_block.0"), c, c);
    k.transformer(&format!("{u}.middle_block.1"), c);
    k.resblock(&format!("{u}.middle_block.2"), c, c);
    k.resblock(&format!("{u}.output_blocks.0.0"), 2 * c, c);
    k.resblock(&format!("{u}.output_blocks.1.0"), 2 * c, c);
    k.conv(&format!("{u}.output_blocks.1.1.conv"), c, c, 3, true);
    k.resblock(&format!("{u}.output_blocks.2.0"), 2 * c, c);
    k.transformer(&format!("{u}.output_blocks.2.1"), c);
    k.resblock(&format!("{u}.output_blocks.3.0"), 2 * c, c);
    k.transformer(&format!("{u}.output_blocks.3.1"), c);
    k.norm(&format!("{u}.out.0"), c);
    k.conv(&format!("{u}.out.2"), 4, c, 3, true);

    // TAESD VAE.
    let v = "first_stage_model";
    k.add(format!("{v}.vae_scale"), &[], Init::Fill(1.0));
    // Current ComfyUI's TAESD also has a shift (the 2024 one ignores the key).
    k.add(format!("{v}.vae_shift"), &[], Init::Fill(0.0));
    let block = |k: &mut Keys, p: String| {
        for i in [0, 2, 4] {
            k.conv(&format!("{p}.conv.{i}"), 64, 64, 3, true);
        }
    };
    let e = format!("{v}.taesd_encoder");
    k.conv(&format!("{e}.0"), 64, 3, 3, true);
    for i in [1, 3, 4, 5, 7, 8, 9, 11, 12, 13] {
        block(&mut k, format!("{e}.{i}"));
    }
    for i in [2, 6, 10] {
        k.conv(&format!("{e}.{i}"), 64, 64, 3, false);
    }
    k.conv(&format!("{e}.14"), 4, 64, 3, true);
    let d = format!("{v}.taesd_decoder");
    k.conv(&format!("{d}.1"), 64, 4, 3, true);
    for i in [3, 4, 5, 8, 9, 10, 13, 14, 15, 18] {
        block(&mut k, format!("{d}.{i}"));
    }
    for i in [7, 12, 17] {
        k.conv(&format!("{d}.{i}"), 64, 64, 3, false);
    }
    k.conv(&format!("{d}.19"), 3, 64, 3, true);

    // CLIP-L text encoder.
    k.add("cond_stage_model.logit_scale".into(), &[], Init::Fill(4.6055));
    let t = "cond_stage_model.transformer.text_model";
    k.add(format!("{t}.embeddings.token_embedding.weight"), &[49408, 768], Init::Uniform(0.02));
    k.add(format!("{t}.embeddings.position_embedding.weight"), &[77, 768], Init::Uniform(0.01));
    for l in 0..12 {
        let p = format!("{t}.encoder.layers.{l}");
        k.norm(&format!("{p}.layer_norm1"), 768);
        for q in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            k.linear(&format!("{p}.self_attn.{q}"), 768, 768, true);
        }
        k.norm(&format!("{p}.layer_norm2"), 768);
        k.linear(&format!("{p}.mlp.fc1"), 3072, 768, true);
        k.linear(&format!("{p}.mlp.fc2"), 768, 3072, true);
    }
    k.norm(&format!("{t}.final_layer_norm"), 768);
    k.0
}

/// Writes the tiny SD1.5 checkpoint to `path` (generated tensor by tensor; peak memory is the
/// largest tensor, the 76 MB token embedding).
pub fn write_tiny_sd15(path: &Path) -> Result<(), String> {
    let specs = tiny_sd15_keys();
    let views: Vec<(String, Generated)> = specs.into_iter().map(|s| (s.name.clone(), Generated::new(s))).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut meta = std::collections::HashMap::new();
    meta.insert("comfyrs_fixture".to_string(), format!("tiny-sd15 v{TINY_SD15_VERSION}"));
    safetensors::tensor::serialize_to_file(views, Some(meta), &tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot move {} into place: {e}", tmp.display()))
}

/// `<models_dir>/checkpoints/<tiny_sd15_name()>`, written if it is not there yet. Returns its
/// path.
pub fn ensure_tiny_sd15(models_dir: &Path) -> Result<PathBuf, String> {
    let path = models_dir.join("checkpoints").join(tiny_sd15_name());
    if !path.is_file() {
        write_tiny_sd15(&path)?;
    }
    Ok(path)
}

struct Generated {
    spec: TensorSpec,
}

impl Generated {
    fn new(spec: TensorSpec) -> Self {
        Generated { spec }
    }
    fn numel(&self) -> usize {
        self.spec.shape.iter().product()
    }
}

impl View for Generated {
    fn dtype(&self) -> Dtype {
        Dtype::F16
    }
    fn shape(&self) -> &[usize] {
        &self.spec.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let n = self.numel();
        let mut out = Vec::with_capacity(n * 2);
        let std = match self.spec.init {
            Init::Fill(v) => {
                let b = f16_bits(v).to_le_bytes();
                for _ in 0..n {
                    out.extend_from_slice(&b);
                }
                return Cow::Owned(out);
            }
            Init::Uniform(s) => s,
            Init::FanIn(g) => {
                let fan_in: usize = self.spec.shape.iter().skip(1).product::<usize>().max(1);
                g / (fan_in as f32).sqrt()
            }
        };
        // Uniform on [-a, a] has standard deviation a / sqrt(3).
        let a = std * 3f32.sqrt();
        let mut state = seed(&self.spec.name);
        for _ in 0..n {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            out.extend_from_slice(&f16_bits((2.0 * u - 1.0) * a).to_le_bytes());
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.numel() * 2
    }
}

fn seed(name: &str) -> u64 {
    // FNV-1a: stable across Rust versions (unlike DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// IEEE binary16 bits of `x`, rounded to nearest even.
pub fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let mut r = m >> shift;
        let rem = m & ((1u32 << shift) - 1);
        if rem > half || (rem == half && (r & 1) == 1) {
            r += 1;
        }
        return sign | r as u16;
    }
    let mut r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && (r & 1) == 1) {
        r += 1;
    }
    sign | r as u16
}


/// The LoRA file name `ensure_tiny_sd15_lora` writes under `loras/`.
pub const TINY_SD15_LORA: &str = "tiny_sd15_attn_lora.safetensors";

/// Attention projections of the tiny SD1.5 UNet the LoRA touches: (module, out, in).
pub const TINY_SD15_LORA_MODULES: &[(&str, usize, usize)] = &[
    ("input_blocks.1.1.transformer_blocks.0.attn1.to_q", 320, 320),
    ("input_blocks.1.1.transformer_blocks.0.attn1.to_k", 320, 320),
    ("input_blocks.1.1.transformer_blocks.0.attn1.to_v", 320, 320),
    ("middle_block.1.transformer_blocks.0.attn2.to_q", 320, 320),
];

/// Writes (once) a rank-4 kohya LoRA (`lora_unet_…`, alpha = rank, small deterministic values,
/// fp32) matching a few attention projections of the tiny SD1.5 checkpoint, at
/// `models_dir/loras/TINY_SD15_LORA`.
pub fn ensure_tiny_sd15_lora(models_dir: &Path) -> Result<PathBuf, String> {
    use safetensors::tensor::TensorView;
    let path = models_dir.join("loras").join(TINY_SD15_LORA);
    if path.is_file() {
        return Ok(path);
    }
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    // xorshift: deterministic, no extra dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
    };
    let rank = 4usize;
    for (m, out, inp) in TINY_SD15_LORA_MODULES {
        let name = format!("lora_unet_{}", m.replace('.', "_"));
        let down: Vec<u8> = (0..rank * inp).flat_map(|_| next().to_le_bytes()).collect();
        let up: Vec<u8> = (0..out * rank).flat_map(|_| next().to_le_bytes()).collect();
        data.push((format!("{name}.lora_down.weight"), vec![rank, *inp], down));
        data.push((format!("{name}.lora_up.weight"), vec![*out, rank], up));
        data.push((format!("{name}.alpha"), vec![], (rank as f32).to_le_bytes().to_vec()));
    }
    let views = data
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("building the tiny SD1.5 LoRA: {e}"))?;
    std::fs::create_dir_all(path.parent().expect("loras/ has a parent")).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let tmp = path.with_extension("tmp");
    safetensors::tensor::serialize_to_file(views, None, &tmp).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot move {} into place: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        assert_eq!(f16_bits(1.0), 0x3c00);
        assert_eq!(f16_bits(-2.0), 0xc000);
        assert_eq!(f16_bits(0.0), 0);
        assert_eq!(f16_bits(65504.0), 0x7bff);
        assert_eq!(f16_bits(1e-7), 0x0002); // subnormal
        assert_eq!(f16_bits(0.1), 0x2e66);
    }

    #[test]
    fn key_set_shape() {
        let keys = tiny_sd15_keys();
        let n: usize = keys.iter().map(|k| k.shape.iter().product::<usize>()).sum();
        // UNet + TAESD + CLIP-L (text_projection excluded): ~162 M parameters.
        assert!(n > 160_000_000 && n < 164_000_000, "{n}");
        let mut names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), keys.len(), "duplicate keys");
    }
}
