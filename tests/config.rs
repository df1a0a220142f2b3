//! The configuration end to end: the real binary with flags, environment variables and
//! comfyrs.toml files on temp dirs, read back through `comfyrs config --json` and exit codes.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value as Json};

/// Every variable comfyrs reads settings from, so the caller's environment cannot leak in.
const SETTING_VARS: &[&str] = &[
    "COMFYRS_CONFIG",
    "COMFYRS_MODELS_DIR",
    "COMFYRS_EXTRA_MODEL_PATHS",
    "COMFYUI_PATH",
    "COMFYRS_PYTHON",
    "COMFYRS_DEVICE",
    "COMFYRS_HOST_MEMORY",
    "COMFYRS_DEVICE_MEMORY",
    "COMFYRS_DEVICE_CACHE_MEMORY",
    "COMFYRS_CACHE_MODE",
    "COMFYRS_WIDEN_CHUNK_BUDGET",
    "COMFYRS_WIDEN_HOST_RAM",
    "COMFYRS_WIDEN_CACHE",
    "COMFYRS_WIDEN_DEVICE_CACHE",
    "COMFYRS_WIDEN_SUBTREE_PRODUCTS",
    "COMFYRS_WIDEN_STATS_CACHE",
    "COMFYRS_WIDEN_FACTOR_CACHE",
    "COMFYRS_WIDEN_PINNED",
    "COMFYRS_WIDEN_EVENTS",
    "COMFYRS_WIDEN_COPY_STREAM",
    "COMFYRS_WIDEN_RESULTS_ON_DEVICE",
    "COMFYRS_WIDEN_BUDGET_MB",
    "COMFYRS_WIDEN_HOST_RAM_MB",
    "COMFYRS_WIDEN_CACHE_MB",
    "COMFYRS_WIDEN_DEVICE_CACHE_MB",
    "COMFYRS_WIDEN_STATS_CACHE_MB",
    "COMFYRS_WIDEN_FACTOR_CACHE_MB",
    "COMFYRS_AFFINITY_WAIT",
];

/// The binary in `dir` (where a comfyrs.toml may be), with a clean settings environment.
fn bin(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_comfyrs"));
    c.current_dir(dir);
    for v in SETTING_VARS {
        c.env_remove(v);
    }
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `comfyrs config --json ARGS` in `dir` with `env`; the effective configuration.
fn effective(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Json {
    let out = bin(dir).arg("config").arg("--json").args(args).envs(env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "comfyrs config failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs `comfyrs config ARGS` with `env` in `dir`, expecting a refusal: exit 2; the stderr.
fn refused(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = bin(dir).arg("config").args(args).envs(env.iter().copied()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "expected exit 2; stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    stderr(&out)
}

fn setting(doc: &Json, key: &str) -> (Json, String) {
    let e = doc.get(key).unwrap_or_else(|| panic!("no setting {key} in {doc}"));
    (e["value"].clone(), e["source"].as_str().unwrap().to_string())
}

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn defaults_when_nothing_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let doc = effective(dir.path(), &[], &[]);
    assert_eq!(setting(&doc, "models_dir"), (json!("models"), "default".into()));
    assert_eq!(setting(&doc, "extra_model_paths"), (Json::Null, "default".into()));
    assert_eq!(setting(&doc, "python"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "device"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "memory.host"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "memory.device"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "memory.device_cache"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "cache.mode"), (json!("lru"), "default".into()));
    assert_eq!(setting(&doc, "widen.chunk_budget"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "widen.subtree_products"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "widen.base_copies"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "widen.page_locked_bases"), (json!("auto"), "default".into()));
    assert_eq!(setting(&doc, "widen.stats_cache"), (json!(GIB), "default".into()));
    assert_eq!(setting(&doc, "widen.factor_cache"), (json!(2 * GIB), "default".into()));
    for switch in ["widen.pinned", "widen.events", "widen.copy_stream", "widen.results_on_device"] {
        assert_eq!(setting(&doc, switch), (json!(true), "default".into()));
    }
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("comfyrs.toml");
    std::fs::write(
        &file,
        "models_dir = \"from-file\"\npython = \"never\"\n\n[memory]\nhost = \"1GiB\"\n\n[widen]\ncache = \"100MiB\"\npinned = false\n",
    )
    .unwrap();
    let from_file = format!("comfyrs.toml ({})", file.display());
    let env = [("COMFYRS_MODELS_DIR", "from-env"), ("COMFYRS_HOST_MEMORY", "2GiB")];
    let doc = effective(dir.path(), &env, &["--host-memory", "4GiB"]);
    assert_eq!(setting(&doc, "memory.host"), (json!(4 * GIB), "flag --host-memory".into()));
    assert_eq!(setting(&doc, "models_dir"), (json!("from-env"), "env COMFYRS_MODELS_DIR".into()));
    assert_eq!(setting(&doc, "python"), (json!("never"), from_file.clone()));
    assert_eq!(setting(&doc, "widen.cache"), (json!(100 * MIB), from_file.clone()));
    assert_eq!(setting(&doc, "widen.pinned"), (json!(false), from_file.clone()));
    assert_eq!(setting(&doc, "cache.mode"), (json!("lru"), "default".into()));

    // One layer less each time: the next one down shows through.
    let doc = effective(dir.path(), &env, &[]);
    assert_eq!(setting(&doc, "memory.host"), (json!(2 * GIB), "env COMFYRS_HOST_MEMORY".into()));
    let doc = effective(dir.path(), &[], &[]);
    assert_eq!(setting(&doc, "memory.host"), (json!(GIB), from_file.clone()));
    assert_eq!(setting(&doc, "models_dir"), (json!("from-file"), from_file));
}

#[test]
fn the_affinity_wait_is_seconds_from_0_to_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(setting(&effective(dir.path(), &[], &[]), "broker.affinity_wait"), (json!(2.0), "default".into()));
    let doc = effective(dir.path(), &[("COMFYRS_AFFINITY_WAIT", "0.5")], &[]);
    assert_eq!(setting(&doc, "broker.affinity_wait"), (json!(0.5), "env COMFYRS_AFFINITY_WAIT".into()));
    std::fs::write(dir.path().join("comfyrs.toml"), "[broker]\naffinity_wait = 0\n").unwrap();
    assert_eq!(setting(&effective(dir.path(), &[], &[]), "broker.affinity_wait").0, json!(0.0));
    let e = refused(dir.path(), &[("COMFYRS_AFFINITY_WAIT", "soon")], &[]);
    assert!(e.contains("broker.affinity_wait") && e.contains("from 0 (affinity off) to 3600"), "{e}");
}

#[test]
fn host_memory_takes_units_and_cache_bytes_is_its_alias() {
    let dir = tempfile::tempdir().unwrap();
    let doc = effective(dir.path(), &[], &["--host-memory", "4GiB"]);
    assert_eq!(setting(&doc, "memory.host"), (json!(4_294_967_296u64), "flag --host-memory".into()));
    let doc = effective(dir.path(), &[], &["--cache-bytes", "512MB"]);
    assert_eq!(setting(&doc, "memory.host"), (json!(512_000_000u64), "flag --cache-bytes".into()));
    let doc = effective(dir.path(), &[], &["--device-memory", "1073741824"]);
    assert_eq!(setting(&doc, "memory.device"), (json!(GIB), "flag --device-memory".into()));
    let doc = effective(dir.path(), &[("COMFYRS_HOST_MEMORY", "8GiB")], &["--host-memory", "auto"]);
    assert_eq!(setting(&doc, "memory.host"), (json!("auto"), "flag --host-memory".into()));
    let e = refused(dir.path(), &[], &["--host-memory", "4 bananas"]);
    assert!(e.contains("memory.host") && e.contains("flag --host-memory") && e.contains("4GiB"), "{e}");
}

/// `memory.device` is the device memory of the whole process, a simulated card; the caches'
/// share, what `memory.device` meant before, is `memory.device_cache` (`docs/decisions.md` D35).
#[test]
fn the_device_memory_limit_and_the_caches_share_in_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let doc = effective(dir.path(), &[], &["--device-memory", "24GiB", "--device-cache-memory", "auto"]);
    assert_eq!(setting(&doc, "memory.device"), (json!(24 * GIB), "flag --device-memory".into()));
    assert_eq!(setting(&doc, "memory.device_cache"), (json!("auto"), "flag --device-cache-memory".into()));
    let env = [("COMFYRS_DEVICE_MEMORY", "12GiB"), ("COMFYRS_DEVICE_CACHE_MEMORY", "4GiB")];
    let doc = effective(dir.path(), &env, &[]);
    assert_eq!(setting(&doc, "memory.device"), (json!(12 * GIB), "env COMFYRS_DEVICE_MEMORY".into()));
    assert_eq!(setting(&doc, "memory.device_cache"), (json!(4 * GIB), "env COMFYRS_DEVICE_CACHE_MEMORY".into()));
    // A comfyrs.toml of earlier versions still reads: `device` is now the process's limit.
    let file = dir.path().join("comfyrs.toml");
    std::fs::write(&file, "[memory]
device = \"8GiB\"\ndevice_cache = 2147483648\n").unwrap();
    let from_file = format!("comfyrs.toml ({})", file.display());
    let doc = effective(dir.path(), &[], &[]);
    assert_eq!(setting(&doc, "memory.device"), (json!(8 * GIB), from_file.clone()));
    assert_eq!(setting(&doc, "memory.device_cache"), (json!(2 * GIB), from_file));
    let doc = effective(dir.path(), &[], &["--device-memory", "auto"]);
    assert_eq!(setting(&doc, "memory.device"), (json!("auto"), "flag --device-memory".into()));
    std::fs::remove_file(&file).unwrap();

    // Refusals say what to write.
    let e = refused(dir.path(), &[], &["--device-memory", "24 gigs"]);
    assert!(e.contains("memory.device") && e.contains("flag --device-memory") && e.contains("auto, or a size such as 4GiB"), "{e}");
    let e = refused(dir.path(), &[("COMFYRS_DEVICE_MEMORY", "-1")], &[]);
    assert!(e.contains("memory.device") && e.contains("env COMFYRS_DEVICE_MEMORY"), "{e}");
    let e = refused(dir.path(), &[], &["--device-memory", "0"]);
    assert!(e.contains("memory.device") && e.contains("leaves nothing") && e.contains("such as 24GiB, or auto"), "{e}");
    let e = refused(dir.path(), &[("COMFYRS_DEVICE_CACHE_MEMORY", "0GiB")], &[]);
    assert!(e.contains("memory.device_cache") && e.contains("env COMFYRS_DEVICE_CACHE_MEMORY"), "{e}");
    // Every command refuses a bad limit at start, not only `config`.
    let out = bin(dir.path()).args(["run", "--device-memory", "lots", "nothing.json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("memory.device"), "{}", stderr(&out));
}

#[test]
fn every_widen_variable_and_its_switches() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("COMFYRS_WIDEN_CHUNK_BUDGET", "256MiB"),
        ("COMFYRS_WIDEN_HOST_RAM", "16GiB"),
        ("COMFYRS_WIDEN_CACHE", "4GiB"),
        ("COMFYRS_WIDEN_DEVICE_CACHE", "auto"),
        ("COMFYRS_WIDEN_SUBTREE_PRODUCTS", "on"),
        ("COMFYRS_WIDEN_STATS_CACHE", "64MiB"),
        ("COMFYRS_WIDEN_FACTOR_CACHE", "1GiB"),
        ("COMFYRS_WIDEN_PINNED", "off"),
        ("COMFYRS_WIDEN_EVENTS", "0"),
        ("COMFYRS_WIDEN_COPY_STREAM", "false"),
        ("COMFYRS_WIDEN_RESULTS_ON_DEVICE", "off"),
        ("COMFYRS_WIDEN_BASE_COPIES", "off"),
        ("COMFYRS_WIDEN_PAGE_LOCKED_BASES", "0"),
        ("COMFYRS_CACHE_MODE", "ram-pressure"),
    ];
    let doc = effective(dir.path(), &env, &[]);
    assert_eq!(setting(&doc, "widen.chunk_budget").0, json!(256 * MIB));
    assert_eq!(setting(&doc, "widen.host_ram").0, json!(16 * GIB));
    assert_eq!(setting(&doc, "widen.cache"), (json!(4 * GIB), "env COMFYRS_WIDEN_CACHE".into()));
    assert_eq!(setting(&doc, "widen.device_cache"), (json!("auto"), "env COMFYRS_WIDEN_DEVICE_CACHE".into()));
    assert_eq!(setting(&doc, "widen.subtree_products"), (json!(true), "env COMFYRS_WIDEN_SUBTREE_PRODUCTS".into()));
    assert_eq!(setting(&doc, "widen.base_copies"), (json!(false), "env COMFYRS_WIDEN_BASE_COPIES".into()));
    assert_eq!(setting(&doc, "widen.page_locked_bases"), (json!(0), "env COMFYRS_WIDEN_PAGE_LOCKED_BASES".into()));
    assert_eq!(setting(&doc, "widen.stats_cache").0, json!(64 * MIB));
    assert_eq!(setting(&doc, "widen.factor_cache").0, json!(GIB));
    for switch in ["widen.pinned", "widen.events", "widen.copy_stream", "widen.results_on_device"] {
        assert_eq!(setting(&doc, switch).0, json!(false), "{switch}");
    }
    assert_eq!(setting(&doc, "cache.mode"), (json!("ram-pressure"), "env COMFYRS_CACHE_MODE".into()));
    let doc = effective(dir.path(), &[("COMFYRS_WIDEN_PINNED", "ON"), ("COMFYRS_WIDEN_EVENTS", "1")], &[]);
    assert_eq!(setting(&doc, "widen.pinned").0, json!(true));
    assert_eq!(setting(&doc, "widen.events").0, json!(true));

    let e = refused(dir.path(), &[("COMFYRS_WIDEN_EVENTS", "yes")], &[]);
    assert!(e.contains("widen.events") && e.contains("env COMFYRS_WIDEN_EVENTS") && e.contains("0, 1, true, false, on or off"), "{e}");
    let e = refused(dir.path(), &[("COMFYRS_WIDEN_SUBTREE_PRODUCTS", "sometimes")], &[]);
    assert!(e.contains("widen.subtree_products") && e.contains("auto, 0, 1, true, false, on or off"), "{e}");
    let e = refused(dir.path(), &[("COMFYRS_CACHE_MODE", "fifo")], &[]);
    assert!(e.contains("cache.mode") && e.contains("none, lru or ram-pressure"), "{e}");
}

#[test]
fn old_mib_variables_take_whole_mib_only() {
    let dir = tempfile::tempdir().unwrap();
    let doc = effective(dir.path(), &[("COMFYRS_WIDEN_CACHE_MB", "4096"), ("COMFYRS_WIDEN_BUDGET_MB", "512")], &[]);
    assert_eq!(setting(&doc, "widen.cache"), (json!(4 * GIB), "env COMFYRS_WIDEN_CACHE_MB".into()));
    assert_eq!(setting(&doc, "widen.chunk_budget"), (json!(512 * MIB), "env COMFYRS_WIDEN_BUDGET_MB".into()));
    // The current name wins over the old one.
    let doc = effective(dir.path(), &[("COMFYRS_WIDEN_CACHE_MB", "4096"), ("COMFYRS_WIDEN_CACHE", "1GiB")], &[]);
    assert_eq!(setting(&doc, "widen.cache"), (json!(GIB), "env COMFYRS_WIDEN_CACHE".into()));

    let e = refused(dir.path(), &[("COMFYRS_WIDEN_CACHE_MB", "4G")], &[]);
    assert!(e.contains("COMFYRS_WIDEN_CACHE_MB=4G"), "names the variable and value: {e}");
    assert!(e.contains("whole number of MiB"), "says what it accepts: {e}");
    assert!(e.contains("COMFYRS_WIDEN_CACHE=4GiB"), "names the new variable: {e}");
    let e = refused(dir.path(), &[("COMFYRS_WIDEN_HOST_RAM_MB", "1.5")], &[]);
    assert!(e.contains("COMFYRS_WIDEN_HOST_RAM_MB") && e.contains("COMFYRS_WIDEN_HOST_RAM="), "{e}");
    // Every command refuses it at start, not only `config`.
    let out = bin(dir.path()).args(["nodes", "--list"]).env("COMFYRS_WIDEN_CACHE_MB", "4G").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_or_absent_devices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = refused(dir.path(), &[], &["--device", "nope"]);
    assert!(e.contains("device") && e.contains("flag --device") && e.contains("auto, cpu, cuda or cuda:N"), "{e}");
    let e = refused(dir.path(), &[("COMFYRS_DEVICE", "tpu")], &[]);
    assert!(e.contains("env COMFYRS_DEVICE"), "{e}");
    // No machine this runs on has eight CUDA devices visible to a test.
    let e = refused(dir.path(), &[], &["--device", "cuda:7"]);
    assert!(e.contains("cuda:7") && e.contains("CUDA device"), "says how many devices there are: {e}");
    let doc = effective(dir.path(), &[], &["--device", "cpu"]);
    assert_eq!(setting(&doc, "device"), (json!("cpu"), "flag --device".into()));
    assert_eq!(doc["device"]["resolved"], "cpu");
}

#[test]
fn config_file_by_flag_env_or_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "device = \"cpu\"\ncustom_nodes = [\"a\", \"b\"]\n[cache]\nmode = \"none\"\n").unwrap();
    let from_other = format!("comfyrs.toml ({})", other.display());
    let doc = effective(dir.path(), &[], &["--config", other.to_str().unwrap()]);
    assert_eq!(setting(&doc, "cache.mode"), (json!("none"), from_other.clone()));
    assert_eq!(setting(&doc, "custom_nodes"), (json!(["a", "b"]), from_other.clone()));
    let doc = effective(dir.path(), &[("COMFYRS_CONFIG", other.to_str().unwrap())], &[]);
    assert_eq!(setting(&doc, "device"), (json!("cpu"), from_other.clone()));
    // A repeated flag replaces the file's list.
    let doc = effective(dir.path(), &[], &["--config", other.to_str().unwrap(), "--custom-nodes", "c"]);
    assert_eq!(setting(&doc, "custom_nodes"), (json!(["c"]), "flag --custom-nodes".into()));

    let e = refused(dir.path(), &[], &["--config", "missing.toml"]);
    assert!(e.contains("missing.toml") && e.contains("does not exist") && e.contains("--config"), "{e}");
    let e = refused(dir.path(), &[("COMFYRS_CONFIG", "/nonexistent/comfyrs.toml")], &[]);
    assert!(e.contains("COMFYRS_CONFIG"), "{e}");

    std::fs::write(dir.path().join("comfyrs.toml"), "[memory]\nhots = \"4GiB\"\n").unwrap();
    let e = refused(dir.path(), &[], &[]);
    assert!(e.contains("memory.hots") && e.contains("comfyrs.toml (") && e.contains("host, device"), "names the key, the file, the known keys: {e}");
    std::fs::write(dir.path().join("comfyrs.toml"), "[widen]\nstats_cache = \"lots\"\n").unwrap();
    let e = refused(dir.path(), &[], &[]);
    assert!(e.contains("widen.stats_cache") && e.contains("'lots' is not a size"), "{e}");
    std::fs::write(dir.path().join("comfyrs.toml"), "models_dir = \n").unwrap();
    let e = refused(dir.path(), &[], &[]);
    assert!(e.contains("comfyrs.toml (") && e.contains("line 1"), "a TOML syntax error names the file and line: {e}");
}

#[test]
fn text_output_is_toml_with_sources() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path()).args(["config", "--host-memory", "4GiB", "--python", "never"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "memory.host = \"4GiB\"  # from flag --host-memory",
        "python = \"never\"  # from flag --python",
        "widen.factor_cache = \"2GiB\"  # from default",
        "widen.pinned = true  # from default",
        "# comfyui is not set  # from default",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
}

/// The configuration reaches the engine: `[cache] mode = "none"` in a comfyrs.toml makes the
/// second of two identical workflows run every node again.
#[test]
fn run_uses_the_configured_cache_mode() {
    let dir = tempfile::tempdir().unwrap();
    let wf = json!({
        "1": { "class_type": "PrimitiveString", "inputs": { "value": "a" } },
        "2": { "class_type": "PreviewAny", "inputs": { "source": ["1", 0] } }
    });
    let f = dir.path().join("wf.json");
    std::fs::write(&f, wf.to_string()).unwrap();
    let executed = |doc: &Json, i: usize| doc["files"][i]["executed"].as_u64().unwrap();
    let run = |extra: &[&str]| -> Json {
        let out = bin(dir.path()).args(["run", "--json", "--python", "never"]).args(extra).arg(&f).arg(&f).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(executed(&run(&[]), 1), 0, "lru by default: the second file is all cache hits");
    std::fs::write(dir.path().join("comfyrs.toml"), "[cache]\nmode = \"none\"\n").unwrap();
    assert_eq!(executed(&run(&[]), 1), 2, "mode none from the file: everything runs again");
    assert_eq!(executed(&run(&["--cache", "lru"]), 1), 0, "the flag wins over the file");
}
