//! One prompt's run events as ComfyUI's WebSocket messages, addressed as ComfyUI addresses
//! them: execution messages to the submitting client; `progress` and `progress_state` to the
//! submitting client, or to every socket when the prompt has none.
//!
//! `progress_state` differs from ComfyUI's on purpose (docs/server.md): ComfyUI repeats every
//! node started so far in each message, so a 1,000-node prompt sends ~2,000 messages of up to
//! 1,000 entries; here each message carries the nodes whose state changed plus the nodes still
//! running, so the traffic grows linearly with the prompt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfyrs_runtime::events::{Event, EventSink, ImageFormat};
use serde_json::{json, Map, Value as Json};

use crate::control::Control;
use crate::hub::{Frame, Hub};
use crate::time::now_ms;

/// One WebSocket message before it is encoded for its way out.
pub enum Message {
    /// `{"type": kind, "data": data}`.
    Event { kind: String, data: Json },
    /// A binary frame (previews, progress text).
    Binary(Vec<u8>),
}

/// Where a prompt's messages go: the server's sockets ([`HubOutbox`]), or, on a worker, the
/// broker's event stream back to the server (docs/scale-out.md, "Events and control").
pub trait Outbox: Send + Sync {
    /// `msg` to `client`; without a client, to every socket when `or_all`, else nowhere.
    fn send(&self, client: Option<&str>, or_all: bool, msg: Message);
    /// Whether anyone would see a preview (`client`'s socket, or any socket without one).
    fn wants_previews(&self, client: Option<&str>) -> bool;
    /// Whether `client` announced the feature flag `name`.
    fn client_flag(&self, client: &str, name: &str) -> bool;
    /// The node now running (for `/queue`'s and `/api/jobs`'s view of the running prompt).
    fn running_node(&self, _node: &str) {}
}

/// The server's sockets, and its control's view of the running node.
pub struct HubOutbox {
    pub hub: Arc<Hub>,
    pub control: Arc<Control>,
}

impl Outbox for HubOutbox {
    fn send(&self, client: Option<&str>, or_all: bool, msg: Message) {
        let frame = match msg {
            Message::Event { kind, data } => Frame::event(&kind, data),
            Message::Binary(b) => Frame::Binary(b.into()),
        };
        match client {
            Some(c) => self.hub.send(Some(c), frame),
            None if or_all => self.hub.send(None, frame),
            None => {}
        }
    }
    fn wants_previews(&self, client: Option<&str>) -> bool {
        match client {
            Some(c) => self.hub.connected(c),
            None => self.hub.any_connected(),
        }
    }
    fn client_flag(&self, client: &str, name: &str) -> bool {
        self.hub.flag(client, name)
    }
    fn running_node(&self, node: &str) {
        self.control.set_running_node(node);
    }
}

/// Progress updates of one node closer together than this are coalesced (the first and the
/// last always go out).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct NodeProgress {
    value: u64,
    max: u64,
    running: bool,
    last_sent: Option<Instant>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, NodeProgress>,
    /// Running nodes in the order they started.
    running: Vec<String>,
    /// `execution_start` / `execution_cached` as sent, for the history entry.
    recorded: Vec<Json>,
    cached_sent: bool,
    /// Nodes that expansions added: id → (parent, display id).
    lineage: HashMap<String, (String, String)>,
}

impl State {
    /// The node the UI shows `id` as.
    fn display<'a>(&'a self, id: &'a str) -> &'a str {
        self.lineage.get(id).map(|(_, d)| d.as_str()).unwrap_or(id)
    }

    fn parent(&self, id: &str) -> Option<&str> {
        self.lineage.get(id).map(|(p, _)| p.as_str())
    }

    /// The prompt node `id` descends from (itself for a prompt node).
    fn real<'a>(&'a self, mut id: &'a str) -> &'a str {
        while let Some((p, _)) = self.lineage.get(id) {
            id = p;
        }
        id
    }
}

pub struct PromptEvents {
    outbox: Arc<dyn Outbox>,
    prompt_id: String,
    client: Option<String>,
    state: Mutex<State>,
}

impl PromptEvents {
    pub fn new(hub: Arc<Hub>, control: Arc<Control>, prompt_id: String, client: Option<String>) -> Self {
        Self::with_outbox(Arc::new(HubOutbox { hub, control }), prompt_id, client)
    }

    pub fn with_outbox(outbox: Arc<dyn Outbox>, prompt_id: String, client: Option<String>) -> Self {
        PromptEvents { outbox, prompt_id, client, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// To the submitting client only (dropped without one).
    pub fn to_client(&self, kind: &str, data: Json) {
        if self.client.is_some() {
            self.outbox.send(self.client.as_deref(), false, Message::Event { kind: kind.to_string(), data });
        }
    }

    /// To the submitting client, or to everyone when there is none.
    pub fn to_client_or_all(&self, kind: &str, data: Json) {
        self.outbox.send(self.client.as_deref(), true, Message::Event { kind: kind.to_string(), data });
    }

    /// The messages the history entry's `status.messages` keeps (start and cached so far).
    pub fn recorded(&self) -> Vec<Json> {
        self.lock().recorded.clone()
    }

    fn node_entry(&self, st: &State, id: &str, p: &NodeProgress) -> Json {
        json!({
            "value": p.value, "max": p.max,
            "state": if p.running { "running" } else { "finished" },
            "node_id": id, "prompt_id": self.prompt_id, "display_node_id": st.display(id),
            "parent_node_id": st.parent(id), "real_node_id": st.real(id),
        })
    }

    /// `progress_state` with `changed` and every running node.
    fn send_state(&self, st: &State, changed: &str) {
        let mut nodes = Map::new();
        if let Some(p) = st.nodes.get(changed) {
            nodes.insert(changed.to_string(), self.node_entry(st, changed, p));
        }
        for id in &st.running {
            if id != changed {
                nodes.insert(id.clone(), self.node_entry(st, id, &st.nodes[id]));
            }
        }
        self.to_client_or_all("progress_state", json!({"prompt_id": self.prompt_id, "nodes": nodes}));
    }

    fn cached(&self, st: &mut State, nodes: &[String]) {
        if st.cached_sent {
            return;
        }
        st.cached_sent = true;
        let data = json!({"nodes": nodes, "prompt_id": self.prompt_id, "timestamp": now_ms()});
        st.recorded.push(json!(["execution_cached", data]));
        self.to_client("execution_cached", data);
    }
}

impl EventSink for PromptEvents {
    fn emit(&self, event: &Event) {
        let mut st = self.lock();
        match event {
            Event::Start { .. } => {
                let data = json!({"prompt_id": self.prompt_id, "timestamp": now_ms()});
                st.recorded.push(json!(["execution_start", data]));
                self.to_client("execution_start", data);
            }
            Event::Cached { nodes, .. } => self.cached(&mut st, nodes),
            Event::Executing { node, .. } => {
                self.cached(&mut st, &[]);
                let p = st.nodes.entry(node.clone()).or_default();
                p.running = true;
                p.max = p.max.max(1);
                st.running.push(node.clone());
                self.send_state(&st, node);
                self.outbox.running_node(node);
                self.to_client("executing", json!({"node": node, "display_node": st.display(node), "prompt_id": self.prompt_id}));
            }
            Event::Expanded { node, added, .. } => {
                for (id, display) in added {
                    st.lineage.insert(id.clone(), (node.clone(), display.clone()));
                }
            }
            Event::Progress { node, value, max, .. } => {
                let now = Instant::now();
                let Some(p) = st.nodes.get_mut(node) else { return };
                let due = p.last_sent.is_none_or(|t| now.duration_since(t) >= PROGRESS_INTERVAL) || value >= max;
                p.value = *value;
                p.max = *max;
                if !due {
                    return;
                }
                p.last_sent = Some(now);
                self.to_client_or_all("progress", json!({"value": value, "max": max, "prompt_id": self.prompt_id, "node": node}));
                self.send_state(&st, node);
            }
            Event::Executed { node, ui, .. } => {
                if let Some(ui) = ui {
                    self.to_client("executed", json!({"node": node, "display_node": st.display(node), "output": ui, "prompt_id": self.prompt_id}));
                }
                st.running.retain(|n| n != node);
                if let Some(p) = st.nodes.get_mut(node) {
                    p.running = false;
                    p.value = p.max;
                }
                self.send_state(&st, node);
            }
            Event::Error { node, .. } => {
                st.running.retain(|n| n != node);
            }
            Event::Preview { node, format, image, .. } => {
                let (display, parent, real) = (st.display(node).to_string(), st.parent(node).map(String::from), st.real(node).to_string());
                drop(st);
                self.preview(node, (&display, parent.as_deref(), &real), *format, image);
            }
            Event::ProgressText { node, text, .. } => {
                // Binary type 3: [3][length of the node id][node id][text], big-endian u32s.
                let mut b = Vec::with_capacity(8 + node.len() + text.len());
                b.extend_from_slice(&3u32.to_be_bytes());
                b.extend_from_slice(&(node.len() as u32).to_be_bytes());
                b.extend_from_slice(node.as_bytes());
                b.extend_from_slice(text.as_bytes());
                self.outbox.send(self.client.as_deref(), true, Message::Binary(b));
            }
            Event::Custom { name, data, .. } => self.to_client_or_all(name, data.clone()),
            // The terminal messages are sent by the worker from the run's report, which has
            // everything `execution_error` carries.
            Event::Interrupted { .. } | Event::Done { .. } => {}
        }
    }

    fn wants_previews(&self) -> bool {
        self.outbox.wants_previews(self.client.as_deref())
    }
}

impl PromptEvents {
    /// A preview as a binary frame: type 4 with metadata for clients that announced
    /// `supports_preview_metadata`, type 1 otherwise (and when broadcast).
    fn preview(&self, node: &str, (display, parent, real): (&str, Option<&str>, &str), format: ImageFormat, image: &[u8]) {
        let (mime, code) = match format {
            ImageFormat::Jpeg => ("image/jpeg", 1u32),
            ImageFormat::Png => ("image/png", 2u32),
        };
        let with_meta = self.client.as_deref().is_some_and(|c| self.outbox.client_flag(c, "supports_preview_metadata"));
        let mut b = Vec::with_capacity(image.len() + 256);
        if with_meta {
            let meta = json!({
                "node_id": node, "prompt_id": self.prompt_id, "display_node_id": display,
                "parent_node_id": parent, "real_node_id": real, "image_type": mime,
            })
            .to_string();
            b.extend_from_slice(&4u32.to_be_bytes());
            b.extend_from_slice(&(meta.len() as u32).to_be_bytes());
            b.extend_from_slice(meta.as_bytes());
        } else {
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(&code.to_be_bytes());
        }
        b.extend_from_slice(image);
        self.outbox.send(self.client.as_deref(), true, Message::Binary(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comfyrs_runtime::interrupt::Interrupt;

    fn frames(rx: &mut tokio::sync::mpsc::Receiver<Frame>) -> Vec<Json> {
        let mut out = Vec::new();
        while let Ok(Frame::Text(t)) = rx.try_recv() {
            out.push(serde_json::from_str(&t).unwrap());
        }
        out
    }

    /// Nodes an expansion added are shown as their display node, with their parent and the
    /// prompt node they descend from (nested expansions included).
    #[test]
    fn added_nodes_carry_their_lineage() {
        let hub = Arc::new(Hub::default());
        let mut sub = hub.connect("c".into());
        let control = Arc::new(Control::new(Interrupt::default(), false));
        let ev = PromptEvents::new(hub, control, "p".into(), Some("c".into()));
        let executing = |node: &str| Event::Executing { prompt_id: "p".into(), node: node.into(), class_type: "X".into() };
        ev.emit(&Event::Expanded { prompt_id: "p".into(), node: "5".into(), added: vec![("5.0.0.1".into(), "5".into())], nodes: 1 });
        ev.emit(&Event::Expanded { prompt_id: "p".into(), node: "5.0.0.1".into(), added: vec![("5.0.0.1.0.0.2".into(), "9".into())], nodes: 1 });
        ev.emit(&executing("5.0.0.1.0.0.2"));
        let got = frames(&mut sub.rx);
        let exec = got.iter().find(|f| f["type"] == "executing").expect("executing sent");
        assert_eq!(exec["data"]["node"], "5.0.0.1.0.0.2");
        assert_eq!(exec["data"]["display_node"], "9", "the display id the expansion gave");
        let state = got.iter().find(|f| f["type"] == "progress_state").expect("progress_state sent");
        let entry = &state["data"]["nodes"]["5.0.0.1.0.0.2"];
        assert_eq!((entry["parent_node_id"].as_str(), entry["real_node_id"].as_str(), entry["display_node_id"].as_str()), (Some("5.0.0.1"), Some("5"), Some("9")));
        // A prompt node is its own display, real node, and has no parent.
        ev.emit(&executing("7"));
        let got = frames(&mut sub.rx);
        let state = got.iter().find(|f| f["type"] == "progress_state").unwrap();
        assert_eq!(state["data"]["nodes"]["7"]["parent_node_id"], Json::Null);
        assert_eq!(state["data"]["nodes"]["7"]["real_node_id"], "7");
    }
}
