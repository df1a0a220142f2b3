//! `comfyrs bench cluster` runs on tiny settings: its own redis-server, server and workers, its
//! table printed, every process it started gone. No timing is asserted.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::{bin, KillOnDrop};

/// Runs `comfyrs ARGS` to its end (bounded): (exit code, stdout, stderr).
fn run(args: &[&str], within: Duration) -> (Option<i32>, String, String) {
    let mut child = KillOnDrop(bin().args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap());
    // Drained while it runs, so a full pipe cannot block it.
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "comfyrs {args:?} did not finish within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

#[test]
fn bench_cluster_runs_a_deployment_and_prints_its_table() {
    let (code, out, err) = run(&["bench", "cluster", "--prompts", "8", "--clients", "2", "--workers", "1,2", "--wait-ms", "5", "--repeat", "3", "--slider", "3"], Duration::from_secs(400));
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for heading in ["throughput", "prompts/s", "speed-up", "serve, no broker", "1 worker", "2 workers", "serve --broker, 1 worker", "broker overhead per prompt", "slider (WIDEN t_factor)", "serve --broker, 2 workers", "slider change with the broker"] {
        assert!(out.contains(heading), "no {heading:?} in:\n{out}");
    }
    // Cache affinity: every slider change ran where the models were already loaded.
    let slider = out.lines().find(|l| l.contains("serve --broker, 2 workers") && l.contains(" of ")).unwrap_or_else(|| panic!("no slider row in:\n{out}"));
    assert!(slider.trim_end().ends_with("0 of 3"), "a slider change loaded the models again: {slider}");
}

#[test]
fn bench_cluster_says_what_to_change() {
    let (code, _, err) = run(&["bench", "cluster", "--workers", "0,2"], Duration::from_secs(60));
    assert_ne!(code, Some(0));
    assert!(err.contains("--workers wants worker counts of at least 1"), "{err}");
    let (code, _, err) = run(&["bench", "cluster", "--prompts", "1", "--clients", "1", "--wait-ms", "0", "--repeat", "1", "--slider", "0", "--redis-server", "/nonexistent/redis-server"], Duration::from_secs(120));
    assert_ne!(code, Some(0));
    assert!(err.contains("install Debian's redis-server, or give --redis-server PATH"), "{err}");
}
