//! The headless WIDEN example workflows (`workflows/widen_*.json`; native nodes only — the ones
//! that also need ComfyUI are named otherwise) run end to end on the default
//! tiny fixture set (`fixtures::write_fixtures` with default options: what `comfyrs fixtures`
//! writes into a models root).

mod pack_util;

use comfyrs_testkit::fixtures::{write_fixtures, FixtureOptions};
use comfyrs_nodes::models::{MappedFile, ModelFolders};
use pack_util::*;

#[test]
fn widen_workflows_run_on_default_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path(), &FixtureOptions::default()).unwrap();
    let m = Models { dir, engine: engine() };
    let reg = registry(&m);
    let root = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("../workflows");
    let mut names: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("widen_")).collect();
    names.sort();
    assert!(names.len() >= 3, "{names:?}");
    for n in names {
        let p: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join(&n)).unwrap()).unwrap();
        let mut exec = executor();
        let (r, _) = run(&reg, &mut exec, &p);
        assert_ok(&r);
        let shown = serde_json::to_string(&r.outputs).unwrap();
        assert!(shown.contains("native") && shown.contains("merged keys"), "{n}: {shown}");
        eprintln!("{n}: {shown}");
    }
    let saved = MappedFile::open(m.root().join("checkpoints/widen_sdxl_tiny_merge.safetensors")).unwrap();
    assert!(saved.metadata().unwrap().contains_key("__ecaj_recipe__"));
    let _ = ModelFolders::new(m.root());
}
