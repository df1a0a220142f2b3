//! What the official frontend's assets sidebar (comfyui-frontend-package 1.58) asks of the server
//! after a prompt saved an image, over real HTTP on loopback: the history page it fetches from
//! `/api/jobs` (which it validates strictly: one malformed job and the whole panel is empty), and
//! the thumbnail it then loads from `/api/view` with the parameters it builds. tests/browser.rs
//! shows the same in a real browser.

mod common;

use std::sync::Arc;

use common::*;
use comfyrs_runtime::executor::Executor;
use comfyrs_runtime::schema::{InputSpec, NodeSchema};
use comfyrs_runtime::{Args, CallOutput, ExecContext, NodeClass, NodeError, Registry};
use comfyrs_server::{Host, ServeOptions};
use serde_json::{json, Map, Value as Json};

/// `TestSaveImage`: writes a 3×2 PNG named `{filename_prefix}_00001_.png` into the output folder
/// and reports it as ComfyUI's SaveImage does (`ui.images`).
struct SaveImage(Arc<NodeSchema>);

fn png_bytes() -> Vec<u8> {
    let img = image::RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 80, y as u8 * 120, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

impl NodeClass for SaveImage {
    fn schema(&self) -> Arc<NodeSchema> {
        self.0.clone()
    }
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        let name = format!("{}_00001_.png", args.string("filename_prefix")?);
        std::fs::write(ctx.output_dir.join(&name), png_bytes()).map_err(|e| NodeError::msg(e.to_string()))?;
        let mut ui = Map::new();
        ui.insert("images".into(), json!([{"filename": name, "subfolder": "", "type": "output"}]));
        Ok(CallOutput::default().with_ui(ui))
    }
}

struct SavingHost(Arc<Registry>);

impl Host for SavingHost {
    fn registry(&self) -> Arc<Registry> {
        self.0.clone()
    }
    fn executor(&self) -> Executor {
        Executor::new(comfyrs_runtime::cache::CacheMode::Lru, 64 << 20)
    }
}

fn start(dir: &std::path::Path) -> Server {
    let mut reg = Registry::new();
    comfyrs_core::register(&mut reg);
    let schema = NodeSchema::new("TestSaveImage", "Save image test", "testing").input(InputSpec::string("filename_prefix", "ComfyUI")).output_node();
    reg.register(Arc::new(SaveImage(Arc::new(schema))));
    Server::start_host(ServeOptions { port: 0, ..ServeOptions::new(dir) }, Arc::new(SavingHost(Arc::new(reg))))
}

fn is_int(v: &Json) -> bool {
    v.as_i64().is_some()
}

#[test]
fn the_assets_panel_gets_a_saved_image_from_jobs_and_view() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    // As the page queues: a client id and the editor workflow in extra_pnginfo.
    let body = json!({
        "prompt": {"9": {"class_type": "TestSaveImage", "inputs": {"filename_prefix": "panel"}}},
        "client_id": "page",
        "extra_data": {"extra_pnginfo": {"workflow": {"id": "0b5e7e43-5b1c-4b8e-9d1a-3c2f8a6d7e10", "nodes": []}}},
    });
    let (status, resp) = server.post("/api/prompt", &body);
    assert_eq!(status, 200, "{resp}");
    let id = resp["prompt_id"].as_str().unwrap().to_string();
    server.wait_history(&id);

    // The panel's history page (fetchHistoryPage): this exact query.
    let (status, page) = server.get("/api/jobs?status=completed,failed,cancelled&limit=200&offset=0");
    assert_eq!(status, 200, "{page}");
    // Its schema wants every pagination field as a number or boolean, never null.
    let p = &page["pagination"];
    assert!(is_int(&p["offset"]) && is_int(&p["limit"]) && is_int(&p["total"]) && p["has_more"].is_boolean(), "{page}");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1), "{page}");
    let job = &page["jobs"][0];
    assert_eq!(job["id"], json!(id));
    assert_eq!(job["status"], "completed");
    // create_time is required; outputs_count and previewable_outputs_count are required
    // integers (null allowed); the panel keeps only completed jobs with a preview_output.
    assert!(is_int(&job["create_time"]), "{job}");
    assert!(is_int(&job["execution_start_time"]) && is_int(&job["execution_end_time"]), "{job}");
    assert_eq!(job["outputs_count"], 1);
    assert_eq!(job["previewable_outputs_count"], 1);
    assert_eq!(job["workflow_id"], "0b5e7e43-5b1c-4b8e-9d1a-3c2f8a6d7e10");
    // The preview: the file's record plus the node id (a string) and the media type, which the
    // panel turns back into the job's outputs ({nodeId: {mediaType: [preview]}}).
    assert_eq!(job["preview_output"], json!({"filename": "panel_00001_.png", "subfolder": "", "type": "output", "nodeId": "9", "mediaType": "images"}));
    // Keys whose value would be null are left out, as in ComfyUI.
    assert!(job.get("execution_error").is_none(), "{job}");

    // The queue half of the panel (fetchQueue): empty, with the same pagination shape.
    let (status, q) = server.get("/api/jobs?status=in_progress,pending&limit=200&offset=0");
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["jobs"], json!([]));
    assert_eq!(q["pagination"], json!({"offset": 0, "limit": 200, "total": 0, "has_more": false}));

    // The thumbnail: the frontend builds /api/view with filename, type and an empty subfolder.
    let thumb = server.get_bytes("/api/view?filename=panel_00001_.png&type=output&subfolder=");
    assert_eq!(thumb.status, 200, "{}", thumb.text());
    assert_eq!(thumb.header("content-type"), Some("image/png"));
    assert_eq!(thumb.body, png_bytes());
    let decoded = image::load_from_memory(&thumb.body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (3, 2));

    // The job's details (opening it from the panel): the saved file among its outputs.
    let (status, detail) = server.get(&format!("/api/jobs/{id}"));
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["outputs"]["9"]["images"], json!([{"filename": "panel_00001_.png", "subfolder": "", "type": "output"}]));
    assert_eq!(detail["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"], "0b5e7e43-5b1c-4b8e-9d1a-3c2f8a6d7e10");
}
