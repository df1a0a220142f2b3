//! ComfyUI's model-free core nodes, implemented natively under ComfyUI's own class names:
//! the primitives (`comfy_extras/nodes_primitive.py`), the text nodes (`nodes_string.py`), the
//! math expression node (`nodes_math.py`), the logic nodes (`nodes_logic.py`) and the output
//! node `PreviewAny` (`nodes_preview_any.py`).
//!
//! Schemas reproduce the `/object_info` records ComfyUI builds for these classes (V3 nodes emit
//! `"multiline": false` on every text input and `"multiselect": false` on every combo, for
//! example), and behaviour follows the Python semantics those nodes rely on: code-point string
//! indexing, `str()`/`repr()`/`json.dumps` renderings, `str.format`, the `re` module, Python
//! arithmetic.
//!
//! V3 "autogrow" inputs (a growing set of sockets such as `values.a`, `values.b`, ...) are
//! declared as one optional `COMFY_AUTOGROW_V3` input carrying ComfyUI's template; the expanded,
//! dot-named inputs reach `execute` as the links of the prompt (see [`autogrow_values`]).

use std::sync::Arc;

use comfyrs_runtime::schema::{InputKind, Num, Section};
use comfyrs_runtime::{Args, CallOutput, ExecContext, InputSpec, NodeClass, NodeError, NodeSchema, OutputSpec, Registry, Value};
use serde_json::{json, Value as Json};

pub mod logic;
pub mod math;
pub mod preview;
pub mod primitive;
pub mod pyexpr;
pub mod pyformat;
pub mod pyregex;
pub mod pyvalue;
pub mod string;
pub mod test_nodes;

/// Registers every core node.
pub fn register(reg: &mut Registry) {
    for node in all() {
        reg.register(node);
    }
}

/// Every core node class, in registration order.
pub fn all() -> Vec<Arc<dyn NodeClass>> {
    let mut v: Vec<Arc<dyn NodeClass>> = Vec::new();
    v.extend(primitive::nodes());
    v.extend(preview::nodes());
    v.extend(string::nodes());
    v.extend(math::nodes());
    v.extend(logic::nodes());
    v
}

type RunFn = fn(&Args) -> Result<CallOutput, NodeError>;
type LazyFn = fn(&Args) -> Vec<String>;

/// A stateless node: a schema and a function of its arguments.
pub struct FnNode {
    schema: Arc<NodeSchema>,
    run: RunFn,
    lazy: Option<LazyFn>,
}

impl FnNode {
    #[allow(clippy::new_ret_no_self)]
    pub fn new(schema: NodeSchema, run: RunFn) -> Arc<dyn NodeClass> {
        Arc::new(FnNode { schema: Arc::new(schema), run, lazy: None })
    }
    pub fn with_lazy(schema: NodeSchema, run: RunFn, lazy: LazyFn) -> Arc<dyn NodeClass> {
        Arc::new(FnNode { schema: Arc::new(schema), run, lazy: Some(lazy) })
    }
}

impl NodeClass for FnNode {
    fn schema(&self) -> Arc<NodeSchema> {
        self.schema.clone()
    }
    fn execute(&self, _ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        (self.run)(args)
    }
    fn check_lazy_status(&self, _ctx: &ExecContext, args: &Args) -> Result<Vec<String>, NodeError> {
        Ok(self.lazy.map(|f| f(args)).unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------------------------
// Schema builders in the shape ComfyUI's V3 `io.*.Input(...).as_dict()` produces.

/// A V3 schema: display name, category, module and search aliases as `io.Schema` sets them.
pub fn v3_schema(name: &str, display: &str, category: &str, module: &str, aliases: &[&str]) -> NodeSchema {
    let mut s = NodeSchema::new(name, display, category).module(module);
    s.search_aliases = aliases.iter().map(|a| a.to_string()).collect();
    s
}

/// `io.String.Input`: V3 always emits `multiline`, even when false.
pub fn v3_string(name: &str, default: Option<&str>, multiline: bool) -> InputSpec {
    let mut s = InputSpec::string(name, "");
    s.kind = InputKind::String { default: default.map(String::from), multiline };
    if !multiline {
        s = s.with("multiline", json!(false));
    }
    s
}

/// `io.Int.Input` with only the options given.
pub fn v3_int(name: &str, default: Option<i128>, min: Option<i128>, max: Option<i128>) -> InputSpec {
    let mut s = InputSpec::int(name, 0, 0, 0);
    s.kind = InputKind::Int { default: default.map(Num::Int), min: min.map(Num::Int), max: max.map(Num::Int), step: None };
    s
}

/// `io.Boolean.Input`.
pub fn v3_bool(name: &str, default: Option<bool>) -> InputSpec {
    let mut s = InputSpec::boolean(name, false);
    s.kind = InputKind::Boolean { default };
    s
}

/// `io.Combo.Input(options=...)` without a default: `["COMBO", {"multiselect": false, "options": [...]}]`.
pub fn v3_combo(name: &str, options: &[&str]) -> InputSpec {
    let mut s = InputSpec::combo(name, options);
    s.kind = InputKind::Combo { options: options.iter().map(|o| json!(o)).collect(), default: None, v3: true, multiselect: false };
    s.with("multiselect", json!(false))
}

/// `io.AnyType.Input`: a `*` socket.
pub fn any_input(name: &str) -> InputSpec {
    InputSpec::socket(name, "*")
}

/// The template of a `io.MatchType.Template(id)` accepting any type.
pub fn matchtype_template(id: &str) -> Json {
    json!({ "template_id": id, "allowed_types": "*" })
}

/// `io.MatchType.Input`: a `COMFY_MATCHTYPE_V3` socket (the runtime links anything into it).
pub fn matchtype_input(name: &str, template_id: &str) -> InputSpec {
    InputSpec::socket(name, "COMFY_MATCHTYPE_V3").with("template", matchtype_template(template_id))
}

/// How an autogrow input names its sockets.
pub enum Grow<'a> {
    /// `Autogrow.TemplateNames(names=..., min=...)`.
    Names(&'a [&'a str]),
    /// `Autogrow.TemplatePrefix(prefix=..., min=..., max=...)`.
    Prefix(&'a str, usize),
}

/// `io.Autogrow.Input(name, template=...)` whose template input is `template_input` (an
/// `/object_info` pair such as `["*", {}]`).
///
/// ComfyUI lists it under `required`; it is declared optional here because the runtime's
/// validator does not expand dynamic inputs: a prompt never carries `values` itself, only the
/// expanded `values.a`, ... links, which reach `execute` undeclared. The required expanded
/// inputs (`min`) are checked by [`autogrow_values`] when the node runs.
pub fn autogrow_input(name: &str, template_name: &str, template_input: Json, grow: &Grow, min: usize) -> InputSpec {
    let mut template = serde_json::Map::new();
    template.insert("input".into(), json!({ "required": { template_name: template_input } }));
    match grow {
        Grow::Names(names) => {
            template.insert("names".into(), json!(names));
            template.insert("min".into(), json!(min));
        }
        Grow::Prefix(prefix, max) => {
            template.insert("prefix".into(), json!(prefix));
            template.insert("min".into(), json!(min));
            template.insert("max".into(), json!(max));
        }
    }
    let mut s = InputSpec::socket(name, "COMFY_AUTOGROW_V3").with("template", Json::Object(template));
    s.section = Section::Optional;
    s
}

/// The values of an autogrow input, as ComfyUI passes them to `execute`: the present expanded
/// inputs (`{name}.{slot}`) in template order, keyed by slot name. A missing required slot
/// (index below `min`) fails as ComfyUI's validation would.
pub fn autogrow_values(args: &Args, name: &str, grow: &Grow, min: usize) -> Result<Vec<(String, Value)>, NodeError> {
    let slots: Vec<String> = match grow {
        Grow::Names(names) => names.iter().map(|n| n.to_string()).collect(),
        Grow::Prefix(prefix, max) => (0..*max).map(|i| format!("{prefix}{i}")).collect(),
    };
    let mut out = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        let key = format!("{name}.{slot}");
        match args.values.get(&key) {
            Some(list) => out.push((slot.clone(), list.first().cloned().unwrap_or(Value::None))),
            None if i < min => {
                return Err(NodeError::Failed {
                    message: format!("Required input is missing: {key}"),
                    exception_type: "ValueError".into(),
                    traceback: Vec::new(),
                })
            }
            None => {}
        }
    }
    Ok(out)
}

pub fn out(ty: &str) -> OutputSpec {
    OutputSpec::new(ty)
}

pub fn out_named(ty: &str, name: &str) -> OutputSpec {
    OutputSpec::named(ty, name)
}

/// A Python exception of the given type.
pub fn py_error(exception_type: &str, message: impl Into<String>) -> NodeError {
    NodeError::Failed { message: message.into(), exception_type: exception_type.into(), traceback: Vec::new() }
}

/// The value of an input as this call sees it (`None` when absent).
pub fn arg(args: &Args, name: &str) -> Value {
    args.get(name).cloned().unwrap_or(Value::None)
}

/// A boolean input that may be absent (optional inputs with a default).
pub fn opt_bool(args: &Args, name: &str, default: bool) -> Result<bool, NodeError> {
    if args.has(name) {
        args.boolean(name)
    } else {
        Ok(default)
    }
}

/// An int input that may be absent.
pub fn opt_int(args: &Args, name: &str, default: i128) -> Result<i128, NodeError> {
    if args.has(name) {
        args.int(name)
    } else {
        Ok(default)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use comfyrs_runtime::events::NoEvents;
    use comfyrs_runtime::interrupt::Interrupt;

    /// Runs one node class directly with the given constant arguments.
    pub fn run(node: &Arc<dyn NodeClass>, args: &[(&str, Value)]) -> Result<CallOutput, NodeError> {
        let mut a = Args::default();
        for (k, v) in args {
            a.insert(k, v.clone());
        }
        let interrupt = Interrupt::default();
        let prompt = Json::Null;
        let ctx = ExecContext {
            prompt_id: "test",
            node_id: "1",
            call_index: 0,
            prompt: &prompt,
            extra_pnginfo: None,
            extra_data: None,
            output_dir: std::path::Path::new("."),
            events: &NoEvents,
            interrupt: &interrupt,
        };
        node.execute(&ctx, &a)
    }

    /// The one value of output `slot`.
    pub fn out1(r: &Result<CallOutput, NodeError>, slot: usize) -> Value {
        match r {
            Ok(o) => o.outputs[slot][0].clone(),
            Err(e) => panic!("node failed: {e}"),
        }
    }

    pub fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    pub fn find(name: &str) -> Arc<dyn NodeClass> {
        all().into_iter().find(|n| n.schema().name == name).unwrap_or_else(|| panic!("no node {name}"))
    }
}
