//! Scoring models evaluated in pure Rust: logistic regression ([`logistic`]) and gradient-boosted
//! tree ensembles from XGBoost's JSON model format ([`xgboost`]). A model reads numeric inputs
//! by name (a feature, or the event's `amount`) and gives a probability, its margin (log-odds)
//! and per-input contributions to the margin.

pub mod logistic;
pub mod xgboost;

use std::collections::BTreeMap;

use riskstream_common::event::fields;
use riskstream_common::{Event, FeatureValue};
use serde::{Deserialize, Serialize};

use super::catalog::{FeatureCatalog, FeatureKind};

pub use logistic::LogisticModel;
pub use xgboost::XgboostModel;

/// A model failed to load.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {what}: {message}")]
    Parse { what: String, message: String },
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("model input {name:?} is neither a known numeric feature nor the event's amount")]
    UnknownInput { name: String },
}

/// A model failed on one event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("input {name:?} is text, a model needs a number")]
    NotNumeric { name: String },
    #[error("input {name:?} is not a finite number")]
    NonFinite { name: String },
    #[error("the model gave a non-finite score")]
    NonFiniteScore,
}

/// Where a model input comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSource {
    /// A feature value by name.
    Feature(String),
    /// The event's `amount`.
    EventAmount,
}

impl InputSource {
    /// Resolves an input name against the catalog: a known numeric feature first, then the
    /// event's `amount`.
    pub fn resolve(name: &str, catalog: &FeatureCatalog) -> Result<Self, ModelLoadError> {
        match catalog.kind(name) {
            Some(FeatureKind::Number) => Ok(InputSource::Feature(name.to_string())),
            None if name == fields::AMOUNT => Ok(InputSource::EventAmount),
            _ => Err(ModelLoadError::UnknownInput {
                name: name.to_string(),
            }),
        }
    }

    /// The input's value for one event: `None` when missing (absent feature, `null`, no
    /// amount). Text and non-finite numbers are errors.
    pub fn value(&self, input: &ModelInput<'_>) -> Result<Option<f64>, ModelError> {
        let (name, v) = match self {
            InputSource::EventAmount => (fields::AMOUNT, input.event.amount),
            InputSource::Feature(name) => match input.features.get(name) {
                None | Some(FeatureValue::Null) => (name.as_str(), None),
                Some(FeatureValue::Number(n)) => (name.as_str(), Some(*n)),
                Some(FeatureValue::Text(_)) => {
                    return Err(ModelError::NotNumeric { name: name.clone() });
                }
            },
        };
        match v {
            Some(x) if !x.is_finite() => Err(ModelError::NonFinite {
                name: name.to_string(),
            }),
            v => Ok(v),
        }
    }
}

/// What a model reads for one event.
#[derive(Debug, Clone, Copy)]
pub struct ModelInput<'a> {
    pub event: &'a Event,
    pub features: &'a BTreeMap<String, FeatureValue>,
}

/// A model's result for one event.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOutput {
    /// Probability of fraud in [0, 1].
    pub score: f64,
    /// The score before the sigmoid (log-odds).
    pub margin: f64,
    /// Each input's contribution to the margin, in the model's input order.
    pub contributions: Vec<f64>,
}

/// The supported model formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    /// [`LogisticModel`] in TOML (`.toml`) or JSON (any other extension).
    Logistic,
    /// [`XgboostModel`]: the JSON of XGBoost's `Booster.save_model("model.json")`.
    XgboostJson,
}

/// A loaded model of either kind.
#[derive(Debug, Clone)]
pub enum ModelKind {
    Logistic(LogisticModel),
    Xgboost(XgboostModel),
}

/// A named, versioned model.
#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub version: String,
    pub kind: ModelKind,
}

impl Model {
    pub fn new(name: impl Into<String>, version: impl Into<String>, kind: ModelKind) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            kind,
        }
    }

    /// Parses a model of `format` from its file text.
    pub fn parse(
        name: impl Into<String>,
        version: impl Into<String>,
        format: ModelFormat,
        text: &str,
        toml_syntax: bool,
        catalog: &FeatureCatalog,
    ) -> Result<Self, ModelLoadError> {
        let kind = match format {
            ModelFormat::Logistic => {
                let spec = if toml_syntax {
                    logistic::LogisticSpec::from_toml(text)?
                } else {
                    logistic::LogisticSpec::from_json(text)?
                };
                ModelKind::Logistic(LogisticModel::new(spec, catalog)?)
            }
            ModelFormat::XgboostJson => ModelKind::Xgboost(XgboostModel::from_json(text, catalog)?),
        };
        Ok(Self::new(name, version, kind))
    }

    /// The model's input names, in the order of [`ModelOutput::contributions`].
    pub fn input_names(&self) -> &[String] {
        match &self.kind {
            ModelKind::Logistic(m) => m.input_names(),
            ModelKind::Xgboost(m) => m.input_names(),
        }
    }

    /// Scores one event.
    pub fn score(&self, input: &ModelInput<'_>) -> Result<ModelOutput, ModelError> {
        let out = match &self.kind {
            ModelKind::Logistic(m) => m.score(input)?,
            ModelKind::Xgboost(m) => m.score(input)?,
        };
        if !out.score.is_finite() || !out.margin.is_finite() {
            return Err(ModelError::NonFiniteScore);
        }
        Ok(out)
    }
}

/// The logistic function.
pub fn sigmoid(margin: f64) -> f64 {
    1.0 / (1.0 + (-margin).exp())
}
