//! The content-addressed subtree cache (docs/decisions.md D19): after every kind of change the
//! incremental result is bit-identical to a cold run, and only what changed is recomputed. Each
//! test has an engine of its own (in its models fixture), so the counts are its own.

mod pack_util;

use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::pack::{MergeEngine, MergeSettings};
use pack_util::*;
use serde_json::{json, Value as Json};

fn prompt(s_c: f64, t2: f64, mid: f64, extra_branch: bool, cache: bool) -> Json {
    let mut bc = serde_json::Map::new();
    for b in (0..9).map(|i| format!("IN{i:02}")).chain(["MID".into()]).chain((0..9).map(|i| format!("OUT{i:02}"))).chain(
        ["TIME_EMBED", "LABEL_EMB", "FINAL_OUT", "attention", "feed_forward", "norm"].iter().map(|s| s.to_string()),
    ) {
        bc.insert(b, json!(1.0));
    }
    bc.insert("MID".into(), json!(mid));
    let mut p = json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": 1.0}},
        "3": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": 0.8}},
        "4": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "5": {"class_type": "WIDENCompose", "inputs": {"branch": ["3", 0], "compose": ["4", 0]}},
        "6": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["5", 0], "t_factor": 1.0}},
        "7": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/c.safetensors", "strength": s_c, "block_config": ["12", 0]}},
        "8": {"class_type": "WIDENMerge", "inputs": {"base": ["6", 0], "target": ["7", 0], "t_factor": t2}},
        "9": {"class_type": "WIDENExit", "inputs": {"widen": ["8", 0], "enable_cache": cache}},
        "10": {"class_type": "TestCapture", "inputs": {"value": ["9", 0]}},
        "12": {"class_type": "WIDENBlockConfigSDXL", "inputs": bc}
    });
    if extra_branch {
        p["13"] = json!({"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/locon.safetensors", "strength": 1.0}});
        p["14"] = json!({"class_type": "WIDENCompose", "inputs": {"branch": ["13", 0], "compose": ["5", 0]}});
        p["6"]["inputs"]["target"] = json!(["14", 0]);
    }
    p
}

struct Outcome {
    model: std::sync::Arc<comfyrs_nodes::pack::NativeModel>,
    stats: Json,
}

fn exec_once(m: &Models, p: &Json) -> Outcome {
    // A fresh executor: the runtime's own output cache must not answer, the subtree cache must.
    let (model, stats) = run_fresh(&registry(m), p, "9", "10");
    Outcome { model, stats }
}

#[test]
fn incremental_results_equal_cold_runs() {
    let m = models(&[Arch::Sdxl], false);
    let n = |o: &Outcome, k: &str| o.stats[k].as_u64().unwrap();
    // Cold, then warm: everything from the cache.
    let first = exec_once(&m, &prompt(1.0, 0.5, 1.0, false, true));
    assert_eq!(n(&first, "recomputed"), n(&first, "keys"), "{}", first.stats);
    let again = exec_once(&m, &prompt(1.0, 0.5, 1.0, false, true));
    assert_eq!(n(&again, "cache_hits"), n(&again, "keys"), "{}", again.stats);
    assert_eq!(n(&again, "recomputed"), 0);
    assert_same_overrides(&first.model, &again.model);

    let check = |label: &str, p_warm: Json, p_cold: Json| -> Outcome {
        let warm = exec_once(&m, &p_warm);
        let cold = exec_once(&m, &p_cold);
        assert_eq!(n(&cold, "cache_hits"), 0, "{label}: the cold run must not read the cache");
        assert_same_overrides(&warm.model, &cold.model);
        eprintln!("{label}: {}", warm.stats);
        warm
    };
    // Strength of the outer LoRA: the inner merge M1 is reused for every key.
    let w = check("strength", prompt(0.7, 0.5, 1.0, false, true), prompt(0.7, 0.5, 1.0, false, false));
    assert!(n(&w, "subtree_hits") > 0, "{}", w.stats);
    assert_eq!(n(&w, "stats_hits"), 0, "a new strength needs new statistics: {}", w.stats);
    // Outer t_factor only: M1 reused, and the outer merge's column statistics for every key.
    let w = check("t_factor", prompt(0.7, 0.9, 1.0, false, true), prompt(0.7, 0.9, 1.0, false, false));
    assert!(n(&w, "subtree_hits") > 0);
    assert_eq!(n(&w, "stats_hits"), n(&w, "recomputed"), "{}", w.stats);
    assert!(n(&w, "stats_hits") > 0);
    // A block slider of the outer LoRA: only MID keys recomputed, the rest are final-cache hits.
    let w = check("block slider", prompt(0.7, 0.9, 0.25, false, true), prompt(0.7, 0.9, 0.25, false, false));
    let mid = w.model.overrides().keys().filter(|k| k.contains("middle_block")).count() as u64;
    assert!(mid > 0);
    assert_eq!(n(&w, "recomputed"), mid, "{}", w.stats);
    // A branch added to the inner compose: M1 changes, so everything above it is recomputed.
    let w = check("branch added", prompt(0.7, 0.9, 0.25, true, true), prompt(0.7, 0.9, 0.25, true, false));
    assert_eq!(n(&w, "cache_hits"), 0);
    // LoRA file touched (same bytes, new mtime): recomputed, same values.
    let before = exec_once(&m, &prompt(0.7, 0.9, 0.25, true, true));
    assert_eq!(n(&before, "recomputed"), 0);
    let path = m.root().join("loras/sdxl/c.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&path, &bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    let w = check("lora touched", prompt(0.7, 0.9, 0.25, true, true), prompt(0.7, 0.9, 0.25, true, false));
    assert!(n(&w, "recomputed") > 0, "{}", w.stats);
    assert_same_overrides(&w.model, &before.model);
}

/// The subtree cache under pressure: when it holds the branch below the output but not both, a
/// slider change on the output's merge still finds the whole branch (the output's results are
/// stored at the cold end of the LRU); when it cannot hold the branch either, it finds the
/// branch's first chunks.
mod under_pressure {
    use super::*;

    /// M1 = merge of a compose of two LoRAs onto the base; M2 = a third LoRA merged onto M1 at `t2`.
    fn prompt(t2: f64, cache: bool) -> Json {
        chain_prompt("tiny/sdxl_f32.safetensors", t2, cache)
    }

    fn exec_once(m: &Models, p: &Json) -> (std::sync::Arc<comfyrs_nodes::pack::NativeModel>, Json) {
        run_fresh(&registry(m), p, "9", "10")
    }

    fn n(stats: &Json, k: &str) -> u64 {
        stats[k].as_u64().unwrap()
    }

    /// Bytes the engine's subtree cache holds (host memory on the CPU, device memory on a GPU).
    fn held(m: &Models) -> usize {
        let s = m.engine.subtree_cache().stats();
        s.bytes + s.device_bytes
    }

    /// Models whose engine's subtree cache, emptied, has room for `num / den` of what one cold
    /// run of the chain leaves (both merges' results: the same keys, shapes and dtype); and that
    /// room.
    fn squeezed(num: usize, den: usize) -> (Models, usize) {
        let m = models(&[Arch::Sdxl], false);
        exec_once(&m, &prompt(0.5, true));
        let both = held(&m);
        assert!(both > 0);
        let room = both * num / den;
        m.engine.subtree_cache().set_limits(room, room);
        m.engine.clear();
        (m, room)
    }

    #[test]
    fn a_cache_too_small_for_two_merges_keeps_the_branch_a_slider_change_needs() {
        // Room for one merge's results and a bit, not for two.
        let (m, room) = squeezed(6, 10);
        let (_, cold) = exec_once(&m, &prompt(0.5, true));
        assert_eq!(n(&cold, "recomputed"), n(&cold, "keys"));
        if !m.engine.device().is_cuda() {
            assert_eq!(products(&m), 0, "by default the CPU keeps no products");
        }
        let (warm, stats) = exec_once(&m, &prompt(0.9, true));
        assert_eq!(n(&stats, "subtree_hits"), n(&stats, "keys"), "every key of M1 comes from the cache: {stats}");
        assert_eq!(n(&stats, "stats_hits"), n(&stats, "keys"), "{stats}");
        assert!(held(&m) <= room);
        // And it is the cold result.
        let (fresh, _) = exec_once(&m, &prompt(0.9, false));
        assert_same_overrides(&warm, &fresh);
    }

    /// Bytes the engine keeps as the products of low-rank merges.
    fn products(m: &Models) -> usize {
        let s = m.engine.subtree_factor_cache().stats();
        s.bytes + s.device_bytes
    }

    /// No room for full results at all: the products the merges kept (each result is the base
    /// plus one low-rank product) answer every slider change. Every key of the branch is rebuilt
    /// from the base and its product, and the model is the cold run's bit for bit (fp32 base:
    /// nothing rounds a difference away), for a fraction of the memory.
    #[test]
    fn without_room_for_full_results_slider_changes_rebuild_the_branch_from_its_products() {
        // (Products are kept on a GPU by default; here on the CPU too.)
        let settings = MergeSettings { subtree_products: Some(true), ..MergeSettings::default() };
        let m = Models { engine: MergeEngine::standalone(settings).unwrap(), ..models(&[Arch::Sdxl], false) };
        exec_once(&m, &prompt(0.5, true));
        let (full, kept) = (held(&m), products(&m));
        assert!(kept > 0 && kept * 2 < full, "products {kept} B against full results {full} B");
        m.engine.subtree_cache().set_limits(0, 0);
        m.engine.clear();
        let (_, cold) = exec_once(&m, &prompt(0.5, true));
        let keys = n(&cold, "keys");
        assert_eq!((n(&cold, "recomputed"), n(&cold, "subtrees_rebuilt")), (keys, 0), "{cold}");
        assert_eq!(held(&m), 0, "no full result is kept");
        // Only the branch keeps its products: the output's would be read again only by a change
        // undone. (The keys where a LoRA of the branch is not a plain factor pair, such as LoRA
        // b's full-weight diffs, take the dense path and keep no product.)
        let entries = || m.engine.subtree_factor_cache().stats().entries as u64;
        let low_rank = entries();
        assert!(low_rank * 3 >= keys * 2, "{low_rank} of {keys} keys low-rank in the branch");
        // Every position rebuilds the branch, the first one again too, and the output keeps none.
        for t2 in [0.9, 0.3, 0.5] {
            let (warm, stats) = exec_once(&m, &prompt(t2, true));
            assert_eq!(n(&stats, "subtree_hits"), 0, "{stats}");
            assert_eq!(n(&stats, "subtrees_rebuilt"), low_rank, "t {t2}: {stats}");
            assert_eq!(entries(), low_rank, "t {t2}: the output kept products");
            let (fresh, _) = exec_once(&m, &prompt(t2, false));
            assert_same_overrides(&warm, &fresh);
        }
        // Giving device memory away (ComfyUI loading a model) takes the products last; on the CPU
        // there is none to give, and they stay.
        m.engine.yield_device(u64::MAX);
        assert!(products(&m) > 0);
    }

    /// The base weights a merge reads stay in the caches as they were read (on a GPU: as
    /// uploaded, in their own dtype). With no room for full results, every slider change
    /// rebuilds the branch from its products over those copies, bit for bit the cold result,
    /// and reads the base itself no more. An fp32 base's copy is in the dtype the merge computes
    /// in: a merge writing into what it was given would change the next change's base, which
    /// the comparisons with fresh runs would see.
    #[test]
    fn slider_changes_rebuild_the_branch_over_the_kept_copies_of_the_base() {
        for base in ["tiny/sdxl_f32.safetensors", "tiny/sdxl_f16.safetensors"] {
            // (Both are kept on a GPU by default; here on the CPU too.)
            let settings = MergeSettings { subtree_products: Some(true), base_copies: Some(true), ..MergeSettings::default() };
            let m = Models { engine: MergeEngine::standalone(settings).unwrap(), ..models(&[Arch::Sdxl], false) };
            m.engine.subtree_cache().set_limits(0, 0);
            let (_, cold) = exec_once(&m, &chain_prompt(base, 0.5, true));
            let keys = n(&cold, "keys");
            assert_eq!(n(&cold, "base_hits"), 0, "{base}: {cold}");
            assert_eq!(copies_of(&m), keys, "{base}: one copy per key the branch read");
            slider_changes_read_the_copies(&m, base, &[0.9, 0.3, 0.5], keys);
            // Without the setting the base is read each time and nothing is kept.
            let off = MergeSettings { subtree_products: Some(true), base_copies: Some(false), ..MergeSettings::default() };
            let m = Models { engine: MergeEngine::standalone(off).unwrap(), ..models(&[Arch::Sdxl], false) };
            exec_once(&m, &chain_prompt(base, 0.5, true));
            let (_, stats) = exec_once(&m, &chain_prompt(base, 0.9, true));
            assert_eq!((n(&stats, "base_hits"), copies_of(&m)), (0, 0), "{base}: {stats}");
        }
    }

    /// Where no copies are kept on the device (a ComfyUI MODEL's base, by default), the base
    /// keys a merge reads get copies in (page-locked) host memory the second time a merge reads
    /// them, and slider changes after that upload from those: equal to fresh runs, fp32 and fp16.
    #[test]
    fn slider_changes_read_the_base_from_host_copies_made_at_its_second_read() {
        for base in ["tiny/sdxl_f32.safetensors", "tiny/sdxl_f16.safetensors"] {
            // (On a GPU by default for a ComfyUI MODEL; here on the CPU, asked for.)
            let settings = MergeSettings {
                subtree_products: Some(true),
                base_copies: Some(false),
                page_locked_bases: Some(1 << 30),
                ..MergeSettings::default()
            };
            let m = Models { engine: MergeEngine::standalone(settings).unwrap(), ..models(&[Arch::Sdxl], false) };
            m.engine.subtree_cache().set_limits(0, 0);
            let (_, cold) = exec_once(&m, &chain_prompt(base, 0.5, true));
            let keys = n(&cold, "keys");
            assert_eq!((n(&cold, "base_hits"), copies_of(&m)), (0, 0), "{base}: a first read keeps no copy: {cold}");
            let (warm, stats) = exec_once(&m, &chain_prompt(base, 0.9, true));
            assert_eq!((n(&stats, "base_hits"), copies_of(&m)), (0, keys), "{base}: the second read makes them: {stats}");
            assert_same_overrides(&warm, &exec_once(&m, &chain_prompt(base, 0.9, false)).0);
            slider_changes_read_the_copies(&m, base, &[0.3, 0.5], keys);
        }
    }

    /// Each change to `ts` rebuilds the branch and reads every one of its `keys` of the base from
    /// the copies (a key with a full-weight diff, computed again, too), keeps the copies as they
    /// were, and equals a fresh run.
    fn slider_changes_read_the_copies(m: &Models, base: &str, ts: &[f64], keys: u64) {
        for &t2 in ts {
            let (warm, stats) = exec_once(m, &chain_prompt(base, t2, true));
            assert!(n(&stats, "subtrees_rebuilt") > 0, "{base}, t {t2}: {stats}");
            assert_eq!(n(&stats, "base_hits"), keys, "{base}, t {t2}: {stats}");
            assert_eq!(copies_of(m), keys, "{base}, t {t2}");
            let (fresh, _) = exec_once(m, &chain_prompt(base, t2, false));
            assert_same_overrides(&warm, &fresh);
        }
    }

    /// Keys of a base the engine keeps copies of.
    fn copies_of(m: &Models) -> u64 {
        m.engine.base_cache().stats().entries as u64
    }

    /// Smaller still: the branch alone does not fit. Plain LRU evicted each of its chunks just
    /// before the next run asked for it (no hits at all); a run does not evict what it used, so
    /// the first chunks stay and every slider change finds them.
    #[test]
    fn a_cache_too_small_for_the_branch_keeps_its_first_chunks_for_every_slider_change() {
        // Room for about 60% of the branch (half of a run's results).
        let (m, room) = squeezed(3, 10);
        let (_, cold) = exec_once(&m, &prompt(0.5, true));
        let keys = n(&cold, "keys");
        assert_eq!(n(&cold, "recomputed"), keys);
        for t2 in [0.9, 0.7, 0.3] {
            let (warm, stats) = exec_once(&m, &prompt(t2, true));
            let hits = n(&stats, "subtree_hits");
            assert!(hits >= keys / 4 && hits < keys, "part of the branch comes from the cache, every time (t {t2}): {stats}");
            assert!(held(&m) <= room);
            let (fresh, _) = exec_once(&m, &prompt(t2, false));
            assert_same_overrides(&warm, &fresh);
        }
    }
}
