//! ComfyUI's official web frontend (comfyui-frontend-package, installed by scripts/setup.sh)
//! against a real `comfyrs serve`, in Debian's headless chromium driven through chromedriver:
//! the page boots without console errors, lists native and Python nodes, loads a workflow,
//! queues it, follows its progress and shows its output; then a workflow built in the page saves
//! an image, and the assets sidebar (fed by `/api/jobs`) shows it, loaded through `/view`; one
//! screenshot.
//!
//! Needs `chromium` and `chromedriver` on PATH (Debian's chromium and chromium-driver; the
//! set-up installs them) and fails, saying so, when they are missing.

mod common;
// Not in common/mod.rs: only the browser tests compile the WebDriver client.
#[path = "common/browser.rs"]
mod browser;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::{browser_tools, Driver, Page, PAGE_TIMEOUT};
use common::{repo, Serve};
use serde_json::{json, Value as Json};

/// Decodes a PNG and counts its distinct colours.
fn png_colours(bytes: &[u8]) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("the screenshot is a PNG");
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).expect("the screenshot decodes");
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    (info.width, info.height, colours.len())
}

#[test]
fn official_frontend_boots_lists_nodes_and_runs_a_workflow() {
    let (chromium, chromedriver) = browser_tools();
    let server = Serve::start();
    let driver = Driver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut page = driver.open(&chromium, profile.path()).await;
        let result = run(&mut page, &server).await;
        page.collect_log().await;
        let log = page.log.clone();
        let _ = page.client.close().await;
        if let Err(e) = result {
            panic!("{e}\nbrowser log: {}\nserver log:\n{}", serde_json::to_string_pretty(&log).unwrap(), server.log());
        }
    });
}

/// Queues the page's graph as the Queue button does and waits for the page to hear it end;
/// `window.__comfyrsEvents` must hold only this prompt's events.
async fn queue_from_page(page: &Page, what: &str) -> Result<(), String> {
    let queued = page
        .client
        .execute_async("const [done] = arguments; app.queuePrompt(0, 1).then(r => done(r), e => done('queue failed: ' + e));", vec![])
        .await
        .map_err(|e| e.to_string())?;
    if queued != true {
        return Err(format!("app.queuePrompt ({what}): {queued}"));
    }
    let outcome = page
        .wait_js(&format!("{what} to finish in the page"), "window.__comfyrsEvents.find(e => e.type === 'execution_success' || e.type === 'execution_error')")
        .await;
    if outcome["type"] != "execution_success" {
        return Err(format!("{what} failed: {outcome}"));
    }
    Ok(())
}

async fn run(page: &mut Page, server: &Serve) -> Result<(), String> {
    // Booted: the app and its graph exist and the node definitions are registered.
    page.boot(&server.base).await?;
    page.collect_log().await;
    let boot_errors = page.errors();
    if !boot_errors.is_empty() {
        return Err(format!("the page logged errors while booting: {boot_errors:#?}"));
    }

    // The node library has native core nodes, the WIDEN pack and ComfyUI's Python nodes, and a
    // Python node is usable (its widgets come from our /object_info).
    let missing = page
        .js("return arguments[0].filter(t => !LiteGraph.registered_node_types[t])", vec![json!(["StringConcatenate", "WIDENExit", "KSampler"])])
        .await;
    if missing != json!([]) {
        return Err(format!("node types missing from the page's node library: {missing}"));
    }
    let widgets = page.js("const n = LiteGraph.createNode('KSampler'); return n.widgets.map(w => w.name)", vec![]).await;
    for w in ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"] {
        if !widgets.as_array().is_some_and(|a| a.iter().any(|x| x == w)) {
            return Err(format!("KSampler has no {w} widget in the page: {widgets}"));
        }
    }

    // Load a UI workflow (reroute, converted widget, bypassed and muted nodes) and queue it from
    // the page, recording what the page hears from the server.
    let workflow: Json = serde_json::from_str(&std::fs::read_to_string(repo().join("workflows/strings_ui.json")).unwrap()).unwrap();
    let loaded = page
        .client
        .execute_async(
            "const [wf, done] = arguments; \
             window.__comfyrsEvents = []; \
             for (const t of ['status', 'execution_start', 'executing', 'progress_state', 'executed', 'execution_success', 'execution_error']) \
               app.api.addEventListener(t, e => window.__comfyrsEvents.push({type: t, detail: e.detail})); \
             app.loadGraphData(wf).then(() => done(app.graph.nodes.length), e => done('load failed: ' + e));",
            vec![workflow],
        )
        .await
        .map_err(|e| e.to_string())?;
    if !loaded.is_number() {
        return Err(format!("loadGraphData: {loaded}"));
    }
    // Progress and completion, as the page saw them.
    queue_from_page(page, "the strings workflow").await?;
    let events = page.js("return window.__comfyrsEvents", vec![]).await;
    let events = events.as_array().unwrap();
    let seen = |t: &str| events.iter().any(|e| e["type"] == t);
    for t in ["execution_start", "executing", "progress_state", "executed"] {
        if !seen(t) {
            return Err(format!("the page never got {t}: {events:?}"));
        }
    }
    let executed = events.iter().find(|e| e["type"] == "executed" && e["detail"]["node"] == "6");
    if executed.map(|e| &e["detail"]["output"]["text"]) != Some(&json!(["Hello world"])) {
        return Err(format!("no 'Hello world' output for node 6 in the page: {events:?}"));
    }
    // The output shows on the preview node itself.
    let shown = page
        .wait_js(
            "the preview node to show its text",
            "(app.graph.getNodeById(6).widgets || []).map(w => w.value).find(v => typeof v === 'string' && v.includes('Hello world'))",
        )
        .await;
    if shown != "Hello world" {
        return Err(format!("the preview node shows {shown}"));
    }

    // A workflow that saves an image, built in the page as a user would (EmptyImage → SaveImage,
    // small so it is cheap), queued from the page; its image then shows in the assets sidebar.
    close_dialogs(page).await;
    let built = page
        .js(
            "app.graph.clear(); \
             const img = LiteGraph.createNode('EmptyImage'), save = LiteGraph.createNode('SaveImage'); \
             app.graph.add(img); app.graph.add(save); img.pos = [50, 50]; save.pos = [400, 50]; \
             const w = (n, name) => n.widgets.find(w => w.name === name); \
             w(img, 'width').value = 64; w(img, 'height').value = 48; w(img, 'color').value = 0x3366cc; \
             w(save, 'filename_prefix').value = arguments[0]; \
             img.connect(0, save, 0); \
             window.__comfyrsEvents = []; \
             return save.id;",
            vec![json!(SAVE_PREFIX)],
        )
        .await;
    if built.is_null() {
        return Err(format!("building EmptyImage → SaveImage in the page: {built}"));
    }
    queue_from_page(page, "the SaveImage workflow").await?;
    // Then open the assets sidebar with its toolbar button, as a user looking for their output
    // would. (Opened before queueing, the panel's live refresh missed the new job in about one
    // run of three here; why is not known yet: docs/server.md lists it as open.)
    let button = page
        .client
        .wait()
        .at_most(PAGE_TIMEOUT)
        .for_element(fantoccini::Locator::Css("[data-testid='assets-tab-button']"))
        .await
        .map_err(|e| format!("no assets button in the side toolbar: {e}"))?;
    button.click().await.map_err(|e| format!("clicking the assets button: {e}"))?;
    page.wait_js("the assets panel's Generated tab to open", "document.getElementById('tabpanel-output')").await;
    let saved = page
        .js(
            "const e = window.__comfyrsEvents.find(e => e.type === 'executed' && e.detail.node == arguments[0]); \
             return e ? e.detail.output.images : null;",
            vec![built.clone()],
        )
        .await;
    let filename = saved[0]["filename"].as_str().map(str::to_string).ok_or_else(|| format!("SaveImage reported no image: {saved}"))?;
    if !filename.starts_with(SAVE_PREFIX) || saved[0]["type"] != "output" {
        return Err(format!("SaveImage reported {saved}"));
    }

    // The saved image's thumbnail, served by our /view, loads in the panel's Generated tab.
    let find_img = "[...document.querySelectorAll('#tabpanel-output img')].find(i => { \
                      const u = new URL(i.src, location.href); \
                      return u.origin === location.origin && /\\/view$/.test(u.pathname) \
                        && u.searchParams.get('filename') === arguments[0]; })";
    let start = Instant::now();
    let loaded = loop {
        let v = page
            .js(&format!("const i = {find_img}; return i ? {{src: i.src, complete: i.complete, width: i.naturalWidth}} : null;"), vec![json!(filename)])
            .await;
        if v["complete"] == true && v["width"].as_u64().is_some_and(|w| w > 0) {
            break v;
        }
        if start.elapsed() > PAGE_TIMEOUT {
            let imgs = page.js("return [...document.querySelectorAll('img')].map(i => [i.src, i.complete, i.naturalWidth])", vec![]).await;
            let jobs = page
                .client
                .execute_async("const [done] = arguments; fetch('/api/jobs?status=completed,failed,cancelled&limit=200&offset=0').then(r => r.text()).then(done, e => done(String(e)));", vec![])
                .await
                .unwrap_or(Json::Null);
            return Err(format!("the assets panel never showed {filename} loaded from /view (last: {v}); images in the page: {imgs}; /api/jobs: {jobs}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if loaded["width"] != json!(64) {
        return Err(format!("the thumbnail of {filename} is not the 64-pixel-wide saved image: {loaded}"));
    }

    // One screenshot of the page with the finished workflow and the assets panel: a real,
    // non-blank image.
    close_dialogs(page).await;
    let shot = page.client.screenshot().await.map_err(|e| e.to_string())?;
    let (w, h, colours) = png_colours(&shot);
    if w < 800 || h < 600 || colours < 16 {
        return Err(format!("the screenshot is {w}x{h} with {colours} colours: blank?"));
    }
    if let Some(dir) = std::env::var_os("COMFYRS_SCREENSHOT_DIR") {
        std::fs::write(PathBuf::from(dir).join("browser.png"), &shot).unwrap();
    }

    page.collect_log().await;
    let errors = page.errors();
    if !errors.is_empty() {
        return Err(format!("the page logged errors: {errors:#?}"));
    }
    Ok(())
}

/// The file name prefix of the image the page saves.
const SAVE_PREFIX: &str = "comfyrs_browser";

/// A new user's first visit opens the template browser over the graph; closes it (its close
/// button, or Escape), best effort.
async fn close_dialogs(page: &Page) {
    for _ in 0..10 {
        if page.js("return !document.querySelector('[role=dialog]')", vec![]).await == true {
            break;
        }
        page.js(
            "document.querySelectorAll('[role=dialog] button').forEach(b => { \
               if (/close/i.test(b.getAttribute('aria-label') || '') || b.querySelector('.pi-times, .icon-\\[lucide--x\\]')) b.click(); })",
            vec![],
        )
        .await;
        if let Ok(el) = page.client.active_element().await {
            let _ = el.send_keys("\u{E00C}").await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
