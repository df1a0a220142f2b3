//! Model folders the ComfyUI way: listing, resolution, traversal refusal, legacy names and
//! extra_model_paths.yaml.

use std::fs;
use std::path::Path;

use comfyrs_nodes::models::folders::{check_name, expand_vars, normalize};
use comfyrs_nodes::models::{FormatError, ModelFolders};

fn touch(p: &Path) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, b"x").unwrap();
}

#[test]
fn lists_subfolders_filters_extensions_and_sorts() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    touch(&m.join("loras/detail.safetensors"));
    touch(&m.join("loras/styles/ink.SafeTensors"));
    touch(&m.join("loras/styles/deep/old.ckpt"));
    touch(&m.join("loras/readme.txt"));
    touch(&m.join("loras/.hidden.safetensors"));
    touch(&m.join("loras/.git/objects.safetensors"));
    touch(&m.join("loras/noext"));
    let f = ModelFolders::new(m);
    assert_eq!(
        f.list("loras").unwrap(),
        vec![".hidden.safetensors", "detail.safetensors", "styles/deep/old.ckpt", "styles/ink.SafeTensors"]
    );
    assert!(f.list("checkpoints").unwrap().is_empty(), "missing directories are skipped");
    let err = f.list("nope").unwrap_err();
    assert!(matches!(err, FormatError::UnknownFolder { .. }) && err.to_string().contains("nope"));
}

#[test]
fn diffusion_models_merges_legacy_unet_and_maps_names() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path();
    touch(&m.join("unet/a.safetensors"));
    touch(&m.join("diffusion_models/b.safetensors"));
    touch(&m.join("unet/same.safetensors"));
    touch(&m.join("diffusion_models/same.safetensors"));
    let f = ModelFolders::new(m);
    let names = f.list("diffusion_models").unwrap();
    assert_eq!(names, vec!["a.safetensors", "b.safetensors", "same.safetensors"]);
    assert_eq!(f.list("unet").unwrap(), names, "legacy kind name maps to diffusion_models");
    // Earlier directories shadow later ones: unet comes first.
    assert_eq!(f.resolve("diffusion_models", "same.safetensors").unwrap(), m.join("unet/same.safetensors"));
    assert_eq!(f.resolve("unet", "b.safetensors").unwrap(), m.join("diffusion_models/b.safetensors"));
    touch(&m.join("clip/te.safetensors"));
    assert_eq!(f.list("clip").unwrap(), vec!["te.safetensors"]);
    assert_eq!(f.list("text_encoders").unwrap(), vec!["te.safetensors"]);
}

#[test]
fn resolve_refuses_traversal_and_reports_missing() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("models");
    touch(&m.join("loras/sub/x.safetensors"));
    touch(&dir.path().join("secret.safetensors"));
    let f = ModelFolders::new(&m);
    assert_eq!(f.resolve("loras", "sub/x.safetensors").unwrap(), m.join("loras/sub/x.safetensors"));
    for bad in [
        "../../secret.safetensors",
        "sub/../../../secret.safetensors",
        "..\\secret.safetensors",
        "/etc/passwd",
        "\\server\\share",
        "C:\\x.safetensors",
        "",
        "a\0b",
    ] {
        let err = f.resolve("loras", bad).unwrap_err();
        assert!(matches!(err, FormatError::BadName { .. }), "{bad:?}: {err}");
    }
    assert!(check_name("fine..name.safetensors").is_ok(), "dots inside a name are fine");
    let err = f.resolve("loras", "missing.safetensors").unwrap_err();
    assert!(matches!(err, FormatError::ModelNotFound { .. }));
    let msg = err.to_string();
    assert!(msg.contains("missing.safetensors") && msg.contains("loras"), "{msg}");
    // A directory is not a model file.
    assert!(f.resolve("loras", "sub").is_err());
}

#[cfg(unix)]
#[test]
fn follows_symlinks_without_looping() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("models");
    let shared = dir.path().join("shared");
    touch(&shared.join("s.safetensors"));
    touch(&m.join("loras/own.safetensors"));
    std::os::unix::fs::symlink(&shared, m.join("loras/linked")).unwrap();
    std::os::unix::fs::symlink(m.join("loras"), m.join("loras/loop")).unwrap();
    let f = ModelFolders::new(&m);
    let names = f.list("loras").unwrap();
    assert!(names.contains(&"linked/s.safetensors".to_string()), "{names:?}");
    assert!(names.contains(&"own.safetensors".to_string()));
    assert!(names.iter().all(|n| !n.starts_with("loop/loop")), "cycles are broken: {names:?}");
    assert!(f.resolve("loras", "linked/s.safetensors").is_ok());
}

#[test]
fn extra_model_paths_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let m = root.join("models");
    touch(&m.join("loras/base.safetensors"));
    touch(&root.join("cfg/rel/loras/r.safetensors"));
    touch(&root.join("cfg/rel/lycoris/l.safetensors"));
    touch(&root.join("abs_models/checkpoints/c.safetensors"));
    touch(&root.join("cfg/nobase/loras/n.safetensors"));
    touch(&root.join("cfg/nobase/unet/u.safetensors"));
    touch(&root.join("home/ai/loras/h.safetensors"));
    touch(&root.join("envdir/loras/e.safetensors"));
    touch(&root.join("cfg/kinds/extras/anything.xyz"));
    std::env::set_var("COMFYRS_TEST_ENVDIR", root.join("envdir"));
    let yaml = format!(
        r#"
# comment
relative_base:
  base_path: rel          # relative to this file
  loras: |
    loras
    lycoris
absolute:
  base_path: {abs}
  checkpoints: checkpoints
no_base:
  loras: nobase/loras
  unet: nobase/unet       # legacy name
env:
  base_path: $COMFYRS_TEST_ENVDIR
  loras: loras
defaults:
  base_path: "${{COMFYRS_TEST_ENVDIR}}/.."
  is_default: true
  loras: home/ai/loras
custom:
  my_kind: kinds/extras
empty_section:
"#,
        abs = root.join("abs_models").display()
    );
    let cfg = root.join("cfg/extra_model_paths.yaml");
    fs::write(&cfg, yaml).unwrap();
    let mut f = ModelFolders::new(&m);
    f.load_extra_model_paths(&cfg).unwrap();
    let loras = f.list("loras").unwrap();
    assert_eq!(
        loras,
        vec!["base.safetensors", "e.safetensors", "h.safetensors", "l.safetensors", "n.safetensors", "r.safetensors"]
    );
    let dirs = f.dirs("loras").unwrap();
    assert_eq!(dirs[0], normalize(&root.join("home/ai/loras")), "paths are normalized");
    assert_eq!(dirs[1], m.join("loras"), "is_default directories come first, then the defaults");
    assert!(dirs.contains(&root.join("cfg/rel/lycoris")));
    assert_eq!(f.list("checkpoints").unwrap(), vec!["c.safetensors"]);
    assert_eq!(f.list("diffusion_models").unwrap(), vec!["u.safetensors"]);
    assert_eq!(f.list("my_kind").unwrap(), vec!["anything.xyz"], "unknown kinds accept any extension");
    assert_eq!(f.resolve("loras", "r.safetensors").unwrap(), root.join("cfg/rel/loras/r.safetensors"));

    let bad = root.join("bad.yaml");
    fs::write(&bad, "a: [unclosed").unwrap();
    let err = f.load_extra_model_paths(&bad).unwrap_err();
    assert!(matches!(err, FormatError::BadConfig { .. }) && err.to_string().contains("bad.yaml"), "{err}");
    fs::write(&bad, "- just\n- a list\n").unwrap();
    assert!(f.load_extra_model_paths(&bad).is_err());
}

#[test]
fn variable_expansion_leaves_unknown_variables() {
    std::env::set_var("COMFYRS_TEST_X", "/x");
    assert_eq!(expand_vars("$COMFYRS_TEST_X/a"), "/x/a");
    assert_eq!(expand_vars("${COMFYRS_TEST_X}b"), "/xb");
    assert_eq!(expand_vars("$COMFYRS_UNSET_VAR/a"), "$COMFYRS_UNSET_VAR/a");
    assert_eq!(expand_vars("cost$"), "cost$");
}
