//! The scheduler: runs what the requested outputs need, in dependency order, serving cached
//! nodes from the outputs cache. Cheap nodes run inline on the scheduling thread; heavy ones on
//! worker threads, so independent branches overlap. A failing node stops its dependents; other
//! branches finish. Nothing here recurses on graph depth.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indexmap::IndexMap;
use serde_json::{json, Map, Value as Json};

use crate::blocker::ExecutionBlocker;
use crate::cache::{CacheMode, CacheStats, NodeResult, OutputCache};
use crate::events::{Event, EventSink};
use crate::interrupt::Interrupt;
use crate::node::{Args, CallOutput, ExecContext, NodeError, Placement};
use crate::prompt::Input;
use crate::schema::InputKind;
use crate::signature::{sign_all, Signature};
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
    Done,
    Failed,
    Skipped,
}

struct Job {
    index: usize,
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
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
        Executor { cache, workers, interrupt: Interrupt::default() }
    }

    /// Runs a validated prompt. The interrupt flag is cleared at the start (as ComfyUI does).
    pub fn run(&mut self, v: &Validated, opts: &RunOptions) -> RunReport {
        let start = Instant::now();
        self.interrupt.clear();
        let sigs = sign_all(v);
        let prompt_json = if v.schemas.iter().any(|s| s.inputs.iter().any(|i| matches!(&i.kind, InputKind::Hidden(t) if t == "PROMPT"))) {
            v.prompt.to_json()
        } else {
            Json::Null
        };
        let mut run = Run::new(v, &sigs, opts);
        // As ComfyUI reports it: every node of the prompt whose output is cached at the start,
        // whether or not the requested outputs need it.
        let cached: Vec<String> =
            (0..v.prompt.nodes.len()).filter(|&i| sigs[i].is_some_and(|s| self.cache.contains(&s))).map(|i| v.id(i).to_string()).collect();
        for &o in &v.outputs {
            run.schedule(o, &mut self.cache);
        }
        opts.events.emit(&Event::Start { prompt_id: opts.prompt_id.clone(), nodes: run.pending_count() });
        // Always sent, empty or not: ComfyUI's clients expect `execution_cached` after the start.
        opts.events.emit(&Event::Cached { prompt_id: opts.prompt_id.clone(), nodes: cached });
        let interrupt = self.interrupt.clone();
        let ctx_parts = CtxParts { prompt: &prompt_json, extra: opts.extra_pnginfo.as_ref(), opts, interrupt: &interrupt };
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
                    if run.state[i] != State::Waiting {
                        continue;
                    }
                    // An identical node of this prompt may have produced this signature since.
                    if run.serve_from_cache(i, cache) {
                        continue;
                    }
                    if run.needs_lazy_inputs(i, &ctx_parts, cache) {
                        continue;
                    }
                    let args = run.gather(i);
                    if v.classes[i].placement() == Placement::Inline {
                        let t = Instant::now();
                        run.emit_executing(i);
                        let result = execute_node(v, i, &args, &ctx_parts);
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
                                let result = execute_node(v, job.index, &job.args, parts);
                                let _ = done_tx.send(JobDone { index: job.index, result, seconds: t.elapsed().as_secs_f64() });
                            });
                            spawned += 1;
                        }
                        run.state[i] = State::Running;
                        run.emit_executing(i);
                        run.running_args.insert(i, args.clone());
                        tx.send(Job { index: i, args }).expect("workers alive");
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
        let report = run.into_report(start, cache.stats());
        if report.interrupted {
            opts.events.emit(&Event::Interrupted { prompt_id: opts.prompt_id.clone(), node: None });
        }
        opts.events.emit(&Event::Done { prompt_id: opts.prompt_id.clone(), success: report.success() });
        report
    }
}

struct CtxParts<'a> {
    prompt: &'a Json,
    extra: Option<&'a Json>,
    opts: &'a RunOptions<'a>,
    interrupt: &'a Interrupt,
}

impl CtxParts<'_> {
    fn ctx<'b>(&'b self, node_id: &'b str) -> ExecContext<'b> {
        ExecContext {
            prompt_id: &self.opts.prompt_id,
            node_id,
            prompt: self.prompt,
            extra_pnginfo: self.extra,
            output_dir: &self.opts.output_dir,
            events: self.opts.events,
            interrupt: self.interrupt,
        }
    }
}

/// Calls a node over ComfyUI's list semantics (docs/comfyui.md, "List semantics") and merges the
/// results.
fn execute_node(v: &Validated, i: usize, args: &Args, parts: &CtxParts) -> Result<CallOutput, NodeError> {
    let schema = &v.schemas[i];
    let class = &v.classes[i];
    let ctx = parts.ctx(v.id(i));
    let n_out = schema.outputs.len();
    // A call whose inputs hold an execution blocker is not made: each output gets a blocker.
    let call = |args: &Args| -> Result<CallOutput, NodeError> {
        match blocker_in(args) {
            Some(b) => Ok(blocked(&ctx, &schema.name, b, n_out)),
            None => guarded(&schema.name, || class.execute(&ctx, args)),
        }
    };
    let calls: Vec<Result<CallOutput, NodeError>> = if schema.input_is_list {
        ctx.check_interrupt()?;
        vec![call(args)]
    } else {
        let lens: Vec<usize> = args.values.values().map(Vec::len).collect();
        if lens.contains(&0) {
            Vec::new()
        } else {
            let n = lens.iter().copied().max().unwrap_or(1);
            if n == 1 {
                ctx.check_interrupt()?;
                vec![call(args)]
            } else {
                let mut out = Vec::with_capacity(n);
                for k in 0..n {
                    ctx.check_interrupt()?;
                    let mut sliced = Args::default();
                    for (name, list) in &args.values {
                        sliced.values.insert(name.clone(), vec![list[k.min(list.len() - 1)].clone()]);
                    }
                    out.push(call(&sliced));
                }
                out
            }
        }
    };
    let mut merged = CallOutput { outputs: vec![Vec::new(); n_out], ui: None };
    for call in calls {
        let call = call?;
        if call.outputs.len() != n_out {
            return Err(NodeError::msg(format!(
                "{} returned {} output(s) but declares {}; this is a bug in the node implementation",
                schema.name,
                call.outputs.len(),
                n_out
            )));
        }
        for (slot, vals) in call.outputs.into_iter().enumerate() {
            merged.outputs[slot].extend(vals);
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
    CallOutput { outputs: vec![vec![ExecutionBlocker::value(None)]; n_out], ui: None }
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

/// The state of one prompt's execution.
struct Run<'a> {
    v: &'a Validated,
    sigs: &'a [Option<Signature>],
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
    lazy_checked: Vec<bool>,
    running_args: IndexMap<usize, Args>,
    outputs: IndexMap<String, Map<String, Json>>,
    errors: Vec<ExecutionError>,
    interrupted: bool,
}

impl<'a> Run<'a> {
    fn new(v: &'a Validated, sigs: &'a [Option<Signature>], opts: &'a RunOptions<'a>) -> Self {
        let n = v.prompt.nodes.len();
        Run {
            v,
            sigs,
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
            lazy_checked: vec![false; n],
            running_args: IndexMap::new(),
            outputs: IndexMap::new(),
            errors: Vec::new(),
            interrupted: false,
        }
    }

    fn pending_count(&self) -> usize {
        self.state.iter().filter(|s| **s == State::Waiting).count()
    }

    fn is_lazy(&self, i: usize, input: &str) -> bool {
        self.v.schemas[i].find_input(input).is_some_and(|s| s.lazy)
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
            self.order.push(j);
            if let Some(hit) = self.sigs[j].and_then(|s| cache.get(&s)) {
                self.use_cached(j, hit);
                continue;
            }
            self.state[j] = State::Waiting;
            added.push(j);
            for (name, src, _) in &self.v.links[j] {
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
        let mut srcs: Vec<usize> = self.v.links[j]
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

    /// Lazy inputs (docs/comfyui.md, "Lazy inputs"): asks the node which lazy inputs it still needs
    /// and schedules their sources. Returns true when the node must wait for them.
    fn needs_lazy_inputs(&mut self, i: usize, parts: &CtxParts, cache: &mut OutputCache) -> bool {
        let schema = &self.v.schemas[i];
        if !schema.inputs.iter().any(|s| s.lazy) {
            return false;
        }
        let args = self.gather(i);
        let ctx = parts.ctx(self.v.id(i));
        let wanted = match guarded(&schema.name, || self.v.classes[i].check_lazy_status(&ctx, &args)) {
            Ok(w) => w,
            Err(e) => {
                self.finish(i, Err(e), 0.0, &args, cache);
                return true;
            }
        };
        self.lazy_checked[i] = true;
        let mut missing = Vec::new();
        for name in wanted {
            if let Some(&(_, src, _)) = self.v.links[i].iter().find(|(n, _, _)| *n == name) {
                if self.state[src] != State::Done {
                    missing.push(src);
                }
            }
        }
        if missing.is_empty() {
            return false;
        }
        for src in missing {
            self.schedule(src, cache);
            match self.state[src] {
                State::Done => {}
                State::Failed | State::Skipped => {
                    self.skip(i, src);
                    return true;
                }
                _ => {
                    if !self.consumers[src].contains(&i) {
                        self.consumers[src].push(i);
                        self.deps_left[i] += 1;
                    }
                }
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
        let schema = &self.v.schemas[i];
        let (_, node) = self.v.prompt.nodes.get_index(i).unwrap();
        let mut args = Args::default();
        for (name, input) in &node.inputs {
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
                    let Some(&(_, src, slot)) = self.v.links[i].iter().find(|(n, _, _)| n == name) else { continue };
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
            node: self.v.id(i).to_string(),
            class_type: self.v.schemas[i].name.clone(),
        });
    }

    fn finish(&mut self, i: usize, result: Result<CallOutput, NodeError>, seconds: f64, args: &Args, cache: &mut OutputCache) {
        self.seconds[i] = seconds;
        let id = self.v.id(i).to_string();
        let class_type = self.v.schemas[i].name.clone();
        match result {
            Ok(out) => {
                let res = Arc::new(NodeResult::new(out.outputs, out.ui));
                if let Some(ui) = &res.ui {
                    self.outputs.insert(id.clone(), ui.clone());
                }
                if let Some(sig) = self.sigs[i] {
                    cache.insert(sig, res.clone());
                }
                self.results[i] = Some(res.clone());
                self.state[i] = State::Done;
                self.opts.events.emit(&Event::Executed { prompt_id: self.opts.prompt_id.clone(), node: id, class_type, ui: res.ui.clone(), seconds });
                self.release(i);
            }
            Err(NodeError::Interrupted) => {
                self.state[i] = State::Skipped;
                self.interrupted = true;
            }
            Err(e) => {
                let (message, exception_type, traceback) = match e {
                    NodeError::Failed { message, exception_type, traceback } => (message, exception_type, traceback),
                    NodeError::Interrupted => unreachable!(),
                };
                self.opts.events.emit(&Event::Error { prompt_id: self.opts.prompt_id.clone(), node: id.clone(), class_type: class_type.clone(), message: message.clone() });
                let mut current_inputs = Map::new();
                for (k, vals) in &args.values {
                    current_inputs.insert(k.clone(), vals.iter().map(Value::to_json).collect());
                }
                self.errors.push(ExecutionError { node_id: id, node_type: class_type, exception_message: message, exception_type, traceback, current_inputs });
                self.state[i] = State::Failed;
                self.skip_from(i);
            }
        }
    }

    /// Unblocks the consumers of a node that is done.
    fn release(&mut self, i: usize) {
        for c in std::mem::take(&mut self.consumers[i]) {
            self.deps_left[c] -= 1;
            if self.deps_left[c] == 0 && self.state[c] == State::Waiting {
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
        self.opts.events.emit(&Event::Cached { prompt_id: self.opts.prompt_id.clone(), nodes: vec![self.v.id(i).to_string()] });
        self.release(i);
        true
    }

    /// Marks `i` done with a cached result, replaying an output node's UI.
    fn use_cached(&mut self, i: usize, hit: Arc<NodeResult>) {
        if let Some(ui) = &hit.ui {
            if self.v.schemas[i].output_node {
                self.outputs.insert(self.v.id(i).to_string(), ui.clone());
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
        self.blocked_by[j] = Some(self.root_failure(src));
        self.skip_from(j);
    }

    /// Marks every scheduled consumer below a failed (or skipped) node as skipped.
    fn skip_from(&mut self, from: usize) {
        let failed = self.root_failure(from);
        let mut q = VecDeque::from([from]);
        while let Some(j) = q.pop_front() {
            for c in std::mem::take(&mut self.consumers[j]) {
                if matches!(self.state[c], State::Waiting | State::Unscheduled) {
                    self.state[c] = State::Skipped;
                    self.blocked_by[c] = Some(failed);
                    q.push_back(c);
                }
            }
        }
    }

    fn into_report(self, start: Instant, cache: CacheStats) -> RunReport {
        let v = self.v;
        let mut values = IndexMap::new();
        for &o in &v.outputs {
            if let Some(r) = &self.results[o] {
                values.insert(v.id(o).to_string(), r.outputs.iter().map(|l| Json::Array(l.iter().map(Value::to_json).collect())).collect());
            }
        }
        let cached: std::collections::HashSet<usize> = self.cached.iter().copied().collect();
        let nodes = self
            .order
            .iter()
            .map(|&i| NodeReport {
                id: v.id(i).to_string(),
                class_type: v.schemas[i].name.clone(),
                status: match self.state[i] {
                    State::Done if cached.contains(&i) => NodeStatus::Cached,
                    State::Done => NodeStatus::Executed,
                    State::Failed => NodeStatus::Failed,
                    State::Skipped => match self.blocked_by[i] {
                        Some(b) => NodeStatus::Skipped { blocked_by: v.id(b).to_string() },
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
