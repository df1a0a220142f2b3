//! Test-only node classes and helpers shared by the runtime's integration tests.
//!
//! Every class records each call in a shared [`Probe`] (per node id, with start/end instants),
//! so tests assert exactly which nodes ran, how often, and when.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::events::NoEvents;
use comfyrs_runtime::executor::{Executor, NodeStatus, RunOptions, RunReport};
use comfyrs_runtime::expansion::{ExpandedNode, Expansion, ResultPart};
use comfyrs_runtime::prompt::{Input, Link, Prompt};
use comfyrs_runtime::schema::{InputKind, Num};
use comfyrs_runtime::validate::{validate, Rejection, Validated};
use comfyrs_runtime::{
    Args, CallOutput, ExecContext, Fingerprint, InputSpec, NodeClass, NodeError, NodeSchema, OutputSpec, Placement,
    Registry, Value,
};
use serde_json::{json, Map, Value as Json};

/// What ran: a shared record of every call of every test node.
#[derive(Default)]
pub struct Probe {
    /// Calls of all nodes together.
    pub total: AtomicUsize,
    /// Calls per node id.
    per_node: Mutex<BTreeMap<String, usize>>,
    /// (node id, start, end) of every call, in completion order.
    intervals: Mutex<Vec<(String, Instant, Instant)>>,
    /// Slow nodes that have started (for tests that act while a node runs).
    pub started: AtomicUsize,
    /// The fingerprint `Fingerprinted` nodes report (a stand-in for a file's mtime).
    pub fingerprint: Mutex<Json>,
    /// Fuzzing limits: when set, Slow nodes sleep at most 1 ms, Range makes at most 3 values,
    /// and calls beyond `budget` fail, so random list fan-outs stay small.
    pub limited: AtomicBool,
    pub budget: AtomicUsize,
}

impl Probe {
    pub fn new() -> Arc<Probe> {
        Arc::new(Probe { fingerprint: Mutex::new(json!(0)), ..Default::default() })
    }
    /// A probe with the fuzzing limits on.
    pub fn limited(budget: usize) -> Arc<Probe> {
        let p = Probe::new();
        p.limited.store(true, Ordering::SeqCst);
        p.budget.store(budget, Ordering::SeqCst);
        p
    }
    fn over_budget(&self) -> bool {
        self.limited.load(Ordering::Relaxed) && self.total() >= self.budget.load(Ordering::Relaxed)
    }
    fn record(&self, node: &str, start: Instant) {
        let end = Instant::now();
        self.total.fetch_add(1, Ordering::SeqCst);
        *self.per_node.lock().unwrap().entry(node.to_string()).or_default() += 1;
        self.intervals.lock().unwrap().push((node.to_string(), start, end));
    }
    pub fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
    /// Calls of one node id.
    pub fn calls(&self, node: &str) -> usize {
        self.per_node.lock().unwrap().get(node).copied().unwrap_or(0)
    }
    /// The ids of the nodes that ran at least once.
    pub fn ran(&self) -> BTreeSet<String> {
        self.per_node.lock().unwrap().keys().cloned().collect()
    }
    pub fn intervals(&self) -> Vec<(String, Instant, Instant)> {
        self.intervals.lock().unwrap().clone()
    }
    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        self.total.store(0, Ordering::SeqCst);
        self.started.store(0, Ordering::SeqCst);
        self.per_node.lock().unwrap().clear();
        self.intervals.lock().unwrap().clear();
    }
}

/// Which test class, and the behaviour it implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `value: INT` → INT.
    Int,
    /// `value: FLOAT` → FLOAT.
    Float,
    /// `value: STRING` → STRING.
    Str,
    /// `value: *` → `*`, passed through unchanged (constants keep their kind).
    AnyPass,
    /// `a: INT, b: INT` → `a + b`.
    Add,
    /// `a: STRING`, optional `b: STRING`, optional `sep: STRING` → `a + sep + b`.
    Concat,
    /// Output node: `value: *` → UI `{"text": [value as string]}`, no outputs.
    Preview,
    /// Lazy switch: `switch: BOOLEAN`, lazy `on_true: *`, lazy `on_false: *` → the chosen one.
    Switch,
    /// INPUT_IS_LIST: `values: *`, optional `sep: STRING` → one STRING joining the whole list.
    Join,
    /// OUTPUT_IS_LIST: `start: INT, count: INT` → INT list `start..start+count`.
    Range,
    /// Always fails: optional `value: *`, `message: STRING` → `*`.
    Fail,
    /// Fingerprint `Always`: `value: INT` → INT.
    Always,
    /// Fingerprint from `Probe::fingerprint`: `value: INT` → INT.
    Fingerprinted,
    /// NOT_IDEMPOTENT: `value: INT` → INT.
    NotIdempotent,
    /// Custom validation: `n: INT` must be even → INT.
    Even,
    /// Worker placement: `value: *`, `ms: INT` → sleeps `ms`, returns value.
    Slow,
    /// Sets the executor's interrupt flag from inside the node: `value: *` → `*`.
    Interrupter,
    /// Worker placement: `value: *` → `*`, returning only once the interrupt flag is set
    /// (or after 20 s), so a test can interrupt it from another thread without racing.
    AwaitInterrupt,
    /// Panics: `value: *` → `*` (inline, or on a worker with `Worker` placement).
    Panic,
    PanicWorker,
    /// Widgets with ranges and choices, an output node:
    /// `i: INT [0, 10]`, `f: FLOAT [0.0, 1.0]`, `mode: [a, b, c]`, `big: 25 choices`,
    /// optional `flag: BOOLEAN`, optional `text: STRING`; UI echoes the coerced constants.
    Widgets,
    /// Typed sources: `MODEL`, `IMAGE`, `MASK,IMAGE` (a comma union), `*`.
    ModelSrc,
    ImageSrc,
    UnionSrc,
    AnySrc,
    /// Three outputs: INT, FLOAT, STRING.
    Multi,
    /// Output node with optional typed sockets `model: MODEL`, `pic: IMAGE,LATENT`, `any: *`.
    Sink,
    /// Output node that returns its input as a value too: `value: *` → `*`, UI text.
    Echo,
    /// `value: *`, `block: BOOLEAN`, optional `message: STRING` → an execution blocker (with
    /// the message when it is not empty) when `block`, else `value`.
    Block,
    /// Node expansion: `value: INT`, `times: INT` → INT. Expands into a chain of `times` Add
    /// nodes (each adding 1) whose last output is the result; `times` 0 returns `value` plainly.
    Repeat,
    /// Recursive expansion: `n: INT`, `acc: INT` → INT, `acc + n + (n-1) + ... + 1`: expands
    /// into `add` (acc + n) and `next` (Countdown of n-1 from `add`), the result `next`'s output.
    Countdown,
    /// Expands into a broken sub-graph chosen by `mode: STRING`: `class` (an unknown class),
    /// `link` (a link to a node that does not exist), `cycle` (two nodes linking each other),
    /// `own` (a node linking the expanding node's own output), `fail` (a failing node), `show`
    /// (a Preview output node of `value`, and `value` as the result); `value: *` → `*`.
    Expander,
}

pub const ALL_KINDS: &[Kind] = &[
    Kind::Int,
    Kind::Float,
    Kind::Str,
    Kind::AnyPass,
    Kind::Add,
    Kind::Concat,
    Kind::Preview,
    Kind::Switch,
    Kind::Join,
    Kind::Range,
    Kind::Fail,
    Kind::Always,
    Kind::Fingerprinted,
    Kind::NotIdempotent,
    Kind::Even,
    Kind::Slow,
    Kind::Interrupter,
    Kind::AwaitInterrupt,
    Kind::Panic,
    Kind::PanicWorker,
    Kind::Widgets,
    Kind::ModelSrc,
    Kind::ImageSrc,
    Kind::UnionSrc,
    Kind::AnySrc,
    Kind::Multi,
    Kind::Sink,
    Kind::Echo,
    Kind::Block,
    Kind::Repeat,
    Kind::Countdown,
    Kind::Expander,
];

/// The classes that never panic nor wait for an interrupt (for fuzzing the executor).
pub fn safe_kinds() -> Vec<Kind> {
    // Blockers stop whole branches without an error: the fuzzer's oracle does not model them.
    // Expanders add nodes the oracle does not know of.
    ALL_KINDS
        .iter()
        .copied()
        .filter(|k| !matches!(k, Kind::Panic | Kind::PanicWorker | Kind::AwaitInterrupt | Kind::Block | Kind::Repeat | Kind::Countdown | Kind::Expander))
        .collect()
}

pub struct TestNode {
    kind: Kind,
    probe: Arc<Probe>,
    schema: Arc<NodeSchema>,
}

fn big_options() -> Vec<String> {
    (0..25).map(|i| format!("opt{i:02}")).collect()
}

impl TestNode {
    pub fn new(kind: Kind, probe: Arc<Probe>) -> TestNode {
        let name = format!("{kind:?}");
        let s = NodeSchema::new(&name, &name, "testing");
        let any = |n: &str| InputSpec::socket(n, "*");
        let int = |n: &str| InputSpec::int(n, 0, -1_000_000_000, 1_000_000_000);
        let schema = match kind {
            Kind::Int => s.input(int("value")).output(OutputSpec::new("INT")),
            Kind::Float => s.input(InputSpec::float("value", 0.0, -1e9, 1e9, 0.01)).output(OutputSpec::new("FLOAT")),
            Kind::Str => s.input(InputSpec::string("value", "")).output(OutputSpec::new("STRING")),
            Kind::AnyPass => s.input(any("value")).output(OutputSpec::new("*")),
            Kind::Add => s.input(int("a")).input(int("b")).output(OutputSpec::new("INT")),
            Kind::Concat => s
                .input(InputSpec::string("a", ""))
                .input(InputSpec::string("b", "").optional())
                .input(InputSpec::string("sep", "").optional())
                .output(OutputSpec::new("STRING")),
            Kind::Preview => s.input(any("value")).output_node(),
            Kind::Switch => s
                .input(InputSpec::boolean("switch", true))
                .input(any("on_true").lazy())
                .input(any("on_false").lazy())
                .output(OutputSpec::new("*")),
            Kind::Join => s
                .input(any("values"))
                .input(InputSpec::string("sep", ",").optional())
                .input_is_list()
                .output(OutputSpec::new("STRING")),
            Kind::Range => {
                let mut out = OutputSpec::new("INT");
                out.is_list = true;
                s.input(int("start")).input(InputSpec::int("count", 1, 0, 1000)).output(out)
            }
            Kind::Fail => s
                .input(any("value").optional())
                .input(InputSpec::string("message", "boom").optional())
                .output(OutputSpec::new("*")),
            Kind::Always | Kind::Fingerprinted => s.input(int("value")).output(OutputSpec::new("INT")),
            Kind::NotIdempotent => {
                let mut s = s.input(int("value")).output(OutputSpec::new("INT"));
                s.not_idempotent = true;
                s
            }
            Kind::Even => s.input(int("n")).output(OutputSpec::new("INT")),
            Kind::Slow => s.input(any("value")).input(InputSpec::int("ms", 50, 0, 10_000)).output(OutputSpec::new("*")),
            Kind::Interrupter | Kind::AwaitInterrupt | Kind::Panic | Kind::PanicWorker => {
                s.input(any("value")).output(OutputSpec::new("*"))
            }
            Kind::Widgets => s
                .input(InputSpec::int("i", 0, 0, 10))
                .input(InputSpec::float("f", 0.5, 0.0, 1.0, 0.01))
                .input(InputSpec::combo("mode", &["a", "b", "c"]))
                .input(InputSpec::combo("big", &big_options()))
                .input(InputSpec::boolean("flag", false).optional())
                .input(InputSpec::string("text", "").optional())
                .output(OutputSpec::new("INT"))
                .output_node(),
            Kind::ModelSrc => s.output(OutputSpec::new("MODEL")),
            Kind::ImageSrc => s.output(OutputSpec::new("IMAGE")),
            Kind::UnionSrc => s.output(OutputSpec::new("MASK,IMAGE")),
            Kind::AnySrc => s.output(OutputSpec::new("*")),
            Kind::Multi => s
                .input(int("value"))
                .output(OutputSpec::named("INT", "int"))
                .output(OutputSpec::named("FLOAT", "float"))
                .output(OutputSpec::named("STRING", "string")),
            Kind::Sink => s
                .input(InputSpec::socket("model", "MODEL").optional())
                .input(InputSpec::socket("pic", "IMAGE,LATENT").optional())
                .input(any("any").optional())
                .output_node(),
            Kind::Echo => s.input(any("value")).output(OutputSpec::new("*")).output_node(),
            Kind::Block => s
                .input(any("value"))
                .input(InputSpec::boolean("block", false))
                .input(InputSpec::string("message", "").optional())
                .output(OutputSpec::new("*")),
            Kind::Repeat => s.input(int("value")).input(InputSpec::int("times", 1, 0, 100)).output(OutputSpec::new("INT")),
            Kind::Countdown => s.input(InputSpec::int("n", 1, 0, 100)).input(int("acc")).output(OutputSpec::new("INT")),
            Kind::Expander => s.input(any("value")).input(InputSpec::string("mode", "show")).output(OutputSpec::new("*")),
        };
        TestNode { kind, probe, schema: Arc::new(schema) }
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => comfyrs_runtime::value::format_float(*f),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::None => "None".into(),
        other => other.to_json().to_string(),
    }
}

fn ui_text(texts: Vec<String>) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("text".into(), Json::Array(texts.into_iter().map(Json::String).collect()));
    m
}

impl NodeClass for TestNode {
    fn schema(&self) -> Arc<NodeSchema> {
        self.schema.clone()
    }

    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        if self.probe.over_budget() {
            return Err(NodeError::msg("test call budget exhausted"));
        }
        let start = Instant::now();
        let out = self.call(ctx, args);
        self.probe.record(ctx.node_id, start);
        out
    }

    fn fingerprint(&self, _node_id: &str, _constants: &Args) -> Option<Fingerprint> {
        match self.kind {
            Kind::Always => Some(Fingerprint::Always),
            Kind::Fingerprinted => Some(Fingerprint::Value(self.probe.fingerprint.lock().unwrap().clone())),
            _ => None,
        }
    }

    fn check_lazy_status(&self, _ctx: &ExecContext, args: &Args) -> Result<Vec<String>, NodeError> {
        if self.kind != Kind::Switch {
            return Ok(Vec::new());
        }
        let want = if args.boolean("switch")? { "on_true" } else { "on_false" };
        Ok(if args.get(want).is_none() { vec![want.to_string()] } else { Vec::new() })
    }

    fn validate_inputs(&self, constants: &Args, _received_types: &[(String, String)]) -> Result<Vec<(String, String)>, NodeError> {
        if self.kind != Kind::Even {
            return Ok(Vec::new());
        }
        match constants.get("n") {
            Some(Value::Int(n)) if n % 2 != 0 => Ok(vec![("n".into(), format!("{n} is odd"))]),
            Some(Value::Int(n)) if *n < 0 => Err(NodeError::value_error(format!("cannot check {n}"))),
            _ => Ok(Vec::new()),
        }
    }

    fn placement(&self) -> Placement {
        match self.kind {
            Kind::Slow | Kind::PanicWorker | Kind::AwaitInterrupt => Placement::Worker,
            _ => Placement::Inline,
        }
    }
}

impl TestNode {
    fn call(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        let one = |v: Value| Ok(CallOutput::values([v]));
        let passthrough = || args.get("value").cloned().unwrap_or(Value::None);
        match self.kind {
            Kind::Int | Kind::Always | Kind::Fingerprinted | Kind::NotIdempotent => one(Value::Int(args.int("value")?)),
            Kind::Float => one(Value::Float(args.float("value")?)),
            Kind::Str => one(Value::String(args.string("value")?.to_string())),
            Kind::AnyPass | Kind::Interrupter => {
                if self.kind == Kind::Interrupter {
                    ctx.interrupt.set();
                }
                one(passthrough())
            }
            Kind::Add => {
                let (a, b) = (args.int("a")?, args.int("b")?);
                one(Value::Int(a.checked_add(b).ok_or_else(|| NodeError::msg("overflow"))?))
            }
            Kind::Concat => {
                let a = args.string("a")?;
                let b = if args.has("b") { args.string("b")? } else { "" };
                let sep = if args.has("sep") { args.string("sep")? } else { "" };
                one(Value::String(format!("{a}{sep}{b}")))
            }
            Kind::Preview => Ok(CallOutput { outputs: Vec::new(), ui: Some(ui_text(vec![text_of(&passthrough())])), expansion: None }),
            Kind::Echo => Ok(CallOutput::values([passthrough()]).with_ui(ui_text(vec![text_of(&passthrough())]))),
            Kind::Block => {
                if !args.boolean("block")? {
                    return one(passthrough());
                }
                let message = if args.has("message") { args.string("message")?.to_string() } else { String::new() };
                one(comfyrs_runtime::blocker::ExecutionBlocker::value(Some(message).filter(|m| !m.is_empty())))
            }
            Kind::Switch => {
                let want = if args.boolean("switch")? { "on_true" } else { "on_false" };
                one(args.get(want).cloned().unwrap_or(Value::None))
            }
            Kind::Join => {
                let sep = match args.list("sep").first() {
                    Some(Value::String(s)) => s.clone(),
                    _ => ",".into(),
                };
                one(Value::String(args.list("values").iter().map(text_of).collect::<Vec<_>>().join(&sep)))
            }
            Kind::Range => {
                let (start, mut count) = (args.int("start")?, args.int("count")?);
                if self.probe.limited.load(Ordering::Relaxed) {
                    count = count.min(3);
                }
                Ok(CallOutput { outputs: vec![(0..count).map(|k| Value::Int(start + k)).collect()], ui: None, expansion: None })
            }
            Kind::Fail => {
                let msg = if args.has("message") { args.string("message")?.to_string() } else { "boom".into() };
                Err(NodeError::value_error(msg))
            }
            Kind::Even => one(Value::Int(args.int("n")?)),
            Kind::Slow => {
                self.probe.started.fetch_add(1, Ordering::SeqCst);
                let cap = if self.probe.limited.load(Ordering::Relaxed) { 1 } else { 10_000 };
                let ms = args.int("ms")?.clamp(0, cap) as u64;
                std::thread::sleep(Duration::from_millis(ms));
                one(passthrough())
            }
            Kind::AwaitInterrupt => {
                self.probe.started.fetch_add(1, Ordering::SeqCst);
                let t = Instant::now();
                while !ctx.interrupt.is_set() && t.elapsed() < Duration::from_secs(20) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                one(passthrough())
            }
            Kind::Panic | Kind::PanicWorker => panic!("test node {} panicked on purpose", ctx.node_id),
            Kind::Widgets => {
                let mut texts = Vec::new();
                for name in ["i", "f", "mode", "big", "flag", "text"] {
                    if let Some(v) = args.get(name) {
                        texts.push(format!("{name}={}", v.to_json()));
                    }
                }
                Ok(CallOutput::values([Value::Int(args.int("i")?)]).with_ui(ui_text(texts)))
            }
            Kind::ModelSrc | Kind::ImageSrc | Kind::UnionSrc | Kind::AnySrc => one(Value::String(format!("{:?}", self.kind))),
            Kind::Multi => {
                let v = args.int("value")?;
                Ok(CallOutput::values([Value::Int(v), Value::Float(v as f64), Value::String(format!("s{v}"))]))
            }
            Kind::Repeat => {
                let (value, times) = (args.int("value")?, args.int("times")?);
                if times == 0 {
                    return one(Value::Int(value));
                }
                let mut e = Expansion::default();
                let mut prev = Input::Const(Value::Int(value));
                let mut last = String::new();
                for k in 1..=times {
                    last = graph_id(ctx, &k.to_string());
                    e.nodes.insert(last.clone(), expanded("Add", &[("a", prev), ("b", Input::Const(Value::Int(1)))]));
                    prev = link(&last, 0);
                }
                e.result = vec![vec![ResultPart::Link(Link { node: last, slot: 0 })]];
                Ok(CallOutput { expansion: Some(e), ..Default::default() })
            }
            Kind::Countdown => {
                let (n, acc) = (args.int("n")?, args.int("acc")?);
                if n == 0 {
                    return one(Value::Int(acc));
                }
                let (add, next) = (graph_id(ctx, "add"), graph_id(ctx, "next"));
                let mut e = Expansion::default();
                e.nodes.insert(add.clone(), expanded("Add", &[("a", Input::Const(Value::Int(acc))), ("b", Input::Const(Value::Int(n)))]));
                e.nodes.insert(next.clone(), expanded("Countdown", &[("n", Input::Const(Value::Int(n - 1))), ("acc", link(&add, 0))]));
                e.result = vec![vec![ResultPart::Link(Link { node: next, slot: 0 })]];
                Ok(CallOutput { expansion: Some(e), ..Default::default() })
            }
            Kind::Expander => {
                let (a, b) = (graph_id(ctx, "a"), graph_id(ctx, "b"));
                let mut e = Expansion::default();
                let mut result = ResultPart::Link(Link { node: a.clone(), slot: 0 });
                match args.string("mode")? {
                    "class" => {
                        e.nodes.insert(a.clone(), expanded("NoSuchClass", &[]));
                    }
                    "link" => {
                        e.nodes.insert(a.clone(), expanded("AnyPass", &[("value", link("nowhere", 0))]));
                    }
                    "cycle" => {
                        e.nodes.insert(a.clone(), expanded("AnyPass", &[("value", link(&b, 0))]));
                        e.nodes.insert(b.clone(), expanded("AnyPass", &[("value", link(&a, 0))]));
                    }
                    "own" => {
                        e.nodes.insert(a.clone(), expanded("AnyPass", &[("value", link(ctx.node_id, 0))]));
                    }
                    "fail" => {
                        e.nodes.insert(a.clone(), expanded("Fail", &[("message", Input::Const(Value::String("inner failure".into())))]));
                    }
                    _ => {
                        e.nodes.insert(a.clone(), expanded("Preview", &[("value", Input::Const(passthrough()))]));
                        result = ResultPart::Values(vec![passthrough()]);
                    }
                }
                e.result = vec![vec![result]];
                Ok(CallOutput { expansion: Some(e), ..Default::default() })
            }
            Kind::Sink => {
                let mut texts = Vec::new();
                for name in ["model", "pic", "any"] {
                    if let Some(v) = args.get(name) {
                        texts.push(format!("{name}={}", text_of(v)));
                    }
                }
                Ok(CallOutput { outputs: Vec::new(), ui: Some(ui_text(texts)), expansion: None })
            }
        }
    }
}

/// An expansion's node id as ComfyUI's GraphBuilder makes it.
fn graph_id(ctx: &ExecContext, local: &str) -> String {
    format!("{}.{}.0.{local}", ctx.node_id, ctx.call_index)
}

fn link(node: &str, slot: usize) -> Input {
    Input::Link(Link { node: node.into(), slot })
}

fn expanded(class: &str, inputs: &[(&str, Input)]) -> ExpandedNode {
    ExpandedNode { class_type: class.into(), inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(), display_id: None }
}

/// A registry with every test class, all recording into `probe`.
pub fn registry(probe: &Arc<Probe>) -> Registry {
    let mut r = Registry::new();
    for &k in ALL_KINDS {
        assert!(r.register(Arc::new(TestNode::new(k, probe.clone()))));
    }
    r
}

/// Parses and validates prompt JSON against the test registry.
#[allow(clippy::result_large_err)] // the runtime's own validation error, returned as is
pub fn check(reg: &Registry, prompt: &Json) -> Result<Validated, Rejection> {
    let p = Prompt::from_json(prompt).expect("the prompt has a prompt's shape");
    validate(p, reg, None)
}

/// Validates, expecting a rejection; returns its JSON.
pub fn rejection(reg: &Registry, prompt: &Json) -> Json {
    match check(reg, prompt) {
        Ok(v) => panic!("expected a rejection, the prompt was accepted with outputs {:?}", v.outputs),
        Err(r) => r.to_json(),
    }
}

/// The first error recorded on `node` in a rejection's JSON.
pub fn node_error<'a>(rej: &'a Json, node: &str) -> &'a Json {
    &rej["node_errors"][node]["errors"][0]
}

pub fn options() -> RunOptions<'static> {
    RunOptions { prompt_id: "test".into(), extra_pnginfo: None, output_dir: std::env::temp_dir(), events: &NoEvents, extra_data: None, registry: None }
}

/// A registry, an executor and a probe: runs prompts the way the CLI does.
pub struct Harness {
    pub probe: Arc<Probe>,
    pub registry: Registry,
    pub executor: Executor,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_cache(CacheMode::Lru, usize::MAX)
    }
    pub fn with_cache(mode: CacheMode, bytes: usize) -> Harness {
        let probe = Probe::new();
        Harness { registry: registry(&probe), probe, executor: Executor::new(mode, bytes) }
    }
    pub fn validate(&self, prompt: &Json) -> Validated {
        match check(&self.registry, prompt) {
            Ok(v) => v,
            Err(r) => panic!("prompt rejected: {}", serde_json::to_string_pretty(&r.to_json()).unwrap()),
        }
    }
    /// Validates and runs; the probe is reset first so it shows this run only.
    pub fn run(&mut self, prompt: &Json) -> RunReport {
        let v = self.validate(prompt);
        self.probe.reset();
        self.executor.run(&v, &RunOptions { registry: Some(&self.registry), ..options() })
    }
}

/// The ids with a given status in a report.
pub fn with_status(report: &RunReport, status: &NodeStatus) -> BTreeSet<String> {
    report.nodes.iter().filter(|n| &n.status == status).map(|n| n.id.clone()).collect()
}

pub fn executed(report: &RunReport) -> BTreeSet<String> {
    with_status(report, &NodeStatus::Executed)
}

pub fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The UI texts an output node reported.
pub fn texts(report: &RunReport, node: &str) -> Vec<String> {
    match report.outputs.get(node).and_then(|ui| ui.get("text")) {
        Some(Json::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or("?").to_string()).collect(),
        other => panic!("node {node} has no UI text: {other:?} (outputs: {:?})", report.outputs),
    }
}

/// A chain `Int → AnyPass × (n-1) → Preview` of `n + 1` nodes, ids "0".."n".
pub fn chain(n: usize) -> Json {
    let mut m = Map::new();
    m.insert("0".into(), json!({"class_type": "Int", "inputs": {"value": 1}}));
    for i in 1..n {
        m.insert(i.to_string(), json!({"class_type": "AnyPass", "inputs": {"value": [(i - 1).to_string(), 0]}}));
    }
    m.insert(n.to_string(), json!({"class_type": "Preview", "inputs": {"value": [(n - 1).to_string(), 0]}}));
    Json::Object(m)
}

/// Declared numeric bounds of an input, for assertions on `input_config`.
pub fn bounds(spec: &InputSpec) -> (Option<Num>, Option<Num>) {
    match &spec.kind {
        InputKind::Int { min, max, .. } | InputKind::Float { min, max, .. } => (*min, *max),
        _ => (None, None),
    }
}

/// Renames every node id (links included, numeric-id links too) to `#r<k>` and shuffles the key
/// order. Returns the new prompt and the old → new id map. Malformed arrays are left alone.
pub fn renumber(prompt: &Json, seed: u64) -> (Json, BTreeMap<String, String>) {
    let obj = prompt.as_object().unwrap();
    let mut rng = XorShift(seed | 1);
    let mut fresh: Vec<String> = (0..obj.len()).map(|k| format!("#r{k}")).collect();
    rng.shuffle(&mut fresh);
    let map: BTreeMap<String, String> = obj.keys().cloned().zip(fresh).collect();
    let mut entries: Vec<(String, Json)> = obj
        .iter()
        .map(|(id, rec)| {
            let mut rec = rec.clone();
            if let Some(Json::Object(inputs)) = rec.get_mut("inputs") {
                for v in inputs.values_mut() {
                    if let Json::Array(a) = v {
                        if a.len() == 2 {
                            let old = match &a[0] {
                                Json::String(s) => Some(s.clone()),
                                Json::Number(n) if n.is_u64() => Some(n.to_string()),
                                _ => None,
                            };
                            if let Some(new) = old.and_then(|o| map.get(&o)) {
                                a[0] = json!(new);
                            }
                        }
                    }
                }
            }
            (map[id].clone(), rec)
        })
        .collect();
    rng.shuffle(&mut entries);
    (Json::Object(entries.into_iter().collect::<Map<_, _>>()), map)
}

/// A small deterministic random source (no rand dependency).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Stand-ins for the classes of real workflows

/// Whether a JSON document is an API prompt: an object of node records with a `class_type`.
pub fn is_api_prompt(j: &Json) -> bool {
    match j.as_object() {
        Some(m) => !m.is_empty() && m.values().all(|n| n.get("class_type").is_some_and(Json::is_string)),
        None => false,
    }
}

/// The API prompts under `workflows/` and `runtime/tests/data/` (two levels of sub-folders),
/// read now: others add files while this suite exists. UI workflows and unreadable files are
/// skipped.
pub fn workflow_prompts() -> Vec<(String, Json)> {
    let manifest = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    let mut dirs = vec![(manifest.join("../workflows"), 0), (manifest.join("tests/data"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() && depth < 2 {
                dirs.push((path, depth + 1));
            } else if path.extension().is_some_and(|x| x == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let j: Json = serde_json::from_str(&text).ok()?;
            is_api_prompt(&j).then(|| (p.display().to_string(), j))
        })
        .collect()
}

const COMBO_NAMES: &[&str] = &[
    "ckpt_name", "sampler_name", "scheduler", "lora_name", "vae_name", "unet_name", "clip_name", "clip_name1",
    "clip_name2", "control_net_name", "image", "upscale_model", "model_name", "weight_dtype", "type",
];

fn looks_like_combo(name: &str, value: &str) -> bool {
    COMBO_NAMES.contains(&name)
        || [".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".png", ".jpg", ".gguf"].iter().any(|e| value.ends_with(e))
}

/// A class inferred from how workflows use it: widgets typed by their constants (strings that
/// name files or samplers become combos of the values seen), sockets typed `Class#slot` by the
/// outputs linked into them (comma unions where several are), outputs `*` where they feed a
/// widget. A class no node consumes is an output node. Its calls return `"Class#slot:digest"`
/// strings, the digest covering every input value.
pub struct Mimic {
    probe: Arc<Probe>,
    schema: Arc<NodeSchema>,
}

impl NodeClass for Mimic {
    fn schema(&self) -> Arc<NodeSchema> {
        self.schema.clone()
    }
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        use std::hash::{Hash, Hasher};
        if self.probe.over_budget() {
            return Err(NodeError::msg("test call budget exhausted"));
        }
        let start = Instant::now();
        // Outputs depend on every input, so a wrong cache hit shows downstream.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (k, v) in &args.values {
            (k, format!("{v:?}")).hash(&mut h);
        }
        let digest = h.finish();
        let name = &self.schema.name;
        let outs = (0..self.schema.outputs.len()).map(|k| Value::String(format!("{name}#{k}:{digest:016x}")));
        let mut out = CallOutput::values(outs);
        if self.schema.output_node {
            out.ui = Some(ui_text(vec![format!("{name}:{digest:016x}")]));
        }
        self.probe.record(ctx.node_id, start);
        Ok(out)
    }
}

/// Registers a [`Mimic`] for every class of `prompts` that `reg` does not know.
pub fn register_mimics(reg: &mut Registry, probe: &Arc<Probe>, prompts: &[Json]) {
    #[derive(Default)]
    struct Input {
        links: BTreeSet<(String, usize)>,
        constants: Vec<Json>,
        nodes: usize,
    }
    #[derive(Default)]
    struct Class {
        inputs: BTreeMap<String, Input>,
        order: Vec<String>,
        nodes: usize,
        slots: usize,
        consumed: bool,
    }
    let mut classes: BTreeMap<String, Class> = BTreeMap::new();
    for p in prompts {
        let Some(obj) = p.as_object() else { continue };
        let class_of = |id: &str| obj.get(id).and_then(|n| n.get("class_type")).and_then(Json::as_str).map(String::from);
        for node in obj.values() {
            let Some(ct) = node.get("class_type").and_then(Json::as_str) else { continue };
            if reg.get(ct).is_some() {
                continue;
            }
            let c = classes.entry(ct.to_string()).or_default();
            c.nodes += 1;
            let Some(inputs) = node.get("inputs").and_then(Json::as_object) else { continue };
            for (name, v) in inputs {
                if !c.inputs.contains_key(name) {
                    c.order.push(name.clone());
                }
                let inp = c.inputs.entry(name.clone()).or_default();
                inp.nodes += 1;
                match v {
                    Json::Array(a) if a.len() == 2 && a[0].is_string() && a[1].is_u64() => {
                        if let Some(src) = class_of(a[0].as_str().unwrap()) {
                            inp.links.insert((src, a[1].as_u64().unwrap() as usize));
                        }
                    }
                    other => inp.constants.push(other.clone()),
                }
            }
        }
        // Slots used and consumers, for every class (known ones included, they are skipped).
        for node in obj.values() {
            for v in node.get("inputs").and_then(Json::as_object).into_iter().flat_map(|m| m.values()) {
                if let Json::Array(a) = v {
                    if let (Some(id), Some(slot)) = (a.first().and_then(Json::as_str), a.get(1).and_then(Json::as_u64)) {
                        if let Some(src) = class_of(id) {
                            if let Some(c) = classes.get_mut(&src) {
                                c.slots = c.slots.max(slot as usize + 1);
                                c.consumed = true;
                            }
                        }
                    }
                }
            }
        }
    }
    // Output slots that feed widgets (or known classes' inputs) are `*`.
    let mut any_slot: BTreeSet<(String, usize)> = BTreeSet::new();
    for c in classes.values() {
        for inp in c.inputs.values() {
            if !inp.constants.is_empty() {
                any_slot.extend(inp.links.iter().cloned());
            }
        }
    }
    for p in prompts {
        let Some(obj) = p.as_object() else { continue };
        for node in obj.values() {
            let known = node.get("class_type").and_then(Json::as_str).is_some_and(|ct| reg.get(ct).is_some());
            if !known {
                continue;
            }
            for v in node.get("inputs").and_then(Json::as_object).into_iter().flat_map(|m| m.values()) {
                if let Json::Array(a) = v {
                    if let (Some(id), Some(slot)) = (a.first().and_then(Json::as_str), a.get(1).and_then(Json::as_u64)) {
                        if let Some(src) = obj.get(id).and_then(|n| n.get("class_type")).and_then(Json::as_str) {
                            any_slot.insert((src.to_string(), slot as usize));
                        }
                    }
                }
            }
        }
    }
    let known: BTreeSet<String> = reg.names().map(String::from).collect();
    let slot_type = |class: &str, slot: usize| {
        if any_slot.contains(&(class.to_string(), slot)) || known.contains(class) {
            "*".to_string()
        } else {
            format!("{class}#{slot}")
        }
    };
    for (name, c) in &classes {
        let mut required = Map::new();
        let mut optional = Map::new();
        for input in &c.order {
            let inp = &c.inputs[input];
            let spec = if let Some(first) = inp.constants.first() {
                match first {
                    Json::Bool(_) => json!(["BOOLEAN", {}]),
                    Json::Number(n) if n.is_i64() || n.is_u64() => json!(["INT", {}]),
                    Json::Number(_) => json!(["FLOAT", {}]),
                    Json::String(s) if looks_like_combo(input, s) => {
                        let mut options: Vec<Json> = Vec::new();
                        for v in &inp.constants {
                            if !options.contains(v) {
                                options.push(v.clone());
                            }
                        }
                        options.push(json!("other.safetensors"));
                        json!([options, {}])
                    }
                    Json::String(_) => json!(["STRING", {}]),
                    _ => json!(["*", {}]),
                }
            } else {
                let types: Vec<String> = inp.links.iter().map(|(src, slot)| slot_type(src, *slot)).collect();
                let types: BTreeSet<String> = types.into_iter().collect();
                let ty = if types.contains("*") { "*".to_string() } else { types.into_iter().collect::<Vec<_>>().join(",") };
                json!([ty, {}])
            };
            if inp.nodes == c.nodes {
                required.insert(input.clone(), spec);
            } else {
                optional.insert(input.clone(), spec);
            }
        }
        let outputs: Vec<Json> = (0..c.slots).map(|k| json!(slot_type(name, k))).collect();
        let record = json!({
            "name": name,
            "input": {"required": required, "optional": optional},
            "input_order": {"required": required.keys().collect::<Vec<_>>(), "optional": optional.keys().collect::<Vec<_>>()},
            "output": outputs,
            "output_node": !c.consumed,
        });
        let schema = NodeSchema::from_object_info(&record).expect("a mimic's record parses");
        reg.register(Arc::new(Mimic { probe: probe.clone(), schema: Arc::new(schema) }));
    }
}
