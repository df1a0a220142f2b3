//! V3 dynamic inputs as validation sees them (docs/comfyui.md, "Validation"): the inputs a node
//! has in one prompt, once its autogrow groups, dynamic combos and dynamic slots are expanded
//! by the values the prompt gives them, so each slot is checked like a declared input.

use std::borrow::Cow;

use indexmap::IndexMap;
use serde_json::Value as Json;

use crate::prompt::Input;
use crate::schema::{InputKind, InputSpec, NodeSchema, Section};
use crate::value::Value;

/// A growing group of inputs made from a template: `group.name` for each of its names.
pub const AUTOGROW: &str = "COMFY_AUTOGROW_V3";
/// A combo of option keys whose chosen option adds inputs named `combo.input`.
pub const DYNAMIC_COMBO: &str = "COMFY_DYNAMICCOMBO_V3";
/// An input that, when connected, adds inputs named `slot.input`.
pub const DYNAMIC_SLOT: &str = "COMFY_DYNAMICSLOT_V3";

/// The inputs of a dynamic combo's option `key` (its `{"required": ..., "optional": ...}`).
pub fn chosen_option<'a>(spec: &'a InputSpec, key: &str) -> Option<&'a Json> {
    spec.extra
        .get("options")
        .and_then(Json::as_array)
        .and_then(|opts| opts.iter().find(|o| o.get("key").and_then(Json::as_str) == Some(key)))
        .and_then(|o| o.get("inputs"))
}

/// The inputs an option (or a dynamic slot) adds, named `id.input`: required ones first, then
/// optional ones, each in declaration order.
pub fn option_inputs(id: &str, inputs: &Json) -> Vec<InputSpec> {
    let mut out = Vec::new();
    for section in [Section::Required, Section::Optional] {
        let Some(entries) = inputs.get(section.key()).and_then(Json::as_object) else { continue };
        for (key, sub) in entries {
            if let Ok(s) = InputSpec::from_object_info(&format!("{id}.{key}"), section, sub) {
                out.push(s);
            }
        }
    }
    out
}

fn dynamic_kind(spec: &InputSpec) -> Option<&str> {
    match &spec.kind {
        InputKind::Socket(t) if [AUTOGROW, DYNAMIC_COMBO, DYNAMIC_SLOT].contains(&t.as_str()) => Some(t),
        _ => None,
    }
}

/// Whether the schema has any dynamic input (otherwise its declared inputs are final).
pub fn has_dynamic_inputs(schema: &NodeSchema) -> bool {
    schema.declared_inputs().any(|s| dynamic_kind(s).is_some())
}

/// The inputs a node of `schema` has given the prompt's inputs `live`, as ComfyUI finalizes
/// them: every autogrow member by name (those below the group's `min` required when the
/// template is), a dynamic combo and the inputs of its chosen option, a connected dynamic slot
/// and its inputs; nested dynamic inputs likewise. Plain inputs come as declared.
pub fn finalized_inputs<'a>(schema: &'a NodeSchema, live: &IndexMap<String, Input>) -> Vec<Cow<'a, InputSpec>> {
    let mut out = Vec::with_capacity(schema.inputs.len());
    for spec in schema.declared_inputs() {
        if dynamic_kind(spec).is_some() {
            expand(spec, &spec.name, live, &mut out);
        } else {
            out.push(Cow::Borrowed(spec));
        }
    }
    out
}

fn expand(spec: &InputSpec, id: &str, live: &IndexMap<String, Input>, out: &mut Vec<Cow<'_, InputSpec>>) {
    match dynamic_kind(spec) {
        Some(AUTOGROW) => {
            let Some(t) = spec.extra.get("template") else { return };
            let min = t.get("min").and_then(Json::as_u64).unwrap_or(1) as usize;
            let names: Vec<String> = match t.get("names").and_then(Json::as_array) {
                Some(n) => n.iter().filter_map(Json::as_str).map(String::from).take(100).collect(),
                None => {
                    let prefix = t.get("prefix").and_then(Json::as_str).unwrap_or("");
                    let max = t.get("max").and_then(Json::as_u64).unwrap_or(10).min(100) as usize;
                    (0..max).map(|k| format!("{prefix}{k}")).collect()
                }
            };
            // ComfyUI takes the template's first input, required ones first.
            let template = [Section::Required, Section::Optional].into_iter().find_map(|section| {
                t.get("input").and_then(|i| i.get(section.key())).and_then(Json::as_object).and_then(|m| m.values().next()).map(|v| (section, v))
            });
            let Some((template_section, template)) = template else { return };
            for (k, name) in names.iter().enumerate() {
                let member = format!("{id}.{name}");
                let section = if k < min && template_section == Section::Required { Section::Required } else { Section::Optional };
                let Ok(s) = InputSpec::from_object_info(&member, section, template) else { continue };
                if dynamic_kind(&s).is_some() {
                    if live.contains_key(&member) {
                        expand(&s, &member, live, out);
                    }
                } else {
                    out.push(Cow::Owned(s));
                }
            }
        }
        Some(kind) => {
            let mut own = spec.clone();
            own.name = id.to_string();
            out.push(Cow::Owned(own));
            let inputs = if kind == DYNAMIC_COMBO {
                let Some(Input::Const(Value::String(key))) = live.get(id) else { return };
                chosen_option(spec, key)
            } else {
                if !live.contains_key(id) {
                    return;
                }
                spec.extra.get("inputs")
            };
            let Some(inputs) = inputs else { return };
            for s in option_inputs(id, inputs) {
                if dynamic_kind(&s).is_some() {
                    let sub_id = s.name.clone();
                    expand(&s, &sub_id, live, out);
                } else {
                    out.push(Cow::Owned(s));
                }
            }
        }
        None => {}
    }
}
