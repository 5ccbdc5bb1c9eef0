//! The models in service: one champion, at most one challenger with its share of traffic, any
//! number of shadows, loaded from a directory's `manifest.toml` (see `config/models/`), each
//! with its per-version [`ModelStats`].
//!
//! ```toml
//! routing_entity = "account_id"   # event field hashed for routing (default account_id)
//! routing_salt = "riskstream-challenger"
//! challenger_share = 0.1          # 0..=1
//! [[models]]
//! role = "champion"               # champion | challenger | shadow
//! name = "lr_baseline"
//! version = "1"
//! format = "logistic"             # logistic | xgboost_json
//! path = "lr_baseline_v1.toml"    # relative to the manifest's directory
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use riskstream_common::event::fields;
use serde::{Deserialize, Serialize};

use super::catalog::FeatureCatalog;
use super::models::{Model, ModelFormat, ModelLoadError};
use super::routing::Router;
use super::stats::{ModelStats, ModelStatsSnapshot};

/// The manifest's file name inside a models directory.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// Default routing entity.
pub const DEFAULT_ROUTING_ENTITY: &str = fields::ACCOUNT_ID;
/// Default routing salt.
pub const DEFAULT_ROUTING_SALT: &str = "riskstream-challenger";

/// A model's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Champion,
    Challenger,
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Challenger => "challenger",
            Role::Shadow => "shadow",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One model of the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub role: Role,
    pub name: String,
    pub version: String,
    pub format: ModelFormat,
    pub path: PathBuf,
}

/// The models directory's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    #[serde(default = "default_entity")]
    pub routing_entity: String,
    #[serde(default = "default_salt")]
    pub routing_salt: String,
    #[serde(default)]
    pub challenger_share: f64,
    pub models: Vec<ManifestEntry>,
}

fn default_entity() -> String {
    DEFAULT_ROUTING_ENTITY.to_string()
}

fn default_salt() -> String {
    DEFAULT_ROUTING_SALT.to_string()
}

/// Why a model set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ModelSetError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model manifest: {0}")]
    Manifest(String),
    #[error("model {name} version {version} ({path}): {source}")]
    Model {
        name: String,
        version: String,
        path: PathBuf,
        #[source]
        source: ModelLoadError,
    },
}

/// A model in service with its role and counters.
#[derive(Debug, Clone)]
pub struct ActiveModel {
    pub model: Arc<Model>,
    pub role: Role,
    pub stats: Arc<ModelStats>,
}

impl ActiveModel {
    fn new(model: Model, role: Role) -> Self {
        Self {
            model: Arc::new(model),
            role,
            stats: Arc::new(ModelStats::default()),
        }
    }

    pub fn stats_snapshot(&self) -> ModelStatsSnapshot {
        self.stats
            .snapshot(&self.model.name, &self.model.version, self.role.as_str())
    }
}

/// Champion, challenger, shadows and the router. Cheap to clone (models are shared).
#[derive(Debug, Clone)]
pub struct ModelSet {
    champion: ActiveModel,
    challenger: Option<ActiveModel>,
    shadows: Vec<ActiveModel>,
    router: Router,
}

impl ModelSet {
    /// A set from loaded models. A positive share needs a challenger; `(name, version)` pairs
    /// must be unique; the routing entity must be an entity field.
    pub fn new(
        champion: Model,
        challenger: Option<Model>,
        shadows: Vec<Model>,
        router: Router,
    ) -> Result<Self, ModelSetError> {
        if challenger.is_none() && router.share() > 0.0 {
            return Err(ModelSetError::Manifest(
                "challenger_share is above 0 but there is no challenger".into(),
            ));
        }
        if !fields::ENTITY_FIELDS.contains(&router.entity()) {
            return Err(ModelSetError::Manifest(format!(
                "routing_entity {:?} is not one of {:?}",
                router.entity(),
                fields::ENTITY_FIELDS
            )));
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for m in std::iter::once(&champion)
            .chain(challenger.as_ref())
            .chain(&shadows)
        {
            let key = (m.name.as_str(), m.version.as_str());
            if seen.contains(&key) {
                return Err(ModelSetError::Manifest(format!(
                    "model {} version {} appears twice",
                    m.name, m.version
                )));
            }
            seen.push(key);
        }
        Ok(Self {
            champion: ActiveModel::new(champion, Role::Champion),
            challenger: challenger.map(|m| ActiveModel::new(m, Role::Challenger)),
            shadows: shadows
                .into_iter()
                .map(|m| ActiveModel::new(m, Role::Shadow))
                .collect(),
            router,
        })
    }

    /// Loads `dir/manifest.toml` and the models it names.
    pub fn load_dir(dir: &Path, catalog: &FeatureCatalog) -> Result<Self, ModelSetError> {
        let path = dir.join(MANIFEST_FILE);
        let text = read(&path)?;
        Self::from_manifest(&text, dir, catalog)
    }

    /// Builds a set from manifest text; model paths are relative to `dir`.
    pub fn from_manifest(
        text: &str,
        dir: &Path,
        catalog: &FeatureCatalog,
    ) -> Result<Self, ModelSetError> {
        let manifest: ModelManifest =
            toml::from_str(text).map_err(|e| ModelSetError::Manifest(e.message().to_string()))?;
        if !(0.0..=1.0).contains(&manifest.challenger_share) {
            return Err(ModelSetError::Manifest(format!(
                "challenger_share {} is not in [0, 1]",
                manifest.challenger_share
            )));
        }
        let mut champion = None;
        let mut challenger = None;
        let mut shadows = Vec::new();
        for entry in &manifest.models {
            let path = dir.join(&entry.path);
            let text = read(&path)?;
            let toml_syntax = path.extension().is_some_and(|e| e == "toml");
            let model = Model::parse(
                &entry.name,
                &entry.version,
                entry.format,
                &text,
                toml_syntax,
                catalog,
            )
            .map_err(|source| ModelSetError::Model {
                name: entry.name.clone(),
                version: entry.version.clone(),
                path: path.clone(),
                source,
            })?;
            let slot = match entry.role {
                Role::Champion => &mut champion,
                Role::Challenger => &mut challenger,
                Role::Shadow => {
                    shadows.push(model);
                    continue;
                }
            };
            if slot.replace(model).is_some() {
                return Err(ModelSetError::Manifest(format!(
                    "more than one {}",
                    entry.role
                )));
            }
        }
        let champion =
            champion.ok_or_else(|| ModelSetError::Manifest("no champion model".into()))?;
        let router = Router::new(
            manifest.routing_entity,
            manifest.routing_salt,
            manifest.challenger_share,
        );
        Self::new(champion, challenger, shadows, router)
    }

    pub fn champion(&self) -> &ActiveModel {
        &self.champion
    }

    pub fn challenger(&self) -> Option<&ActiveModel> {
        self.challenger.as_ref()
    }

    pub fn shadows(&self) -> &[ActiveModel] {
        &self.shadows
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The same models with another challenger share (the gradual rollout: 0.1 -> 0.5 -> 1).
    pub fn with_challenger_share(&self, share: f64) -> Result<Self, ModelSetError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(ModelSetError::Manifest(format!(
                "challenger_share {share} is not in [0, 1]"
            )));
        }
        if self.challenger.is_none() && share > 0.0 {
            return Err(ModelSetError::Manifest(
                "challenger_share is above 0 but there is no challenger".into(),
            ));
        }
        let mut next = self.clone();
        next.router = self.router.with_share(share);
        Ok(next)
    }

    /// Every model in service: champion, challenger, shadows.
    pub fn all(&self) -> impl Iterator<Item = &ActiveModel> {
        std::iter::once(&self.champion)
            .chain(self.challenger.as_ref())
            .chain(&self.shadows)
    }

    /// Takes over the counters of models (same name, version and role) from a previous set,
    /// so that replacing the set does not reset them.
    pub fn adopt_stats(&mut self, previous: &ModelSet) {
        let find = |m: &ActiveModel| {
            previous
                .all()
                .find(|p| {
                    p.role == m.role
                        && p.model.name == m.model.name
                        && p.model.version == m.model.version
                })
                .map(|p| p.stats.clone())
        };
        if let Some(s) = find(&self.champion) {
            self.champion.stats = s;
        }
        if let Some(c) = self.challenger.as_mut()
            && let Some(s) = find(c)
        {
            c.stats = s;
        }
        for shadow in &mut self.shadows {
            if let Some(s) = find(shadow) {
                shadow.stats = s;
            }
        }
    }

    /// Per-version counters of every model in service.
    pub fn stats(&self) -> Vec<ModelStatsSnapshot> {
        self.all().map(ActiveModel::stats_snapshot).collect()
    }
}

fn read(path: &Path) -> Result<String, ModelSetError> {
    std::fs::read_to_string(path).map_err(|source| ModelSetError::Io {
        path: path.to_path_buf(),
        source,
    })
}
