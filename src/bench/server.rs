//! `comfyrs bench server`: the server end to end on loopback, as a client sees it: POST /prompt
//! until `execution_success` arrives on the socket, for a one-node prompt and for 1,000-node
//! chain and wide prompts, the bytes of `progress_state` those send, and how many trivial
//! prompts per second the queue takes in and runs. With `--against`, a ComfyUI checkout's own
//! server gets the same prompts from the same client code in the same run, side by side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value as Json};

use super::executor::generate;
use super::median;
use crate::config::{Config, PythonMode};
use crate::engine::Engine;
use crate::host::EngineHost;
use crate::progress::fmt_secs;

#[derive(Args)]
pub struct ServerBench {
    /// Repetitions per latency measurement (the median is reported).
    #[arg(long, default_value_t = 15)]
    repeat: usize,
    /// Trivial prompts queued for the throughput measurement.
    #[arg(long, default_value_t = 5000)]
    prompts: usize,
    /// Concurrent HTTP clients queueing them.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Also measure this ComfyUI checkout's own server (`main.py --cpu`, run with the project
    /// venv's Python), side by side.
    #[arg(long, value_name = "COMFYUI_DIR")]
    against: Option<PathBuf>,
    /// Repetitions per latency measurement for the ComfyUI server (its 1,000-node prompts take
    /// seconds each).
    #[arg(long, default_value_t = 3)]
    against_repeat: usize,
}

pub(super) type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// What one server measured.
struct Measured {
    /// (median seconds POST → success, progress_state bytes of one run) per latency prompt, or
    /// why the server could not run it.
    latency: Vec<Result<(f64, usize), String>>,
    accepted_per_s: f64,
    run_per_s: f64,
}

/// Every constant string gets `tag` appended, so no run is served from the cache.
pub(super) fn retag(prompt: &Json, tag: usize) -> Json {
    let mut p = prompt.clone();
    for node in p.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        if let Some(Json::String(v)) = node.pointer_mut("/inputs/value") {
            v.push_str(&format!(" #{tag}"));
        }
    }
    p
}

pub(super) fn post(base: &str, body: &Json) -> Result<Json> {
    let resp = ureq::post(&format!("{base}/prompt"))
        .config()
        .http_status_as_error(false)
        .build()
        .send(body.to_string())
        .map_err(|e| anyhow!("POST {base}/prompt: {e}"))?;
    let status = resp.status();
    let text = resp.into_body().with_config().limit(1 << 30).read_to_string()?;
    if !status.is_success() {
        // ComfyUI's validation error: its message and the first node error's details.
        let why = serde_json::from_str::<Json>(&text).ok().map(|e| {
            let first = e["node_errors"].as_object().and_then(|m| m.values().next()).map(|n| n["errors"][0]["details"].as_str().unwrap_or_default().to_string());
            format!("{}: {}", e["error"]["message"].as_str().unwrap_or("rejected"), first.unwrap_or_default())
        });
        bail!("POST /prompt answered {status}: {}", why.unwrap_or_else(|| tail(&text, 5)));
    }
    Ok(serde_json::from_str(&text)?)
}

/// What a client heard of one prompt.
pub(super) struct Heard {
    /// Seconds from POST to `execution_success`.
    pub secs: f64,
    /// Bytes of the `progress_state` messages.
    pub state_bytes: usize,
    /// The nodes its `execution_cached` named.
    pub cached: Vec<String>,
}

/// Runs one prompt as a client: POST, then its messages on `ws` to the prompt's end.
pub(super) fn one_run(base: &str, ws: &mut Ws, client: &str, prompt: Json) -> Result<Heard> {
    let t = Instant::now();
    let id = post(base, &json!({"prompt": prompt, "client_id": client}))?["prompt_id"].as_str().unwrap_or_default().to_string();
    let mut state_bytes = 0;
    let mut cached = Vec::new();
    loop {
        let tungstenite::Message::Text(text) = ws.read().context("reading the socket")? else { continue };
        if text.as_str().starts_with("{\"type\":\"progress_state\"") || text.as_str().starts_with("{\"type\": \"progress_state\"") {
            state_bytes += text.len();
            continue;
        }
        let m: Json = serde_json::from_str(text.as_str())?;
        if m["type"] == "execution_cached" && m["data"]["prompt_id"] == id.as_str() {
            cached = m["data"]["nodes"].as_array().into_iter().flatten().filter_map(|n| n.as_str().map(str::to_string)).collect();
        }
        if m["type"] == "execution_success" && m["data"]["prompt_id"] == id.as_str() {
            let secs = t.elapsed().as_secs_f64();
            // Drain to this prompt's end so the next run starts clean.
            loop {
                let tungstenite::Message::Text(t) = ws.read()? else { continue };
                let m: Json = serde_json::from_str(t.as_str())?;
                if m["type"] == "executing" && m["data"]["node"].is_null() {
                    return Ok(Heard { secs, state_bytes, cached });
                }
            }
        }
        if m["type"] == "execution_error" {
            return Err(anyhow!("the benchmark prompt failed: {m}"));
        }
    }
}

const LATENCY: [&str; 3] = ["1 node (PreviewAny)", "chain_1000", "wide_1000"];

fn latency_prompts() -> Result<Vec<Json>> {
    Ok(vec![
        json!({"1": {"class_type": "PrimitiveString", "inputs": {"value": "x"}}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}),
        generate("chain", 1000)?,
        generate("wide", 1000)?,
    ])
}

/// The latency and throughput measurements against the server at `addr`. A latency prompt the
/// server refuses or fails is recorded as such when `tolerate` (ComfyUI cannot run every one).
fn measure(addr: &str, b: &ServerBench, repeat: usize, tolerate: bool) -> Result<Measured> {
    let base = format!("http://{addr}");
    let client = "bench";
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws?clientId={client}")).context("connecting the socket")?;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
    }
    let mut latency = Vec::new();
    // Tags differ between the servers' runs too, so neither can answer from a cache.
    let mut tag = 0;
    for prompt in latency_prompts()? {
        let mut times = Vec::new();
        let mut bytes = 0;
        let mut failed = None;
        for _ in 0..repeat.max(1) {
            tag += 1;
            match one_run(&base, &mut ws, client, retag(&prompt, tag)) {
                Ok(heard) => {
                    times.push(heard.secs);
                    bytes = heard.state_bytes;
                }
                Err(e) if tolerate => {
                    failed = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        latency.push(match failed {
            Some(why) => Err(why),
            None => Ok((median(times), bytes)),
        });
    }

    // Throughput: `clients` threads queue distinct trivial prompts; timed until the queue is empty.
    let trivial = json!({"1": {"class_type": "PrimitiveString", "inputs": {"value": "t"}}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}});
    let clients = b.clients.max(1);
    let per = b.prompts.div_ceil(clients);
    let t = Instant::now();
    queue_concurrently(&base, clients, per, move |n| json!({"prompt": retag(&trivial, 1_000_000 + n)}))?;
    let queued = t.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let q: Json = serde_json::from_str(&ureq::get(&format!("{base}/prompt")).call()?.into_body().read_to_string()?)?;
        if q["exec_info"]["queue_remaining"] == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the queue did not drain in 1200 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = t.elapsed().as_secs_f64();
    let n = (per * clients) as f64;
    Ok(Measured { latency, accepted_per_s: n / queued, run_per_s: n / total })
}

/// `clients` threads each POST `per` bodies to /prompt, body `n` (0 ≤ n < clients × per) from
/// `body(n)`; returns when every one was accepted.
pub(super) fn queue_concurrently(base: &str, clients: usize, per: usize, body: impl Fn(usize) -> Json + Send + Sync + 'static) -> Result<()> {
    let body = Arc::new(body);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (base, body) = (base.to_string(), body.clone());
            std::thread::spawn(move || -> Result<()> {
                let agent = ureq::Agent::new_with_defaults();
                for i in 0..per {
                    let resp = agent.post(&format!("{base}/prompt")).send(body(c * per + i).to_string()).map_err(|e| anyhow!("POST /prompt: {e}"))?;
                    // Read to the end, so the agent keeps the connection for the next request.
                    resp.into_body().read_to_string()?;
                }
                Ok(())
            })
        })
        .collect();
    for th in threads {
        th.join().map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok(())
}

/// A ComfyUI checkout's `main.py` on a free loopback port, in a throwaway base directory (so
/// nothing is written into the checkout); killed when dropped.
struct ComfyUi {
    child: Child,
    addr: String,
    _base: tempfile::TempDir,
}

impl ComfyUi {
    fn start(dir: &Path) -> Result<ComfyUi> {
        if !dir.join("main.py").is_file() {
            bail!("{} has no main.py: --against wants a ComfyUI checkout", dir.display());
        }
        let python = crate::venv::python().ok_or_else(|| anyhow!("no project venv to run ComfyUI with: run scripts/setup.sh (with COMFYUI_PATH={} for its requirements)", dir.display()))?;
        let base = tempfile::Builder::new().prefix("comfyrs-bench-comfyui-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(base.path().join("comfyui.log"))?;
        let child = Command::new(&python)
            .arg("main.py")
            .args(["--cpu", "--listen", "127.0.0.1", "--port", &port.to_string(), "--disable-all-custom-nodes", "--base-directory"])
            .arg(base.path())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} main.py", python.display()))?;
        let mut c = ComfyUi { child, addr: format!("127.0.0.1:{port}"), _base: base };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if ureq::get(&format!("http://{}/system_stats", c.addr)).call().is_ok() {
                return Ok(c);
            }
            if let Some(status) = c.child.try_wait()? {
                let log = std::fs::read_to_string(c._base.path().join("comfyui.log")).unwrap_or_default();
                bail!("ComfyUI exited ({status}) before it served; the end of its log:\n{}", tail(&log, 30));
            }
            if Instant::now() > deadline {
                bail!("ComfyUI did not serve within 300 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ComfyUi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

pub fn run(b: &ServerBench, config: &Config) -> Result<()> {
    let mut config = config.clone();
    config.python = PythonMode::Never;
    let state = tempfile::Builder::new().prefix("comfyrs-bench-server-").tempdir()?;
    let options = comfyrs_server::ServeOptions { port: 0, ..comfyrs_server::ServeOptions::new(state.path()) };
    let host = Arc::new(EngineHost::new(Engine::without_python(&config)?)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let running = rt.block_on(comfyrs_server::serve(options, host))?;
    println!(
        "comfyrs serve on loopback ({} CPU threads), native nodes, a fresh state dir; {} trivial prompts from {} clients",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        b.prompts,
        b.clients
    );
    let ours = measure(&running.addr.to_string(), b, b.repeat, false)?;
    rt.block_on(running.stop());

    let theirs = match &b.against {
        None => None,
        Some(dir) => {
            eprintln!("starting ComfyUI from {} (main.py --cpu)…", dir.display());
            let comfy = ComfyUi::start(dir)?;
            Some(measure(&comfy.addr, b, b.against_repeat, true)?)
        }
    };

    let kb = |bytes: usize| format!("{} KB", bytes / 1024);
    let rate = |r: f64| format!("{r:.0}/s");
    let ratio = |ours: f64, theirs: f64| {
        let r = theirs / ours;
        if r >= 10.0 {
            format!("{r:.0}×")
        } else {
            format!("{r:.1}×")
        }
    };
    let ours_latency: Vec<(f64, usize)> = ours.latency.into_iter().collect::<Result<_, _>>().map_err(|e| anyhow!(e))?;
    match &theirs {
        None => {
            println!("{:<28} {:>12} {:>16}", "POST /prompt → success", "median", "progress_state");
            for (name, (t, bytes)) in LATENCY.iter().zip(&ours_latency) {
                println!("{name:<28} {:>12} {:>16}", fmt_secs(*t), kb(*bytes));
            }
        }
        Some(c) => {
            println!("{:<28} {:>12} {:>12} {:>8} {:>16} {:>16}", "POST /prompt → success", "comfyrs", "ComfyUI", "ratio", "progress_state", "ComfyUI's");
            let mut failures = Vec::new();
            for ((name, (t, bytes)), theirs) in LATENCY.iter().zip(&ours_latency).zip(&c.latency) {
                match theirs {
                    Ok((ct, cbytes)) => println!("{name:<28} {:>12} {:>12} {:>8} {:>16} {:>16}", fmt_secs(*t), fmt_secs(*ct), ratio(*t, *ct), kb(*bytes), kb(*cbytes)),
                    Err(why) => {
                        println!("{name:<28} {:>12} {:>12} {:>8} {:>16} {:>16}", fmt_secs(*t), "fails", "—", kb(*bytes), "—");
                        failures.push(format!("ComfyUI, {name}: {why}"));
                    }
                }
            }
            for f in failures {
                println!("  {f}");
            }
        }
    }
    println!("{:<28} {:>12} {:>12}", "trivial prompts", "accepted", "queued+run");
    println!("{:<28} {:>12} {:>12}", "  comfyrs", rate(ours.accepted_per_s), rate(ours.run_per_s));
    if let Some(c) = &theirs {
        println!("{:<28} {:>12} {:>12}", "  ComfyUI", rate(c.accepted_per_s), rate(c.run_per_s));
        println!("{:<28} {:>12} {:>12}", "  ratio", ratio(c.accepted_per_s, ours.accepted_per_s), ratio(c.run_per_s, ours.run_per_s));
    }
    Ok(())
}
