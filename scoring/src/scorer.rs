//! The decision: [`Scorer::decide`] combines lists, rules and models into a
//! [`riskstream_common::Decision`] for one event. It never panics and never fails to give a
//! decision: any failure gives outcome `review` with reason `system/scoring_error`.
//!
//! Precedence, most to least: a block-list hit (`decline`); rule-forced outcomes (the most
//! severe fired rule); an allow-list hit (`approve`, replacing the score thresholds, but never
//! lowering what a rule forces); the score thresholds on the acted-on model's score plus the
//! fired rules' score adjustments (clamped to [0, 1]).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use riskstream_common::decision::{ModelScore, Reason};
use riskstream_common::{Decision, Event, FeatureValue, Outcome};

use super::catalog::FeatureCatalog;
use super::config::{ScoringConfig, Thresholds};
use super::lists::{ListVerdict, Lists, ListsError};
use super::model_set::{ActiveModel, ModelSet, ModelSetError};
use super::models::{ModelError, ModelInput, ModelOutput};
use super::routing::Route;
use super::rules::{
    RuleEvaluation, RuleInput, RuleSet, RuleSetError, RuleStatsSnapshot, RulesHandle,
};
use super::stats::{ModelStatsSnapshot, ScorerStats, ScorerStatsSnapshot};

/// Reason kinds (see [`Reason::kind`]).
pub const KIND_RULE: &str = "rule";
pub const KIND_FEATURE: &str = "feature";
pub const KIND_LIST: &str = "list";
pub const KIND_MODEL: &str = "model";
pub const KIND_SYSTEM: &str = "system";
/// System reason codes.
pub const CODE_SCORING_ERROR: &str = "scoring_error";
pub const CODE_RULE_ERROR: &str = "rule_error";
pub const CODE_LATE_EVENT: &str = "late_event";
pub const CODE_BEYOND_RETENTION: &str = "beyond_retention";
pub const CODE_FEATURES_INCOMPLETE: &str = "features_incomplete";
/// List reason codes.
pub const CODE_BLOCK_LIST: &str = "block_list";
pub const CODE_ALLOW_LIST: &str = "allow_list";

/// What the worker knows about one event besides its fields and features.
#[derive(Debug, Clone)]
pub struct DecideContext {
    /// W3C trace id of the transaction's trace.
    pub trace_id: String,
    /// The event is behind its partition's watermark.
    pub late: bool,
    /// How far behind (0: not).
    pub lateness_ms: i64,
    /// Older than its key's newest event by more than the key retention: its features come
    /// from the retained state only.
    pub beyond_retention: bool,
    /// Some of the event's features could not be computed (keyed mode: a feature group's
    /// partial never arrived within `worker.join_timeout`); they are null, and the outcome is
    /// at least `review`.
    pub features_incomplete: bool,
    /// When the worker read the event: the decision's `processing_latency_us` counts from here.
    pub started: Instant,
}

impl DecideContext {
    /// An on-time event read now.
    pub fn new(trace_id: impl Into<String>) -> Self {
        Self {
            trace_id: trace_id.into(),
            late: false,
            lateness_ms: 0,
            beyond_retention: false,
            features_incomplete: false,
            started: Instant::now(),
        }
    }
}

/// A failure while scoring one event (turned into a `review` decision, never returned).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScoringError {
    #[error("feature {name:?} is not a finite number")]
    NonFiniteFeature { name: String },
    #[error("model {model} version {version}: {source}")]
    Model {
        model: String,
        version: String,
        #[source]
        source: ModelError,
    },
    #[error("scoring panicked: {0}")]
    Panic(String),
    #[error("internal scoring error: {0}")]
    Internal(String),
}

/// Why the scorer could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ScoringSetupError {
    #[error("cannot read rules {path}: {source}")]
    RulesIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rules {path}: {source}")]
    Rules {
        path: PathBuf,
        #[source]
        source: RuleSetError,
    },
    #[error(transparent)]
    Models(#[from] ModelSetError),
    #[error(transparent)]
    Lists(#[from] ListsError),
    #[error("invalid thresholds: {0}")]
    Thresholds(String),
}

/// The scoring core. Share it (`Arc<Scorer>`) between the worker's tasks; `decide` takes
/// `&self` and is lock-free.
pub struct Scorer {
    rules: Arc<RulesHandle>,
    models: ArcSwap<ModelSet>,
    lists: Lists,
    thresholds: Thresholds,
    top_k_contributions: usize,
    stats: ScorerStats,
}

impl std::fmt::Debug for Scorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scorer")
            .field("rules_version", &self.rules.version())
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl Scorer {
    pub fn new(
        rules: Arc<RulesHandle>,
        models: ModelSet,
        lists: Lists,
        thresholds: Thresholds,
        top_k_contributions: usize,
    ) -> Result<Self, ScoringSetupError> {
        thresholds
            .validate()
            .map_err(ScoringSetupError::Thresholds)?;
        Ok(Self {
            rules,
            models: ArcSwap::from_pointee(models),
            lists,
            thresholds,
            top_k_contributions,
            stats: ScorerStats::default(),
        })
    }

    /// Loads the rules, models and lists the configuration names, validated against `catalog`.
    pub fn from_config(
        config: &ScoringConfig,
        catalog: FeatureCatalog,
    ) -> Result<Self, ScoringSetupError> {
        let catalog = Arc::new(catalog);
        let text = std::fs::read_to_string(&config.rules_path).map_err(|source| {
            ScoringSetupError::RulesIo {
                path: config.rules_path.clone(),
                source,
            }
        })?;
        let rules = RulesHandle::from_text(&text, catalog.clone()).map_err(|source| {
            ScoringSetupError::Rules {
                path: config.rules_path.clone(),
                source,
            }
        })?;
        let models = ModelSet::load_dir(&config.models_dir, &catalog)?;
        let lists = Lists::new(config.list_max_entries, config.list_default_ttl);
        if let Some(path) = &config.lists_path {
            let n = lists.load_file(path)?;
            tracing::info!(path = %path.display(), entries = n, "list file loaded");
        }
        Self::new(
            Arc::new(rules),
            models,
            lists,
            config.thresholds,
            config.top_k_contributions,
        )
    }

    /// The rules handle (feed it updates from the file watcher and the `rules` topic).
    pub fn rules(&self) -> &Arc<RulesHandle> {
        &self.rules
    }

    /// The lists (feed them updates from the `lists` topic).
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    pub fn models(&self) -> Arc<ModelSet> {
        self.models.load_full()
    }

    /// Swaps in a new model set atomically, keeping counters of unchanged model versions.
    pub fn replace_models(&self, mut models: ModelSet) {
        models.adopt_stats(&self.models.load());
        tracing::info!(
            champion = %models.champion().model.version,
            challenger = models.challenger().map_or("", |c| c.model.version.as_str()),
            share = models.router().share(),
            shadows = models.shadows().len(),
            "model set replaced"
        );
        self.models.store(Arc::new(models));
    }

    /// Changes the challenger's share (one writer at a time).
    pub fn set_challenger_share(&self, share: f64) -> Result<(), ModelSetError> {
        let next = self.models.load().with_challenger_share(share)?;
        tracing::info!(share, "challenger share changed");
        self.models.store(Arc::new(next));
        Ok(())
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    pub fn stats(&self) -> ScorerStatsSnapshot {
        self.stats.snapshot()
    }

    /// Per-version counters of the models in service.
    pub fn model_stats(&self) -> Vec<ModelStatsSnapshot> {
        self.models.load().stats()
    }

    /// The running rule set's version and its per-rule counters.
    pub fn rule_stats(&self) -> (String, Vec<RuleStatsSnapshot>) {
        let rules = self.rules.current();
        (rules.version().to_string(), rules.stats())
    }

    /// Decides one event. Never panics; always returns a decision.
    pub fn decide(
        &self,
        event: &Event,
        features: &BTreeMap<String, FeatureValue>,
        ctx: &DecideContext,
    ) -> Decision {
        let entered = Instant::now();
        let rules = self.rules.current();
        let models = self.models.load_full();
        let attempt = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.try_decide(event, features, ctx, &rules, &models)
        }));
        let result = attempt
            .unwrap_or_else(|payload| Err(ScoringError::Panic(panic_message(payload.as_ref()))));
        let mut decision = match result {
            Ok(d) => d,
            Err(e) => {
                self.stats.scoring_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event_id = %event.event_id, error = %e, "scoring failed, deciding review");
                error_decision(event, features, ctx, &rules, &e)
            }
        };
        if ctx.late {
            self.stats.late_events.fetch_add(1, Ordering::Relaxed);
            decision.reasons.push(Reason {
                kind: KIND_SYSTEM.into(),
                code: CODE_LATE_EVENT.into(),
                detail: format!(
                    "{} ms behind the watermark; scored with event-time features",
                    ctx.lateness_ms
                ),
                contribution: None,
            });
        }
        if ctx.beyond_retention {
            decision.reasons.push(Reason {
                kind: KIND_SYSTEM.into(),
                code: CODE_BEYOND_RETENTION.into(),
                detail:
                    "older than its key's state retention: features from the retained state only"
                        .into(),
                contribution: None,
            });
        }
        if ctx.features_incomplete {
            // Missing features never approve: a human looks at it.
            decision.outcome = decision.outcome.max(Outcome::Review);
            decision.reasons.push(Reason {
                kind: KIND_SYSTEM.into(),
                code: CODE_FEATURES_INCOMPLETE.into(),
                detail: "some feature groups were not computed in time; their features are null"
                    .into(),
                contribution: None,
            });
        }
        self.stats.record_outcome(decision.outcome);
        self.stats.decide_latency.record(entered.elapsed());
        decision.processing_latency_us =
            u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        decision
    }

    fn try_decide(
        &self,
        event: &Event,
        features: &BTreeMap<String, FeatureValue>,
        ctx: &DecideContext,
        rules: &RuleSet,
        models: &ModelSet,
    ) -> Result<Decision, ScoringError> {
        if let Some((name, _)) = features
            .iter()
            .find(|(_, v)| matches!(v, FeatureValue::Number(n) if !n.is_finite()))
        {
            return Err(ScoringError::NonFiniteFeature { name: name.clone() });
        }

        let verdict = self.lists.check(event);
        let evaluation = rules.evaluate(&RuleInput::new(event, features));
        if !evaluation.errors.is_empty() {
            self.stats
                .rule_errors
                .fetch_add(evaluation.errors.len() as u64, Ordering::Relaxed);
        }

        let input = ModelInput { event, features };
        let route = models
            .router()
            .route(event.field_str(models.router().entity()));
        let acts_challenger = route == Route::Challenger && models.challenger().is_some();
        let mut scores = Vec::with_capacity(2 + models.shadows().len());
        let mut acted: Option<(&ActiveModel, ModelOutput)> = None;
        let candidates = std::iter::once((models.champion(), !acts_challenger))
            .chain(models.challenger().map(|c| (c, acts_challenger)))
            .chain(models.shadows().iter().map(|s| (s, false)));
        for (active, acts) in candidates {
            match score_model(active, &input) {
                Ok(out) => {
                    scores.push(ModelScore {
                        model: active.model.name.clone(),
                        version: active.model.version.clone(),
                        role: active.role.as_str().to_string(),
                        score: out.score,
                        acted_on: acts,
                    });
                    if acts {
                        active.stats.acted_on.fetch_add(1, Ordering::Relaxed);
                        acted = Some((active, out));
                    }
                }
                Err(source) if acts => {
                    return Err(ScoringError::Model {
                        model: active.model.name.clone(),
                        version: active.model.version.clone(),
                        source,
                    });
                }
                Err(e) => {
                    tracing::debug!(model = %active.model.name, version = %active.model.version,
                        role = active.role.as_str(), error = %e, "model failed, not acted on");
                }
            }
        }
        // The acted-on model either scored or returned an error above.
        let Some((acted_model, acted_out)) = acted else {
            return Err(ScoringError::Internal("no acted-on model score".into()));
        };

        let score = (acted_out.score + evaluation.score_adjustment()).clamp(0.0, 1.0);
        let by_score = self.thresholds.outcome(score);
        let mut forced = evaluation.forced_outcome().unwrap_or(Outcome::Approve);
        if !evaluation.errors.is_empty() {
            // A rule that cannot be evaluated never lets the event through unexamined.
            forced = forced.max(rules.on_rule_error());
        }
        let outcome = if verdict.block.is_some() {
            Outcome::Decline
        } else if verdict.allow.is_some() {
            forced
        } else {
            by_score.max(forced)
        };
        self.count_list_hits(&verdict);

        let mut reasons = list_reasons(&verdict);
        reasons.extend(rule_reasons(&evaluation));
        if verdict.block.is_none() && verdict.allow.is_none() && by_score > Outcome::Approve {
            reasons.push(Reason {
                kind: KIND_MODEL.into(),
                code: acted_model.model.name.clone(),
                detail: format!(
                    "score {score:.4} is at or above the {by_score} threshold {}",
                    self.thresholds.threshold_of(by_score)
                ),
                contribution: Some(score),
            });
        }
        reasons.extend(top_contributions(
            acted_model,
            &acted_out,
            self.top_k_contributions,
        ));

        Ok(Decision {
            event_id: event.event_id,
            trace_id: ctx.trace_id.clone(),
            account_id: event.account_id.clone(),
            event_time_ms: event.event_time_ms,
            decided_at_ms: riskstream_common::now_ms(),
            outcome,
            score,
            reasons,
            features: features.clone(),
            models: scores,
            rules_version: rules.version().to_string(),
            late: ctx.late,
            lateness_ms: ctx.lateness_ms,
            processing_latency_us: 0,
        })
    }

    fn count_list_hits(&self, verdict: &ListVerdict) {
        if verdict.block.is_some() {
            self.stats.list_block_hits.fetch_add(1, Ordering::Relaxed);
        }
        if verdict.allow.is_some() {
            self.stats.list_allow_hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn score_model(active: &ActiveModel, input: &ModelInput<'_>) -> Result<ModelOutput, ModelError> {
    let started = Instant::now();
    let result = active.model.score(input);
    match &result {
        Ok(out) => {
            active.stats.scored.fetch_add(1, Ordering::Relaxed);
            active.stats.scores.record(out.score);
            active.stats.latency.record(started.elapsed());
        }
        Err(_) => {
            active.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    result
}

fn list_reasons(verdict: &ListVerdict) -> Vec<Reason> {
    [
        (verdict.block, CODE_BLOCK_LIST),
        (verdict.allow, CODE_ALLOW_LIST),
    ]
    .into_iter()
    .filter_map(|(hit, code)| {
        hit.map(|h| Reason {
            kind: KIND_LIST.into(),
            code: code.into(),
            detail: format!("{} is on the {} list", h.entity, h.list),
            contribution: None,
        })
    })
    .collect()
}

fn rule_reasons(evaluation: &RuleEvaluation<'_>) -> Vec<Reason> {
    let fired = evaluation.fired.iter().map(|f| Reason {
        kind: KIND_RULE.into(),
        code: f.rule.reason.clone(),
        detail: match f.rule.outcome {
            Some(o) => format!("rule {} forces {o}", f.rule.name),
            None => format!("rule {} adds to the score", f.rule.name),
        },
        contribution: f.rule.score,
    });
    let errors = evaluation.errors.iter().map(|e| Reason {
        kind: KIND_SYSTEM.into(),
        code: CODE_RULE_ERROR.into(),
        detail: format!("rule {}: {}", e.rule.name, e.message),
        contribution: None,
    });
    fired.chain(errors).collect()
}

/// The `k` largest contributions by absolute value (zero contributions are not reasons).
fn top_contributions(active: &ActiveModel, out: &ModelOutput, k: usize) -> Vec<Reason> {
    let names = active.model.input_names();
    let mut ranked: Vec<(&String, f64)> = names
        .iter()
        .zip(out.contributions.iter().copied())
        .filter(|(_, c)| *c != 0.0 && c.is_finite())
        .collect();
    ranked.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(k)
        .map(|(name, c)| Reason {
            kind: KIND_FEATURE.into(),
            code: name.clone(),
            detail: format!(
                "log-odds contribution in {} version {}",
                active.model.name, active.model.version
            ),
            contribution: Some(c),
        })
        .collect()
}

fn error_decision(
    event: &Event,
    features: &BTreeMap<String, FeatureValue>,
    ctx: &DecideContext,
    rules: &RuleSet,
    error: &ScoringError,
) -> Decision {
    Decision {
        event_id: event.event_id,
        trace_id: ctx.trace_id.clone(),
        account_id: event.account_id.clone(),
        event_time_ms: event.event_time_ms,
        decided_at_ms: riskstream_common::now_ms(),
        outcome: Outcome::Review,
        score: 0.0,
        reasons: vec![Reason {
            kind: KIND_SYSTEM.into(),
            code: CODE_SCORING_ERROR.into(),
            detail: error.to_string(),
            contribution: None,
        }],
        features: features.clone(),
        models: Vec::new(),
        rules_version: rules.version().to_string(),
        late: ctx.late,
        lateness_ms: ctx.lateness_ms,
        processing_latency_us: 0,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
