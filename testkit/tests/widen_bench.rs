//! Runs the WIDEN benchmark (`comfyrs bench widen` once the CLI wires it) from the test harness:
//! `WIDEN_BENCH_ARGS="--quick --device cpu" cargo test -p comfyrs-testkit --test widen_bench -- --ignored --nocapture`.
//! A benchmark, not a timed test: ignored by default.

use clap::Parser;
use comfyrs_testkit::widen_bench::{run, WidenBenchOptions};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: WidenBenchOptions,
}

#[test]
#[ignore = "benchmark; run with --ignored"]
fn widen_bench() {
    let args = std::env::var("WIDEN_BENCH_ARGS").unwrap_or_else(|_| "--quick --device cpu".into());
    let cli = Cli::parse_from(std::iter::once("widen-bench").chain(args.split_whitespace()));
    run(&cli.opts, &mut std::io::stdout()).expect("benchmark runs");
}

/// The quick CPU table parses and runs end to end on a tiny configuration (no timing claims).
#[test]
fn bench_runs_on_a_tiny_configuration() {
    let cli = Cli::parse_from([
        "widen-bench", "--device", "cpu", "--shapes", "sdxl-640x2048", "--contributors", "1,2", "--ranks", "8",
        "--iters", "1", "--batch-mib", "1",
    ]);
    let mut out = Vec::new();
    run(&cli.opts, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("| SDXL cross-attn k/v 640x2048 | 1 | 2 | 8 | low-rank |"), "{text}");
    assert!(text.contains("| dense |"), "{text}");
    assert!(!text.contains("NaN"), "{text}");
}
