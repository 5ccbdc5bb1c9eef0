//! Errors of the feature core: invalid feature definitions (every problem, named by feature)
//! and misuse of the engine.

use std::fmt;
use std::path::PathBuf;

/// One problem with one feature definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureProblem {
    /// The feature's name, `feature #N` if it has none, or `(file)`.
    pub feature: String,
    /// What is wrong, lowercase.
    pub message: String,
}

impl FeatureProblem {
    pub fn new(feature: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            feature: feature.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FeatureProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.feature, self.message)
    }
}

/// Why feature definitions could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FeatureConfigError {
    #[error("cannot read feature file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("feature file is not valid: {message}")]
    Toml { message: String },
    #[error(
        "{} problem(s) in feature definitions:\n  {}",
        .problems.len(),
        .problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Invalid { problems: Vec<FeatureProblem> },
}

/// Misuse of the feature engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureEngineError {
    #[error("unknown feature group {group_idx} (the set has {group_count})")]
    UnknownGroup {
        group_idx: usize,
        group_count: usize,
    },
    #[error("state of feature group {group_idx} cannot be imported: {source}")]
    Import {
        group_idx: usize,
        #[source]
        source: crate::export::ImportError,
    },
}
