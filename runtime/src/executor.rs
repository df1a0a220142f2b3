//! The scheduler: runs what the requested outputs need, in dependency order, serving cached
//! nodes from the outputs cache. Cheap nodes run inline on the scheduling thread; heavy ones on
//! worker threads, so independent branches overlap. A failing node stops its dependents; other
//! branches finish. Nothing here recurses on graph depth.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use indexmap::IndexMap;
use serde_json::{json, Map, Value as Json};

use crate::blocker::ExecutionBlocker;
use crate::cache::{CacheMode, CacheStats, NodeResult, OutputCache};
use crate::events::{Event, EventSink};
use crate::expansion::{Expansion, ResultPart};
use crate::interrupt::Interrupt;
use crate::node::{Args, CallOutput, ExecContext, NodeClass, NodeError, Placement};
use crate::plan::{Callee, Plan};
use crate::prompt::Input;
use crate::registry::Registry;
use crate::schema::{InputKind, NodeSchema};
use crate::signature::{run_salt, sign_all_with, Salt, Signature};
use crate::validate::Validated;
use crate::value::Value;

/// Runs prompts against one shared outputs cache.
pub struct Executor {
    pub cache: OutputCache,
    workers: usize,
    pub interrupt: Interrupt,
}

pub struct RunOptions<'a> {
    pub prompt_id: String,
    pub extra_pnginfo: Option<Json>,
    pub output_dir: PathBuf,
    pub events: &'a dyn EventSink,
    /// The request's `extra_data` entries that hidden inputs read (`auth_token_comfy_org`,
    /// `api_key_comfy_org`, `comfy_usage_source`), as an object; the rest is not needed.
    pub extra_data: Option<Json>,
    /// Where the classes of nodes that expansions add are found; without it a node that
    /// expands fails, saying so.
    pub registry: Option<&'a Registry>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeStatus {
    Executed,
    Cached,
    Failed,
    /// Not run because an upstream node failed.
    Skipped { blocked_by: String },
    /// Not run because the prompt was interrupted.
    NotRun,
}

#[derive(Clone, Debug)]
pub struct NodeReport {
    pub id: String,
    pub class_type: String,
    pub status: NodeStatus,
    pub seconds: f64,
}

/// ComfyUI's `execution_error` payload for one failed node.
#[derive(Clone, Debug)]
pub struct ExecutionError {
    pub node_id: String,
    pub node_type: String,
    pub exception_message: String,
    pub exception_type: String,
    pub traceback: Vec<String>,
    pub current_inputs: Map<String, Json>,
}

impl ExecutionError {
    pub fn to_json(&self) -> Json {
        json!({
            "node_id": self.node_id,
            "node_type": self.node_type,
            "exception_message": self.exception_message,
            "exception_type": self.exception_type,
            "traceback": self.traceback,
            "current_inputs": self.current_inputs,
        })
    }
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub prompt_id: String,
    /// UI outputs by node id (executed nodes and replayed cache hits).
    pub outputs: IndexMap<String, Map<String, Json>>,
    /// Output values of output nodes (their first result list per slot), for `--json`.
    pub values: IndexMap<String, Vec<Json>>,
    pub nodes: Vec<NodeReport>,
    pub errors: Vec<ExecutionError>,
    pub interrupted: bool,
    pub seconds: f64,
    pub cache: CacheStats,
}

impl RunReport {
    pub fn success(&self) -> bool {
        self.errors.is_empty() && !self.interrupted
    }
    pub fn count(&self, status: &NodeStatus) -> usize {
        self.nodes.iter().filter(|n| &n.status == status).count()
    }
    pub fn executed(&self) -> Vec<&str> {
        self.nodes.iter().filter(|n| n.status == NodeStatus::Executed).map(|n| n.id.as_str()).collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Unscheduled,
    Waiting,
    Running,
    /// Expanded into a sub-graph; waits for the outputs its result names.
    Expanded,
    Done,
    Failed,
    Skipped,
}

struct Job {
    index: usize,
    callee: Callee,
    args: Args,
}

/// The job queue's receiving end, shared by the workers.
type SharedJobs = Arc<Mutex<mpsc::Receiver<Job>>>;

struct JobDone {
    index: usize,
    result: Result<CallOutput, NodeError>,
    seconds: f64,
}

impl Executor {
    /// An executor whose output cache has a budget of its own (`cache_bytes` of host memory).
    pub fn new(mode: CacheMode, cache_bytes: usize) -> Self {
        Self::with_cache(OutputCache::new(mode, cache_bytes))
    }

    /// An executor whose output cache counts in `pool`, a share of the engine's memory budget.
    pub fn with_pool(mode: CacheMode, pool: crate::memory::Pool) -> Self {
        Self::with_cache(OutputCache::with_pool(mode, pool))
    }

    fn with_cache(cache: OutputCache) -> Self {
        // At least 4, so that several waiting nodes (async Python nodes polling their remote
        // calls) can be in flight even on a 2-core machine.
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(4);
        Executor { cache, workers, interrupt: Interrupt::default() }
    }

    /// Runs a validated prompt. The interrupt flag is cleared at the start (as ComfyUI does).
    pub fn run(&mut self, v: &Validated, opts: &RunOptions) -> RunReport {
        let start = Instant::now();
        self.interrupt.clear();
        let salt = run_salt();
        let sigs = sign_all_with(v, &salt);
        let mut run = Run::new(v, sigs, salt, opts);
        // As ComfyUI reports it: every node of the prompt whose output is cached at the start,
        // whether or not the requested outputs need it.
        let cached: Vec<String> = (0..v.prompt.nodes.len())
            .filter(|&i| run.sigs[i].is_some_and(|s| self.cache.contains(&s)))
            .map(|i| v.id(i).to_string())
            .collect();
        for &o in &v.outputs {
            run.schedule(o, &mut self.cache);
        }
        opts.events.emit(&Event::Start { prompt_id: opts.prompt_id.clone(), nodes: run.pending_count() });
        // Always sent, empty or not: ComfyUI's clients expect `execution_cached` after the start.
        opts.events.emit(&Event::Cached { prompt_id: opts.prompt_id.clone(), nodes: cached });
        let interrupt = self.interrupt.clone();
        let ctx_parts = CtxParts { prompt: OnceLock::new(), base: v, extra: opts.extra_pnginfo.as_ref(), opts, interrupt: &interrupt };
        let workers = self.workers;
        let cache = &mut self.cache;
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = mpsc::channel::<JobDone>();
            let mut job_tx: Option<(mpsc::Sender<Job>, SharedJobs)> = None;
            let (mut running, mut spawned) = (0usize, 0usize);
            loop {
                if interrupt.is_set() {
                    run.interrupted = true;
                }
                while !run.interrupted {
                    let Some(i) = run.ready.pop_front() else { break };
                    match run.state[i] {
                        State::Waiting => {}
                        State::Expanded => {
                            run.resolve(i, cache);
                            continue;
                        }
                        _ => continue,
                    }
                    // An identical node of this prompt may have produced this signature since.
                    if run.serve_from_cache(i, cache) {
                        continue;
                    }
                    if run.needs_lazy_inputs(i, &ctx_parts, cache) {
                        continue;
                    }
                    let args = run.gather(i);
                    let callee = run.plan.callee(i);
                    if callee.class.placement() == Placement::Inline {
                        let t = Instant::now();
                        run.emit_executing(i);
                        let result = execute_node(&callee, &args, &ctx_parts);
                        run.finish(i, result, t.elapsed().as_secs_f64(), &args, cache);
                        if interrupt.is_set() {
                            run.interrupted = true;
                        }
                    } else if running < workers {
                        let (tx, rx) = job_tx.get_or_insert_with(|| {
                            let (tx, rx) = mpsc::channel::<Job>();
                            (tx, Arc::new(Mutex::new(rx)))
                        });
                        // Workers start as jobs need them: a prompt with one worker node starts
                        // one thread per run, not one per core.
                        if running == spawned {
                            let rx = rx.clone();
                            let done_tx = done_tx.clone();
                            let parts = &ctx_parts;
                            scope.spawn(move || loop {
                                let job = match rx.lock().unwrap().recv() {
                                    Ok(j) => j,
                                    Err(_) => return,
                                };
                                let t = Instant::now();
                                let result = execute_node(&job.callee, &job.args, parts);
                                let _ = done_tx.send(JobDone { index: job.index, result, seconds: t.elapsed().as_secs_f64() });
                            });
                            spawned += 1;
                        }
                        run.state[i] = State::Running;
                        run.emit_executing(i);
                        run.running_args.insert(i, args.clone());
                        tx.send(Job { index: i, callee, args }).expect("workers alive");
                        running += 1;
                    } else {
                        run.ready.push_front(i);
                        break;
                    }
                }
                if running == 0 && (run.ready.is_empty() || run.interrupted) {
                    break;
                }
                if running > 0 {
                    let done = done_rx.recv().expect("a worker reports every job");
                    running -= 1;
                    let args = run.running_args.swap_remove(&done.index).unwrap_or_default();
                    run.finish(done.index, done.result, done.seconds, &args, cache);
                }
            }
            drop(job_tx); // workers exit when the job channel closes
        });
        if !run.interrupted {
            run.fail_stuck();
        }
        let report = run.into_report(start, cache.stats());
        if report.interrupted {
            opts.events.emit(&Event::Interrupted { prompt_id: opts.prompt_id.clone(), node: None });
        }
        opts.events.emit(&Event::Done { prompt_id: opts.prompt_id.clone(), success: report.success() });
        report
    }
}

struct CtxParts<'a> {
    /// The prompt as JSON, made the first time a node reads it (hidden PROMPT or DYNPROMPT).
    prompt: OnceLock<Json>,
    base: &'a Validated,
    extra: Option<&'a Json>,
    opts: &'a RunOptions<'a>,
    interrupt: &'a Interrupt,
}

static NO_PROMPT: Json = Json::Null;

impl CtxParts<'_> {
    fn ctx<'b>(&'b self, node_id: &'b str, schema: &NodeSchema, call_index: usize) -> ExecContext<'b> {
        let reads_prompt = schema.inputs.iter().any(|s| matches!(&s.kind, InputKind::Hidden(t) if t == "PROMPT" || t == "DYNPROMPT"));
        let prompt = if reads_prompt { self.prompt.get_or_init(|| self.base.prompt.to_json()) } else { &NO_PROMPT };
        ExecContext {
            prompt_id: &self.opts.prompt_id,
            node_id,
            call_index,
            prompt,
            extra_pnginfo: self.extra,
            extra_data: self.opts.extra_data.as_ref(),
            output_dir: &self.opts.output_dir,
            events: self.opts.events,
            interrupt: self.interrupt,
        }
    }
}

/// Calls a node over ComfyUI's list semantics (docs/comfyui.md, "List semantics") and merges the
/// results.
fn execute_node(callee: &Callee, args: &Args, parts: &CtxParts) -> Result<CallOutput, NodeError> {
    let schema = &callee.schema;
    let class = &callee.class;
    let n_out = schema.outputs.len();
    // A call whose inputs hold an execution blocker is not made: each output gets a blocker.
    let call = |args: &Args, k: usize| -> Result<CallOutput, NodeError> {
        let ctx = parts.ctx(&callee.id, schema, k);
        ctx.check_interrupt()?;
        match blocker_in(args) {
            Some(b) => Ok(blocked(&ctx, &schema.name, b, n_out)),
            None => guarded(&schema.name, || class.execute(&ctx, args)),
        }
    };
    let calls: Vec<Result<CallOutput, NodeError>> = if schema.input_is_list {
        vec![call(args, 0)]
    } else {
        let lens: Vec<usize> = args.values.values().map(Vec::len).collect();
        if lens.contains(&0) {
            Vec::new()
        } else {
            let n = lens.iter().copied().max().unwrap_or(1);
            if n == 1 {
                vec![call(args, 0)]
            } else {
                let mut out = Vec::with_capacity(n);
                for k in 0..n {
                    let mut sliced = Args::default();
                    for (name, list) in &args.values {
                        sliced.values.insert(name.clone(), vec![list[k.min(list.len() - 1)].clone()]);
                    }
                    let r = call(&sliced, k);
                    let interrupted = matches!(r, Err(NodeError::Interrupted));
                    out.push(r);
                    if interrupted {
                        break;
                    }
                }
                out
            }
        }
    };
    let expands = calls.iter().any(|c| matches!(c, Ok(c) if c.expansion.is_some()));
    let mut merged = CallOutput { outputs: vec![Vec::new(); n_out], ui: None, expansion: None };
    for call in calls {
        let call = call?;
        if call.expansion.is_none() && call.outputs.len() != n_out {
            return Err(NodeError::msg(format!(
                "{} returned {} output(s) but declares {}; this is a bug in the node implementation",
                schema.name,
                call.outputs.len(),
                n_out
            )));
        }
        if let Some(ui) = call.ui {
            let m = merged.ui.get_or_insert_with(Map::new);
            for (k, val) in ui {
                match (m.get_mut(&k), val) {
                    (Some(Json::Array(existing)), Json::Array(more)) => existing.extend(more),
                    (None, val) => {
                        m.insert(k, val);
                    }
                    (Some(slot), val) => *slot = val,
                }
            }
        }
        if expands {
            let e = merged.expansion.get_or_insert_with(Expansion::default);
            e.push_call(call.outputs, call.expansion, n_out).map_err(|why| NodeError::msg(format!("{}: {why}", schema.name)))?;
        } else {
            for (slot, vals) in call.outputs.into_iter().enumerate() {
                merged.outputs[slot].extend(vals);
            }
        }
    }
    Ok(merged)
}

/// The first execution blocker among a call's inputs (list items included).
fn blocker_in(args: &Args) -> Option<&ExecutionBlocker> {
    args.values.values().flatten().find_map(|v| v.as_handle::<ExecutionBlocker>())
}

/// What a blocked call outputs: a blocker in every slot. A blocker with a message is reported
/// here, once (a non-fatal `execution_error` to the client, as ComfyUI sends it), and travels on
/// silently.
fn blocked(ctx: &ExecContext, class: &str, b: &ExecutionBlocker, n_out: usize) -> CallOutput {
    if let Some(message) = &b.message {
        tracing::warn!("node {} ({class}) was blocked: {message}", ctx.node_id);
        let data = json!({
            "prompt_id": ctx.prompt_id, "node_id": ctx.node_id, "node_type": class, "executed": [],
            "exception_message": format!("Execution Blocked: {message}"), "exception_type": "ExecutionBlocked",
            "traceback": [], "current_inputs": [], "current_outputs": [],
        });
        ctx.custom_message("execution_error".into(), data);
    }
    CallOutput { outputs: vec![vec![ExecutionBlocker::value(None)]; n_out], ui: None, expansion: None }
}

/// Runs node code, turning a panic into a node error: a buggy node fails its own branch
/// instead of unwinding through the scheduler (or, on a worker, leaving it waiting forever).
fn guarded<T>(class: &str, f: impl FnOnce() -> Result<T, NodeError>) -> Result<T, NodeError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Err(NodeError::Failed { message: format!("{class} panicked: {what}"), exception_type: "Panic".into(), traceback: Vec::new() })
    })
}

/// A piece of an expanded node's output slot, its links resolved to node indices.
enum Part {
    Values(Vec<Value>),
    Link(usize, usize),
}

/// An expanded node waiting for its sub-graph.
struct Pending {
    result: Vec<Vec<Part>>,
    ui: Option<Map<String, Json>>,
}

/// The state of one prompt's execution.
struct Run<'a> {
    plan: Plan<'a>,
    sigs: Vec<Option<Signature>>,
    salt: Salt,
    opts: &'a RunOptions<'a>,
    state: Vec<State>,
    results: Vec<Option<Arc<NodeResult>>>,
    deps_left: Vec<usize>,
    consumers: Vec<Vec<usize>>,
    ready: VecDeque<usize>,
    /// Scheduled nodes in scheduling order (for the report).
    order: Vec<usize>,
    cached: Vec<usize>,
    seconds: Vec<f64>,
    blocked_by: Vec<Option<usize>>,
    running_args: IndexMap<usize, Args>,
    pending: HashMap<usize, Pending>,
    outputs: IndexMap<String, Map<String, Json>>,
    errors: Vec<ExecutionError>,
    interrupted: bool,
}

impl<'a> Run<'a> {
    fn new(v: &'a Validated, sigs: Vec<Option<Signature>>, salt: Salt, opts: &'a RunOptions<'a>) -> Self {
        let n = v.prompt.nodes.len();
        Run {
            plan: Plan::new(v),
            sigs,
            salt,
            opts,
            state: vec![State::Unscheduled; n],
            results: vec![None; n],
            deps_left: vec![0; n],
            consumers: vec![Vec::new(); n],
            ready: VecDeque::new(),
            order: Vec::new(),
            cached: Vec::new(),
            seconds: vec![0.0; n],
            blocked_by: vec![None; n],
            running_args: IndexMap::new(),
            pending: HashMap::new(),
            outputs: IndexMap::new(),
            errors: Vec::new(),
            interrupted: false,
        }
    }

    /// Room for the per-node state of nodes an expansion added.
    fn grow(&mut self) {
        let n = self.plan.len();
        self.sigs.resize(n, None);
        self.state.resize(n, State::Unscheduled);
        self.results.resize(n, None);
        self.deps_left.resize(n, 0);
        self.consumers.resize(n, Vec::new());
        self.seconds.resize(n, 0.0);
        self.blocked_by.resize(n, None);
    }

    fn pending_count(&self) -> usize {
        self.state.iter().filter(|s| **s == State::Waiting).count()
    }

    fn is_lazy(&self, i: usize, input: &str) -> bool {
        self.plan.schema(i).find_input(input).is_some_and(|s| s.lazy)
    }

    /// Signs `root` and whatever unsigned node it depends on (nodes expansions added are signed
    /// when first needed), sources first, without recursion.
    fn ensure_signed(&mut self, root: usize) {
        if self.sigs[root].is_some() {
            return;
        }
        let mut stack = vec![(root, false)];
        while let Some((j, expanded)) = stack.pop() {
            if self.sigs[j].is_some() {
                continue;
            }
            if !expanded {
                stack.push((j, true));
                for &(_, src, _) in self.plan.links(j) {
                    if self.sigs[src].is_none() {
                        stack.push((src, false));
                    }
                }
                continue;
            }
            let view = crate::signature::NodeView {
                schema: self.plan.schema(j),
                class: self.plan.class(j).as_ref(),
                id: self.plan.id(j),
                key_id: self.plan.key_id(j),
                inputs: self.plan.inputs(j),
                links: self.plan.links(j),
            };
            let sig = crate::signature::sign_node(&view, &self.sigs, &self.salt);
            self.sigs[j] = Some(sig);
        }
    }

    /// Schedules `root` and whatever it needs that is neither cached nor already scheduled.
    /// Cache hits end the walk: their ancestors are not needed.
    fn schedule(&mut self, root: usize, cache: &mut OutputCache) {
        let mut stack = vec![root];
        let mut added = Vec::new();
        while let Some(j) = stack.pop() {
            if self.state[j] != State::Unscheduled {
                continue;
            }
            self.ensure_signed(j);
            self.order.push(j);
            if let Some(hit) = self.sigs[j].and_then(|s| cache.get(&s)) {
                self.use_cached(j, hit);
                continue;
            }
            self.state[j] = State::Waiting;
            added.push(j);
            for (name, src, _) in self.plan.links(j) {
                if !self.is_lazy(j, name) && self.state[*src] == State::Unscheduled {
                    stack.push(*src);
                }
            }
        }
        // Dependencies are counted once the walk settled which sources are cache hits.
        for &j in &added {
            self.add_deps(j, false);
        }
    }

    /// Counts `j`'s unfinished sources (lazy ones only if `include_lazy`) and queues it if none.
    fn add_deps(&mut self, j: usize, include_lazy: bool) {
        let mut srcs: Vec<usize> = self
            .plan
            .links(j)
            .iter()
            .filter(|(name, _, _)| include_lazy || !self.is_lazy(j, name))
            .map(|&(_, s, _)| s)
            .collect();
        srcs.sort_unstable();
        srcs.dedup();
        for s in srcs {
            match self.state[s] {
                State::Done => {}
                State::Failed | State::Skipped => {
                    // Scheduled (lazily) below a node that already failed: never runnable.
                    self.skip(j, s);
                    return;
                }
                State::Unscheduled => {}
                _ => {
                    // `j` was just scheduled and its sources are deduplicated, so it is not yet
                    // a consumer of `s` (a `contains` check here made wide fan-outs quadratic).
                    self.consumers[s].push(j);
                    self.deps_left[j] += 1;
                }
            }
        }
        if self.deps_left[j] == 0 && self.state[j] == State::Waiting {
            self.ready.push_back(j);
        }
    }

    /// Makes `i` wait for `src` (scheduling it if needed). False when `src` already failed, in
    /// which case `i` was skipped.
    fn wait_for(&mut self, i: usize, src: usize, cache: &mut OutputCache) -> bool {
        self.schedule(src, cache);
        match self.state[src] {
            State::Done => true,
            State::Failed | State::Skipped => {
                self.skip(i, src);
                false
            }
            _ => {
                if !self.consumers[src].contains(&i) {
                    self.consumers[src].push(i);
                    self.deps_left[i] += 1;
                }
                true
            }
        }
    }

    /// Lazy inputs (docs/comfyui.md, "Lazy inputs"): asks the node which lazy inputs it still needs
    /// and schedules their sources. Returns true when the node must wait for them.
    fn needs_lazy_inputs(&mut self, i: usize, parts: &CtxParts, cache: &mut OutputCache) -> bool {
        let schema = self.plan.schema(i).clone();
        if !schema.inputs.iter().any(|s| s.lazy) {
            return false;
        }
        let args = self.gather(i);
        let wanted = {
            let ctx = parts.ctx(self.plan.id(i), &schema, 0);
            guarded(&schema.name, || self.plan.class(i).check_lazy_status(&ctx, &args))
        };
        let wanted = match wanted {
            Ok(w) => w,
            Err(e) => {
                self.finish(i, Err(e), 0.0, &args, cache);
                return true;
            }
        };
        let mut missing = Vec::new();
        for name in wanted {
            if let Some(&(_, src, _)) = self.plan.links(i).iter().find(|(n, _, _)| *n == name) {
                if self.state[src] != State::Done {
                    missing.push(src);
                }
            }
        }
        if missing.is_empty() {
            return false;
        }
        for src in missing {
            if !self.wait_for(i, src, cache) {
                return true;
            }
        }
        if self.deps_left[i] == 0 {
            self.ready.push_back(i);
        }
        true
    }

    /// The argument lists of one node: constants, linked results (lazy ones only once
    /// evaluated), undeclared links passed through.
    fn gather(&self, i: usize) -> Args {
        let schema = self.plan.schema(i);
        let links = self.plan.links(i);
        let mut args = Args::default();
        for (name, input) in self.plan.inputs(i) {
            let spec = schema.find_input(name);
            match input {
                Input::Const(c) => {
                    if schema.accepts_constant(name) {
                        args.values.insert(name.clone(), vec![c.clone()]);
                    }
                }
                Input::Link(l) => {
                    if spec.is_some_and(|s| s.raw_link) {
                        args.values.insert(name.clone(), vec![Value::Json(json!([l.node, l.slot]))]);
                        continue;
                    }
                    let Some(&(_, src, slot)) = links.iter().find(|(n, _, _)| n == name) else { continue };
                    if let Some(r) = &self.results[src] {
                        args.values.insert(name.clone(), r.outputs[slot].clone());
                    }
                }
                Input::Malformed(_) => {}
            }
        }
        args
    }

    fn emit_executing(&self, i: usize) {
        self.opts.events.emit(&Event::Executing {
            prompt_id: self.opts.prompt_id.clone(),
            node: self.plan.id(i).to_string(),
            class_type: self.plan.schema(i).name.clone(),
        });
    }

    fn finish(&mut self, i: usize, result: Result<CallOutput, NodeError>, seconds: f64, args: &Args, cache: &mut OutputCache) {
        self.seconds[i] = seconds;
        match result {
            Ok(out) => match out.expansion {
                Some(e) => self.expand(i, e, out.ui, args, cache),
                None => self.complete(i, out.outputs, out.ui, cache),
            },
            Err(NodeError::Interrupted) => {
                self.state[i] = State::Skipped;
                self.interrupted = true;
            }
            Err(NodeError::Failed { message, exception_type, traceback }) => self.fail(i, message, exception_type, traceback, args),
        }
    }

    /// Records a node's result: cached, handed to its consumers.
    fn complete(&mut self, i: usize, outputs: Vec<Vec<Value>>, ui: Option<Map<String, Json>>, cache: &mut OutputCache) {
        let id = self.plan.id(i).to_string();
        let res = Arc::new(NodeResult::new(outputs, ui));
        if let Some(ui) = &res.ui {
            self.outputs.insert(id.clone(), ui.clone());
        }
        if let Some(sig) = self.sigs[i] {
            cache.insert(sig, res.clone());
        }
        self.results[i] = Some(res.clone());
        self.state[i] = State::Done;
        let class_type = self.plan.schema(i).name.clone();
        let seconds = self.seconds[i];
        self.opts.events.emit(&Event::Executed { prompt_id: self.opts.prompt_id.clone(), node: id, class_type, ui: res.ui.clone(), seconds });
        self.release(i);
    }

    fn fail(&mut self, i: usize, message: String, exception_type: String, traceback: Vec<String>, args: &Args) {
        let id = self.plan.id(i).to_string();
        let class_type = self.plan.schema(i).name.clone();
        self.opts.events.emit(&Event::Error { prompt_id: self.opts.prompt_id.clone(), node: id.clone(), class_type: class_type.clone(), message: message.clone() });
        let mut current_inputs = Map::new();
        for (k, vals) in &args.values {
            current_inputs.insert(k.clone(), vals.iter().map(Value::to_json).collect());
        }
        self.errors.push(ExecutionError { node_id: id, node_type: class_type, exception_message: message, exception_type, traceback, current_inputs });
        self.state[i] = State::Failed;
        self.skip_from(i);
    }

    /// Node expansion (docs/comfyui.md, "Node expansion"): the sub-graph's nodes join the run
    /// (checked first: nothing is added if any of it is wrong), its output nodes are scheduled,
    /// and `i` waits for the outputs its result names.
    fn expand(&mut self, i: usize, e: Expansion, ui: Option<Map<String, Json>>, args: &Args, cache: &mut OutputCache) {
        let added = match self.add_expansion(i, &e) {
            Ok(added) => added,
            Err(problems) => {
                let message = format!(
                    "node {} ({}) expanded into a sub-graph that cannot run: {}",
                    self.plan.id(i),
                    self.plan.schema(i).name,
                    problems.join("; ")
                );
                self.fail(i, message, "ExpansionError".into(), Vec::new(), args);
                return;
            }
        };
        self.state[i] = State::Expanded;
        let before = self.pending_count();
        let mut result = Vec::with_capacity(e.result.len());
        let mut sources = Vec::new();
        for parts in e.result {
            let mut slot = Vec::with_capacity(parts.len());
            for p in parts {
                slot.push(match p {
                    ResultPart::Values(v) => Part::Values(v),
                    ResultPart::Link(l) => {
                        let src = self.plan.index_of(&l.node).expect("checked by add_expansion");
                        sources.push(src);
                        Part::Link(src, l.slot)
                    }
                });
            }
            result.push(slot);
        }
        self.pending.insert(i, Pending { result, ui });
        let events: Vec<(String, String)> = added.iter().map(|&j| (self.plan.id(j).to_string(), self.plan.display(j).to_string())).collect();
        // Output nodes of the sub-graph run as part of the prompt; `i` does not wait for them.
        for &j in &added {
            if self.plan.schema(j).output_node {
                self.schedule(j, cache);
            }
        }
        sources.sort_unstable();
        sources.dedup();
        for src in sources {
            if !self.wait_for(i, src, cache) {
                break;
            }
        }
        self.opts.events.emit(&Event::Expanded {
            prompt_id: self.opts.prompt_id.clone(),
            node: self.plan.id(i).to_string(),
            added: events,
            nodes: self.pending_count().saturating_sub(before),
        });
        if self.state[i] == State::Expanded && self.deps_left[i] == 0 {
            self.ready.push_back(i);
        }
    }

    /// Checks an expansion against the run and adds its nodes; their indices, or every
    /// problem found.
    fn add_expansion(&mut self, i: usize, e: &Expansion) -> Result<Vec<usize>, Vec<String>> {
        let mut problems = Vec::new();
        let Some(registry) = self.opts.registry else {
            return Err(vec!["this run has no node registry to find the classes of expanded nodes in (a bug of the caller)".into()]);
        };
        let first = self.plan.len();
        let new_index = |id: &str| e.nodes.get_index_of(id).map(|k| first + k);
        let mut classes = Vec::with_capacity(e.nodes.len());
        for (id, node) in &e.nodes {
            if self.plan.index_of(id).is_some() {
                problems.push(format!("node id '{id}' is already taken"));
            }
            match registry.get(&node.class_type) {
                Some(c) => classes.push(Some(c.clone())),
                None => {
                    problems.push(format!("node '{id}' has class '{}', which is not installed", node.class_type));
                    classes.push(None);
                }
            }
        }
        let outputs_of = |src: usize, classes: &[Option<Arc<dyn NodeClass>>]| -> Option<usize> {
            if src >= first {
                classes[src - first].as_ref().map(|c| c.schema().outputs.len())
            } else {
                Some(self.plan.schema(src).outputs.len())
            }
        };
        let mut links: Vec<Vec<(String, usize, usize)>> = Vec::with_capacity(e.nodes.len());
        for (id, node) in &e.nodes {
            let mut resolved = Vec::new();
            for (name, input) in &node.inputs {
                let Input::Link(l) = input else { continue };
                match new_index(&l.node).or_else(|| self.plan.index_of(&l.node)) {
                    None => problems.push(format!("input '{name}' of node '{id}' links to node '{}', which is neither in the prompt nor in the expansion", l.node)),
                    Some(src) if src < first && self.sigs[src].is_none() && !self.plan.is_added(src) => problems.push(format!(
                        "input '{name}' of node '{id}' links to node '{}', which no output of the prompt uses (so it was not validated)",
                        l.node
                    )),
                    Some(src) => match outputs_of(src, &classes) {
                        Some(n) if l.slot >= n => problems.push(format!("input '{name}' of node '{id}' links to output {} of node '{}', which has {n} output(s)", l.slot, l.node)),
                        _ => resolved.push((name.clone(), src, l.slot)),
                    },
                }
            }
            links.push(resolved);
        }
        for parts in &e.result {
            for p in parts {
                if let ResultPart::Link(l) = p {
                    match new_index(&l.node).or_else(|| self.plan.index_of(&l.node)) {
                        None => problems.push(format!("its result names node '{}', which is neither in the prompt nor in the expansion", l.node)),
                        Some(src) if src == i => problems.push("its result names its own output".into()),
                        Some(src) => {
                            if let Some(n) = outputs_of(src, &classes) {
                                if l.slot >= n {
                                    problems.push(format!("its result names output {} of node '{}', which has {n} output(s)", l.slot, l.node));
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(cycle) = cycle_among(first, &links) {
            let ids: Vec<&str> = cycle.iter().map(|&k| e.nodes.get_index(k).unwrap().0.as_str()).collect();
            problems.push(format!("its nodes form a dependency cycle: {}", ids.join(" -> ")));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        // The prompt node this sub-graph descends from: ids below it enter keys relative to it.
        let real = {
            let mut r = i;
            while self.plan.is_added(r) {
                r = self.plan.index_of(self.parent_of(r)).unwrap_or(0);
            }
            r
        };
        let real_id = self.plan.id(real).to_string();
        let parent_display = self.plan.display(i).to_string();
        let mut added = Vec::with_capacity(e.nodes.len());
        for (((id, node), class), links) in e.nodes.iter().zip(classes).zip(links) {
            let class = class.expect("checked above");
            let key_id = id.strip_prefix(real_id.as_str()).unwrap_or(id).to_string();
            let display = node.display_id.clone().unwrap_or_else(|| parent_display.clone());
            let j = self.plan.add(crate::plan::AddedNode {
                id: id.clone(),
                schema: class.schema(),
                class,
                inputs: node.inputs.clone(),
                links,
                key_id,
                display,
                parent: self.plan.id(i).to_string(),
            });
            added.push(j);
        }
        self.grow();
        Ok(added)
    }

    fn parent_of(&self, i: usize) -> &str {
        self.plan.parent(i).unwrap_or("")
    }

    /// An expanded node whose sub-graph finished: its result, resolved, is its output.
    fn resolve(&mut self, i: usize, cache: &mut OutputCache) {
        let Some(p) = self.pending.remove(&i) else { return };
        let mut outputs = Vec::with_capacity(p.result.len());
        for parts in p.result {
            let mut vals = Vec::new();
            for part in parts {
                match part {
                    Part::Values(v) => vals.extend(v),
                    Part::Link(src, slot) => {
                        if let Some(r) = &self.results[src] {
                            vals.extend(r.outputs[slot].iter().cloned());
                        }
                    }
                }
            }
            outputs.push(vals);
        }
        self.complete(i, outputs, p.ui, cache);
    }

    /// After the run: nodes still waiting can only wait on an expansion that depends on its
    /// own result (through prompt nodes, which the expansion check cannot see). They fail
    /// instead of being left as if never scheduled.
    fn fail_stuck(&mut self) {
        let stuck: Vec<usize> = self.order.iter().copied().filter(|&j| self.state[j] == State::Expanded).collect();
        for j in stuck {
            let message = format!(
                "node {} ({}) expanded into a sub-graph that depends on its own result, so it cannot finish",
                self.plan.id(j),
                self.plan.schema(j).name
            );
            self.pending.remove(&j);
            self.fail(j, message, "ExpansionError".into(), Vec::new(), &Args::default());
        }
    }

    /// Unblocks the consumers of a node that is done.
    fn release(&mut self, i: usize) {
        for c in std::mem::take(&mut self.consumers[i]) {
            self.deps_left[c] -= 1;
            if self.deps_left[c] == 0 && matches!(self.state[c], State::Waiting | State::Expanded) {
                self.ready.push_back(c);
            }
        }
    }

    /// Serves a waiting node from the cache if its signature is there now. Returns true if so.
    fn serve_from_cache(&mut self, i: usize, cache: &mut OutputCache) -> bool {
        let Some(sig) = self.sigs[i] else { return false };
        if !cache.contains(&sig) {
            return false;
        }
        let Some(hit) = cache.get(&sig) else { return false };
        self.use_cached(i, hit);
        self.opts.events.emit(&Event::Cached { prompt_id: self.opts.prompt_id.clone(), nodes: vec![self.plan.id(i).to_string()] });
        self.release(i);
        true
    }

    /// Marks `i` done with a cached result, replaying an output node's UI.
    fn use_cached(&mut self, i: usize, hit: Arc<NodeResult>) {
        if let Some(ui) = &hit.ui {
            if self.plan.schema(i).output_node {
                self.outputs.insert(self.plan.id(i).to_string(), ui.clone());
            }
        }
        self.results[i] = Some(hit);
        self.state[i] = State::Done;
        self.cached.push(i);
    }

    /// The failed node that `i` (failed, or skipped because of a failure) goes back to.
    fn root_failure(&self, i: usize) -> usize {
        match self.state[i] {
            State::Failed => i,
            _ => self.blocked_by[i].unwrap_or(i),
        }
    }

    /// Marks `j` skipped because its source `src` failed or was skipped, and what waits on it.
    fn skip(&mut self, j: usize, src: usize) {
        self.state[j] = State::Skipped;
        self.pending.remove(&j);
        self.blocked_by[j] = Some(self.root_failure(src));
        self.skip_from(j);
    }

    /// Marks every scheduled consumer below a failed (or skipped) node as skipped.
    fn skip_from(&mut self, from: usize) {
        let failed = self.root_failure(from);
        let mut q = VecDeque::from([from]);
        while let Some(j) = q.pop_front() {
            for c in std::mem::take(&mut self.consumers[j]) {
                if matches!(self.state[c], State::Waiting | State::Unscheduled | State::Expanded) {
                    self.state[c] = State::Skipped;
                    self.pending.remove(&c);
                    self.blocked_by[c] = Some(failed);
                    q.push_back(c);
                }
            }
        }
    }

    fn into_report(self, start: Instant, cache: CacheStats) -> RunReport {
        let plan = &self.plan;
        let mut values = IndexMap::new();
        for &o in &plan.base.outputs {
            if let Some(r) = &self.results[o] {
                values.insert(plan.id(o).to_string(), r.outputs.iter().map(|l| Json::Array(l.iter().map(Value::to_json).collect())).collect());
            }
        }
        let cached: std::collections::HashSet<usize> = self.cached.iter().copied().collect();
        let nodes = self
            .order
            .iter()
            .map(|&i| NodeReport {
                id: plan.id(i).to_string(),
                class_type: plan.schema(i).name.clone(),
                status: match self.state[i] {
                    State::Done if cached.contains(&i) => NodeStatus::Cached,
                    State::Done => NodeStatus::Executed,
                    State::Failed => NodeStatus::Failed,
                    State::Skipped => match self.blocked_by[i] {
                        Some(b) => NodeStatus::Skipped { blocked_by: plan.id(b).to_string() },
                        None => NodeStatus::NotRun,
                    },
                    _ => NodeStatus::NotRun,
                },
                seconds: self.seconds[i],
            })
            .collect();
        RunReport {
            prompt_id: self.opts.prompt_id.clone(),
            outputs: self.outputs,
            values,
            nodes,
            errors: self.errors,
            interrupted: self.interrupted,
            seconds: start.elapsed().as_secs_f64(),
            cache,
        }
    }
}

/// A dependency cycle among the nodes an expansion adds (indices from `first`), as positions
/// in the expansion; links to other nodes cannot close one there.
fn cycle_among(first: usize, links: &[Vec<(String, usize, usize)>]) -> Option<Vec<usize>> {
    let n = links.len();
    let mut indeg = vec![0usize; n];
    let mut consumers = vec![Vec::new(); n];
    for (k, ls) in links.iter().enumerate() {
        for &(_, src, _) in ls {
            if src >= first {
                indeg[k] += 1;
                consumers[src - first].push(k);
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&k| indeg[k] == 0).collect();
    let mut seen = 0;
    while let Some(k) = ready.pop() {
        seen += 1;
        for &c in &consumers[k] {
            indeg[c] -= 1;
            if indeg[c] == 0 {
                ready.push(c);
            }
        }
    }
    (seen < n).then(|| (0..n).filter(|&k| indeg[k] > 0).collect())
}
