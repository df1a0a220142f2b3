//! Saving merged models: full file, atomic, metadata, reuse by recipe hash, refused names,
//! foreign files, and bad inputs that must write nothing; a CLIP as one file per text encoder.

mod pack_util;

use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::models::MappedFile;
use pack_util::*;
use serde_json::{json, Value as Json};

fn prompt(name: &str, lora: &str) -> Json {
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f16.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": lora, "strength": 1.0}},
        "3": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": 1.0}},
        "4": {"class_type": "WIDENExit", "inputs": {"widen": ["3", 0], "save_model": true, "model_name": name}},
        "5": {"class_type": "TestCapture", "inputs": {"value": ["4", 0]}}
    })
}

#[test]
fn saved_file_reloads_bit_identically_and_is_reused() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut exec = executor();
    let wf = json!({"workflow": {"nodes": [1, 2, 3]}});
    let (r, id) = run_with(&reg, &mut exec, &prompt("merged", "sdxl/a.safetensors"), Some(wf.clone()));
    assert_ok(&r);
    let model = model_of(&captured(&id, "5"));
    let path = m.root().join("checkpoints/merged.safetensors");
    let saved = MappedFile::open(&path).unwrap();
    assert_eq!(saved.len(), model.keys().count(), "every base key saved");
    for k in model.keys() {
        let want = model.tensor(k).unwrap();
        let got = saved.tensor(k).unwrap();
        assert_eq!(got.kind(), want.kind(), "{k}");
        assert!(got.equal(&want), "{k}");
    }
    let md = saved.metadata().unwrap();
    assert_eq!(md["__ecaj_version__"], "1");
    assert!(md["__ecaj_recipe__"].contains("RecipeMerge"));
    assert_eq!(md["__ecaj_recipe_hash__"].len(), 64);
    assert_eq!(serde_json::from_str::<Json>(&md["__ecaj_workflow__"]).unwrap(), wf);
    let affected: Vec<String> = serde_json::from_str(&md["__ecaj_affected_keys__"]).unwrap();
    assert_eq!(affected.len(), model.overrides().len());
    // No temp file left behind.
    let leftovers: Vec<_> = std::fs::read_dir(m.root().join("checkpoints")).unwrap().filter_map(|e| {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        n.contains("tmp").then_some(n)
    }).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A new run (fresh runtime cache) reuses the file: nothing evaluated, same tensors.
    let mut exec2 = executor();
    let reg2 = registry(&m);
    let (r2, id2) = run(&reg2, &mut exec2, &prompt("merged", "sdxl/a.safetensors"));
    assert_ok(&r2);
    assert_eq!(r2.outputs["4"]["widen"][0]["reused_saved_file"], json!(true), "{:?}", r2.outputs);
    assert_same_overrides(&model, &model_of(&captured(&id2, "5")));
    // Another recipe under the same name: overwritten (hash mismatch), atomically.
    let (r3, _) = run(&reg2, &mut exec2, &prompt("merged.safetensors", "sdxl/c.safetensors"));
    assert_ok(&r3);
    let again = MappedFile::open(&path).unwrap();
    assert_ne!(again.metadata().unwrap()["__ecaj_recipe_hash__"], md["__ecaj_recipe_hash__"]);
}

#[test]
fn bad_names_foreign_files_and_bad_inputs_write_nothing() {
    let m = models(&[Arch::Sdxl, Arch::Zimage], false);
    let reg = registry(&m);
    let mut exec = executor();
    for (name, msg) in [
        ("", "Model name cannot be empty"),
        ("   ", "Model name cannot be empty"),
        ("../evil", "Model name contains path traversal: '../evil'"),
        ("sub/evil", "Model name contains path separators: 'sub/evil'"),
        ("sub\\evil", "Model name contains path separators"),
    ] {
        let (r, _) = run(&reg, &mut exec, &prompt(name, "sdxl/a.safetensors"));
        let e = error_of(&r);
        assert!(e.contains(msg), "{name:?}: {e}");
    }
    // A file without ecaj metadata is never overwritten.
    let foreign = m.root().join("checkpoints/foreign.safetensors");
    std::fs::copy(m.root().join("diffusion_models/tiny/sdxl_f32.safetensors"), &foreign).unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let (r, _) = run(&reg, &mut exec, &prompt("foreign", "sdxl/a.safetensors"));
    assert!(error_of(&r).contains("File exists but is not an ecaj-saved model"));
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    // A LoRA of another architecture: a clear error naming file and arch, nothing written.
    let (r, _) = run(&reg, &mut exec, &prompt("wrong_arch", "zimage/tiny/zimage_kohya_lora.safetensors"));
    let e = error_of(&r);
    assert!(e.contains("zimage_kohya_lora.safetensors") && e.contains("sdxl"), "{e}");
    assert!(!m.root().join("checkpoints/wrong_arch.safetensors").exists());
    // Truncated and corrupted LoRAs.
    let a = std::fs::read(m.root().join("loras/sdxl/a.safetensors")).unwrap();
    std::fs::write(m.root().join("loras/sdxl/trunc.safetensors"), &a[..a.len() / 2]).unwrap();
    let mut bad = a.clone();
    bad[8..16].copy_from_slice(b"garbage!");
    std::fs::write(m.root().join("loras/sdxl/corrupt.safetensors"), &bad).unwrap();
    let reg = registry(&m);
    for (lora, word) in [("sdxl/trunc.safetensors", "truncated"), ("sdxl/corrupt.safetensors", "not a valid safetensors")] {
        let (r, _) = run(&reg, &mut exec, &prompt("never", lora));
        let e = error_of(&r);
        assert!(e.contains(word) && e.contains(lora.rsplit('/').next().unwrap()), "{lora}: {e}");
    }
    // A truncated base model.
    let b = std::fs::read(m.root().join("diffusion_models/tiny/sdxl_f16.safetensors")).unwrap();
    std::fs::write(m.root().join("diffusion_models/tiny/sdxl_f16.safetensors"), &b[..b.len() - 100]).unwrap();
    let (r, _) = run(&reg, &mut exec, &prompt("never", "sdxl/a.safetensors"));
    assert!(error_of(&r).contains("truncated"), "{}", error_of(&r));
    assert!(!m.root().join("checkpoints/never.safetensors").exists());
}

const CLIP_LORA: &str = "sdxl_clip/tiny/sdxl_clip_kohya_lora.safetensors";

fn clip_prompt(name: &str, strength: f64) -> Json {
    json!({
        "1": {"class_type": "WIDENCLIPBaseInput", "inputs": {"ckpt_name": "tiny/sdxl_ldm_f16.safetensors"}},
        "2": {"class_type": "WIDENCLIPLoRA", "inputs": {"lora_name": CLIP_LORA, "strength": strength}},
        "3": {"class_type": "WIDENCLIPMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": 1.0}},
        "4": {"class_type": "WIDENCLIPExit", "inputs": {"widen_clip": ["3", 0], "save_model": true, "model_name": name}},
        "5": {"class_type": "TestCapture", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "TestCapture", "inputs": {"value": ["1", 1]}}
    })
}

/// The name a CLIP's host key has in its text encoder's file: without `clip_l.` / `clip_g.`, then
/// without a leading `transformer.` (docs/widen.md, "Saving merged models").
fn encoder_key(k: &str) -> (&str, &str) {
    let (enc, rest) = k.split_once('.').unwrap();
    (enc, rest.strip_prefix("transformer.").unwrap_or(rest))
}

/// Every key of the CLIP `model` is in its encoder's saved file under the text encoder name, as
/// the model has it (merged keys as merged, the rest as the base); the files hold nothing else,
/// and list the merged keys each holds (host names) in their metadata.
fn assert_saved_clip(root: &std::path::Path, name: &str, model: &comfyrs_nodes::pack::NativeModel, base: &comfyrs_nodes::pack::NativeModel) -> String {
    let mut hashes = Vec::new();
    for enc in ["clip_l", "clip_g"] {
        let path = root.join(format!("text_encoders/{name}_{enc}.safetensors"));
        let saved = MappedFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let keys: Vec<&str> = model.keys().filter(|k| encoder_key(k).0 == enc).collect();
        assert!(!keys.is_empty(), "{enc}");
        assert_eq!(saved.len(), keys.len(), "{enc}: every key of the encoder, nothing else");
        let mut merged_here = Vec::new();
        for k in keys {
            let (_, file_key) = encoder_key(k);
            assert!(!file_key.starts_with("clip_") && !file_key.starts_with("transformer."), "{file_key}");
            let got = saved.tensor(file_key).unwrap_or_else(|e| panic!("{k} as {file_key}: {e}"));
            let want = model.tensor(k).unwrap();
            assert_eq!(got.kind(), want.kind(), "{k}");
            assert_eq!(got.kind(), base.kind(k).unwrap(), "{k}: saved in its own dtype");
            assert!(got.equal(&want), "{k}");
            if model.overrides().contains_key(k) {
                merged_here.push(k.to_string());
            } else {
                assert!(got.equal(&base.tensor(k).unwrap()), "{k}: unmerged keys are the base's");
            }
        }
        assert!(!merged_here.is_empty(), "{enc}: the LoRA merges keys of both encoders");
        let md = saved.metadata().unwrap();
        assert_eq!(md["__ecaj_version__"], "1");
        assert!(md["__ecaj_recipe__"].contains("RecipeMerge"));
        let affected: Vec<String> = serde_json::from_str(&md["__ecaj_affected_keys__"]).unwrap();
        merged_here.sort();
        assert_eq!(affected, merged_here, "{enc}: the merged keys it holds, by host name");
        assert!(md.contains_key("__comfyrs_report__"), "{enc}");
        hashes.push(md["__ecaj_recipe_hash__"].clone());
    }
    assert_eq!(hashes[0], hashes[1], "one recipe, one hash");
    hashes.remove(0)
}

/// A CLIP merge with save_model writes one file per text encoder into text_encoders, with the
/// names a text encoder loader reads; a new run reuses them, a changed recipe rewrites them, and
/// a file that goes missing makes the Exit run again.
#[test]
fn clip_saves_one_file_per_text_encoder_and_reuses_them() {
    let m = models(&[Arch::SdxlClip], false);
    let reg = registry(&m);
    let mut exec = executor();
    let wf = json!({"workflow": {"nodes": [4]}});
    let (r, id) = run_with(&reg, &mut exec, &clip_prompt("merged_clip", 1.0), Some(wf.clone()));
    assert_ok(&r);
    let model = model_of(&captured(&id, "5"));
    let base = model_of(&captured(&id, "6"));
    assert!(!model.overrides().is_empty());
    let ui = &r.outputs["4"]["widen"][0];
    assert_eq!(ui["reused_saved_file"], json!(false), "{ui}");
    let te = m.root().join("text_encoders");
    let paths = |name: &str| json!([te.join(format!("{name}_clip_l.safetensors")).display().to_string(), te.join(format!("{name}_clip_g.safetensors")).display().to_string()]);
    assert_eq!(ui["saved"], paths("merged_clip"), "{ui}");
    let hash = assert_saved_clip(m.root(), "merged_clip", &model, &base);
    let wf_saved = MappedFile::open(te.join("merged_clip_clip_g.safetensors")).unwrap().metadata().unwrap()["__ecaj_workflow__"].clone();
    assert_eq!(serde_json::from_str::<Json>(&wf_saved).unwrap(), wf);
    let mut names: Vec<String> = std::fs::read_dir(&te).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["merged_clip_clip_g.safetensors", "merged_clip_clip_l.safetensors"], "no temp file left behind");

    // A new run (fresh runtime cache) reuses both files: nothing evaluated, the same tensors.
    let reg2 = registry(&m);
    let mut exec2 = executor();
    let (r2, id2) = run(&reg2, &mut exec2, &clip_prompt("merged_clip.safetensors", 1.0));
    assert_ok(&r2);
    let ui2 = &r2.outputs["4"]["widen"][0];
    assert_eq!(ui2["reused_saved_file"], json!(true), "{ui2}");
    assert_eq!(ui2["recomputed"], json!(0), "{ui2}");
    let reused = model_of(&captured(&id2, "5"));
    assert_same_overrides(&model, &reused);
    assert!(reused.overrides().values().all(|t| t.file().is_some()), "reused keys are memory-mapped from the files");

    // A file gone: the Exit's fingerprint changes, so the same prompt on the same runtime runs
    // the Exit again, which merges and writes both files again.
    std::fs::remove_file(te.join("merged_clip_clip_l.safetensors")).unwrap();
    let (r3, id3) = run(&reg2, &mut exec2, &clip_prompt("merged_clip.safetensors", 1.0));
    assert_ok(&r3);
    assert_eq!(r3.outputs["4"]["widen"][0]["reused_saved_file"], json!(false), "{:?}", r3.outputs);
    assert_same_overrides(&model, &model_of(&captured(&id3, "5")));
    assert_eq!(assert_saved_clip(m.root(), "merged_clip", &model, &base), hash);

    // Another strength: a new recipe hash, merged again and both files overwritten.
    let (r4, id4) = run(&reg2, &mut exec2, &clip_prompt("merged_clip", 0.5));
    assert_ok(&r4);
    assert_eq!(r4.outputs["4"]["widen"][0]["reused_saved_file"], json!(false), "{:?}", r4.outputs);
    let half = model_of(&captured(&id4, "5"));
    let k = half.overrides().keys().next().unwrap().clone();
    assert!(!half.overrides()[&k].equal(&model.overrides()[&k]), "{k}: the strength changed the merge");
    assert_ne!(assert_saved_clip(m.root(), "merged_clip", &half, &base), hash);
}

/// A file without ecaj metadata where a text encoder would be saved is refused before anything
/// is merged or written; so are bad names.
#[test]
fn clip_save_refuses_foreign_files_and_bad_names() {
    let m = models(&[Arch::SdxlClip], false);
    let reg = registry(&m);
    let mut exec = executor();
    let te = m.root().join("text_encoders");
    std::fs::create_dir_all(&te).unwrap();
    let foreign = te.join("theirs_clip_g.safetensors");
    std::fs::copy(m.root().join("checkpoints/tiny/sdxl_ldm_f16.safetensors"), &foreign).unwrap();
    let before = std::fs::read(&foreign).unwrap();
    let (r, _) = run(&reg, &mut exec, &clip_prompt("theirs", 1.0));
    let e = error_of(&r);
    assert!(e.contains("File exists but is not an ecaj-saved model") && e.contains("theirs_clip_g.safetensors"), "{e}");
    assert_eq!(std::fs::read(&foreign).unwrap(), before);
    assert!(!te.join("theirs_clip_l.safetensors").exists(), "nothing written");
    for (name, msg) in [("", "Model name cannot be empty"), ("../evil", "path traversal"), ("a/b", "path separators")] {
        let (r, _) = run(&reg, &mut exec, &clip_prompt(name, 1.0));
        let e = error_of(&r);
        assert!(e.contains(msg), "{name:?}: {e}");
    }
}
