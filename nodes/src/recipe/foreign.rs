//! The MODEL handoff seam between the pack and a foreign (Python) runtime, without either crate
//! depending on the other: whoever links both installs a [`ForeignModels`] provider in the merge
//! engine (`MergeEngine::set_foreign_models`; for the bridge: [`ForeignFns`] over
//! `comfyrs_bridge::model::{state_dict, prepare, with_weights}`); WIDENEntry asks it for a
//! foreign MODEL's weights, WIDENExit for a MODEL with the merged weights installed.

use indexmap::IndexMap;

use comfyrs_runtime::Value;

/// The diffusion weights of a foreign MODEL.
pub struct ForeignState {
    /// Host keys (`diffusion_model.…`) to tensors sharing the model's storage (no copy).
    pub tensors: IndexMap<String, tch::Tensor>,
    /// Identity of these weights (same model object and patches: same identity).
    pub identity: [u8; 32],
    /// A short description for messages (`ModelPatcher BaseModel`).
    pub name: String,
}

/// What a foreign runtime offers for MODELs it owns.
pub trait ForeignModels: Send + Sync {
    /// The diffusion weights of `value`, or `None` when `value` is not one of this provider's
    /// MODELs. Err: it is, but reading failed.
    fn state_dict(&self, value: &Value) -> Option<Result<ForeignState, String>>;
    /// Called before weights read earlier by [`state_dict`](Self::state_dict) are used again
    /// (e.g. to restore weights a loaded clone patched in place).
    fn prepare(&self, _origin: &Value) -> Result<(), String> {
        Ok(())
    }
    /// A new MODEL: `origin` (a value `state_dict` accepted) with `merged` (host keys, CPU
    /// tensors, shared not copied) replacing its weights.
    fn with_weights(&self, origin: &Value, merged: &IndexMap<String, tch::Tensor>) -> Result<Value, String>;
}

/// Weights, identity and name, as [`ForeignFns::state_dict`] returns them.
pub type ForeignWeights = (IndexMap<String, tch::Tensor>, [u8; 32], String);

/// A [`ForeignModels`] from plain functions (what `comfyrs_bridge::model` exports).
pub struct ForeignFns {
    pub state_dict: fn(&Value) -> Option<Result<ForeignWeights, String>>,
    pub prepare: fn(&Value) -> Result<(), String>,
    pub with_weights: fn(&Value, &IndexMap<String, tch::Tensor>) -> Result<Value, String>,
}

impl ForeignModels for ForeignFns {
    fn state_dict(&self, value: &Value) -> Option<Result<ForeignState, String>> {
        (self.state_dict)(value).map(|r| r.map(|(tensors, identity, name)| ForeignState { tensors, identity, name }))
    }
    fn prepare(&self, origin: &Value) -> Result<(), String> {
        (self.prepare)(origin)
    }
    fn with_weights(&self, origin: &Value, merged: &IndexMap<String, tch::Tensor>) -> Result<Value, String> {
        (self.with_weights)(origin, merged)
    }
}
