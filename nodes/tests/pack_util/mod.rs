//! Shared helpers of the pack tests: a temp models root with tiny fixtures, running API prompts
//! through the runtime (Registry + validate + Executor), and a capture node that hands the
//! Exit's MODEL back to the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use comfyrs_nodes::arch::{layout, Arch, LayoutSize};
use comfyrs_testkit::fixtures::{write_base_model, write_fixtures, write_lora, FixtureKind, FixtureOptions, LoraFixture, LoraTargets};
use comfyrs_nodes::lora::LoraNaming;
use comfyrs_nodes::models::{FileDtype, ModelFolders};
use comfyrs_nodes::pack::{MergeEngine, MergeSettings, NativeModel};
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::events::NoEvents;
use comfyrs_runtime::executor::{Executor, RunOptions, RunReport};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use comfyrs_runtime::{Args, CallOutput, ExecContext, InputSpec, NodeClass, NodeError, NodeSchema, Registry, Value};
use serde_json::Value as Json;
use tch::{Kind, Tensor};

/// A models root and the merge engine the test's registries run their Exits on (one per test:
/// tests share no cache, so they run in parallel in one binary).
pub struct Models {
    pub dir: tempfile::TempDir,
    pub engine: Arc<MergeEngine>,
}

/// The chain the pack tests share: a compose of the tiny SDXL LoRAs a (strength 1.0) and b (0.8)
/// merged onto `base` at t 1, then LoRA c merged onto that at `t2`; the Exit is node "9" (with
/// `enable_cache`), its MODEL captured by node "10".
pub fn chain_prompt(base: &str, t2: f64, enable_cache: bool) -> Json {
    serde_json::json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": base}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0}},
        "3": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 0.8}},
        "4": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "5": {"class_type": "WIDENCompose", "inputs": {"branch": ["3", 0], "compose": ["4", 0]}},
        "6": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["5", 0], "t_factor": 1.0}},
        "7": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/c.safetensors", "strength": 1.0}},
        "8": {"class_type": "WIDENMerge", "inputs": {"base": ["6", 0], "target": ["7", 0], "t_factor": t2}},
        "9": {"class_type": "WIDENExit", "inputs": {"widen": ["8", 0], "enable_cache": enable_cache}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["9", 0]}}
    })
}

/// A merge engine on the default device (a GPU where there is one) with a budget of its own.
pub fn engine() -> Arc<MergeEngine> {
    MergeEngine::standalone(MergeSettings::default()).expect("an engine on the default device")
}

impl Models {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn folders(&self) -> ModelFolders {
        ModelFolders::new(self.root())
    }
}

/// Tiny SDXL base models (f32, f16) and LoRAs: `sdxl/a.safetensors`, `b`, `c` (kohya LoRAs of
/// different seeds on attention weights) plus, with `all`, the fixture set of every naming and
/// kind for `archs`.
pub fn models(archs: &[Arch], all_kinds: bool) -> Models {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = FixtureOptions {
        archs: archs.to_vec(),
        dtypes: vec![FileDtype::F32, FileDtype::F16],
        kinds: if all_kinds { Vec::new() } else { vec![FixtureKind::Lora] },
        namings: if all_kinds { Vec::new() } else { vec![LoraNaming::Kohya] },
        ..Default::default()
    };
    write_fixtures(dir.path(), &opts).expect("fixtures");
    let base = layout(Arch::Sdxl, LayoutSize::Tiny);
    for (name, seed, targets) in [("a", 11, LoraTargets::Attention), ("b", 12, LoraTargets::All), ("c", 13, LoraTargets::Attention)] {
        let spec = LoraFixture {
            arch: Arch::Sdxl,
            naming: LoraNaming::Kohya,
            kind: FixtureKind::Lora,
            rank: 4,
            dtype: FileDtype::F32,
            seed,
            targets,
        };
        write_lora(&dir.path().join(format!("loras/sdxl/{name}.safetensors")), &base, &spec).expect("lora");
    }
    // A LoCon (conv) LoRA for the dense path on conv keys.
    let spec = LoraFixture {
        arch: Arch::Sdxl,
        naming: LoraNaming::Kohya,
        kind: FixtureKind::LoCon,
        rank: 4,
        dtype: FileDtype::F32,
        seed: 14,
        targets: LoraTargets::All,
    };
    write_lora(&dir.path().join("loras/sdxl/locon.safetensors"), &base, &spec).expect("locon");
    Models { dir, engine: engine() }
}

pub fn write_base(root: &Path, rel: &str, arch: Arch, dtype: FileDtype, seed: u64) -> PathBuf {
    write_base_model(&root.join(rel), &layout(arch, LayoutSize::Tiny), dtype, seed, false).expect("base")
}

static CAPTURED: Mutex<Vec<(String, Value)>> = Mutex::new(Vec::new());

/// An output node that keeps what it receives (`value`: any type) for the test.
struct Capture;
impl NodeClass for Capture {
    fn schema(&self) -> Arc<NodeSchema> {
        Arc::new(NodeSchema::new("TestCapture", "Test Capture", "test").input(InputSpec::socket("value", "*")).output_node())
    }
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        let v = args.get("value").cloned().unwrap_or(Value::None);
        CAPTURED.lock().unwrap().push((format!("{}:{}", ctx.prompt_id, ctx.node_id), v));
        Ok(CallOutput::default())
    }
}

pub fn registry(m: &Models) -> Registry {
    registry_on(m, m.engine.clone())
}

/// A registry whose WIDEN Exits run on `engine`.
pub fn registry_on(m: &Models, engine: Arc<MergeEngine>) -> Registry {
    let mut reg = Registry::new();
    comfyrs_core::register(&mut reg);
    comfyrs_nodes::pack::register(&mut reg, m.folders(), engine);
    reg.register(Arc::new(Capture));
    reg
}

pub fn executor() -> Executor {
    Executor::new(CacheMode::Lru, 1 << 30)
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs an API prompt; panics when validation rejects it.
pub fn run(reg: &Registry, exec: &mut Executor, prompt: &Json) -> (RunReport, String) {
    run_with(reg, exec, prompt, None)
}

pub fn run_with(reg: &Registry, exec: &mut Executor, prompt: &Json, pnginfo: Option<Json>) -> (RunReport, String) {
    let (p, _) = Prompt::parse(&prompt.to_string()).expect("prompt parses");
    let v = match validate(p, reg, None) {
        Ok(v) => v,
        Err(r) => panic!("prompt rejected: {}", r.to_json()),
    };
    let id = format!("p{}", COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let out = std::env::temp_dir().join("comfyrs-pack-tests");
    let report = exec.run(&v, &RunOptions { prompt_id: id.clone(), extra_pnginfo: pnginfo, output_dir: out, events: &NoEvents, extra_data: None, registry: None });
    (report, id)
}

/// Runs `prompt` on `reg` with a fresh executor (so only the merge engine can remember anything
/// from earlier runs); returns the MODEL the capture node `capture` received and the Exit node
/// `exit`'s statistics.
pub fn run_fresh(reg: &Registry, prompt: &Json, exit: &str, capture: &str) -> (Arc<NativeModel>, Json) {
    let (r, id) = run(reg, &mut executor(), prompt);
    assert_ok(&r);
    (model_of(&captured(&id, capture)), r.outputs[exit]["widen"][0].clone())
}

/// The value the capture node `node` received in prompt `id`.
pub fn captured(id: &str, node: &str) -> Value {
    let key = format!("{id}:{node}");
    CAPTURED.lock().unwrap().iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("nothing captured at {key}"))
}

pub fn model_of(v: &Value) -> Arc<NativeModel> {
    match v {
        Value::Handle(h) => {
            let any: Arc<dyn std::any::Any + Send + Sync> = h.clone();
            any.downcast::<NativeModel>().expect("a NativeModel")
        }
        other => panic!("not a model: {other:?}"),
    }
}

/// The error message of a failed run.
pub fn error_of(report: &RunReport) -> String {
    assert!(!report.success(), "run should fail");
    report.errors[0].exception_message.clone()
}

pub fn assert_ok(report: &RunReport) {
    assert!(report.success(), "run failed: {:?}", report.errors.iter().map(|e| e.to_json()).collect::<Vec<_>>());
}

/// Bit-identical comparison of two models' merged keys.
pub fn assert_same_overrides(a: &NativeModel, b: &NativeModel) {
    let ka: Vec<&String> = a.overrides().keys().collect();
    let kb: Vec<&String> = b.overrides().keys().collect();
    assert_eq!(ka, kb, "merged key sets differ");
    for k in ka {
        let (x, y) = (&a.overrides()[k], &b.overrides()[k]);
        assert_eq!(x.kind(), y.kind(), "{k}");
        assert!(x.equal(y), "{k} differs: max abs {}", (x.to_kind(Kind::Double) - y.to_kind(Kind::Double)).abs().max().double_value(&[]));
    }
}

pub fn f64_of(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view(-1)).unwrap()
}
