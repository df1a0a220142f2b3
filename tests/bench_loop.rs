//! `comfyrs bench loop --tiny`: a WIDEN merge feeding ComfyUI's sampler, decoder and image saver
//! through the embedded ComfyUI on the CPU, on one executor; its table says which runs merged
//! again. No timing is asserted.
#![cfg(feature = "python")]

mod common;

use common::bin;

#[test]
fn bench_loop_merges_only_when_the_recipe_changes() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["bench", "loop", "--tiny", "--repeat", "2", "--dir"]).arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let cells = |prefix: &str| -> Vec<String> {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| {prefix}"))).unwrap_or_else(|| panic!("no row '{prefix}' in:\n{stdout}"));
        row.split('|').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
    };
    // Columns: run, first step, image, Exit (comfyrs); no reference was asked for.
    for row in ["first image of the process", "t_factor changed", "LoRA strength changed"] {
        let c = cells(row);
        assert!(c[1].ends_with(" s") && c[2].ends_with(" s"), "{row}: the sampler's first step and the image are timed: {c:?}");
        assert!(c[3].ends_with(" s"), "{row}: the recipe changed, so the Exit merged: {c:?}");
    }
    let seed = cells("new seed (merge cached)");
    assert!(seed[1].ends_with(" s") && seed[2].ends_with(" s"), "{seed:?}");
    assert_eq!(seed[3], "-", "a new seed alone must not merge again: {seed:?}");
    // The last image's pixels, and the weights its merge handed to the sampler (saved after the
    // timed runs), each as 16 hex digits.
    let last = stdout.lines().find(|l| l.starts_with("Last image: pixels ")).unwrap_or_else(|| panic!("{stdout}"));
    let digests: Vec<&str> = last.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit())).collect();
    assert!(last.contains("; its merge: weights ") && digests.len() == 2, "{last}");
    // After each run, what the engine's memory holds (the outputs among it).
    let memory: Vec<&str> = stderr.lines().filter(|l| l.starts_with("comfyrs:   memory: host ")).collect();
    let runs = stderr.lines().filter(|l| l.starts_with("comfyrs: ") && l.contains(": first step ")).count();
    assert!(runs >= 4 && memory.len() == runs, "one memory line per run ({runs} runs):\n{stderr}");
    assert!(memory.iter().all(|l| l.contains("outputs ")), "{memory:?}");
    // What each Exit computed: a t_factor change above a nested merge finds that merge's results
    // in the subtree cache; nothing ran out of memory on the CPU.
    let work = |run: &str| -> Vec<u64> {
        let l = stderr.lines().find(|l| l.starts_with(&format!("comfyrs: {run}: "))).unwrap_or_else(|| panic!("no '{run}' line:\n{stderr}"));
        let w = l.split("; Exit work: ").nth(1).unwrap_or_else(|| panic!("no Exit work in: {l}"));
        w.split(", ").map(|part| part.split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("{l}"))).collect()
    };
    let [keys, _, rebuilt, _, chunks, retries] = work("first image of the process")[..] else { panic!() };
    assert!(keys > 0 && rebuilt == 0 && chunks > 0 && retries == 0, "{keys} keys, {rebuilt} rebuilt, {chunks} chunks, {retries} retries");
    let [_, hits, _, base_copies, _, _] = work("t_factor changed")[..] else { panic!() };
    assert!(hits > 0, "the nested merge's results come from the cache");
    // (The CPU keeps no copies of the base: it is in host memory already.)
    assert_eq!(base_copies, 0);
    assert!(!stderr.lines().any(|l| l.starts_with("comfyrs: new seed") && l.contains("Exit work")), "a new seed runs no Exit:\n{stderr}");
}
