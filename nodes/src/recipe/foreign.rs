//! The MODEL and CLIP handoff seam between the pack and a foreign (Python) runtime, without either crate
//! depending on the other: whoever links both installs a [`ForeignModels`] provider in the merge
//! engine (`MergeEngine::set_foreign_models`; for the bridge: [`ForeignFns`] over
//! `comfyrs_bridge::model::{state_dict, prepare, with_weights}`); WIDENEntry asks it for a
//! foreign MODEL's (or CLIP's) weights, WIDENExit for one with the merged weights installed.

use indexmap::IndexMap;

use comfyrs_runtime::Value;

/// The weights of a foreign MODEL (its diffusion model) or CLIP (its text encoders).
pub struct ForeignState {
    /// Which: a MODEL's diffusion weights or a CLIP's text encoders.
    pub domain: super::RecipeDomain,
    /// Host keys (`diffusion_model.…`; `clip_l.…`, `clip_g.…`) to tensors sharing the model's
    /// storage (no copy).
    pub tensors: IndexMap<String, tch::Tensor>,
    /// Identity of these weights (same model object and patches: same identity).
    pub identity: [u8; 32],
    /// A short description for messages (`ModelPatcher BaseModel`).
    pub name: String,
}

/// What a foreign runtime offers for MODELs and CLIPs it owns.
pub trait ForeignModels: Send + Sync {
    /// The weights of `value`, or `None` when `value` is not one of this provider's MODELs or
    /// CLIPs. Err: it is, but reading failed.
    fn state_dict(&self, value: &Value) -> Option<Result<ForeignState, String>>;
    /// Called before weights read earlier by [`state_dict`](Self::state_dict) are used again
    /// (e.g. to restore weights a loaded clone patched in place).
    fn prepare(&self, _origin: &Value) -> Result<(), String> {
        Ok(())
    }
    /// A new MODEL (or CLIP): `origin` (a value `state_dict` accepted) with `merged` (host keys,
    /// CPU tensors, shared not copied) replacing its weights.
    fn with_weights(&self, origin: &Value, merged: &IndexMap<String, tch::Tensor>) -> Result<Value, String>;
    /// Has the provider's own models give up about `bytes` of device memory (ComfyUI offloading
    /// a model it is not using), for a merge over `origin` that ran out of it; the models that
    /// share `origin`'s weights stay. Returns the bytes it freed.
    fn make_room(&self, _origin: Option<&Value>, _bytes: u64) -> u64 {
        0
    }
    /// [`make_room`](Self::make_room) from the provider's own models alone (those it is not
    /// using; never those sharing `origin`'s weights), leaving the engine's caches as they are:
    /// for a merge that sizes its chunks before it starts. Returns the bytes it freed.
    fn unload_idle(&self, _origin: Option<&Value>, _bytes: u64) -> u64 {
        0
    }
    /// The memory free on `device` now as the provider counts it (ComfyUI: under a device
    /// memory limit, the limit less what every tensor of the process holds), or None when it
    /// cannot tell, or its models are not on `device`. A merge on `device` sizes its chunks by
    /// it, beside the provider's loaded models.
    fn device_free(&self, _device: tch::Device) -> Option<u64> {
        None
    }
}

/// ComfyUI type (`"MODEL"` or `"CLIP"`), weights, identity and name, as
/// [`ForeignFns::state_dict`] returns them.
pub type ForeignWeights = (&'static str, IndexMap<String, tch::Tensor>, [u8; 32], String);

/// A [`ForeignModels`] from plain functions (what `comfyrs_bridge::model` exports).
pub struct ForeignFns {
    pub state_dict: fn(&Value) -> Option<Result<ForeignWeights, String>>,
    pub prepare: fn(&Value) -> Result<(), String>,
    pub with_weights: fn(&Value, &IndexMap<String, tch::Tensor>) -> Result<Value, String>,
    pub make_room: fn(Option<&Value>, u64) -> u64,
    pub unload_idle: fn(Option<&Value>, u64) -> u64,
    pub device_free: fn(tch::Device) -> Option<u64>,
}

impl ForeignModels for ForeignFns {
    fn state_dict(&self, value: &Value) -> Option<Result<ForeignState, String>> {
        (self.state_dict)(value).map(|r| {
            r.and_then(|(kind, tensors, identity, name)| {
                let domain = match kind {
                    "MODEL" => super::RecipeDomain::Diffusion,
                    "CLIP" => super::RecipeDomain::Clip,
                    other => return Err(format!("a foreign {other} is neither a MODEL nor a CLIP")),
                };
                Ok(ForeignState { domain, tensors, identity, name })
            })
        })
    }
    fn prepare(&self, origin: &Value) -> Result<(), String> {
        (self.prepare)(origin)
    }
    fn with_weights(&self, origin: &Value, merged: &IndexMap<String, tch::Tensor>) -> Result<Value, String> {
        (self.with_weights)(origin, merged)
    }
    fn make_room(&self, origin: Option<&Value>, bytes: u64) -> u64 {
        (self.make_room)(origin, bytes)
    }
    fn unload_idle(&self, origin: Option<&Value>, bytes: u64) -> u64 {
        (self.unload_idle)(origin, bytes)
    }
    fn device_free(&self, device: tch::Device) -> Option<u64> {
        (self.device_free)(device)
    }
}
