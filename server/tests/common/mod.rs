//! A real server on a free loopback port, running core nodes plus a node that waits, and
//! blocking HTTP and WebSocket clients for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyrs_runtime::executor::Executor;
use comfyrs_runtime::schema::{InputSpec, NodeSchema, OutputSpec};
use comfyrs_runtime::{Args, CallOutput, ExecContext, NodeClass, NodeError, Registry, Value};
use comfyrs_server::{Host, ModelFolder, ServeOptions};
use serde_json::{json, Value as Json};

/// `TestPreview`: sends a preview (4 bytes of "JPEG") when someone would see it, a progress
/// text and a custom message; outputs `value:<whether a preview was wanted>`.
struct PreviewNode(Arc<NodeSchema>);

impl NodeClass for PreviewNode {
    fn schema(&self) -> Arc<NodeSchema> {
        self.0.clone()
    }
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        let wants = ctx.wants_previews();
        if wants {
            ctx.preview(comfyrs_runtime::events::ImageFormat::Jpeg, Arc::from(&b"JPEG"[..]));
        }
        ctx.progress_text("step 1 of 1".into());
        ctx.custom_message("my_pack.note".into(), json!({"hello": "world"}));
        Ok(CallOutput::values([Value::String(format!("{}:{wants}", args.string("value")?))]))
    }
}

pub struct TestHost {
    registry: Arc<Registry>,
    models: Vec<ModelFolder>,
}

impl TestHost {
    pub fn new() -> Arc<TestHost> {
        let mut reg = Registry::new();
        comfyrs_core::register(&mut reg);
        comfyrs_core::test_nodes::register(&mut reg);
        let schema = NodeSchema::new("TestPreview", "Preview test", "testing").input(InputSpec::string("value", "")).output(OutputSpec::new("STRING"));
        reg.register(Arc::new(PreviewNode(Arc::new(schema))));
        Arc::new(TestHost { registry: Arc::new(reg), models: Vec::new() })
    }

    /// With these model folders (`/models`, `/view_metadata`).
    pub fn with_folders(folders: Vec<ModelFolder>) -> Arc<TestHost> {
        Self::with_models(folders)
    }

    pub fn with_models(models: Vec<ModelFolder>) -> Arc<TestHost> {
        let mut h = Arc::into_inner(Self::new()).unwrap();
        h.models = models;
        Arc::new(h)
    }
}

impl Host for TestHost {
    fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }
    fn executor(&self) -> Executor {
        Executor::new(comfyrs_runtime::cache::CacheMode::Lru, 64 << 20)
    }
    fn model_folders(&self) -> Vec<ModelFolder> {
        self.models.clone()
    }
    /// `OldConcat` (inputs `first`, `second`; the result on output 1) was replaced by
    /// StringConcatenate; `Gone` by a class this server does not have.
    fn node_replacements(&self) -> serde_json::Value {
        serde_json::json!({
            "OldConcat": [{
                "new_node_id": "StringConcatenate", "old_node_id": "OldConcat", "old_widget_ids": ["first", "second"],
                "input_mapping": [{"new_id": "string_a", "old_id": "first"}, {"new_id": "string_b", "old_id": "second"}, {"new_id": "delimiter", "set_value": "+"}],
                "output_mapping": [{"new_idx": 0, "old_idx": 1}],
            }],
            "Gone": [{"new_node_id": "NotHere", "old_node_id": "Gone", "old_widget_ids": null, "input_mapping": null, "output_mapping": null}],
        })
    }
}

/// A server running on its own tokio runtime; stopped (cleanly) on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub base: String,
    rt: Option<tokio::runtime::Runtime>,
    running: Option<comfyrs_server::Running>,
}

impl Server {
    pub fn start(state_dir: &Path) -> Server {
        Self::start_with(ServeOptions { port: 0, ..ServeOptions::new(state_dir) })
    }

    pub fn start_with(options: ServeOptions) -> Server {
        Self::start_with_host(options, TestHost::new())
    }

    pub fn start_with_host(options: ServeOptions, host: Arc<TestHost>) -> Server {
        Self::start_host(options, host)
    }

    pub fn start_host(options: ServeOptions, host: Arc<dyn Host>) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let running = rt.block_on(comfyrs_server::serve(options, host)).expect("server starts");
        let addr = running.addr;
        Server { addr, base: format!("http://{addr}"), rt: Some(rt), running: Some(running) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> (u16, Json) {
        let resp = ureq::get(&self.url(path)).config().http_status_as_error(false).build().call().expect("GET");
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
    }

    pub fn post(&self, path: &str, body: &Json) -> (u16, Json) {
        let resp = ureq::post(&self.url(path)).config().http_status_as_error(false).build().send(body.to_string()).expect("POST");
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Json::String(text)))
    }

    /// Any request without following errors: status, headers and body bytes.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        let mut req = ureq::http::Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let resp = match body {
            Some(b) => agent.run(req.body(b.to_vec()).unwrap()),
            None => agent.run(req.body(()).unwrap()),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = resp.into_body();
        let body = body.with_config().limit(1 << 30).read_to_vec().unwrap_or_default();
        Reply { status, headers, body }
    }

    pub fn get_bytes(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None)
    }

    /// A `multipart/form-data` POST of `parts`.
    pub fn upload(&self, path: &str, parts: &[Part]) -> Reply {
        let (ctype, body) = multipart(parts);
        self.request("POST", path, &[("content-type", &ctype)], Some(&body))
    }

    /// Writes `raw` (a whole HTTP/1.1 request) on a fresh connection and returns everything
    /// the server answers until it closes or 10 s pass.
    pub fn raw(&self, raw: &[u8]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            // One response is enough: stop once its declared body is in.
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_lowercase();
                let len = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|n| out.len() >= end + 4 + n) {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Submits a prompt; the response body.
    /// Any request, with extra headers and an optional body; the answer's status, headers
    /// (lowercase names) and body (JSON when it parses, else a string).
    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> JsonReply {
        let mut req = ureq::http::Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).allow_non_standard_methods(true).build().into();
        let resp = match body {
            Some(b) => agent.run(req.body(b.to_vec()).unwrap()),
            None => agent.run(req.body(()).unwrap()),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().iter().map(|(k, v)| (k.as_str().to_lowercase(), v.to_str().unwrap_or("").to_string())).collect();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        JsonReply { status, headers, body: serde_json::from_str(&text).unwrap_or(Json::String(text)) }
    }

    /// A request written by hand (`head` without Content-Length) on a fresh connection: the
    /// status and the whole answer.
    pub fn raw_request(&self, head: &str, body: &[u8]) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = head.replace('\n', "\r\n").trim_end().to_string();
        req.push_str(&format!("\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).to_string();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, text)
    }

    /// Polls `/api/jobs/{id}` until the job has `status` (bounded).
    pub fn wait_job(&self, id: &str, status: &str) -> Json {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, j) = self.get(&format!("/api/jobs/{id}"));
            if j["status"] == status {
                return j;
            }
            assert!(Instant::now() < deadline, "job {id} never became {status}: {j}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn queue(&self, prompt: Json, client_id: Option<&str>) -> Json {
        let mut body = json!({"prompt": prompt});
        if let Some(c) = client_id {
            body["client_id"] = json!(c);
        }
        let (status, resp) = self.post("/prompt", &body);
        assert_eq!(status, 200, "{resp}");
        resp
    }

    /// Polls `/history/{id}` until the entry exists (bounded).
    pub fn wait_history(&self, prompt_id: &str) -> Json {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, h) = self.get(&format!("/history/{prompt_id}"));
            if let Some(e) = h.get(prompt_id) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "prompt {prompt_id} never reached history");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let (Some(rt), Some(running)) = (self.rt.as_ref(), self.running.take()) {
            rt.block_on(running.stop());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A WebSocket client; reads with a deadline so no test can hang.
pub struct Socket {
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
}

pub enum Msg {
    Text(Json),
    Binary(Vec<u8>),
}

impl Socket {
    pub fn connect(server: &Server, client_id: &str) -> Socket {
        let (ws, _) = tungstenite::connect(format!("ws://{}/ws?clientId={client_id}", server.addr)).expect("WebSocket connects");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Socket { ws }
    }

    pub fn connect_with(server: &Server, client_id: &str, headers: &[(&str, &str)]) -> Result<Socket, tungstenite::Error> {
        use tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{}/ws?clientId={client_id}", server.addr).into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let (ws, _) = tungstenite::connect(req)?;
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Ok(Socket { ws })
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(tungstenite::Message::Text(text.into())).unwrap();
    }

    pub fn next(&mut self) -> Msg {
        loop {
            match self.ws.read().expect("a message within 30 s") {
                tungstenite::Message::Text(t) => return Msg::Text(serde_json::from_str(t.as_str()).unwrap()),
                tungstenite::Message::Binary(b) => return Msg::Binary(b.to_vec()),
                _ => continue,
            }
        }
    }

    /// The next text message.
    pub fn text(&mut self) -> Json {
        loop {
            if let Msg::Text(j) = self.next() {
                return j;
            }
        }
    }

    /// Text messages up to and including `executing` with `node: null` for `prompt_id`.
    pub fn until_done(&mut self, prompt_id: &str) -> Vec<Json> {
        let mut out = Vec::new();
        loop {
            let m = self.text();
            let done = m["type"] == "executing" && m["data"]["node"].is_null() && m["data"]["prompt_id"] == prompt_id;
            out.push(m);
            if done {
                return out;
            }
        }
    }
}

/// `PrimitiveString` → `TestWait` → `PreviewAny`: shows `text` after `ms` milliseconds.
pub fn wait_prompt(text: &str, ms: i64) -> Json {
    json!({
        "1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
        "2": {"class_type": "TestWait", "inputs": {"ms": ms, "value": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    })
}

pub fn kinds(msgs: &[Json]) -> Vec<String> {
    msgs.iter().map(|m| m["type"].as_str().unwrap_or("").to_string()).collect()
}

/// A response read whole.
pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&self.body).into_owned()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One field of a multipart form: a file when `filename` is set.
pub struct Part<'a> {
    pub name: &'a str,
    pub filename: Option<&'a str>,
    pub data: &'a [u8],
}

impl<'a> Part<'a> {
    pub fn text(name: &'a str, value: &'a str) -> Part<'a> {
        Part { name, filename: None, data: value.as_bytes() }
    }
    pub fn file(name: &'a str, filename: &'a str, data: &'a [u8]) -> Part<'a> {
        Part { name, filename: Some(filename), data }
    }
}

/// The Content-Type and body of a `multipart/form-data` request.
pub fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "comfyrs-test-boundary-7d1f0c";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p.filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n", p.name).as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{}\"\r\n\r\n", p.name).as_bytes()),
        }
        body.extend_from_slice(p.data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `s` percent-encoded byte by byte (all but unreserved characters), so the server's one
/// decoding gives back exactly `s`, separators and NULs included.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Arbitrary strings biased towards the pieces that make path escapes.
pub fn hostile_name() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        Just("..".to_string()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just("%2e%2e".to_string()),
        Just("%2F".to_string()),
        Just("%5C".to_string()),
        Just("\0".to_string()),
        Just("out".to_string()),
        Just("secret.txt".to_string()),
        Just("ok.png".to_string()),
        Just("é✓".to_string()),
        Just("[input]".to_string()),
        "[a-z.]{1,4}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 1..7).prop_map(|v| v.concat())
}

/// The names and contents of the files directly in `dir`.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default()))
        .collect();
    v.sort();
    v
}

/// An answer with a JSON (or string) body and lowercase header names.
pub struct JsonReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Json,
}

impl JsonReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}
