//! Node schemas: the typed form of ComfyUI's `INPUT_TYPES` / `RETURN_TYPES` and the
//! `/object_info` record built from them.
//!
//! Native nodes build schemas with the constructors here; the Python bridge parses them from
//! ComfyUI's own records with [`NodeSchema::from_object_info`]. Options the runtime does not act
//! on (tooltips, display hints, upload flags) are kept verbatim in `extra` so `/object_info`
//! round-trips what a node declared.

use indexmap::IndexMap;
use serde_json::{json, Map, Value as Json};

/// Which part of `INPUT_TYPES` an input belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    Required,
    Optional,
    Hidden,
}

impl Section {
    pub fn key(self) -> &'static str {
        match self {
            Section::Required => "required",
            Section::Optional => "optional",
            Section::Hidden => "hidden",
        }
    }
}

/// A numeric bound or default as declared: ints and floats stay distinct.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
    pub fn to_json(self) -> Json {
        crate::Value::from(self).to_json()
    }
    pub fn from_json(j: &Json) -> Option<Num> {
        match crate::Value::from_json(j) {
            crate::Value::Int(i) => Some(Num::Int(i)),
            crate::Value::Float(f) => Some(Num::Float(f)),
            _ => None,
        }
    }
}

impl From<Num> for crate::Value {
    fn from(n: Num) -> Self {
        match n {
            Num::Int(i) => crate::Value::Int(i),
            Num::Float(f) => crate::Value::Float(f),
        }
    }
}

/// What an input accepts. Widget kinds carry the constraints validation enforces.
#[derive(Clone, Debug, PartialEq)]
pub enum InputKind {
    Int { default: Option<Num>, min: Option<Num>, max: Option<Num>, step: Option<Num> },
    Float { default: Option<Num>, min: Option<Num>, max: Option<Num>, step: Option<Num> },
    String { default: Option<String>, multiline: bool },
    Boolean { default: Option<bool> },
    /// A choice from a list. `v3` combos are declared as `["COMBO", {"options": [...]}]`.
    Combo { options: Vec<Json>, default: Option<Json>, v3: bool, multiselect: bool },
    /// A socket of a named type (`MODEL`, `*`, `IMAGE,FLOAT`, custom types).
    Socket(String),
    /// A hidden input filled by the executor (`PROMPT`, `UNIQUE_ID`, ...).
    Hidden(String),
}

impl InputKind {
    /// The type name used in link type checks and `/object_info`.
    pub fn type_name(&self) -> &str {
        match self {
            InputKind::Int { .. } => "INT",
            InputKind::Float { .. } => "FLOAT",
            InputKind::String { .. } => "STRING",
            InputKind::Boolean { .. } => "BOOLEAN",
            InputKind::Combo { .. } => "COMBO",
            InputKind::Socket(t) | InputKind::Hidden(t) => t,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub section: Section,
    pub kind: InputKind,
    /// Not scheduled up front; requested through `check_lazy_status`.
    pub lazy: bool,
    /// Receives the raw `[node_id, slot]` link instead of the value.
    pub raw_link: bool,
    /// Options kept for `/object_info` only (tooltip, display, forceInput, upload flags...).
    pub extra: Map<String, Json>,
}

/// The hidden input tokens the executor fills in itself. A hidden input of another type (a
/// node's private socket, such as a loop's counter) takes what the prompt gives it, as an
/// ordinary input.
pub const SUPPLIED_HIDDEN: [&str; 7] =
    ["PROMPT", "DYNPROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG", "COMFY_USAGE_SOURCE"];

impl InputSpec {
    /// A hidden input the executor fills in (see [`SUPPLIED_HIDDEN`]).
    pub fn is_supplied_hidden(&self) -> bool {
        matches!(&self.kind, InputKind::Hidden(t) if SUPPLIED_HIDDEN.contains(&t.as_str()))
    }

    fn new(name: &str, kind: InputKind) -> Self {
        InputSpec { name: name.into(), section: Section::Required, kind, lazy: false, raw_link: false, extra: Map::new() }
    }
    pub fn int(name: &str, default: i64, min: i64, max: i64) -> Self {
        Self::new(name, InputKind::Int {
            default: Some(Num::Int(default as i128)),
            min: Some(Num::Int(min as i128)),
            max: Some(Num::Int(max as i128)),
            step: None,
        })
    }
    pub fn float(name: &str, default: f64, min: f64, max: f64, step: f64) -> Self {
        Self::new(name, InputKind::Float {
            default: Some(Num::Float(default)),
            min: Some(Num::Float(min)),
            max: Some(Num::Float(max)),
            step: Some(Num::Float(step)),
        })
    }
    pub fn string(name: &str, default: &str) -> Self {
        Self::new(name, InputKind::String { default: Some(default.into()), multiline: false })
    }
    pub fn multiline(name: &str, default: &str) -> Self {
        Self::new(name, InputKind::String { default: Some(default.into()), multiline: true })
    }
    pub fn boolean(name: &str, default: bool) -> Self {
        Self::new(name, InputKind::Boolean { default: Some(default) })
    }
    pub fn combo<S: AsRef<str>>(name: &str, options: &[S]) -> Self {
        let options: Vec<Json> = options.iter().map(|s| Json::String(s.as_ref().into())).collect();
        let default = options.first().cloned();
        Self::new(name, InputKind::Combo { options, default, v3: false, multiselect: false })
    }
    pub fn socket(name: &str, ty: &str) -> Self {
        Self::new(name, InputKind::Socket(ty.into()))
    }
    pub fn hidden(name: &str, token: &str) -> Self {
        let mut s = Self::new(name, InputKind::Hidden(token.into()));
        s.section = Section::Hidden;
        s
    }
    pub fn optional(mut self) -> Self {
        self.section = Section::Optional;
        self
    }
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }
    /// Adds a UI-only option (`tooltip`, `forceInput`, `display`, ...).
    pub fn with(mut self, key: &str, value: Json) -> Self {
        self.extra.insert(key.into(), value);
        self
    }
    pub fn tooltip(self, text: &str) -> Self {
        self.with("tooltip", Json::String(text.into()))
    }

    /// The `[TYPE, {options}]` pair of `/object_info`.
    pub fn to_object_info(&self) -> Json {
        if let InputKind::Hidden(t) = &self.kind {
            return Json::String(t.clone());
        }
        let mut opts = Map::new();
        let mut put = |k: &str, v: Option<Json>| {
            if let Some(v) = v {
                opts.insert(k.into(), v);
            }
        };
        let ty = match &self.kind {
            InputKind::Int { default, min, max, step } | InputKind::Float { default, min, max, step } => {
                put("default", default.map(Num::to_json));
                put("min", min.map(Num::to_json));
                put("max", max.map(Num::to_json));
                put("step", step.map(Num::to_json));
                Json::String(self.kind.type_name().into())
            }
            InputKind::String { default, multiline } => {
                put("default", default.clone().map(Json::String));
                if *multiline {
                    put("multiline", Some(Json::Bool(true)));
                }
                Json::String("STRING".into())
            }
            InputKind::Boolean { default } => {
                put("default", default.map(Json::Bool));
                Json::String("BOOLEAN".into())
            }
            InputKind::Combo { options, default, v3, multiselect } => {
                if *multiselect {
                    put("multiselect", Some(Json::Bool(true)));
                }
                if *v3 {
                    put("options", Some(Json::Array(options.clone())));
                    put("default", default.clone());
                    Json::String("COMBO".into())
                } else {
                    put("default", default.clone());
                    Json::Array(options.clone())
                }
            }
            InputKind::Socket(t) => Json::String(t.clone()),
            InputKind::Hidden(_) => unreachable!(),
        };
        if self.lazy {
            opts.insert("lazy".into(), Json::Bool(true));
        }
        if self.raw_link {
            opts.insert("rawLink".into(), Json::Bool(true));
        }
        for (k, v) in &self.extra {
            opts.insert(k.clone(), v.clone());
        }
        if opts.is_empty() {
            json!([ty])
        } else {
            json!([ty, opts])
        }
    }

    /// Parses one `(TYPE, options)` entry of `INPUT_TYPES` / `/object_info`.
    pub fn from_object_info(name: &str, section: Section, spec: &Json) -> Result<InputSpec, String> {
        if section == Section::Hidden {
            let token = match spec {
                Json::String(s) => s.clone(),
                Json::Array(a) => a.first().and_then(Json::as_str).unwrap_or("").to_string(),
                _ => return Err(format!("hidden input '{name}' has no type token")),
            };
            return Ok(InputSpec::hidden(name, &token));
        }
        let (ty, opts) = match spec {
            Json::Array(a) if !a.is_empty() => (&a[0], a.get(1).and_then(Json::as_object).cloned().unwrap_or_default()),
            Json::String(_) => (spec, Map::new()),
            _ => return Err(format!("input '{name}' is not a [TYPE, options] pair")),
        };
        let mut extra = opts.clone();
        let mut take = |k: &str| extra.remove(k);
        let num = |v: Option<Json>| v.as_ref().and_then(Num::from_json);
        let kind = match ty {
            Json::Array(options) => InputKind::Combo {
                options: options.clone(),
                default: take("default"),
                v3: false,
                multiselect: take("multiselect").or_else(|| take("multi_select")).and_then(|v| v.as_bool()).unwrap_or(false),
            },
            Json::String(t) => match t.as_str() {
                "INT" => InputKind::Int { default: num(take("default")), min: num(take("min")), max: num(take("max")), step: num(take("step")) },
                "FLOAT" => InputKind::Float { default: num(take("default")), min: num(take("min")), max: num(take("max")), step: num(take("step")) },
                "STRING" => InputKind::String {
                    default: take("default").and_then(|v| v.as_str().map(String::from)),
                    multiline: take("multiline").and_then(|v| v.as_bool()).unwrap_or(false),
                },
                "BOOLEAN" => InputKind::Boolean { default: take("default").and_then(|v| v.as_bool()) },
                "COMBO" if opts.contains_key("options") => InputKind::Combo {
                    options: take("options").and_then(|v| v.as_array().cloned()).unwrap_or_default(),
                    default: take("default"),
                    v3: true,
                    multiselect: take("multiselect").or_else(|| take("multi_select")).and_then(|v| v.as_bool()).unwrap_or(false),
                },
                other => InputKind::Socket(other.to_string()),
            },
            _ => return Err(format!("input '{name}' has a type that is neither a string nor a list")),
        };
        let lazy = extra.remove("lazy").and_then(|v| v.as_bool()).unwrap_or(false);
        let raw_link = extra.remove("rawLink").and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(InputSpec { name: name.into(), section, kind, lazy, raw_link, extra })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    pub ty: String,
    pub name: String,
    /// `OUTPUT_IS_LIST`: each call returns a list for this slot, concatenated across calls.
    pub is_list: bool,
    pub tooltip: Option<String>,
}

impl OutputSpec {
    pub fn new(ty: &str) -> Self {
        OutputSpec { ty: ty.into(), name: ty.into(), is_list: false, tooltip: None }
    }
    pub fn named(ty: &str, name: &str) -> Self {
        OutputSpec { ty: ty.into(), name: name.into(), is_list: false, tooltip: None }
    }
}

/// Everything the runtime and `/object_info` know about a node class.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSchema {
    pub name: String,
    pub display_name: String,
    pub category: String,
    pub description: String,
    pub python_module: String,
    pub inputs: Vec<InputSpec>,
    pub outputs: Vec<OutputSpec>,
    pub output_node: bool,
    /// `INPUT_IS_LIST`: one call receiving every input as its whole list.
    pub input_is_list: bool,
    /// `NOT_IDEMPOTENT`: the node id enters the cache key.
    pub not_idempotent: bool,
    pub deprecated: bool,
    pub experimental: bool,
    pub search_aliases: Vec<String>,
    /// V3 `accept_all_inputs`: undeclared constants are passed to the node too.
    pub accept_all_inputs: bool,
}

impl NodeSchema {
    pub fn new(name: &str, display_name: &str, category: &str) -> Self {
        NodeSchema {
            name: name.into(),
            display_name: display_name.into(),
            category: category.into(),
            description: String::new(),
            python_module: "nodes".into(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            output_node: false,
            input_is_list: false,
            not_idempotent: false,
            deprecated: false,
            experimental: false,
            search_aliases: Vec::new(),
            accept_all_inputs: false,
        }
    }
    pub fn module(mut self, python_module: &str) -> Self {
        self.python_module = python_module.into();
        self
    }
    pub fn description(mut self, text: &str) -> Self {
        self.description = text.into();
        self
    }
    pub fn input(mut self, spec: InputSpec) -> Self {
        self.inputs.push(spec);
        self
    }
    pub fn output(mut self, spec: OutputSpec) -> Self {
        self.outputs.push(spec);
        self
    }
    pub fn output_node(mut self) -> Self {
        self.output_node = true;
        self
    }
    pub fn input_is_list(mut self) -> Self {
        self.input_is_list = true;
        self
    }

    pub fn find_input(&self, name: &str) -> Option<&InputSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Whether a constant under `name` reaches the node: a declared (non-hidden) input, or a
    /// flattened member `prefix.rest` of a V3 dynamic input (autogrow `values.a`, dynamic combo
    /// `mode.width`), or anything when the node accepts all inputs. Other constants are dropped,
    /// as ComfyUI drops them.
    pub fn accepts_constant(&self, name: &str) -> bool {
        if self.accept_all_inputs {
            return true;
        }
        if let Some(spec) = self.find_input(name) {
            return spec.section != Section::Hidden || !spec.is_supplied_hidden();
        }
        match name.split_once('.') {
            Some((prefix, _)) => self
                .find_input(prefix)
                .is_some_and(|s| matches!(&s.kind, InputKind::Socket(t) if t.starts_with("COMFY_") && t.ends_with("_V3"))),
            None => false,
        }
    }

    /// Required and optional inputs, in declaration order: the ones validation checks.
    pub fn declared_inputs(&self) -> impl Iterator<Item = &InputSpec> {
        self.inputs.iter().filter(|i| i.section != Section::Hidden)
    }

    /// The `/object_info` record (docs/comfyui.md, "Node records (/object_info)").
    pub fn to_object_info(&self) -> Json {
        let mut input = Map::new();
        let mut order = Map::new();
        for section in [Section::Required, Section::Optional, Section::Hidden] {
            let specs: Vec<&InputSpec> = self.inputs.iter().filter(|i| i.section == section).collect();
            if specs.is_empty() && section != Section::Required {
                continue;
            }
            let mut m = Map::new();
            for s in &specs {
                m.insert(s.name.clone(), s.to_object_info());
            }
            input.insert(section.key().into(), Json::Object(m));
            order.insert(section.key().into(), Json::Array(specs.iter().map(|s| Json::String(s.name.clone())).collect()));
        }
        let mut rec = Map::new();
        rec.insert("input".into(), Json::Object(input));
        rec.insert("input_order".into(), Json::Object(order));
        rec.insert("is_input_list".into(), Json::Bool(self.input_is_list));
        rec.insert("output".into(), self.outputs.iter().map(|o| Json::String(o.ty.clone())).collect());
        rec.insert("output_is_list".into(), self.outputs.iter().map(|o| Json::Bool(o.is_list)).collect());
        rec.insert("output_name".into(), self.outputs.iter().map(|o| Json::String(o.name.clone())).collect());
        rec.insert("output_tooltips".into(), self.outputs.iter().map(|o| o.tooltip.clone().map(Json::String).unwrap_or(Json::Null)).collect());
        rec.insert("name".into(), Json::String(self.name.clone()));
        rec.insert("display_name".into(), Json::String(self.display_name.clone()));
        rec.insert("description".into(), Json::String(self.description.clone()));
        rec.insert("python_module".into(), Json::String(self.python_module.clone()));
        rec.insert("category".into(), Json::String(self.category.clone()));
        rec.insert("output_node".into(), Json::Bool(self.output_node));
        rec.insert("has_intermediate_output".into(), Json::Bool(false));
        rec.insert("search_aliases".into(), self.search_aliases.iter().map(|s| Json::String(s.clone())).collect());
        if self.deprecated {
            rec.insert("deprecated".into(), Json::Bool(true));
        }
        if self.experimental {
            rec.insert("experimental".into(), Json::Bool(true));
        }
        Json::Object(rec)
    }

    /// Parses an `/object_info` record (as the Python bridge produces it).
    pub fn from_object_info(rec: &Json) -> Result<NodeSchema, String> {
        let name = rec.get("name").and_then(Json::as_str).ok_or("record has no 'name'")?;
        let s = |k: &str| rec.get(k).and_then(Json::as_str).unwrap_or("").to_string();
        let b = |k: &str| rec.get(k).and_then(Json::as_bool).unwrap_or(false);
        let mut schema = NodeSchema::new(name, &s("display_name"), &s("category"));
        if schema.display_name.is_empty() {
            schema.display_name = name.into();
        }
        schema.description = s("description");
        schema.python_module = s("python_module");
        schema.output_node = b("output_node");
        schema.input_is_list = b("is_input_list") || b("input_is_list");
        schema.deprecated = b("deprecated");
        schema.experimental = b("experimental");
        let input = rec.get("input").and_then(Json::as_object).cloned().unwrap_or_default();
        let order = rec.get("input_order").and_then(Json::as_object);
        for section in [Section::Required, Section::Optional, Section::Hidden] {
            let Some(entries) = input.get(section.key()).and_then(Json::as_object) else { continue };
            let names: Vec<String> = match order.and_then(|o| o.get(section.key())).and_then(Json::as_array) {
                Some(list) => list.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                None => entries.keys().cloned().collect(),
            };
            for n in names {
                if let Some(spec) = entries.get(&n) {
                    schema.inputs.push(InputSpec::from_object_info(&n, section, spec)?);
                }
            }
        }
        let list = |k: &str| rec.get(k).and_then(Json::as_array).cloned().unwrap_or_default();
        let (types, names, is_list, tips) = (list("output"), list("output_name"), list("output_is_list"), list("output_tooltips"));
        for (i, t) in types.iter().enumerate() {
            let ty = match t {
                Json::String(s) => s.clone(),
                Json::Array(_) => "COMBO".into(),
                _ => "*".into(),
            };
            schema.outputs.push(OutputSpec {
                name: names.get(i).and_then(Json::as_str).map(String::from).unwrap_or_else(|| ty.clone()),
                ty,
                is_list: is_list.get(i).and_then(Json::as_bool).unwrap_or(false),
                tooltip: tips.get(i).and_then(Json::as_str).map(String::from),
            });
        }
        Ok(schema)
    }
}

/// Schemas by class name, in registration order.
pub type SchemaMap = IndexMap<String, std::sync::Arc<NodeSchema>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeSchema {
        NodeSchema::new("Sample", "Sample Node", "utils/test")
            .input(InputSpec::int("seed", 0, 0, i64::MAX).with("control_after_generate", json!(true)))
            .input(InputSpec::float("cfg", 8.0, 0.0, 100.0, 0.1))
            .input(InputSpec::combo("mode", &["a", "b"]))
            .input(InputSpec::socket("model", "MODEL").optional().lazy())
            .input(InputSpec::hidden("unique_id", "UNIQUE_ID"))
            .output(OutputSpec::named("LATENT", "latent"))
    }

    #[test]
    fn object_info_round_trips() {
        let s = sample();
        let rec = s.to_object_info();
        assert_eq!(rec["input"]["required"]["seed"][1]["control_after_generate"], json!(true));
        assert_eq!(rec["input"]["required"]["mode"][0], json!(["a", "b"]));
        assert_eq!(rec["input_order"]["optional"], json!(["model"]));
        assert_eq!(rec["input"]["hidden"]["unique_id"], json!("UNIQUE_ID"));
        let back = NodeSchema::from_object_info(&rec).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn dynamic_input_members_are_accepted_constants() {
        let s = NodeSchema::new("Expr", "Expr", "math")
            .input(InputSpec::string("expression", "a + b"))
            .input(InputSpec::socket("values", "COMFY_AUTOGROW_V3").optional())
            .input(InputSpec::hidden("unique_id", "UNIQUE_ID"));
        assert!(s.accepts_constant("expression"));
        assert!(s.accepts_constant("values.a"));
        assert!(!s.accepts_constant("unique_id"));
        assert!(!s.accepts_constant("expression.x"));
        assert!(!s.accepts_constant("undeclared"));
        let mut all = s.clone();
        all.accept_all_inputs = true;
        assert!(all.accepts_constant("undeclared"));
    }

    #[test]
    fn v3_combo_parses() {
        let spec = InputSpec::from_object_info("m", Section::Required, &json!(["COMBO", {"options": ["x", "y"], "default": "y"}])).unwrap();
        assert!(matches!(spec.kind, InputKind::Combo { v3: true, .. }));
        assert_eq!(spec.to_object_info(), json!(["COMBO", {"options": ["x", "y"], "default": "y"}]));
    }
}
