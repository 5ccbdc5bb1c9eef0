//! Logistic regression: `p = sigmoid(intercept + sum(weight * z))`, with `z = (x - mean) / std`
//! when an input is standardised and `x` replaced by its `missing` default when absent.
//! An input's contribution is `weight * z`, in log-odds.
//!
//! File format (TOML; the same fields in JSON are accepted too):
//! ```toml
//! intercept = -3.2
//! [[inputs]]
//! name = "card_small_count_10m"
//! weight = 0.8
//! mean = 1.5     # optional, with std: standardise
//! std = 1.2
//! missing = 0.0  # optional raw value when missing; default: mean, or 0 without standardisation
//! ```

use serde::{Deserialize, Serialize};

use super::{InputSource, ModelError, ModelInput, ModelLoadError, ModelOutput, sigmoid};
use crate::catalog::FeatureCatalog;

/// One input of a logistic model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogisticInput {
    pub name: String,
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<f64>,
}

/// The file format of a logistic model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogisticSpec {
    pub intercept: f64,
    #[serde(default)]
    pub inputs: Vec<LogisticInput>,
}

impl LogisticSpec {
    pub fn from_toml(text: &str) -> Result<Self, ModelLoadError> {
        toml::from_str(text).map_err(|e| ModelLoadError::Parse {
            what: "logistic model (toml)".into(),
            message: e.message().to_string(),
        })
    }

    pub fn from_json(text: &str) -> Result<Self, ModelLoadError> {
        serde_json::from_str(text).map_err(|e| ModelLoadError::Parse {
            what: "logistic model (json)".into(),
            message: e.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
struct Input {
    source: InputSource,
    weight: f64,
    mean: f64,
    inv_std: f64,
    missing: f64,
}

/// A validated logistic-regression model.
#[derive(Debug, Clone)]
pub struct LogisticModel {
    intercept: f64,
    names: Vec<String>,
    inputs: Vec<Input>,
}

impl LogisticModel {
    /// Validates the spec: finite numbers, positive `std` (given with `mean`), unique inputs
    /// that are known numeric features or the event's `amount`.
    pub fn new(spec: LogisticSpec, catalog: &FeatureCatalog) -> Result<Self, ModelLoadError> {
        let invalid = |m: String| Err(ModelLoadError::Invalid(m));
        if !spec.intercept.is_finite() {
            return invalid("intercept must be finite".into());
        }
        let mut names = Vec::with_capacity(spec.inputs.len());
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        for i in spec.inputs {
            if names.contains(&i.name) {
                return invalid(format!("input {:?} is listed twice", i.name));
            }
            let finite = |v: Option<f64>| v.is_none_or(f64::is_finite);
            if !i.weight.is_finite() || !finite(i.mean) || !finite(i.std) || !finite(i.missing) {
                return invalid(format!("input {:?} has a non-finite parameter", i.name));
            }
            let (mean, inv_std) = match (i.mean, i.std) {
                (None, None) => (0.0, 1.0),
                (Some(m), Some(s)) if s > 0.0 => (m, 1.0 / s),
                (Some(_), Some(_)) => {
                    return invalid(format!("input {:?}: std must be positive", i.name));
                }
                _ => {
                    return invalid(format!("input {:?}: give mean and std together", i.name));
                }
            };
            inputs.push(Input {
                source: InputSource::resolve(&i.name, catalog)?,
                weight: i.weight,
                mean,
                inv_std,
                missing: i.missing.unwrap_or(mean),
            });
            names.push(i.name);
        }
        Ok(Self {
            intercept: spec.intercept,
            names,
            inputs,
        })
    }

    pub fn input_names(&self) -> &[String] {
        &self.names
    }

    pub fn intercept(&self) -> f64 {
        self.intercept
    }

    pub fn score(&self, input: &ModelInput<'_>) -> Result<ModelOutput, ModelError> {
        let mut margin = self.intercept;
        let mut contributions = Vec::with_capacity(self.inputs.len());
        for i in &self.inputs {
            let x = i.source.value(input)?.unwrap_or(i.missing);
            let c = i.weight * (x - i.mean) * i.inv_std;
            contributions.push(c);
            margin += c;
        }
        Ok(ModelOutput {
            score: sigmoid(margin),
            margin,
            contributions,
        })
    }
}
