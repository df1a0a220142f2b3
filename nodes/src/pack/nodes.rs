//! The node classes: schemas exactly as the reference pack declares them (`docs/widen.md`,
//! "The nodes") and the recipe building with the validation errors of "Errors", raised at the
//! node.

use std::sync::Arc;

use comfyrs_runtime::node::{Fingerprint, Placement};
use comfyrs_runtime::schema::InputKind;
use comfyrs_runtime::{Args, CallOutput, ExecContext, InputSpec, NodeClass, NodeError, NodeSchema, OutputSpec, Value};
use serde_json::{json, Value as Json};

use crate::models::FileIdentity;

use crate::merge::exit::{run_exit, ExitOptions};
use crate::recipe::block::{kinds as block_kinds, LAYER_TYPES};
use crate::recipe::model::NativeModel;
use crate::recipe::{BlockConfig, BlockConfigHandle, LoraEntry, PackError, Recipe, RecipeDomain, RecipeHandle, RecipeKind, RecipeNode, SourceDir};

use super::PackContext;

type SchemaFn = Box<dyn Fn(&PackContext) -> NodeSchema + Send + Sync>;
type RunFn = Box<dyn Fn(&PackContext, &ExecContext, &Args) -> Result<CallOutput, PackError> + Send + Sync>;
type PrintFn = Box<dyn Fn(&PackContext, &Args) -> Option<Fingerprint> + Send + Sync>;

/// One node class of the pack.
pub struct PackNode {
    ctx: PackContext,
    schema: SchemaFn,
    run: RunFn,
    print: Option<PrintFn>,
    placement: Placement,
}

impl NodeClass for PackNode {
    fn schema(&self) -> Arc<NodeSchema> {
        Arc::new((self.schema)(&self.ctx))
    }
    fn execute(&self, ctx: &ExecContext, args: &Args) -> Result<CallOutput, NodeError> {
        (self.run)(&self.ctx, ctx, args).map_err(NodeError::from)
    }
    fn fingerprint(&self, _node_id: &str, constants: &Args) -> Option<Fingerprint> {
        self.print.as_ref().and_then(|f| f(&self.ctx, constants))
    }
    fn placement(&self) -> Placement {
        self.placement
    }
}

fn node(
    ctx: &PackContext,
    schema: impl Fn(&PackContext) -> NodeSchema + Send + Sync + 'static,
    run: impl Fn(&PackContext, &ExecContext, &Args) -> Result<CallOutput, PackError> + Send + Sync + 'static,
) -> PackNode {
    PackNode { ctx: ctx.clone(), schema: Box::new(schema), run: Box::new(run), print: None, placement: Placement::Inline }
}

fn schema(name: &str, display: &str, category: &str) -> NodeSchema {
    NodeSchema::new(name, display, category).module("custom_nodes.comfy-ecaj-nodes")
}

/// A legacy combo `(list,)`: no default in `/object_info`.
fn combo(name: &str, options: Vec<String>) -> InputSpec {
    let mut s = InputSpec::combo(name, &options);
    if let InputKind::Combo { default, .. } = &mut s.kind {
        *default = None;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Argument helpers

fn recipe_arg(args: &Args, name: &str) -> Option<Recipe> {
    args.get(name).and_then(|v| v.as_handle::<RecipeHandle>()).map(|h| h.recipe.clone())
}

fn required_recipe(args: &Args, name: &str) -> Result<Recipe, PackError> {
    recipe_arg(args, name).ok_or_else(|| match args.get(name) {
        None | Some(Value::None) => PackError::value(format!("input '{name}' is not connected: connect a WIDEN recipe to it")),
        Some(v) => PackError::type_error(format!("input '{name}' expects a WIDEN recipe, got {}", v.kind())),
    })
}

fn block_config_arg(args: &Args) -> Option<Arc<BlockConfig>> {
    args.get("block_config").and_then(|v| v.as_handle::<BlockConfigHandle>()).map(|h| h.0.clone())
}

fn out(domain: RecipeDomain, r: Recipe) -> CallOutput {
    CallOutput::values([Value::Handle(Arc::new(RecipeHandle { recipe: r, domain }))])
}

fn identity_print(ctx: &PackContext, kinds: &[&str], name: Option<&str>) -> Option<Fingerprint> {
    let name = name?;
    let folders = ctx.folders();
    for kind in kinds {
        if let Ok(p) = folders.resolve(kind, name) {
            if let Ok(id) = FileIdentity::of(&p) {
                return Some(Fingerprint::Value(json!(id.fingerprint())));
            }
        }
    }
    Some(Fingerprint::Value(json!(format!("missing:{name}"))))
}

// ---------------------------------------------------------------------------------------------
// Recipe construction (usable without the runtime, for tests)

/// WIDEN LoRA: a new set, or `prev`'s set with one more LoRA.
pub fn lora_recipe(prev: Option<&Recipe>, path: &str, strength: f64, bc: Option<Arc<BlockConfig>>) -> Result<Recipe, PackError> {
    let entry = LoraEntry { path: path.to_string(), strength };
    let Some(prev) = prev else {
        return Ok(RecipeNode::new(RecipeKind::Lora { loras: vec![entry], block_config: bc }));
    };
    let RecipeKind::Lora { loras, block_config: prev_bc } = &prev.kind else {
        return Err(PackError::type_error(format!(
            "Expected RecipeLoRA for prev input, got {}. Connect the output of another LoRA node to 'prev', \
             or leave it unconnected.",
            prev.type_name()
        )));
    };
    let block_config = match (prev_bc, bc) {
        (p, None) => p.clone(),
        (Some(p), Some(n)) if p.arch != n.arch => {
            return Err(PackError::value(format!(
                "Block config architecture mismatch: prev has '{}' but new block_config has '{}'. \
                 All LoRAs in a chain must use the same architecture.",
                p.arch.tag(),
                n.arch.tag()
            )))
        }
        (_, Some(n)) => Some(n),
    };
    let mut loras = loras.clone();
    loras.push(entry);
    Ok(RecipeNode::new(RecipeKind::Lora { loras, block_config }))
}

pub fn compose_recipe(branch: &Recipe, compose: Option<&Recipe>) -> Result<Recipe, PackError> {
    if branch.is_base() {
        return Err(PackError::value(
            "Cannot compose a raw base model. Apply LoRAs first using a LoRA node, or use this as a Merge base input.",
        ));
    }
    match compose {
        None => Ok(RecipeNode::new(RecipeKind::Compose { branches: vec![branch.clone()] })),
        Some(c) if matches!(c.kind, RecipeKind::Compose { .. }) => Ok(c.with_branch(branch.clone())),
        Some(c) => Err(PackError::type_error(format!(
            "compose must be RecipeCompose or None, got {}. Connect the output of another Compose node to 'compose'.",
            c.type_name()
        ))),
    }
}

pub fn merge_recipe(
    base: &Recipe,
    target: &Recipe,
    t_factor: f64,
    backbone: Option<&Recipe>,
    bc: Option<Arc<BlockConfig>>,
) -> Result<Recipe, PackError> {
    if matches!(base.kind, RecipeKind::Lora { .. } | RecipeKind::Compose { .. }) {
        return Err(PackError::value(format!(
            "base must be RecipeBase or RecipeMerge (a base model or merge chain), got {}. Use Entry node or Merge output as base.",
            base.type_name()
        )));
    }
    if !base.is_base() && !base.is_merge() {
        return Err(PackError::type_error(format!("base must be RecipeBase or RecipeMerge, got {}", base.type_name())));
    }
    if target.is_base() {
        return Err(PackError::type_error(format!(
            "target must be RecipeLoRA, RecipeModel, RecipeCompose, or RecipeMerge, got {}. Connect a LoRA, \
             Compose, Model Input or Merge node to 'target'.",
            target.type_name()
        )));
    }
    if let Some(bc) = &bc {
        if let Some(b) = base.find_base() {
            if let RecipeKind::Base { arch, .. } = &b.kind {
                if bc.arch != *arch {
                    return Err(PackError::value(format!(
                        "Block config architecture '{}' does not match base model architecture '{}'. \
                         Use a Block Config node matching the base model's architecture.",
                        bc.arch.tag(),
                        arch.tag()
                    )));
                }
            }
        }
    }
    Ok(RecipeNode::new(RecipeKind::Merge {
        base: base.clone(),
        target: target.clone(),
        backbone: backbone.cloned(),
        t_factor,
        block_config: bc,
    }))
}

/// WIDEN Entry / CLIP Entry on a native model handle, or on a foreign MODEL or CLIP that `foreign`
/// (the engine's provider) can read.
pub fn entry_recipe(value: Option<&Value>, domain: RecipeDomain, foreign: Option<&dyn crate::recipe::foreign::ForeignModels>) -> Result<Recipe, PackError> {
    let (what, node) = match domain {
        RecipeDomain::Diffusion => ("MODEL", "WIDEN Entry"),
        RecipeDomain::Clip => ("CLIP", "WIDEN CLIP Entry"),
    };
    // A foreign (ComfyUI) MODEL or CLIP: its weights, shared, become a base.
    if let Some(v) = value.filter(|v| v.as_handle::<NativeModel>().is_none()) {
        if let Some(state) = foreign.and_then(|p| p.state_dict(v)) {
            let state = state.map_err(|e| PackError::runtime(format!("{node}: reading the {what}'s weights failed: {e}")))?;
            if state.domain != domain {
                return Err(wrong_domain(node, domain, state.tensors.keys().map(|k| k.as_str())));
            }
            let model = NativeModel::foreign(v.clone(), state)?;
            return Ok(RecipeNode::new(RecipeKind::Base { arch: model.arch(), domain, model }));
        }
    }
    let Some(model) = value.and_then(|v| v.as_handle::<NativeModel>()) else {
        return Err(PackError::type_error(format!(
            "{node} got a {what} that is not a native comfyrs model ({}); merging a ComfyUI {what} \
             needs the Python bridge. For a headless merge, load the base with WIDEN{}BaseInput instead.",
            value.map(|v| v.kind().to_string()).unwrap_or_else(|| "nothing".into()),
            if domain == RecipeDomain::Clip { "CLIP" } else { "" },
        )));
    };
    if model.domain() != domain {
        return Err(wrong_domain(node, domain, model.keys()));
    }
    // The handle is shared, not copied: the recipe keeps the same model.
    let model = find_arc(value.unwrap());
    Ok(RecipeNode::new(RecipeKind::Base { arch: model.arch(), domain, model }))
}

/// A MODEL given to the CLIP Entry, or a CLIP to the Entry: the reference's architecture error
/// for those keys, and what to connect instead.
fn wrong_domain<'a>(node: &str, domain: RecipeDomain, keys: impl Iterator<Item = &'a str>) -> PackError {
    let (error, hint) = match domain {
        RecipeDomain::Clip => (
            crate::recipe::model::not_sdxl_clip(),
            "it got a MODEL; connect a CLIP (the second output of a checkpoint loader)",
        ),
        RecipeDomain::Diffusion => (
            crate::pack::model::unsupported_arch(keys),
            "it got a CLIP; connect a MODEL (CLIPs are merged from WIDEN CLIP Entry)",
        ),
    };
    PackError::value(format!("{} ({node}: {hint}.)", error.message()))
}

fn find_arc(v: &Value) -> Arc<NativeModel> {
    match v {
        Value::Handle(h) => {
            // Trait upcasting: the same allocation, seen as `dyn Any`, downcast without a copy.
            let any: Arc<dyn std::any::Any + Send + Sync> = h.clone();
            any.downcast::<NativeModel>().expect("checked above")
        }
        _ => unreachable!("checked above"),
    }
}

// ---------------------------------------------------------------------------------------------
// The node list

pub fn all(ctx: &PackContext) -> Vec<Arc<dyn NodeClass>> {
    let mut v: Vec<Arc<dyn NodeClass>> = Vec::new();
    let cat = "ecaj/merge";
    let clip_cat = "ecaj/merge/clip";

    // Entry nodes.
    v.push(Arc::new(node(
        ctx,
        move |_| {
            schema("WIDENEntry", "WIDEN Entry", cat)
                .input(InputSpec::socket("model", "MODEL"))
                .output(OutputSpec::named("WIDEN", "widen"))
        },
        |c, _, a| Ok(out(RecipeDomain::Diffusion, entry_recipe(a.get("model"), RecipeDomain::Diffusion, c.engine.foreign_models().as_deref())?)),
    )));
    v.push(Arc::new(node(
        ctx,
        move |_| {
            schema("WIDENCLIPEntry", "WIDEN CLIP Entry", cat)
                .input(InputSpec::socket("clip", "CLIP"))
                .output(OutputSpec::named("WIDEN_CLIP", "widen_clip"))
        },
        |c, _, a| Ok(out(RecipeDomain::Clip, entry_recipe(a.get("clip"), RecipeDomain::Clip, c.engine.foreign_models().as_deref())?)),
    )));

    // LoRA nodes.
    for (class, display, domain, category, out_name) in [
        ("WIDENLoRA", "WIDEN LoRA", RecipeDomain::Diffusion, cat, "widen"),
        ("WIDENCLIPLoRA", "WIDEN CLIP LoRA", RecipeDomain::Clip, clip_cat, "clip_recipe"),
    ] {
        let mut n = node(
            ctx,
            move |c| {
                schema(class, display, category)
                    .input(combo("lora_name", c.list("loras")))
                    .input(InputSpec::float("strength", 1.0, -10.0, 10.0, 0.01))
                    .input(InputSpec::socket("prev", domain.socket()).optional())
                    .input(InputSpec::socket("block_config", "BLOCK_CONFIG").optional())
                    .output(OutputSpec::named(domain.socket(), out_name))
            },
            move |_, _, a| {
                let name = a.string("lora_name").map_err(|e| PackError::type_error(e.to_string()))?;
                let strength = a.float("strength").map_err(|e| PackError::type_error(e.to_string()))?;
                let prev = recipe_arg(a, "prev");
                Ok(out(domain, lora_recipe(prev.as_ref(), name, strength, block_config_arg(a))?))
            },
        );
        n.print = Some(Box::new(|c, a| identity_print(c, &["loras"], a.get("lora_name").and_then(str_of))));
        v.push(Arc::new(n));
    }

    // Compose nodes.
    for (class, display, domain, category, out_name) in [
        ("WIDENCompose", "WIDEN Compose", RecipeDomain::Diffusion, cat, "widen"),
        ("WIDENCLIPCompose", "WIDEN CLIP Compose", RecipeDomain::Clip, clip_cat, "clip_recipe"),
    ] {
        v.push(Arc::new(node(
            ctx,
            move |_| {
                schema(class, display, category)
                    .input(InputSpec::socket("branch", domain.socket()))
                    .input(InputSpec::socket("compose", domain.socket()).optional())
                    .output(OutputSpec::named(domain.socket(), out_name))
            },
            move |_, _, a| {
                let branch = required_recipe(a, "branch")?;
                Ok(out(domain, compose_recipe(&branch, recipe_arg(a, "compose").as_ref())?))
            },
        )));
    }

    // Merge nodes.
    for (class, display, domain, category, out_name) in [
        ("WIDENMerge", "WIDEN Merge", RecipeDomain::Diffusion, cat, "widen"),
        ("WIDENCLIPMerge", "WIDEN CLIP Merge", RecipeDomain::Clip, clip_cat, "clip_recipe"),
    ] {
        v.push(Arc::new(node(
            ctx,
            move |_| {
                schema(class, display, category)
                    .input(InputSpec::socket("base", domain.socket()))
                    .input(InputSpec::socket("target", domain.socket()))
                    .input(InputSpec::float("t_factor", 1.0, 0.0, 5.0, 0.05))
                    .input(InputSpec::socket("backbone", domain.socket()).optional())
                    .input(InputSpec::socket("block_config", "BLOCK_CONFIG").optional())
                    .output(OutputSpec::named(domain.socket(), out_name))
            },
            move |_, _, a| {
                let base = required_recipe(a, "base")?;
                let target = required_recipe(a, "target")?;
                let t = a.float("t_factor").map_err(|e| PackError::type_error(e.to_string()))?;
                let backbone = recipe_arg(a, "backbone");
                Ok(out(domain, merge_recipe(&base, &target, t, backbone.as_ref(), block_config_arg(a))?))
            },
        )));
    }

    // Exit nodes: the same options, a MODEL saved as a checkpoint and a CLIP as its text
    // encoders (docs/widen.md, "Saving merged models").
    for (class, display, domain, category, input, out_type, out_name) in [
        ("WIDENExit", "WIDEN Exit", RecipeDomain::Diffusion, cat, "widen", "MODEL", "model"),
        ("WIDENCLIPExit", "WIDEN CLIP Exit", RecipeDomain::Clip, clip_cat, "widen_clip", "CLIP", "clip"),
    ] {
        let mut exit = node(
            ctx,
            move |_| {
                schema(class, display, category)
                    .input(InputSpec::socket(input, domain.socket()))
                    .input(InputSpec::boolean("save_model", false).optional())
                    .input(InputSpec::string("model_name", "").optional())
                    .input(InputSpec::boolean("save_workflow", true).optional())
                    .input(InputSpec::boolean("enable_cache", true).optional())
                    .input(InputSpec::hidden("prompt", "PROMPT"))
                    .input(InputSpec::hidden("extra_pnginfo", "EXTRA_PNGINFO"))
                    .output(OutputSpec::named(out_type, out_name))
            },
            move |c, ctx, a| {
                let recipe = required_recipe(a, input)?;
                let opts = ExitOptions {
                    domain,
                    save_model: bool_or(a, "save_model", false),
                    model_name: a.get("model_name").and_then(str_of).unwrap_or("").to_string(),
                    save_workflow: bool_or(a, "save_workflow", true),
                    enable_cache: bool_or(a, "enable_cache", true),
                    extra_pnginfo: ctx.extra_pnginfo.cloned(),
                };
                exit_output(c, run_exit(&c.engine, &c.folders(), ctx, &recipe, &opts)?)
            },
        );
        exit.placement = Placement::Worker;
        exit.print = Some(Box::new(move |c, a| Some(crate::merge::save::exit_fingerprint(&c.folders(), domain, a))));
        v.push(Arc::new(exit));
    }

    // The report of a merge (docs/widen.md, "Report"): comfyrs's own node, not the reference's.
    v.push(Arc::new(node(
        ctx,
        move |_| {
            schema("WIDENReport", "WIDEN Report", cat)
                .input(InputSpec::socket("model", "MODEL"))
                .output(OutputSpec::named("IMAGE", "image"))
                .output(OutputSpec::named("STRING", "text"))
                .output_node()
        },
        |_, ctx, a| super::report::run(a, ctx.output_dir),
    )));

    // Block configs.
    for k in block_kinds() {
        let kind = Arc::new(k);
        let sk = kind.clone();
        v.push(Arc::new(node(
            ctx,
            move |_| {
                let mut s = schema(sk.class, sk.display, cat);
                for b in sk.blocks.iter().map(String::as_str).chain(LAYER_TYPES) {
                    s = s.input(InputSpec::float(b, 1.0, 0.0, 2.0, 0.05));
                }
                s.output(OutputSpec::named("BLOCK_CONFIG", "block_config"))
            },
            move |_, _, a| {
                let get = |n: &str| a.float(n).map_err(|e| PackError::type_error(e.to_string()));
                let block_overrides =
                    kind.blocks.iter().map(|b| Ok((b.clone(), get(b)?))).collect::<Result<Vec<_>, PackError>>()?;
                let layer_type_overrides =
                    LAYER_TYPES.iter().map(|b| Ok((b.to_string(), get(b)?))).collect::<Result<Vec<_>, PackError>>()?;
                let bc = BlockConfig { arch: kind.arch, block_overrides, layer_type_overrides };
                Ok(CallOutput::values([Value::Handle(Arc::new(BlockConfigHandle(Arc::new(bc))))]))
            },
        )));
    }

    // Model inputs.
    for (class, display, domain, category, out_name, source, kinds) in [
        ("WIDENModelInput", "WIDEN Checkpoint Input", RecipeDomain::Diffusion, cat, "widen", SourceDir::Checkpoints, &["checkpoints"][..]),
        (
            "WIDENDiffusionModelInput",
            "WIDEN Diffusion Model Input",
            RecipeDomain::Diffusion,
            cat,
            "widen",
            SourceDir::DiffusionModels,
            &["diffusion_models"][..],
        ),
        ("WIDENCLIPModelInput", "WIDEN CLIP Model Input", RecipeDomain::Clip, clip_cat, "clip_recipe", SourceDir::Checkpoints, &["checkpoints"][..]),
    ] {
        let folder = source.name();
        let mut n = node(
            ctx,
            move |c| {
                schema(class, display, category)
                    .input(combo("model_name", c.list(folder)))
                    .input(InputSpec::float("strength", 1.0, 0.0, 2.0, 0.01))
                    .input(InputSpec::socket("block_config", "BLOCK_CONFIG").optional())
                    .output(OutputSpec::named(domain.socket(), out_name))
            },
            move |_, _, a| {
                let name = a.string("model_name").map_err(|e| PackError::type_error(e.to_string()))?;
                let strength = a.float("strength").map_err(|e| PackError::type_error(e.to_string()))?;
                let r = RecipeNode::new(RecipeKind::Model {
                    path: name.to_string(),
                    strength,
                    block_config: block_config_arg(a),
                    source_dir: source,
                });
                Ok(out(domain, r))
            },
        );
        n.print = Some(Box::new(move |c, a| identity_print(c, kinds, a.get("model_name").and_then(str_of))));
        v.push(Arc::new(n));
    }

    // Native bases for headless merges.
    let mut base = node(
        ctx,
        move |c| {
            let mut names = c.list("diffusion_models");
            for n in c.list("checkpoints") {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            schema("WIDENBaseInput", "WIDEN Base Input (native)", cat)
                .description(
                    "A base model file from diffusion_models (then checkpoints), memory-mapped: the recipe base \
                     of a headless merge. Also outputs the model itself.",
                )
                .input(combo("model_name", names))
                .output(OutputSpec::named("WIDEN", "widen"))
                .output(OutputSpec::named("MODEL", "model"))
        },
        |c, _, a| {
            let name = a.string("model_name").map_err(|e| PackError::type_error(e.to_string()))?;
            let model = open_native(c, name, &["diffusion_models", "checkpoints"], RecipeDomain::Diffusion)?;
            let r = RecipeNode::new(RecipeKind::Base { arch: model.arch(), domain: RecipeDomain::Diffusion, model: model.clone() });
            Ok(CallOutput::values([
                Value::Handle(Arc::new(RecipeHandle { recipe: r, domain: RecipeDomain::Diffusion })),
                Value::Handle(model),
            ]))
        },
    );
    base.print = Some(Box::new(|c, a| {
        identity_print(c, &["diffusion_models", "checkpoints"], a.get("model_name").and_then(str_of))
    }));
    v.push(Arc::new(base));

    let mut clip_base = node(
        ctx,
        move |c| {
            schema("WIDENCLIPBaseInput", "WIDEN CLIP Base Input (native)", clip_cat)
                .description("The SDXL text encoders of a checkpoint, memory-mapped: the base of a headless CLIP merge.")
                .input(combo("ckpt_name", c.list("checkpoints")))
                .output(OutputSpec::named("WIDEN_CLIP", "widen_clip"))
                .output(OutputSpec::named("CLIP", "clip"))
        },
        |c, _, a| {
            let name = a.string("ckpt_name").map_err(|e| PackError::type_error(e.to_string()))?;
            let model = open_native(c, name, &["checkpoints"], RecipeDomain::Clip)?;
            let r = RecipeNode::new(RecipeKind::Base { arch: model.arch(), domain: RecipeDomain::Clip, model: model.clone() });
            Ok(CallOutput::values([
                Value::Handle(Arc::new(RecipeHandle { recipe: r, domain: RecipeDomain::Clip })),
                Value::Handle(model),
            ]))
        },
    );
    clip_base.print = Some(Box::new(|c, a| identity_print(c, &["checkpoints"], a.get("ckpt_name").and_then(str_of))));
    v.push(Arc::new(clip_base));
    v
}

fn str_of(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn bool_or(a: &Args, name: &str, default: bool) -> bool {
    match a.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Int(i)) => *i != 0,
        _ => default,
    }
}

fn open_native(c: &PackContext, name: &str, kinds: &[&str], domain: RecipeDomain) -> Result<Arc<NativeModel>, PackError> {
    let folders = c.folders();
    let mut last = None;
    for kind in kinds {
        match folders.resolve(kind, name) {
            Ok(p) => return NativeModel::open(&p, name, domain),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(PackError::from).unwrap_or_else(|| PackError::not_found(format!("model file not found: {name}"))))
}

fn exit_output(c: &PackContext, mut r: crate::merge::ExitResult) -> Result<CallOutput, PackError> {
    // Over a foreign MODEL: a MODEL of that runtime with the merged weights installed (timed as
    // the handover phase, so the statistics come after it).
    let handover = std::time::Instant::now();
    let foreign = foreign_output(c, &r)?;
    if foreign.is_some() {
        r.stats.phases.handover = handover.elapsed().as_secs_f64();
        r.stats.seconds += r.stats.phases.handover;
        tracing::debug!(keys = r.model.overrides().len(), ms = format!("{:.1}", r.stats.phases.handover * 1e3), "WIDEN Exit: merged weights handed over");
    }
    let mut ui = serde_json::Map::new();
    ui.insert("widen".into(), Json::Array(vec![r.stats.to_json()]));
    if let Some(report) = r.model.report() {
        // What `comfyrs report` draws for a workflow (docs/widen.md, "Report").
        ui.insert("widen_report".into(), Json::Array(vec![serde_json::to_value(&**report).map_err(|e| PackError::runtime(e.to_string()))?]));
    }
    let out = foreign.unwrap_or_else(|| Value::Handle(r.model));
    Ok(CallOutput::values([out]).with_ui(ui))
}

/// The Exit's output over a foreign MODEL or CLIP: one of that runtime with the merged weights
/// installed (the origin itself when the merge changed nothing); `None` over a native one.
fn foreign_output(c: &PackContext, r: &crate::merge::ExitResult) -> Result<Option<Value>, PackError> {
    let Some(origin) = r.model.foreign_origin() else { return Ok(None) };
    if r.model.overrides().is_empty() {
        return Ok(Some(origin.clone()));
    }
    let p = c
        .engine
        .foreign_models()
        .ok_or_else(|| PackError::runtime("WIDEN Exit: the merge's base is a foreign MODEL or CLIP but no provider is installed"))?;
    // Python keeps the tensors as patches for as long as it likes, beyond this model: computed
    // ones are shared (libtorch owns them), ones read from a saved file are copied out of its
    // map, which lives only as long as this model.
    let merged: indexmap::IndexMap<String, tch::Tensor> =
        r.model.overrides().iter().map(|(k, t)| (k.clone(), if t.file().is_some() { t.copy() } else { t.shallow_clone() })).collect();
    let out = p.with_weights(origin, &merged).map_err(|e| PackError::runtime(format!("WIDEN Exit: installing the merged weights failed: {e}")))?;
    Ok(Some(out))
}
