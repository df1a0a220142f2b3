//! The merge report (docs/widen.md, "Report"): the figures a run's root merge gathers, their
//! aggregation per block and layer type, the same report from the cache and from a saved file's
//! metadata, the picture's content, and the WIDEN Report node.

mod pack_util;

use std::sync::Arc;

use comfyrs_nodes::arch::Arch;
use comfyrs_nodes::merge::report::{MergeReport, OTHER};
use comfyrs_nodes::merge::report_png;
use comfyrs_nodes::pack::NativeImage;
use pack_util::*;
use serde_json::{json, Value as Json};

/// Base ⟵ Compose(LoRA a (attention only) ×sa, LoRA b (every layer) ×sb) at `t`, through an
/// Exit (`exit` extra inputs) into a capture node.
fn two_loras(sa: f64, sb: f64, t: f64, exit: Json) -> Json {
    let mut exit_inputs = json!({"widen": ["5", 0]});
    exit_inputs.as_object_mut().unwrap().extend(exit.as_object().unwrap().clone());
    json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/a.safetensors", "strength": sa}},
        "3": {"class_type": "WIDENLoRA", "inputs": {"lora_name": "sdxl/b.safetensors", "strength": sb}},
        "4": {"class_type": "WIDENCompose", "inputs": {"branch": ["3", 0], "compose": ["7", 0]}},
        "7": {"class_type": "WIDENCompose", "inputs": {"branch": ["2", 0]}},
        "5": {"class_type": "WIDENMerge", "inputs": {"base": ["1", 0], "target": ["4", 0], "t_factor": t}},
        "6": {"class_type": "WIDENExit", "inputs": exit_inputs},
        "8": {"class_type": "TestCapture", "inputs": {"value": ["6", 0]}}
    })
}

fn report_of(model: &comfyrs_nodes::pack::NativeModel) -> Arc<MergeReport> {
    model.report().expect("the Exit's MODEL carries its merge's report").clone()
}

#[test]
fn who_won_where_divergences_and_nothing_left_at_the_backbone() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut exec = executor();
    let (run_report, id) = run(&reg, &mut exec, &two_loras(0.5, 5.0, 1.0, json!({"enable_cache": false})));
    assert_ok(&run_report);
    let model = model_of(&captured(&id, "8"));
    let r = report_of(&model);
    assert_eq!(r.meta.contributors.len(), 2, "{:?}", r.meta);
    assert!(r.meta.contributors[0].contains("a ×0.5") && r.meta.contributors[1].contains("b ×5"), "{:?}", r.meta.contributors);
    assert_eq!(r.meta.arch, "sdxl");
    assert_eq!(r.keys, model.overrides().len());
    assert_eq!(r.without_figures, 0);
    assert!(r.at_backbone.is_empty(), "WIDEN attenuates, it never drops a whole key at t = 1: {:?}", r.at_backbone);
    assert_eq!(r.groups.iter().map(|g| g.keys).sum::<usize>(), r.keys);
    // Every key's shares sum to 1, so every group's do.
    for g in &r.groups {
        let sum: f64 = g.share.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{g:?}");
    }
    // b alone touches the feed-forward layers: it takes all of them. Both touch attention.
    let ff: Vec<_> = r.groups.iter().filter(|g| g.layer == "feed_forward").collect();
    assert!(!ff.is_empty(), "{:?}", r.groups);
    for g in ff {
        assert!(g.share[0] == 0.0 && (g.share[1] - 1.0).abs() < 1e-6, "{g:?}");
    }
    let attn: Vec<_> = r.groups.iter().filter(|g| g.layer == "attention").collect();
    assert!(!attn.is_empty());
    for g in attn {
        assert!(g.share[0] > 0.05 && g.share[1] > 0.05, "both contributors keep part of the attention layers: {g:?}");
        // Ten times the strength diverges more from the base, in magnitude and direction.
        assert!(g.magnitude[1].unwrap() > g.magnitude[0].unwrap(), "{g:?}");
        assert!(g.direction[1].unwrap() > g.direction[0].unwrap(), "{g:?}");
    }
    // Blocks are the SDXL sliders; keys outside every slider or layer type are `other`.
    assert!(r.blocks().iter().any(|b| b.starts_with("IN")), "{:?}", r.blocks());
    assert!(r.layers().last().is_some_and(|l| *l == OTHER || r.layers().iter().all(|l| *l != OTHER)));
    // The Exit's UI output carries the same report (what `comfyrs report` reads for a workflow).
    let ui: MergeReport = serde_json::from_value(run_report.outputs["6"]["widen_report"][0].clone()).unwrap();
    assert_eq!(ui, *r);
    // The table names every contributor and group.
    let text = r.to_text();
    assert!(text.contains("b ×5") && text.contains("feed_forward") && text.contains("0 left at the backbone"), "{text}");
}

#[test]
fn t_zero_leaves_every_key_at_the_backbone() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut exec = executor();
    let (run_report, id) = run(&reg, &mut exec, &two_loras(1.0, 1.0, 0.0, json!({"enable_cache": false})));
    assert_ok(&run_report);
    let r = report_of(&model_of(&captured(&id, "8")));
    assert!(r.keys > 0);
    assert_eq!(r.at_backbone.len(), r.keys, "t = 0 is the backbone (D5)");
    let mut sorted = r.at_backbone.clone();
    sorted.sort();
    assert_eq!(sorted, r.at_backbone);
    for g in &r.groups {
        assert_eq!(g.at_backbone, g.keys, "{g:?}");
        assert!(g.kept.iter().all(|k| *k == 0.0), "{g:?}");
    }
    assert!(r.to_text().contains(&format!("{} left at the backbone", r.keys)));
}

/// A run answered by the subtree cache reports what the run that computed it did.
#[test]
fn a_cached_run_has_the_same_report() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let prompt = two_loras(1.0, 2.0, 1.0, json!({}));
    let (first, _) = run_fresh(&reg, &prompt, "6", "8");
    let (second, ui) = run_fresh(&reg, &prompt, "6", "8");
    assert!(ui["cache_hits"].as_u64().unwrap() > 0, "the second run comes from the cache: {ui}");
    assert_eq!(ui["recomputed"], json!(0), "{ui}");
    // What gathering the report took is a phase of its own in the Exit's statistics.
    assert!(ui["phases"]["report"].as_f64().is_some_and(|s| s >= 0.0), "{ui}");
    // A native base: nothing to hand over to another runtime.
    assert_eq!(ui["phases"]["handover"], json!(0.0), "{ui}");
    assert_eq!(*report_of(&second), *report_of(&first));
    assert_eq!(report_of(&second).without_figures, 0);
}

/// The saved file's metadata holds the report: read back it is the run's, and a run that reuses
/// the file reports it too.
#[test]
fn the_saved_file_redraws_the_same_report() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let prompt = two_loras(1.0, 2.0, 1.0, json!({"save_model": true, "model_name": "reported"}));
    let (model, _) = run_fresh(&reg, &prompt, "6", "8");
    let path = m.root().join("checkpoints/reported.safetensors");
    let saved = comfyrs_nodes::merge::save::saved_report(&path).unwrap().expect("a report in the metadata");
    assert_eq!(saved, *report_of(&model));
    let (reused, ui) = run_fresh(&reg, &prompt, "6", "8");
    assert_eq!(ui["reused_saved_file"], json!(true), "{ui}");
    assert_eq!(*report_of(&reused), saved);
    assert_eq!(report_png::draw(&saved).unwrap().png().unwrap(), report_png::draw(&report_of(&model)).unwrap().png().unwrap());
}

fn decode(png_bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn has_color(rgb: &[u8], c: [u8; 3]) -> usize {
    rgb.chunks(3).filter(|p| *p == c).count()
}

/// The picture: a PNG of the drawn size, with the heat maps' colors where the report says.
#[test]
fn the_picture_shows_who_won_and_what_stayed_at_the_backbone() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut exec = executor();
    let (rr, id) = run(&reg, &mut exec, &two_loras(0.5, 5.0, 1.0, json!({"enable_cache": false})));
    assert_ok(&rr);
    let r = report_of(&model_of(&captured(&id, "8")));
    let picture = report_png::draw(&r).unwrap();
    let (w, h, rgb) = decode(&picture.png().unwrap());
    assert_eq!((w, h), (picture.width, picture.height));
    assert!(w >= 960 && h >= 400, "{w}x{h}");
    assert_eq!(rgb, picture.rgb);
    // b won the feed-forward cells outright: they are filled with its full color (red), and its
    // bars too; a's color (blue) fills its bars.
    let red = has_color(&rgb, [214, 39, 40]);
    let blue = has_color(&rgb, [31, 119, 180]);
    assert!(red > 2000, "b's color covers its won cells and bars: {red} pixels");
    assert!(blue > 200, "a's color is in the legend and its bars: {blue} pixels");
    // Text was drawn (dark pixels beyond the colored areas) and most of the page is white.
    let white = has_color(&rgb, [255, 255, 255]);
    let dark = rgb.chunks(3).filter(|p| p.iter().all(|&v| v < 80)).count();
    assert!(white > (w * h) as usize / 3 && dark > 1000, "white {white}, dark {dark}");
    // No key stayed at the backbone: no gray "base" cell (only a few antialiased text pixels).
    assert!(has_color(&rgb, [215, 215, 215]) < 200);

    let (rr, id) = run(&reg, &mut exec, &two_loras(1.0, 1.0, 0.0, json!({"enable_cache": false})));
    assert_ok(&rr);
    let at_base = report_png::draw(&report_of(&model_of(&captured(&id, "8")))).unwrap();
    assert!(has_color(&at_base.rgb, [215, 215, 215]) > 1000, "every cell is the gray of keys left at the backbone");
    assert!(has_color(&at_base.rgb, [214, 39, 40]) < red / 4, "nobody won anything");
}

/// The WIDEN Report node: the IMAGE (ComfyUI's [B, H, W, C] in 0..1), the table, and the picture
/// shown in its UI.
#[test]
fn the_report_node_outputs_the_picture_and_the_table() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut exec = executor();
    let mut prompt = two_loras(1.0, 2.0, 1.0, json!({"enable_cache": false}));
    let p = prompt.as_object_mut().unwrap();
    p.insert("9".into(), json!({"class_type": "WIDENReport", "inputs": {"model": ["6", 0]}}));
    p.insert("10".into(), json!({"class_type": "TestCapture", "inputs": {"value": ["9", 0]}}));
    p.insert("11".into(), json!({"class_type": "TestCapture", "inputs": {"value": ["9", 1]}}));
    let (rr, id) = run(&reg, &mut exec, &prompt);
    assert_ok(&rr);
    let r = report_of(&model_of(&captured(&id, "8")));
    let picture = report_png::draw(&r).unwrap();
    let image = match captured(&id, "10") {
        comfyrs_runtime::Value::Handle(h) => h.as_any().downcast_ref::<NativeImage>().expect("a native IMAGE").tensor(),
        v => panic!("IMAGE output is {}", v.kind()),
    };
    assert_eq!(image.size(), [1, picture.height as i64, picture.width as i64, 3]);
    assert_eq!(image.kind(), tch::Kind::Float);
    let back: Vec<u8> = Vec::<f32>::try_from(&image.flatten(0, -1)).unwrap().iter().map(|v| (v * 255.0).round() as u8).collect();
    assert_eq!(back, picture.rgb);
    match captured(&id, "11") {
        comfyrs_runtime::Value::String(s) => assert_eq!(s, r.to_text()),
        v => panic!("STRING output is {}", v.kind()),
    }
    let ui = &rr.outputs["9"];
    assert_eq!(ui["text"][0], json!(r.to_text()));
    let file = ui["images"][0]["filename"].as_str().unwrap();
    let written = std::fs::read(std::env::temp_dir().join("comfyrs-pack-tests").join(file)).unwrap();
    assert_eq!(written, picture.png().unwrap());
}

/// A MODEL without a merge behind it is refused with what to connect.
#[test]
fn the_report_node_refuses_a_model_without_a_merge() {
    let m = models(&[Arch::Sdxl], false);
    let reg = registry(&m);
    let mut exec = executor();
    let prompt = json!({
        "1": {"class_type": "WIDENBaseInput", "inputs": {"model_name": "tiny/sdxl_f32.safetensors"}},
        "2": {"class_type": "WIDENExit", "inputs": {"widen": ["1", 0]}},
        "3": {"class_type": "WIDENReport", "inputs": {"model": ["2", 0]}}
    });
    let (rr, _) = run(&reg, &mut exec, &prompt);
    let e = error_of(&rr);
    assert!(e.contains("no merge report") && e.contains("WIDEN Exit"), "{e}");
}
