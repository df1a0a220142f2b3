//! Saving merged models: full file, atomic, metadata, reuse by recipe hash, refused names,
//! foreign files, and bad inputs that must write nothing.

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
