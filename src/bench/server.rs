//! `comfyrs bench server`: the server end to end on loopback, as a client sees it: POST /prompt
//! until `execution_success` arrives on the socket, for a one-node prompt and for 1,000-node
//! chain and wide prompts, the bytes of `progress_state` those send, and how many trivial
//! prompts per second the queue takes in and runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
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
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// Every constant string gets `tag` appended, so no run is served from the cache.
fn retag(prompt: &Json, tag: usize) -> Json {
    let mut p = prompt.clone();
    for node in p.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        if let Some(Json::String(v)) = node.pointer_mut("/inputs/value") {
            v.push_str(&format!(" #{tag}"));
        }
    }
    p
}

fn post(base: &str, body: &Json) -> Result<Json> {
    let resp = ureq::post(&format!("{base}/prompt")).send(body.to_string()).map_err(|e| anyhow!("POST /prompt: {e}"))?;
    Ok(serde_json::from_str(&resp.into_body().read_to_string()?)?)
}

/// Seconds from POST to `execution_success`, and the bytes of `progress_state` messages seen.
fn one_run(base: &str, ws: &mut Ws, client: &str, prompt: Json) -> Result<(f64, usize)> {
    let t = Instant::now();
    let id = post(base, &json!({"prompt": prompt, "client_id": client}))?["prompt_id"].as_str().unwrap_or_default().to_string();
    let mut state_bytes = 0;
    loop {
        let tungstenite::Message::Text(text) = ws.read().context("reading the socket")? else { continue };
        if text.as_str().starts_with("{\"type\":\"progress_state\"") {
            state_bytes += text.len();
            continue;
        }
        let m: Json = serde_json::from_str(text.as_str())?;
        if m["type"] == "execution_success" && m["data"]["prompt_id"] == id.as_str() {
            let secs = t.elapsed().as_secs_f64();
            // Drain to this prompt's end so the next run starts clean.
            loop {
                let tungstenite::Message::Text(t) = ws.read()? else { continue };
                let m: Json = serde_json::from_str(t.as_str())?;
                if m["type"] == "executing" && m["data"]["node"].is_null() {
                    return Ok((secs, state_bytes));
                }
            }
        }
        if m["type"] == "execution_error" {
            return Err(anyhow!("the benchmark prompt failed: {m}"));
        }
    }
}

pub fn run(b: &ServerBench, config: &Config) -> Result<()> {
    let mut config = config.clone();
    config.python = PythonMode::Never;
    let state = tempfile::Builder::new().prefix("comfyrs-bench-server-").tempdir()?;
    let options = comfyrs_server::ServeOptions { port: 0, ..comfyrs_server::ServeOptions::new(state.path()) };
    let host = Arc::new(EngineHost::new(Engine::without_python(&config)?)?);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let running = rt.block_on(comfyrs_server::serve(options, host))?;
    let addr: SocketAddr = running.addr;
    let base = format!("http://{addr}");
    let client = "bench";
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/ws?clientId={client}")).context("connecting the socket")?;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
    }
    println!("comfyrs serve on loopback ({} CPU threads), native nodes, a fresh state dir", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("{:<28} {:>12} {:>16}", "POST /prompt → success", "median", "progress_state");
    let mut tag = 0;
    for (name, prompt) in [
        ("1 node (PreviewAny)", json!({"1": {"class_type": "PrimitiveString", "inputs": {"value": "x"}}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}})),
        ("chain_1000", generate("chain", 1000)?),
        ("wide_1000", generate("wide", 1000)?),
    ] {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..b.repeat.max(1) {
            tag += 1;
            let (t, s) = one_run(&base, &mut ws, client, retag(&prompt, tag))?;
            times.push(t);
            bytes = s;
        }
        println!("{name:<28} {:>12} {:>13} KB", fmt_secs(median(times)), bytes / 1024);
    }

    // Throughput: `clients` threads queue distinct trivial prompts; timed until the queue is empty.
    let trivial = json!({"1": {"class_type": "PrimitiveString", "inputs": {"value": "t"}}, "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}});
    let per = b.prompts.div_ceil(b.clients.max(1));
    let t = Instant::now();
    let threads: Vec<_> = (0..b.clients.max(1))
        .map(|c| {
            let (base, trivial) = (base.clone(), trivial.clone());
            std::thread::spawn(move || -> Result<()> {
                let agent = ureq::Agent::new_with_defaults();
                for i in 0..per {
                    let body = json!({"prompt": retag(&trivial, 1_000_000 + c * per + i)});
                    let resp = agent.post(&format!("{base}/prompt")).send(body.to_string()).map_err(|e| anyhow!("POST /prompt: {e}"))?;
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
    let queued = t.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let q: Json = serde_json::from_str(&ureq::get(&format!("{base}/prompt")).call()?.into_body().read_to_string()?)?;
        if q["exec_info"]["queue_remaining"] == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!("the queue did not drain in 600 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = t.elapsed().as_secs_f64();
    let n = per * b.clients.max(1);
    println!(
        "{n} trivial prompts from {} clients: accepted at {:.0}/s, queued and run at {:.0}/s ({} in all)",
        b.clients,
        n as f64 / queued,
        n as f64 / total,
        fmt_secs(total)
    );
    rt.block_on(running.stop());
    Ok(())
}
