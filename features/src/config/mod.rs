//! Feature definitions: the TOML schema (`[[feature]]` tables), its validation (every problem
//! collected and named by feature) and the compiled [`FeatureSet`], grouped by entity key.
//! The file's `[[window_output]]` tables are validated by [`crate::window_output::config`] and
//! kept in the set.
//!
//! See `docs/features.md` for the language and the window and aggregation semantics.
//!
//! The code is split by role, data flowing one way (`defs` <- `fields` <- `compile` <- `set`):
//! `defs` (the TOML-facing definition types and the parsing of one raw table), `fields` (event
//! fields, entity keys, window specs), `compile` (validation and compilation into features and
//! groups) and `set` (the [`FeatureSet`] and its loading). Every item is re-exported here.

mod compile;
mod defs;
mod fields;
mod set;

pub(crate) use compile::{
    CompiledPredicate, compile_entity, compile_predicate, compile_window, duration_ms,
};
pub use compile::{
    DEFAULT_DISTINCT_EXACT_LIMIT, DEFAULT_HLL_PRECISION, DEFAULT_SLIDING_GRANULARITY_MS, Feature,
    FeatureGroup, HLL_PRECISION_RANGE, MAX_BUCKETS_PER_WINDOW, MAX_DISTINCT_EXACT_LIMIT,
    MAX_NAME_LEN, MAX_WINDOW_MS,
};
pub use defs::{Aggregation, FEATURE_TABLE, FeatureDef, FilterDef, Predicate, Scalar, WindowDef};
pub use fields::{
    ENTITY_SPEC_SEPARATOR, EventField, KEY_ESCAPE, KEY_SEPARATOR, KeySpec, MAX_KEY_PARTS,
    WindowSpec,
};
pub use set::FeatureSet;
