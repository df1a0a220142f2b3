//! Step 1 of the Exit: the recipe tree checked before any file is opened (the errors of
//! docs/widen.md, "Errors", with paths such as `root.target.branches[1]`; block-config
//! architectures, docs/decisions.md D10).

use std::sync::Arc;

use crate::arch::Arch;
use crate::recipe::{BlockConfig, PackError, Recipe, RecipeDomain, RecipeKind};

/// Validates the tree (docs/widen.md, "Recipe validation"; D10, D20). Returns the base.
pub fn validate(root: &Recipe, domain: RecipeDomain) -> Result<Recipe, PackError> {
    let exit = match domain {
        RecipeDomain::Diffusion => "Exit",
        RecipeDomain::Clip => "CLIP Exit",
    };
    if !root.is_base() && !root.is_merge() {
        let merge = if domain == RecipeDomain::Clip { "CLIP Merge" } else { "Merge" };
        return Err(PackError::value(format!(
            "{exit} node expects RecipeMerge or RecipeBase at root, got {}. Connect a {merge} node to {exit}.",
            root.type_name()
        )));
    }
    walk(root, "root")?;
    let base = root.find_base().ok_or_else(|| PackError::value("recipe has no RecipeBase".to_string()))?;
    let RecipeKind::Base { arch, domain: bd, .. } = &base.kind else { unreachable!() };
    if *bd != domain {
        let (want, node) = match domain {
            RecipeDomain::Clip => ("clip", "Use CLIP Entry node to create CLIP recipes."),
            RecipeDomain::Diffusion => ("diffusion", "Use the Entry node (or WIDENBaseInput) to create diffusion recipes."),
        };
        return Err(PackError::value(format!(
            "RecipeBase at root has domain='{}', expected domain='{want}'. {node}",
            bd.name()
        )));
    }
    check_block_configs(root, "root", *arch)?;
    Ok(base)
}

pub(super) fn walk(node: &Recipe, path: &str) -> Result<(), PackError> {
    match &node.kind {
        RecipeKind::Base { .. } | RecipeKind::Lora { .. } | RecipeKind::Model { .. } => Ok(()),
        RecipeKind::Compose { branches } => {
            if branches.is_empty() {
                return Err(PackError::value(format!("RecipeCompose at {path} has no branches")));
            }
            for (i, b) in branches.iter().enumerate() {
                if b.is_base() {
                    return Err(PackError::value(format!(
                        "Invalid branch type at {path}.branches[{i}]: expected RecipeLoRA, RecipeModel, RecipeCompose, or RecipeMerge, got RecipeBase"
                    )));
                }
                walk(b, &format!("{path}.branches[{i}]"))?;
            }
            Ok(())
        }
        RecipeKind::Merge { base, target, backbone, .. } => {
            if !base.is_base() && !base.is_merge() {
                return Err(PackError::value(format!(
                    "Invalid base type at {path}.base: expected RecipeBase or RecipeMerge, got {}",
                    base.type_name()
                )));
            }
            if target.is_base() {
                return Err(PackError::value(format!(
                    "Invalid target type at {path}.target: expected RecipeLoRA, RecipeModel, RecipeCompose, or RecipeMerge, got RecipeBase"
                )));
            }
            walk(base, &format!("{path}.base"))?;
            walk(target, &format!("{path}.target"))?;
            if let Some(b) = backbone {
                if matches!(b.kind, RecipeKind::Compose { .. }) {
                    return Err(PackError::value(format!(
                        "Invalid backbone type at {path}.backbone: a Compose is not a model. Connect an Entry, Merge, \
                         LoRA or Model Input output to 'backbone' (or leave it unconnected to use the merge's base)."
                    )));
                }
                walk(b, &format!("{path}.backbone"))?;
            }
            Ok(())
        }
    }
}

pub(super) fn check_bc(bc: &Option<Arc<BlockConfig>>, path: &str, arch: Arch) -> Result<(), PackError> {
    if let Some(bc) = bc {
        if bc.arch != arch {
            return Err(PackError::value(format!(
                "Block config architecture '{}' at {path} does not match base model architecture '{}'. \
                 Use a Block Config node matching the base model's architecture.",
                bc.arch.tag(),
                arch.tag()
            )));
        }
    }
    Ok(())
}

pub(super) fn check_block_configs(node: &Recipe, path: &str, arch: Arch) -> Result<(), PackError> {
    match &node.kind {
        RecipeKind::Base { .. } => Ok(()),
        RecipeKind::Lora { block_config, .. } | RecipeKind::Model { block_config, .. } => check_bc(block_config, path, arch),
        RecipeKind::Compose { branches } => {
            for (i, b) in branches.iter().enumerate() {
                check_block_configs(b, &format!("{path}.branches[{i}]"), arch)?;
            }
            Ok(())
        }
        RecipeKind::Merge { base, target, backbone, block_config, .. } => {
            check_bc(block_config, path, arch)?;
            check_block_configs(base, &format!("{path}.base"), arch)?;
            check_block_configs(target, &format!("{path}.target"), arch)?;
            if let Some(b) = backbone {
                check_block_configs(b, &format!("{path}.backbone"), arch)?;
            }
            Ok(())
        }
    }
}
