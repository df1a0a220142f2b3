//! scripts/cache-room.sh, which setup.sh runs before every build: on a disk with too little room
//! it removes what a build makes again, in its order, stops as soon as there is room, and never
//! touches the venv in use or the fixture models. The disk's free space is what it is, so the
//! tests ask for more room than any disk has (everything removable goes) or for none (nothing
//! goes).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// A cache folder laid out as the set-up leaves it, with a file in each place.
fn cache() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "venv-current/bin/python",
        "venv-older/bin/python",
        "models/checkpoints/fixture.safetensors",
        "target/tmp/bridge-tests/scratch",
        "target/debug/incremental/comfyrs-1/s",
        "target/debug/deps/comfyrs-1",
        "target-msrv-abc/debug/incremental/x/s",
    ] {
        let path = dir.path().join(f);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }
    dir
}

fn room(cache: &Path, want_gib: &str) -> Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cache-room.sh"))
        .arg(cache)
        .arg(cache.join("venv-current"))
        .arg(cache.join("target"))
        .env("COMFYRS_CACHE_ROOM_GIB", want_gib)
        .output()
        .unwrap()
}

#[test]
fn with_room_to_spare_nothing_is_removed_and_nothing_said() {
    let c = cache();
    let out = room(c.path(), "0");
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["venv-older", "target/tmp", "target/debug/incremental", "target/debug/deps", "target-msrv-abc"] {
        assert!(c.path().join(f).exists(), "{f} was removed");
    }
}

#[test]
fn short_of_room_what_is_made_again_goes_in_order_and_the_venv_and_models_stay() {
    let c = cache();
    let out = room(c.path(), "100000000");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let said: Vec<usize> = [
        "removed venvs of older requirements",
        "removed the tests' scratch folder",
        "removed rustc's incremental folders",
        "removed the cargo target folders",
        "WARNING: still only",
    ]
    .iter()
    .map(|line| err.find(line).unwrap_or_else(|| panic!("no '{line}' in:\n{err}")))
    .collect();
    assert!(said.windows(2).all(|w| w[0] < w[1]), "out of order:\n{err}");
    for gone in ["venv-older", "target", "target-msrv-abc"] {
        assert!(!c.path().join(gone).exists(), "{gone} is still there:\n{err}");
    }
    assert!(c.path().join("venv-current/bin/python").exists());
    assert!(c.path().join("models/checkpoints/fixture.safetensors").exists());
}

#[test]
fn a_room_that_is_not_a_number_is_refused_with_an_example() {
    let c = cache();
    let out = room(c.path(), "12GiB");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("COMFYRS_CACHE_ROOM_GIB='12GiB' is not a whole number of GiB (e.g. 20)"));
    assert!(c.path().join("target").exists());
}
