//! The executor thread: takes prompts from the store in order, runs them, and records each
//! one's history entry and queue removal in one transaction.

use std::sync::Arc;

use comfyrs_runtime::executor::{Executor, NodeStatus, RunOptions, RunReport};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::validate::validate;
use serde_json::{json, Map, Value as Json};

use crate::messages::PromptEvents;
use crate::server::Shared;
use crate::store::{Finished, Outcome, QueueItem};
use crate::time::now_ms;

pub fn spawn(shared: Arc<Shared>, executor: Executor) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("comfyrs-executor".into()).spawn(move || run(shared, executor))
}

fn run(shared: Arc<Shared>, mut executor: Executor) {
    while shared.control.wait_for_work() {
        loop {
            if shared.control.stopping() || shared.control.paused() {
                break;
            }
            apply_free(&shared, &mut executor);
            let mut next = match shared.store.take_next() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!("cannot read the queue: {e}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    break;
                }
            };
            // An empty queue: wait for work (without this the worker polls the store in a loop).
            if next.is_none() {
                break;
            }
            // Each finished prompt's transaction takes the next one while nothing asks the
            // worker to stop, pause or free memory first.
            while let Some(item) = next {
                next = run_one(&shared, &mut executor, item);
            }
        }
    }
}

fn apply_free(shared: &Shared, executor: &mut Executor) {
    let free = shared.control.take_free();
    if free.free_memory {
        executor.cache.clear();
    }
    if free.unload_models || free.free_memory {
        shared.host.unload_models();
    }
}

/// Runs one prompt and records it; returns the next prompt when the recording transaction took it.
fn run_one(shared: &Shared, executor: &mut Executor, item: QueueItem) -> Option<QueueItem> {
    let id = item.prompt_id.clone();
    shared.control.set_running(Some(id.clone()));
    shared.broadcast_status();
    let client = item.client_id().map(str::to_string);
    let events = PromptEvents::new(shared.hub.clone(), shared.control.clone(), id.clone(), client.clone());
    let start_time = now_ms();
    let outcome = execute(shared, executor, &item, &events);
    if shared.control.stopping() && matches!(&outcome, Ran::Report(r) if r.interrupted) {
        // Stopped by a shutdown, not by a user: it runs again at the next start.
        if let Err(e) = shared.store.requeue(&id) {
            tracing::error!("cannot put prompt {id} back in the queue: {e}");
        }
        shared.control.set_running(None);
        return None;
    }
    let nodes = match &outcome {
        Ran::Report(report) => crate::metrics::NodeSample::from_report(report),
        _ => Vec::new(),
    };
    shared.metrics.nodes(crate::metrics::LOCAL, &nodes);
    let (entry, result, terminal) = record(&item, &events, outcome);
    let finished = Finished {
        prompt_id: id.clone(),
        outcome: result,
        entry,
        number: item.number,
        create_time: item.create_time,
        start_time,
        end_time: now_ms(),
    };
    tracing::info!("prompt {id} {} in {:.3} s", finished.outcome.as_str(), (finished.end_time - finished.start_time) as f64 / 1e3);
    let next = match shared.store.finish(&finished, shared.control.may_continue()) {
        Ok(next) => {
            shared.metrics.prompt(crate::metrics::LOCAL, finished.outcome, finished.start_time, finished.end_time);
            next
        }
        Err(e) => {
            tracing::error!("cannot record prompt {id} in history: {e}");
            None
        }
    };
    // The terminal message goes out once the history entry is committed, so a client that
    // reacts to it (the frontend refreshes its job list) finds the prompt finished.
    terminal.send(&events);
    shared.control.set_running(None);
    shared.broadcast_status();
    events.to_client("executing", json!({"node": null, "prompt_id": id}));
    shared.finished(&finished);
    next
}

/// `execution_success`, `execution_error` or `execution_interrupted`, to send.
pub(crate) struct Terminal {
    kind: &'static str,
    data: Json,
}

impl Terminal {
    pub(crate) fn send(self, events: &PromptEvents) {
        // An interruption also reaches every socket when the prompt has no client (ComfyUI).
        if self.kind == "execution_interrupted" {
            events.to_client_or_all(self.kind, self.data);
        } else {
            events.to_client(self.kind, self.data);
        }
    }
}

pub(crate) enum Ran {
    Report(Box<RunReport>),
    /// It no longer validates (the server restarted with other nodes or files).
    Invalid(String),
    /// Cancelled after a worker claimed it, before it started (docs/scale-out.md).
    Cancelled,
}

fn execute(shared: &Shared, executor: &mut Executor, item: &QueueItem, events: &PromptEvents) -> Ran {
    let validated = Prompt::from_json(&item.prompt)
        .map_err(|e| e.to_string())
        .and_then(|p| validate(p, &shared.registry, Some(&item.outputs)).map_err(|r| r.render()));
    let v = match validated {
        Ok(v) => v,
        Err(e) => return Ran::Invalid(e),
    };
    let opts = RunOptions {
        prompt_id: item.prompt_id.clone(),
        extra_pnginfo: item.extra_data.get("extra_pnginfo").cloned(),
        output_dir: shared.options.output_dir.clone(),
        events,
        extra_data: hidden_extra(item),
        registry: Some(&shared.registry),
    };
    Ran::Report(Box::new(executor.run(&v, &opts)))
}

/// What hidden inputs read of the request's `extra_data`: the comfy.org credentials (kept
/// apart from the stored entry, see routes/prompt.rs) and the usage source.
pub(crate) fn hidden_extra(item: &QueueItem) -> Option<Json> {
    let mut m = serde_json::Map::new();
    for (from, key) in [(&item.sensitive, "auth_token_comfy_org"), (&item.sensitive, "api_key_comfy_org"), (&item.extra_data, "comfy_usage_source")] {
        if let Some(v) = from.get(key).filter(|v| !v.is_null()) {
            m.insert(key.to_string(), v.clone());
        }
    }
    (!m.is_empty()).then_some(Json::Object(m))
}

/// The history entry (its messages end with the terminal one), and the terminal message for
/// the client.
pub(crate) fn record(item: &QueueItem, events: &PromptEvents, ran: Ran) -> (Json, Outcome, Terminal) {
    let id = &item.prompt_id;
    let mut messages = events.recorded();
    let mut outputs = Map::new();
    let mut meta = Map::new();
    let (kind, data, outcome) = match ran {
        Ran::Invalid(why) => {
            let data = json!({
                "prompt_id": id, "node_id": null, "node_type": null, "executed": [],
                "exception_message": format!("the queued prompt no longer validates: {why}"),
                "exception_type": "comfyrs.InvalidPrompt", "traceback": [], "current_inputs": {},
                "current_outputs": [], "timestamp": now_ms(),
            });
            ("execution_error", data, Outcome::Failed)
        }
        Ran::Cancelled => {
            let data = json!({"prompt_id": id, "node_id": null, "node_type": null, "executed": [], "timestamp": now_ms()});
            ("execution_interrupted", data, Outcome::Cancelled)
        }
        Ran::Report(report) => {
            for (node, ui) in &report.outputs {
                // Cache hits of output nodes replay their UI, as ComfyUI does.
                if report.nodes.iter().any(|n| &n.id == node && n.status == NodeStatus::Cached) {
                    events.to_client("executed", json!({"node": node, "display_node": node, "output": ui, "prompt_id": id}));
                }
                outputs.insert(node.clone(), Json::Object(ui.clone()));
                meta.insert(node.clone(), json!({"node_id": node, "display_node": node, "parent_node": null, "real_node_id": node}));
            }
            let executed: Vec<&str> = report.executed();
            let all: Vec<&str> = report.nodes.iter().map(|n| n.id.as_str()).collect();
            if let Some(err) = report.errors.first() {
                let mut data = err.to_json();
                let m = data.as_object_mut().expect("an object");
                m.insert("prompt_id".into(), json!(id));
                m.insert("executed".into(), json!(executed));
                m.insert("current_outputs".into(), json!(all));
                m.insert("timestamp".into(), json!(now_ms()));
                ("execution_error", data, Outcome::Failed)
            } else if report.interrupted {
                let at = report.nodes.iter().find(|n| n.status == NodeStatus::NotRun);
                let data = json!({
                    "prompt_id": id,
                    "node_id": at.map(|n| n.id.as_str()), "node_type": at.map(|n| n.class_type.as_str()),
                    "executed": executed, "timestamp": now_ms(),
                });
                ("execution_interrupted", data, Outcome::Cancelled)
            } else {
                ("execution_success", json!({"prompt_id": id, "timestamp": now_ms()}), Outcome::Completed)
            }
        }
    };
    messages.push(json!([kind, data.clone()]));
    let ok = outcome == Outcome::Completed;
    let entry = json!({
        "prompt": item.tuple(),
        "outputs": outputs,
        "status": {"status_str": if ok { "success" } else { "error" }, "completed": ok, "messages": messages},
        "meta": meta,
    });
    (entry, outcome, Terminal { kind, data })
}
