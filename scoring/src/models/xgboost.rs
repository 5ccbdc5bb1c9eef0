//! Gradient-boosted tree ensembles from XGBoost's JSON model format: the file
//! `Booster.save_model("model.json")` writes (tested with XGBoost 3.2; the 1.x/2.x layout, where
//! `base_score` is a plain number string, is read too).
//!
//! Prediction follows XGBoost exactly: inputs are compared as `f32` (`x < split_condition` goes
//! left), a missing input takes the node's `default_left` branch, the margin is the sum of the
//! trees' leaf values plus `base_score` turned into a margin (`ln(p / (1 - p))` for the
//! logistic objectives), and the probability is the sigmoid of the margin.
//!
//! Contributions use the Saabas method, as XGBoost's `pred_contribs=True, approx_contribs=True`
//! does: every node's expected value is the cover-weighted (`sum_hessian`) mean of its leaves;
//! along an event's path each split's change in expected value is attributed to the split's
//! feature. The contributions plus the trees' root means plus the base margin equal the margin.
//!
//! Supported: `gbtree` boosters, objectives `binary:logistic` and `reg:logistic`, numerical
//! splits, one target. Rejected at load: `dart`, categorical splits, multi-class, multi-target,
//! models without `feature_names`.

use serde::Deserialize;

use super::{InputSource, ModelError, ModelInput, ModelLoadError, ModelOutput, sigmoid};
use crate::catalog::FeatureCatalog;

const OBJECTIVES: [&str; 2] = ["binary:logistic", "reg:logistic"];
const BOOSTER_GBTREE: &str = "gbtree";
const NO_CHILD: i64 = -1;

#[derive(Deserialize)]
struct XgbFile {
    learner: XgbLearner,
}

#[derive(Deserialize)]
struct XgbLearner {
    #[serde(default)]
    feature_names: Vec<String>,
    #[serde(default)]
    feature_types: Vec<String>,
    learner_model_param: XgbLearnerParam,
    objective: XgbObjective,
    gradient_booster: XgbBooster,
}

#[derive(Deserialize)]
struct XgbLearnerParam {
    base_score: String,
    #[serde(default)]
    num_class: Option<String>,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct XgbObjective {
    name: String,
}

#[derive(Deserialize)]
struct XgbBooster {
    name: String,
    #[serde(default)]
    model: Option<XgbGbTree>,
}

#[derive(Deserialize)]
struct XgbGbTree {
    trees: Vec<XgbTree>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BoolOrInt {
    Bool(bool),
    Int(i64),
}

impl BoolOrInt {
    fn get(&self) -> bool {
        match self {
            BoolOrInt::Bool(b) => *b,
            BoolOrInt::Int(i) => *i != 0,
        }
    }
}

#[derive(Deserialize)]
struct XgbTree {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    split_conditions: Vec<f32>,
    default_left: Vec<BoolOrInt>,
    sum_hessian: Vec<f64>,
    #[serde(default)]
    split_type: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// Children, or 0 for a leaf (a child's index is always greater than its parent's).
    left: u32,
    right: u32,
    feature: u32,
    threshold: f32,
    default_left: bool,
    /// The leaf value (leaves only).
    value: f64,
    /// Cover-weighted mean of the leaves below (Saabas expected value).
    mean: f64,
}

impl Node {
    fn is_leaf(&self) -> bool {
        self.left == 0
    }
}

#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Node>,
}

/// A validated XGBoost tree ensemble.
#[derive(Debug, Clone)]
pub struct XgboostModel {
    names: Vec<String>,
    sources: Vec<InputSource>,
    trees: Vec<Tree>,
    base_margin: f64,
    objective: String,
}

fn invalid<T>(m: impl Into<String>) -> Result<T, ModelLoadError> {
    Err(ModelLoadError::Invalid(m.into()))
}

impl XgboostModel {
    /// Loads a `save_model` JSON document; every input name must be a known numeric feature
    /// or the event's `amount`.
    pub fn from_json(text: &str, catalog: &FeatureCatalog) -> Result<Self, ModelLoadError> {
        let file: XgbFile = serde_json::from_str(text).map_err(|e| ModelLoadError::Parse {
            what: "xgboost json model".into(),
            message: e.to_string(),
        })?;
        let l = file.learner;
        if !OBJECTIVES.contains(&l.objective.name.as_str()) {
            return invalid(format!(
                "objective {:?} is not supported (binary:logistic, reg:logistic)",
                l.objective.name
            ));
        }
        if l.gradient_booster.name != BOOSTER_GBTREE {
            return invalid(format!(
                "booster {:?} is not supported (gbtree)",
                l.gradient_booster.name
            ));
        }
        let count = |v: &Option<String>| {
            v.as_deref()
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0)
        };
        if count(&l.learner_model_param.num_class) > 1
            || count(&l.learner_model_param.num_target) > 1
        {
            return invalid("multi-class and multi-target models are not supported");
        }
        if l.feature_names.is_empty() {
            return invalid("the model has no feature_names: train it on named features");
        }
        if l.feature_types.iter().any(|t| t == "c") {
            return invalid("categorical features are not supported");
        }
        let base_score = parse_base_score(&l.learner_model_param.base_score)?;
        if !(base_score > 0.0 && base_score < 1.0) {
            return invalid(format!(
                "base_score {base_score} must be in (0, 1) for a logistic objective"
            ));
        }
        let base_margin = (base_score / (1.0 - base_score)).ln();
        let sources = l
            .feature_names
            .iter()
            .map(|n| InputSource::resolve(n, catalog))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(model) = l.gradient_booster.model else {
            return invalid("the gbtree booster has no model");
        };
        let n_features = l.feature_names.len();
        let trees = model
            .trees
            .iter()
            .enumerate()
            .map(|(i, t)| {
                build_tree(t, n_features)
                    .map_err(|e| ModelLoadError::Invalid(format!("tree {i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            names: l.feature_names,
            sources,
            trees,
            base_margin,
            objective: l.objective.name,
        })
    }

    pub fn input_names(&self) -> &[String] {
        &self.names
    }

    pub fn num_trees(&self) -> usize {
        self.trees.len()
    }

    pub fn objective(&self) -> &str {
        &self.objective
    }

    /// `base_score` as a margin.
    pub fn base_margin(&self) -> f64 {
        self.base_margin
    }

    pub fn score(&self, input: &ModelInput<'_>) -> Result<ModelOutput, ModelError> {
        let mut x: Vec<Option<f32>> = Vec::with_capacity(self.sources.len());
        for s in &self.sources {
            // XGBoost reads its inputs as f32.
            x.push(s.value(input)?.map(|v| v as f32));
        }
        let mut contributions = vec![0.0; self.sources.len()];
        let mut margin = self.base_margin;
        for tree in &self.trees {
            let nodes = &tree.nodes;
            let mut nid = 0usize;
            // Children have greater indices than their parents (checked at load): this ends.
            while let Some(node) = nodes.get(nid).filter(|n| !n.is_leaf()) {
                let f = node.feature as usize;
                let go_left = match x.get(f).copied().flatten() {
                    None => node.default_left,
                    Some(v) => v < node.threshold,
                };
                let next = if go_left { node.left } else { node.right } as usize;
                let next_mean = nodes.get(next).map_or(node.mean, |n| n.mean);
                if let Some(c) = contributions.get_mut(f) {
                    *c += next_mean - node.mean;
                }
                nid = next;
            }
            margin += nodes.get(nid).map_or(0.0, |n| n.value);
        }
        Ok(ModelOutput {
            score: sigmoid(margin),
            margin,
            contributions,
        })
    }
}

/// `base_score` is `"5E-1"` (XGBoost 1.x, 2.x) or `"[5E-1]"` (3.x, a vector of one target).
fn parse_base_score(s: &str) -> Result<f64, ModelLoadError> {
    let t = s
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim();
    match t.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => invalid(format!(
            "base_score {s:?} is not a number (multi-target base scores are not supported)"
        )),
    }
}

fn build_tree(t: &XgbTree, n_features: usize) -> Result<Tree, String> {
    let n = t.left_children.len();
    if n == 0 {
        return Err("has no nodes".into());
    }
    if [
        t.right_children.len(),
        t.split_indices.len(),
        t.split_conditions.len(),
        t.default_left.len(),
        t.sum_hessian.len(),
    ]
    .iter()
    .any(|&len| len != n)
    {
        return Err("node arrays have different lengths".into());
    }
    if t.split_type.iter().any(|&s| s != 0) {
        return Err("categorical splits are not supported".into());
    }
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let (l, r) = (t.left_children[i], t.right_children[i]);
        let threshold = t.split_conditions[i];
        if !threshold.is_finite() {
            return Err(format!(
                "node {i} has a non-finite split condition or leaf value"
            ));
        }
        if l == NO_CHILD && r == NO_CHILD {
            nodes.push(Node {
                left: 0,
                right: 0,
                feature: 0,
                threshold,
                default_left: false,
                value: f64::from(threshold),
                mean: f64::from(threshold),
            });
            continue;
        }
        let child_ok = |c: i64| usize::try_from(c).is_ok_and(|c| c > i && c < n);
        if !child_ok(l) || !child_ok(r) {
            return Err(format!("node {i} has invalid children {l}, {r}"));
        }
        let feature = t.split_indices[i];
        if !usize::try_from(feature).is_ok_and(|f| f < n_features) {
            return Err(format!(
                "node {i} splits on feature {feature}, the model has {n_features}"
            ));
        }
        nodes.push(Node {
            left: u32::try_from(l).map_err(|_| format!("node {i}: child out of range"))?,
            right: u32::try_from(r).map_err(|_| format!("node {i}: child out of range"))?,
            feature: u32::try_from(feature)
                .map_err(|_| format!("node {i}: feature out of range"))?,
            threshold,
            default_left: t.default_left[i].get(),
            value: 0.0,
            mean: 0.0,
        });
    }
    // Expected values bottom-up (children come after parents).
    for i in (0..n).rev() {
        let node = nodes[i];
        if node.is_leaf() {
            continue;
        }
        let (l, r) = (node.left as usize, node.right as usize);
        let (hl, hr) = (t.sum_hessian[l], t.sum_hessian[r]);
        let (ml, mr) = (nodes[l].mean, nodes[r].mean);
        let cover = t.sum_hessian[i];
        nodes[i].mean = if cover > 0.0 && cover.is_finite() {
            (ml * hl + mr * hr) / cover
        } else {
            (ml + mr) / 2.0
        };
    }
    Ok(Tree { nodes })
}
