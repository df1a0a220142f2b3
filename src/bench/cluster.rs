//! `comfyrs bench cluster`: a whole deployment on this machine, as a client sees it
//! (docs/scale-out.md). Its own redis-server, `comfyrs serve --broker` and `comfyrs worker`
//! processes (this binary, with the test nodes and no Python) run prompts whose one slow node
//! waits a fixed time: throughput with each worker count, against the ideal of workers that do
//! nothing but wait, and the time the broker adds to one prompt over a `comfyrs serve` that runs
//! its prompts itself. Then a slider change: a native WIDEN merge of the tiny SDXL fixtures whose
//! `t_factor` moves, prompt after prompt, on a local server and with two workers, where cache
//! affinity must send each change to the worker that already loaded the models. Every process the bench starts is killed by its pid when the bench is
//! done with it, also when it fails.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value as Json};

use super::median;
use super::server::{one_run, queue_concurrently, Heard, Ws};
use crate::progress::fmt_secs;

#[derive(Args)]
pub struct ClusterBench {
    /// Prompts queued per throughput measurement.
    #[arg(long, default_value_t = 200)]
    prompts: usize,
    /// How long each prompt's TestWait node waits, in milliseconds.
    #[arg(long, default_value_t = 50)]
    wait_ms: u64,
    /// The worker counts to measure, each on a fresh Redis, server and workers.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    workers: Vec<usize>,
    /// Concurrent HTTP clients queueing the prompts.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Single prompts timed POST → execution_success for the broker's overhead (the median is
    /// reported).
    #[arg(long, default_value_t = 50)]
    repeat: usize,
    /// Slider changes (a new `t_factor` each) timed after the first merge; 0 skips them.
    #[arg(long, default_value_t = 30)]
    slider: usize,
    /// The redis-server binary to start (Debian's redis-server).
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    redis_server: PathBuf,
}

/// How long a started process may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long the socket may stay silent while prompts are running.
const SILENT_WITHIN: Duration = Duration::from_secs(120);
/// The workers' log: the line that says a worker is connected, and not every prompt's lines.
const WORKER_LOG: &str = "warn,comfyrs_server::broker::runner=info";

/// A process the bench started: its stderr is drained for its whole life (a full pipe would
/// block it) into its last lines, for error messages; killed by its pid when dropped.
struct Proc {
    what: String,
    child: Child,
    last: Arc<Mutex<VecDeque<String>>>,
    /// Every line, until [`Proc::wait_for_line`] has found the one it waits for.
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    fn spawn(what: &str, mut cmd: Command) -> Result<Proc> {
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().with_context(|| format!("cannot start {what}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let last = Arc::new(Mutex::new(VecDeque::new()));
        let sink = last.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // No one listens once the awaited line was found.
                let _ = tx.send(line.clone());
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() == 30 {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        Ok(Proc { what: what.to_string(), child, last, lines: Some(rx) })
    }

    fn last_lines(&self) -> String {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The first line of its log containing `pat`, waited for (bounded); once per process.
    fn wait_for_line(&mut self, pat: &str) -> Result<String> {
        let rx = self.lines.take().expect("one wait per process");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(pat) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!("{} did not say {pat:?} within {READY_WITHIN:?}; its log ends:\n{}", self.what, self.last_lines()),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    bail!("{} exited ({status}) before it said {pat:?}; its log ends:\n{}", self.what, self.last_lines())
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server on a free loopback port, in `dir`, without persistence (a benchmark's queue
/// need not survive a restart, and fsyncs would only add disk noise); its URL.
fn start_redis(bin: &Path, dir: &Path) -> Result<(Proc, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]).arg("--dir").arg(dir);
    let mut redis = Proc::spawn(&format!("{} (install Debian's redis-server, or give --redis-server PATH)", bin.display()), cmd)?;
    let deadline = Instant::now() + READY_WITHIN;
    while !answers_ping(port) {
        if let Some(status) = redis.child.try_wait()? {
            bail!("redis-server exited at its start ({status}); its log ends:\n{}", redis.last_lines());
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING on port {port} within {READY_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((redis, format!("redis://127.0.0.1:{port}")))
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    s.write_all(b"PING\r\n").is_ok() && BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
}

/// One server, with its Redis and workers when it has a broker, on a fresh state.
struct Deployment {
    // Dropped in this order: the workers, the server, Redis, the folder.
    workers: Vec<Proc>,
    _server: Proc,
    _redis: Option<Proc>,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Deployment {
    /// `comfyrs serve` running its prompts itself (`workers` None), or with `--broker` and that
    /// many `comfyrs worker`s, each connected to Redis before this returns; all of them read
    /// models from `models`.
    fn start(b: &ClusterBench, workers: Option<usize>, models: &Path) -> Result<Deployment> {
        let exe = std::env::current_exe().context("cannot find the comfyrs binary to start servers and workers")?;
        let dir = tempfile::Builder::new().prefix("comfyrs-bench-cluster-").tempdir()?;
        let comfyrs = |sub: &str| {
            let mut c = Command::new(&exe);
            // One compute thread each: processes sharing a machine's cores would otherwise make
            // the merges' time a measure of their contention, not of the broker.
            c.args([sub, "--python", "never", "--models-dir"]).arg(models).env(comfyrs_core::test_nodes::ENV, "1").env("OMP_NUM_THREADS", "1");
            c
        };
        let redis = match workers {
            Some(_) => {
                let d = dir.path().join("redis");
                std::fs::create_dir_all(&d)?;
                Some(start_redis(&b.redis_server, &d)?)
            }
            None => None,
        };
        let mut serve = comfyrs("serve");
        serve.args(["--port", "0", "--state-dir"]).arg(dir.path().join("server"));
        if let Some((_, url)) = &redis {
            serve.args(["--broker", url]);
        }
        let mut server = Proc::spawn("comfyrs serve", serve)?;
        let line = server.wait_for_line("listening on http://")?;
        let addr = line.split("listening on http://").nth(1).and_then(|r| r.split_whitespace().next()).ok_or_else(|| anyhow!("no address in {line:?}"))?.to_string();
        let mut procs = Vec::new();
        if let Some((_, url)) = &redis {
            for i in 0..workers.unwrap_or(0) {
                let name = format!("bench-w{i}");
                let mut w = comfyrs("worker");
                w.args(["--broker", url, "--server", &format!("http://{addr}"), "--name", &name, "--output-dir"]).arg(dir.path().join(&name)).env("RUST_LOG", WORKER_LOG);
                procs.push(Proc::spawn(&format!("comfyrs worker {name}"), w)?);
            }
        }
        for w in &mut procs {
            w.wait_for_line("waiting for prompts")?;
        }
        Ok(Deployment { workers: procs, _server: server, _redis: redis.map(|(p, _)| p), addr, _dir: dir })
    }

    fn socket(&self, client: &str) -> Result<Ws> {
        let (ws, _) = tungstenite::connect(format!("ws://{}/ws?clientId={client}", self.addr)).context("connecting the socket")?;
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(SILENT_WITHIN))?;
        }
        Ok(ws)
    }

    /// Seconds from the first POST until `clients` × `per` prompts of `wait_ms` each have
    /// succeeded (their `execution_success` heard on the socket).
    fn time_batch(&self, clients: usize, per: usize, wait_ms: u64, tag: &str) -> Result<f64> {
        let client = "bench-batch";
        let mut ws = self.socket(client)?;
        let n = clients * per;
        let (base, tag) = (format!("http://{}", self.addr), tag.to_string());
        let t = Instant::now();
        let submit = std::thread::spawn(move || queue_concurrently(&base, clients, per, move |i| json!({"prompt": prompt(&format!("{tag} #{i}"), wait_ms), "client_id": client})));
        let mut done = 0;
        while done < n {
            let tungstenite::Message::Text(text) = ws.read().with_context(|| format!("{done} of {n} prompts done, then no message for {SILENT_WITHIN:?}"))? else { continue };
            let m: Json = serde_json::from_str(text.as_str())?;
            match m["type"].as_str() {
                Some("execution_success") => done += 1,
                Some("execution_error" | "execution_interrupted") => bail!("a benchmark prompt failed: {m}"),
                _ => {}
            }
        }
        let secs = t.elapsed().as_secs_f64();
        submit.join().map_err(|_| anyhow!("the submitting thread panicked"))??;
        Ok(secs)
    }

    /// The median seconds POST → `execution_success` of one prompt whose wait is 0 ms, alone in
    /// the queue.
    fn latency(&self, repeat: usize) -> Result<f64> {
        let client = "bench-latency";
        let mut ws = self.socket(client)?;
        let base = format!("http://{}", self.addr);
        // Warm: connections, the first run's allocations.
        for i in 0..3 {
            one_run(&base, &mut ws, client, prompt(&format!("warm {i}"), 0))?;
        }
        let times = (0..repeat.max(1)).map(|i| one_run(&base, &mut ws, client, prompt(&format!("latency {i}"), 0)).map(|h| h.secs)).collect::<Result<Vec<_>>>()?;
        Ok(median(times))
    }

    /// A merge at `t_factor` 1.0 timed (models loaded, merged), then `changes` merges with
    /// another `t_factor` each, as a slider moves.
    fn slider(&self, changes: usize) -> Result<Slider> {
        let client = "bench-slider";
        let mut ws = self.socket(client)?;
        let base = format!("http://{}", self.addr);
        let first = one_run(&base, &mut ws, client, merge(1.0))?.secs;
        let mut changed = Vec::new();
        let mut reloaded = 0;
        for i in 0..changes {
            let Heard { secs, cached, .. } = one_run(&base, &mut ws, client, merge(0.3 + 0.6 * i as f64 / changes as f64))?;
            // The base model's and the LoRA's loaders: cached on a warm worker.
            if !(cached.iter().any(|n| n == "1") && cached.iter().any(|n| n == "2")) {
                reloaded += 1;
            }
            changed.push(secs);
        }
        Ok(Slider { first, change: median(changed), changes, reloaded })
    }
}

/// What a slider run measured.
struct Slider {
    /// Seconds POST → success of the first merge (its models loaded).
    first: f64,
    /// The median seconds of a slider change.
    change: f64,
    changes: usize,
    /// Slider changes that loaded the models again (ran where they were not held).
    reloaded: usize,
}

/// A native WIDEN merge of the tiny SDXL fixtures (`comfyrs fixtures --arch sdxl`) at `t`,
/// its model shown as text.
fn merge(t: f64) -> Json {
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f16.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/tiny/sdxl_kohya_lora.safetensors", "strength": 1.0}},
        "3": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["2", 0], "t_factor": t}},
        "4": {"class_type": "WIDENExit", "inputs": {"widen": ["3", 0], "save_model": false, "model_name": "m", "save_workflow": false, "enable_cache": true}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
    })
}

/// The tiny SDXL fixtures written into a fresh folder by this binary.
fn write_fixtures(dir: &Path) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the comfyrs binary to write fixtures")?;
    let out = Command::new(exe).args(["fixtures", "--python", "never", "--arch", "sdxl", "--models-dir"]).arg(dir).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("comfyrs fixtures failed: {}", super::server::tail(&String::from_utf8_lossy(&out.stderr), 10));
    }
    Ok(())
}

/// PrimitiveString → TestWait(`ms`) → PreviewAny: one node with a fixed time, an output
/// reported to the server, a distinct text so no run comes from a cache.
fn prompt(text: &str, ms: u64) -> Json {
    json!({
        "1": {"class_type": "PrimitiveString", "inputs": {"value": text}},
        "2": {"class_type": "TestWait", "inputs": {"ms": ms, "value": ["1", 0]}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    })
}

/// One throughput measurement: who ran the prompts and how long they took.
struct Row {
    label: String,
    /// Processes running prompts at once (a server without a broker runs one at a time).
    runners: usize,
    workers: Option<usize>,
    secs: f64,
}

pub fn run(b: &ClusterBench) -> Result<()> {
    if b.workers.is_empty() || b.workers.contains(&0) {
        bail!("--workers wants worker counts of at least 1, e.g. 1,2,4");
    }
    // Before minutes of measuring without a broker, not after.
    let redis_runs = Command::new(&b.redis_server).arg("--version").stdin(Stdio::null()).output().is_ok_and(|o| o.status.success());
    if !redis_runs {
        bail!("cannot run {} (install Debian's redis-server, or give --redis-server PATH)", b.redis_server.display());
    }
    let clients = b.clients.max(1);
    let per = b.prompts.max(1).div_ceil(clients);
    let n = per * clients;
    println!(
        "comfyrs bench cluster: this machine ({} CPU threads), a {} build of comfyrs; {n} prompts PrimitiveString → TestWait({} ms) → PreviewAny from {clients} clients; redis-server without persistence; one compute thread per server or worker",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        b.wait_ms,
    );
    let _ = std::io::stdout().flush();

    let models = tempfile::Builder::new().prefix("comfyrs-bench-cluster-models-").tempdir()?;
    if b.slider > 0 {
        write_fixtures(models.path())?;
    }
    let mut rows = Vec::new();
    let mut sliders = Vec::new();
    eprintln!("comfyrs serve without a broker…");
    let local = Deployment::start(b, None, models.path())?;
    if b.slider > 0 {
        sliders.push(("serve, no broker".to_string(), local.slider(b.slider)?));
    }
    let local_latency = local.latency(b.repeat)?;
    local.time_batch(1, 4, b.wait_ms, "warm")?;
    rows.push(Row { label: "serve, no broker".into(), runners: 1, workers: None, secs: local.time_batch(clients, per, b.wait_ms, "local")? });
    drop(local);

    let mut broker_latency = None;
    let mut counts = b.workers.clone();
    if !counts.contains(&1) {
        // The overhead is measured with one worker.
        counts.insert(0, 1);
    }
    // The slider runs where a worker that does not hold the models could take the prompt.
    if b.slider > 0 && !counts.contains(&2) {
        counts.push(2);
    }
    for &w in &counts {
        eprintln!("comfyrs serve --broker with {w} worker(s)…");
        let d = Deployment::start(b, Some(w), models.path())?;
        if w == 1 {
            broker_latency = Some(d.latency(b.repeat)?);
        }
        if b.workers.contains(&w) {
            // Every worker takes a prompt or two before the clock starts.
            d.time_batch(d.workers.len(), 2, b.wait_ms, "warm")?;
            let secs = d.time_batch(clients, per, b.wait_ms, &format!("{w} workers"))?;
            rows.push(Row { label: format!("{w} worker{}", if w == 1 { "" } else { "s" }), runners: w, workers: Some(w), secs });
        }
        if w == 2 && b.slider > 0 {
            sliders.push(("serve --broker, 2 workers".to_string(), d.slider(b.slider)?));
        }
    }

    let wait = b.wait_ms as f64 / 1e3;
    let one = rows.iter().find(|r| r.workers == Some(1)).map(|r| r.secs);
    println!("{:<28} {:>10} {:>10} {:>9} {:>9} {:>12}", "throughput", "prompts/s", "ideal", "of ideal", "speed-up", "per prompt");
    for r in &rows {
        let rate = n as f64 / r.secs;
        // A runner that did nothing but wait: `runners` prompts every `wait`.
        let ideal = if wait > 0.0 { format!("{:.1}", r.runners as f64 / wait) } else { "—".into() };
        let of_ideal = if wait > 0.0 { format!("{:.0}%", 100.0 * rate * wait / r.runners as f64) } else { "—".into() };
        let speedup = match (r.workers, one) {
            (Some(_), Some(one)) => format!("{:.2}×", one / r.secs),
            _ => "—".into(),
        };
        // How long each prompt held its runner.
        let held = r.secs * r.runners as f64 / n as f64;
        println!("{:<28} {:>10.1} {:>10} {:>9} {:>9} {:>12}", format!("  {}", r.label), rate, ideal, of_ideal, speedup, fmt_secs(held));
    }
    let broker_latency = broker_latency.expect("measured with one worker");
    println!("{:<28} {:>10}", format!("POST → success, median of {}", b.repeat.max(1)), "TestWait 0 ms");
    println!("{:<28} {:>10}", "  serve, no broker", fmt_secs(local_latency));
    println!("{:<28} {:>10}", "  serve --broker, 1 worker", fmt_secs(broker_latency));
    let queued = match (one, rows.first()) {
        (Some(one), Some(local)) => fmt_ms((one - local.secs) / n as f64),
        _ => "— (no 1-worker run)".into(),
    };
    println!("broker overhead per prompt: {} on one prompt alone, {queued} in a full queue (1 worker vs no broker)", fmt_ms(broker_latency - local_latency));
    if !sliders.is_empty() {
        println!("{:<28} {:>12} {:>14} {:>12}", "slider (WIDEN t_factor)", "first merge", "slider change", "re-loaded");
        for (label, s) in &sliders {
            println!("{:<28} {:>12} {:>14} {:>12}", format!("  {label}"), fmt_secs(s.first), fmt_secs(s.change), format!("{} of {}", s.reloaded, s.changes));
        }
        if let [(_, local), (_, remote)] = &sliders[..] {
            println!("slider change with the broker: {} over a local server (median of {})", fmt_ms(remote.change - local.change), remote.changes);
        }
    }
    Ok(())
}

/// Milliseconds with a sign (an overhead can measure below zero in noise).
fn fmt_ms(secs: f64) -> String {
    format!("{:+.2} ms", secs * 1e3)
}
