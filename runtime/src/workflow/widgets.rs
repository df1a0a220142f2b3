//! The frontend's widget model (docs/comfyui.md, "Widget values"): which inputs of a class get
//! widgets, the companion widgets the frontend inserts, and how `widgets_values` map onto them.

use indexmap::IndexMap;
use serde_json::{Map, Value as Json};

use crate::dynamic::{AUTOGROW, DYNAMIC_COMBO};
use crate::schema::{InputKind, InputSpec, NodeSchema, Num, Section};

/// Widget types the core frontend has constructors for. Inputs of other types are sockets.
const WIDGET_TYPES: &[&str] = &[
    "INT",
    "FLOAT",
    "BOOLEAN",
    "STRING",
    "COMBO",
    "MARKDOWN",
    "IMAGEUPLOAD",
    "COLOR",
    "IMAGECOMPARE",
    "BOUNDING_BOX",
    "CHART",
    "GALLERIA",
    "PAINTER",
    "TEXTAREA",
    "CURVE",
    "RANGE",
    // A dynamic combo is a widget (its chosen option adds more); an autogrow input itself has
    // no widget, only its members may (see `autogrow_inputs`).
    "COMFY_DYNAMICCOMBO_V3",
];

/// Option keys that add an upload button after a COMBO widget.
const UPLOAD_OPTIONS: &[&str] = &["image_upload", "video_upload", "audio_upload", "file_upload"];

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Role {
    /// A widget of an input: its value goes into the prompt under the widget's name. The
    /// spec is the declared input's, or a dynamic combo option's sub-input renamed
    /// `combo.key`.
    Value { spec: Box<InputSpec> },
    /// The control_after_generate combo of the widget before it (not sent), with the mode a
    /// fresh widget starts in.
    Control { target: String, default_mode: String },
    /// An upload button (not sent).
    Upload,
}

#[derive(Clone, Debug)]
pub(crate) struct Widget {
    pub name: String,
    pub role: Role,
    /// Part of the list only for the pre-1.16 forceInput layout.
    pub legacy_force_input: bool,
    /// Whether the widget has a slot in `widgets_values`. The frontend skips widgets whose
    /// `serialize` is false when it saves and restores positional values, yet still sends
    /// their value in the prompt (its `options.serialize` is a separate switch).
    pub persisted: bool,
}

/// Widget types the frontend sends in the prompt but never saves in `widgets_values`
/// (their constructors set `widget.serialize = false`), with the value a freshly loaded
/// node holds. ImageCompare's `compare_view` is the core case.
fn unpersisted_value(ty: &str) -> Option<Json> {
    match ty {
        "IMAGECOMPARE" => Some(Json::Array(vec![Json::String(String::new()), Json::String(String::new())])),
        _ => None,
    }
}

/// The widget type the frontend would use for an input, if it gets a widget at all
/// (ignoring `forceInput`).
pub(crate) fn widget_type(spec: &InputSpec) -> Option<String> {
    if spec.section == Section::Hidden {
        return None;
    }
    if let Some(Json::String(t)) = spec.extra.get("widgetType") {
        return Some(t.clone());
    }
    let ty = match &spec.kind {
        InputKind::Int { .. } => "INT",
        InputKind::Float { .. } => "FLOAT",
        InputKind::String { .. } => "STRING",
        InputKind::Boolean { .. } => "BOOLEAN",
        InputKind::Combo { .. } => "COMBO",
        InputKind::Socket(t) => t.as_str(),
        InputKind::Hidden(_) => return None,
    };
    WIDGET_TYPES.contains(&ty).then(|| ty.to_string())
}

fn truthy(v: Option<&Json>) -> bool {
    match v {
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        _ => false,
    }
}

fn force_input(spec: &InputSpec) -> bool {
    truthy(spec.extra.get("forceInput"))
}

/// The control widget's name when the frontend adds one after this input's widget.
fn control_widget(spec: &InputSpec, ty: &str) -> Option<String> {
    let opt = spec.extra.get("control_after_generate");
    let set = truthy(opt);
    let wanted = match ty {
        "INT" => set || spec.name == "seed" || spec.name == "noise_seed",
        "FLOAT" | "COMBO" => set,
        _ => false,
    };
    if !wanted {
        return None;
    }
    match opt {
        Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => Some("control_after_generate".to_string()),
    }
}

/// The sub-inputs the chosen option of a dynamic combo adds, named `combo.key` as the
/// frontend names their widgets and sockets: required ones first, then optional ones, each
/// in declaration order.
fn dynamic_combo_inputs(spec: &InputSpec, chosen: &str) -> Vec<InputSpec> {
    crate::dynamic::chosen_option(spec, chosen).map(|inputs| crate::dynamic::option_inputs(&spec.name, inputs)).unwrap_or_default()
}

/// The option keys of a dynamic combo; the first is what a new node shows.
fn dynamic_combo_keys(spec: &InputSpec) -> Vec<&str> {
    spec.extra
        .get("options")
        .and_then(Json::as_array)
        .map(|opts| opts.iter().filter_map(|o| o.get("key").and_then(Json::as_str)).collect())
        .unwrap_or_default()
}


/// The members of the groups an autogrow input starts with (the frontend's applyAutogrow
/// adds groups 0 to `min`, at least one, at most `max`), named as the frontend and ComfyUI
/// name them: `group.` + the template's `names[i]`, or its `prefix` + `i` (the template
/// key + `i` when the template has several inputs). forceInput members are left out: a
/// frontend that knows autogrow gives them sockets only.
fn autogrow_inputs(spec: &InputSpec) -> Vec<InputSpec> {
    let Some(t) = spec.extra.get("template") else { return Vec::new() };
    let count = |k: &str, default: usize| t.get(k).and_then(Json::as_u64).map(|n| n as usize).unwrap_or(default);
    let names: Option<Vec<&str>> = t.get("names").and_then(Json::as_array).map(|a| a.iter().filter_map(Json::as_str).collect());
    let min = count("min", 1);
    // ComfyUI caps a group at 100 members (Autogrow._MaxNames); so does this, whatever a
    // record claims.
    let max = names.as_ref().map(Vec::len).unwrap_or_else(|| count("max", 100)).min(100);
    let prefix = t.get("prefix").and_then(Json::as_str).unwrap_or("");
    let mut members: Vec<(&str, Section, &Json)> = Vec::new();
    for section in [Section::Required, Section::Optional] {
        if let Some(entries) = t.get("input").and_then(|i| i.get(section.key())).and_then(Json::as_object) {
            members.extend(entries.iter().map(|(k, v)| (k.as_str(), section, v)));
        }
    }
    let mut out = Vec::new();
    for ordinal in 0..=min {
        if ordinal >= max {
            break;
        }
        for &(key, section, member) in &members {
            let base = match &names {
                Some(n) => n[ordinal].to_string(),
                None => format!("{}{ordinal}", if members.len() == 1 { prefix } else { key }),
            };
            let section = if ordinal >= min { Section::Optional } else { section };
            match InputSpec::from_object_info(&format!("{}.{base}", spec.name), section, member) {
                Ok(s) if !force_input(&s) => out.push(s),
                _ => {}
            }
        }
    }
    out
}

/// The ordered widget list of a node. With `with_force_input`, forceInput inputs keep the
/// position (and control widget) they had before frontend 1.16.
///
/// Widgets of autogrow members come first (see [`autogrow_inputs`]); members of groups the
/// frontend adds later, when a link reaches the last group, are sockets here: a link into one
/// converts by its name, a widget value in one is not placed.
///
/// A dynamic combo's chosen option inserts its sub-widgets right after the combo's own
/// widget (the frontend's dynamicWidgets splices them in when the combo's value is set, also
/// while a saved node is restored, so they take the saved values that follow the combo's).
/// `stored(slot, name)` gives the saved value of the widget with that `widgets_values`
/// position and name, which decides the option.
pub(crate) fn widget_list(schema: &NodeSchema, with_force_input: bool, stored: &dyn Fn(usize, &str) -> Option<Json>) -> Vec<Widget> {
    let mut out = Vec::new();
    let mut slot = 0usize;
    // The frontend creates every socket before any widget, and an autogrow input's first
    // groups (with their widgets) are made with the sockets, so their widgets come first.
    let mut order: Vec<InputSpec> = schema
        .inputs
        .iter()
        .filter(|s| s.section != Section::Hidden && matches!(&s.kind, InputKind::Socket(t) if t == AUTOGROW))
        .flat_map(autogrow_inputs)
        .collect();
    order.extend(schema.inputs.iter().cloned());
    // Explicit stack: a dynamic combo's sub-inputs are handled next, before the inputs after it.
    let mut pending: Vec<InputSpec> = order.into_iter().rev().collect();
    while let Some(spec) = pending.pop() {
        let Some(ty) = widget_type(&spec) else { continue };
        let forced = force_input(&spec);
        if forced && !with_force_input {
            continue;
        }
        let persisted = unpersisted_value(&ty).is_none();
        let own_slot = slot;
        slot += usize::from(persisted);
        let name = spec.name.clone();
        if let Some(control) = control_widget(&spec, &ty) {
            let default_mode = match spec.extra.get("control_after_generate") {
                Some(Json::String(s)) if !s.is_empty() => s.clone(),
                _ if matches!(spec.kind, InputKind::Combo { .. }) => "fixed".to_string(),
                _ => "randomize".to_string(),
            };
            out.push(Widget { name: name.clone(), role: Role::Value { spec: Box::new(spec.clone()) }, legacy_force_input: forced, persisted });
            out.push(Widget { name: control, role: Role::Control { target: name.clone(), default_mode }, legacy_force_input: forced, persisted: true });
            slot += 1;
        } else {
            out.push(Widget { name: name.clone(), role: Role::Value { spec: Box::new(spec.clone()) }, legacy_force_input: forced, persisted });
        }
        if ty == "COMBO" && UPLOAD_OPTIONS.iter().any(|k| truthy(spec.extra.get(*k))) {
            out.push(Widget { name: "upload".into(), role: Role::Upload, legacy_force_input: forced, persisted: true });
            slot += 1;
        }
        if ty == DYNAMIC_COMBO {
            // A saved value that names no option adds nothing (the frontend finds no option
            // for it); no saved value means the first option, which a new widget shows.
            let chosen = match stored(own_slot, &name) {
                Some(Json::String(s)) => s,
                Some(_) => String::new(),
                None => dynamic_combo_keys(&spec).first().map(|k| k.to_string()).unwrap_or_default(),
            };
            pending.extend(dynamic_combo_inputs(&spec, &chosen).into_iter().rev());
        }
    }
    out
}

/// What the frontend shows in a widget nobody set: the declared default, else the type's own.
pub(crate) fn default_value(spec: &InputSpec) -> Option<Json> {
    match &spec.kind {
        InputKind::Int { default, min, .. } => Some(default.or(*min).map(Num::to_json).unwrap_or(Json::from(0))),
        InputKind::Float { default, min, .. } => Some(default.or(*min).map(Num::to_json).unwrap_or(Json::from(0.0))),
        InputKind::String { default, .. } => Some(Json::String(default.clone().unwrap_or_default())),
        InputKind::Boolean { default } => Some(Json::Bool(default.unwrap_or(false))),
        InputKind::Combo { options, default, .. } => default.clone().or_else(|| options.first().cloned()),
        InputKind::Socket(ty) if ty == DYNAMIC_COMBO => {
            spec.extra.get("default").cloned().or_else(|| dynamic_combo_keys(spec).first().map(|k| Json::String(k.to_string())))
        }
        InputKind::Socket(ty) => spec.extra.get("default").cloned().or_else(|| unpersisted_value(ty)),
        InputKind::Hidden(_) => None,
    }
}

/// The widget values of one node after mapping `widgets_values` onto the widget list.
pub(crate) struct Assigned {
    /// Value widgets (sent to the backend), in widget order: input name → value.
    pub values: IndexMap<String, Json>,
    /// Control widgets: target input name → mode, after the legacy true/false fixup.
    pub controls: IndexMap<String, String>,
}

/// Maps a node's `widgets_values` (list or object form) onto its class's widgets and applies
/// the frontend's load-time fixups. `describe` names the node in warnings.
pub(crate) fn assign(schema: &NodeSchema, widgets_values: Option<&Json>, describe: &dyn Fn() -> String, warnings: &mut Vec<String>) -> Assigned {
    let stored = |slot: usize, name: &str| -> Option<Json> {
        match widgets_values {
            Some(Json::Array(list)) => list.get(slot).cloned(),
            Some(Json::Object(map)) => map.get(name).cloned(),
            _ => None,
        }
    };
    let all = widget_list(schema, false, &stored);
    // Only persisted widgets take a slot in the list form; the others keep their defaults.
    let normal: Vec<Widget> = all.iter().filter(|w| w.persisted).cloned().collect();
    let mut values: IndexMap<String, Json> = IndexMap::new();
    let mut controls: IndexMap<String, String> = IndexMap::new();
    // Defaults first, so widgets without a stored value still reach the prompt.
    for w in &all {
        match &w.role {
            Role::Value { spec } => {
                if let Some(d) = default_value(spec) {
                    values.insert(w.name.clone(), d);
                }
            }
            Role::Control { target, default_mode } => {
                controls.insert(target.clone(), default_mode.clone());
            }
            Role::Upload => {}
        }
    }

    let store = |w: &Widget, v: &Json, values: &mut IndexMap<String, Json>, controls: &mut IndexMap<String, String>| match &w.role {
        Role::Value { .. } => {
            values.insert(w.name.clone(), v.clone());
        }
        Role::Control { target, .. } => {
            let mode = match v {
                Json::Bool(true) => "randomize".to_string(),
                Json::Bool(false) => "fixed".to_string(),
                Json::String(s) => s.clone(),
                _ => return,
            };
            controls.insert(target.clone(), mode);
        }
        Role::Upload => {}
    };

    match widgets_values {
        None => {}
        Some(Json::Array(list)) => {
            let legacy: Vec<Widget> = widget_list(schema, true, &stored).into_iter().filter(|w| w.persisted).collect();
            let layout = if legacy.len() != normal.len() && list.len() == legacy.len() {
                warnings.push(format!(
                    "{}: widgets_values has the pre-1.16 layout with placeholder values for forceInput inputs; they were dropped",
                    describe()
                ));
                &legacy
            } else {
                if list.len() < normal.len() {
                    warnings.push(format!(
                        "{}: widgets_values has {} entries but the class has {} widgets; the missing ones take their defaults",
                        describe(),
                        list.len(),
                        normal.len()
                    ));
                } else if list.len() > normal.len() {
                    warnings.push(format!(
                        "{}: widgets_values has {} entries but the class has {} widgets; the extra entries were ignored (the node's inputs may have changed since the workflow was saved)",
                        describe(),
                        list.len(),
                        normal.len()
                    ));
                }
                &normal
            };
            for (w, v) in layout.iter().zip(list.iter()) {
                if w.legacy_force_input {
                    continue;
                }
                store(w, v, &mut values, &mut controls);
            }
        }
        Some(Json::Object(map)) => {
            for w in &normal {
                if let Some(v) = map.get(&w.name) {
                    store(w, v, &mut values, &mut controls);
                }
            }
            for (k, _) in map {
                if !normal.iter().any(|w| &w.name == k) {
                    warnings.push(format!("{}: widgets_values names \"{k}\", which is not a widget of this class; ignored", describe()));
                }
            }
        }
        Some(other) => warnings.push(format!(
            "{}: widgets_values is {}, neither a list nor an object; the widgets take their defaults",
            describe(),
            crate::prompt::json_kind(other)
        )),
    }

    // Load-time fixup of old KSampler files: sampler names lost their `sample_` prefix.
    if schema.name == "KSampler" || schema.name == "KSamplerAdvanced" {
        if let Some(Json::String(s)) = values.get_mut("sampler_name") {
            if let Some(rest) = s.strip_prefix("sample_") {
                *s = rest.to_string();
            }
        }
    }
    Assigned { values, controls }
}

/// Wraps array values so the backend does not read them as links.
pub(crate) fn wrap_array(v: Json) -> Json {
    if v.is_array() {
        let mut m = Map::new();
        m.insert("__value__".into(), v);
        Json::Object(m)
    } else {
        v
    }
}

/// The widget type of curve editors, whose values the frontend sends typed.
pub(crate) const CURVE: &str = "CURVE";

/// A curve widget's value as the frontend sends it: `{"__type__": "CURVE", "__value__": v}`
/// (ComfyUI unwraps `__value__`, as for arrays); a null value stays null.
pub(crate) fn wrap_curve(v: Json) -> Json {
    if v.is_null() {
        return v;
    }
    let mut m = Map::new();
    m.insert("__type__".into(), Json::String(CURVE.into()));
    m.insert("__value__".into(), v);
    Json::Object(m)
}

/// True when the input's string widget is rewritten by dynamic-prompt processing.
pub(crate) fn dynamic_prompts(spec: &InputSpec) -> bool {
    matches!(spec.kind, InputKind::String { .. }) && truthy(spec.extra.get("dynamicPrompts"))
}
