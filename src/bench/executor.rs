//! The executor benchmark of BENCHMARKS.md: chains and wide DAGs of
//! PrimitiveString → StringConcatenate … → PreviewAny, at 100, 1000 and 5000 nodes.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use comfyrs_runtime::cache::CacheMode;
use comfyrs_runtime::events::NoEvents;
use comfyrs_runtime::executor::{Executor, NodeStatus, RunOptions};
use comfyrs_runtime::prompt::Prompt;
use comfyrs_runtime::signature::sign_all;
use comfyrs_runtime::validate::{validate, Validated};
use comfyrs_runtime::Registry;
use serde_json::{json, Map, Value as Json};

use super::median_secs;
use crate::progress::fmt_secs;

#[derive(Args)]
pub struct ExecutorBench {
    /// Node counts to generate.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    sizes: Vec<usize>,
    /// Graph shapes: chain (each node feeds the next) and wide (independent branches).
    #[arg(long, value_delimiter = ',', default_value = "chain,wide")]
    shapes: Vec<String>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    repeat: usize,
}

/// A generated prompt: `chain` is one string growing through N-2 concatenations; `wide` is
/// N/3 branches of PrimitiveString → StringConcatenate → PreviewAny.
pub fn generate(shape: &str, nodes: usize) -> Result<Json> {
    let mut p = Map::new();
    let prim = |v: &str| json!({ "class_type": "PrimitiveString", "inputs": { "value": v } });
    let concat = |a: Json, b: &str| json!({ "class_type": "StringConcatenate", "inputs": { "string_a": a, "string_b": b, "delimiter": "" } });
    let preview = |src: Json| json!({ "class_type": "PreviewAny", "inputs": { "source": src } });
    match shape {
        "chain" => {
            let n = nodes.max(3);
            p.insert("1".into(), prim("start"));
            for i in 2..n {
                p.insert(i.to_string(), concat(json!([(i - 1).to_string(), 0]), "x"));
            }
            p.insert(n.to_string(), preview(json!([(n - 1).to_string(), 0])));
        }
        "wide" => {
            for b in 0..(nodes / 3).max(1) {
                let base = b * 3;
                p.insert((base + 1).to_string(), prim(&format!("branch {b}")));
                p.insert((base + 2).to_string(), concat(json!([(base + 1).to_string(), 0]), "x"));
                p.insert((base + 3).to_string(), preview(json!([(base + 2).to_string(), 0])));
            }
        }
        other => bail!("unknown shape '{other}': use chain or wide"),
    }
    Ok(Json::Object(p))
}

fn prepare(reg: &Registry, json: &Json) -> Validated {
    let prompt = Prompt::from_json(json).expect("generated prompts parse");
    match validate(prompt, reg, None) {
        Ok(v) => v,
        Err(r) => panic!("generated prompt rejected: {}", r.render()),
    }
}

pub fn run(b: &ExecutorBench) -> Result<()> {
    let mut reg = Registry::new();
    comfyrs_core::register(&mut reg);
    let out = std::env::temp_dir().join("comfyrs-bench");
    let events = NoEvents;
    writeln!(std::io::stdout().lock(), "| prompt | nodes | validate | sign | first run | all cached | one constant changed | executed on change |")?;
    writeln!(std::io::stdout().lock(), "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for shape in &b.shapes {
        for &size in &b.sizes {
            let json = generate(shape, size)?;
            let text = json.to_string();
            let v = prepare(&reg, &json);
            let n = v.prompt.nodes.len();
            let opts = RunOptions { prompt_id: "bench".into(), extra_pnginfo: None, output_dir: out.clone(), events: &events, extra_data: None, registry: None };
            let t_validate = median_secs(b.repeat, || {
                let t = Instant::now();
                let j: Json = serde_json::from_str(&text).unwrap();
                let v = prepare(&reg, &j);
                std::hint::black_box(&v);
                t.elapsed().as_secs_f64()
            });
            let t_sign = median_secs(b.repeat, || {
                let t = Instant::now();
                std::hint::black_box(sign_all(&v));
                t.elapsed().as_secs_f64()
            });
            let t_cold = median_secs(b.repeat, || {
                let mut ex = Executor::new(CacheMode::Lru, 1 << 34);
                let t = Instant::now();
                let r = ex.run(&v, &opts);
                let s = t.elapsed().as_secs_f64();
                assert!(r.success() && r.count(&NodeStatus::Executed) == n);
                s
            });
            let mut ex = Executor::new(CacheMode::Lru, 1 << 34);
            ex.run(&v, &opts);
            let t_cached = median_secs(b.repeat, || {
                let t = Instant::now();
                let r = ex.run(&v, &opts);
                let s = t.elapsed().as_secs_f64();
                assert!(r.success() && r.count(&NodeStatus::Executed) == 0);
                s
            });
            // Change the first primitive to a new value each time, so each run is a real miss.
            let mut executed = 0;
            let mut k = 0;
            let t_changed = median_secs(b.repeat, || {
                k += 1;
                let mut j = json.clone();
                j["1"]["inputs"]["value"] = json!(format!("changed {k}"));
                let v2 = prepare(&reg, &j);
                let t = Instant::now();
                let r = ex.run(&v2, &opts);
                let s = t.elapsed().as_secs_f64();
                executed = r.count(&NodeStatus::Executed);
                assert!(r.success());
                s
            });
            writeln!(
                std::io::stdout().lock(),
                "| {shape}_{size} | {n} | {} | {} | {} | {} | {} | {executed} |",
                fmt_secs(t_validate),
                fmt_secs(t_sign),
                fmt_secs(t_cold),
                fmt_secs(t_cached),
                fmt_secs(t_changed)
            )?;
        }
    }
    Ok(())
}
