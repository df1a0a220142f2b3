//! The WIDEN Report node (docs/widen.md, "Report"): the report of the merge that made a MODEL,
//! as a picture (IMAGE) and a table (STRING). It reads what the Exit computed; nothing is merged
//! again.

use std::any::Any;
use std::path::Path;

use comfyrs_runtime::value::Opaque;
use comfyrs_runtime::{Args, CallOutput, Value};
use serde_json::{json, Value as Json};
use tch::Tensor;

use crate::merge::report_png;
use crate::models::MappedTensor;
use crate::recipe::model::NativeModel;
use crate::recipe::PackError;

/// A ComfyUI IMAGE made natively: `[B, H, W, C]` fp32 in 0..1 on the CPU. Python nodes take it
/// as a `torch.Tensor` ([`native_image_tensor`]). (Held as a [`MappedTensor`] of its own, the
/// tensor handle that may be shared between threads.)
pub struct NativeImage(MappedTensor);

impl NativeImage {
    pub fn new(image: Tensor) -> Self {
        NativeImage(MappedTensor::owned(image))
    }
    /// Another handle on the image's tensor.
    pub fn tensor(&self) -> Tensor {
        self.0.shallow_clone()
    }
}

impl Opaque for NativeImage {
    fn type_name(&self) -> &str {
        "IMAGE"
    }
    fn byte_size(&self) -> usize {
        self.0.numel() * self.0.kind().elt_size_in_bytes()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The tensor of a [`NativeImage`] (the bridge's hook for native values Python nodes consume).
pub fn native_image_tensor(h: &dyn Opaque) -> Option<Tensor> {
    h.as_any().downcast_ref::<NativeImage>().map(NativeImage::tensor)
}

/// Runs the node: `model` must be a MODEL a WIDEN Exit made natively. The picture is also
/// written to `output_dir` (named by its content) and shown as the node's UI image.
pub(super) fn run(a: &Args, output_dir: &Path) -> Result<CallOutput, PackError> {
    let model = match a.get("model") {
        Some(Value::Handle(h)) => h.as_any().downcast_ref::<NativeModel>(),
        None | Some(Value::None) => return Err(PackError::value("WIDEN Report: input 'model' is not connected: connect a WIDEN Exit's MODEL")),
        Some(_) => None,
    };
    let Some(model) = model else {
        return Err(PackError::type_error(
            "WIDEN Report: the MODEL is not one a WIDEN Exit made natively (a merge over a ComfyUI MODEL \
             comes back as ComfyUI's MODEL, which carries no report): read the Exit's `widen_report` UI \
             output, or run `comfyrs report` on the workflow",
        ));
    };
    let Some(report) = model.report() else {
        return Err(PackError::value(
            "WIDEN Report: this MODEL has no merge report: connect the MODEL output of a WIDEN Exit whose recipe \
             merges something (a base alone is not a merge)",
        ));
    };
    let text = report.to_text();
    let picture = report_png::draw(report).map_err(|e| PackError::runtime(e.to_string()))?;
    let image = picture.image_tensor()?;
    let png = picture.png().map_err(|e| PackError::runtime(e.to_string()))?;
    let name = format!("widen_report_{}.png", &blake3::hash(&png).to_hex()[..16]);
    std::fs::create_dir_all(output_dir)
        .and_then(|()| std::fs::write(output_dir.join(&name), &png))
        .map_err(|e| PackError::runtime(format!("WIDEN Report: cannot write {}: {e}", output_dir.join(&name).display())))?;
    let mut ui = serde_json::Map::new();
    ui.insert("images".into(), json!([{"filename": name, "subfolder": "", "type": "output"}]));
    ui.insert("text".into(), Json::Array(vec![Json::String(text.clone())]));
    Ok(CallOutput::values([Value::Handle(std::sync::Arc::new(NativeImage::new(image))), Value::String(text)]).with_ui(ui))
}
