//! The builder's errors: a recipe refused (naming the field), or a build step that failed.

use std::path::PathBuf;

/// A recipe that cannot be built, with the field at fault.
#[derive(Debug, thiserror::Error)]
#[error("recipe {field}: {message}")]
pub struct RecipeError {
    /// Where in the recipe, e.g. `source.suite` or `files[2].path` (`(document)` for the whole).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl RecipeError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        RecipeError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a build failed. A failed build leaves no output and no scratch directory.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read the recipe {path}: {err}")]
    ReadRecipe { path: PathBuf, err: std::io::Error },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    /// A command the build runs failed (its output went to stderr).
    #[error("{step}: `{command}` {status}")]
    Command {
        step: String,
        command: String,
        status: String,
    },
    #[error(transparent)]
    Pack(#[from] corral_image::ImageError),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let what = what.into();
    move |err| BuildError::Io { what, err }
}
