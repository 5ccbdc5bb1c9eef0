//! Test fixture of the crate's unit tests: a guard over a temporary tokens file.

use crate::config::AccessConfig;
use crate::guard::{Guard, Rule};
use crate::scope::Scope;
use crate::token::TokenFile;

/// A guard with `rules` whose tokens file (kept while this lives) holds one token per
/// `(name, scopes)`; `access.auth.tokens_file` is set to it.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub guard: Guard,
    /// The tokens, in the order of the specs.
    pub tokens: Vec<String>,
}

pub fn guard(
    rules: &'static [Rule],
    specs: &[(&str, &[Scope])],
    mut access: AccessConfig,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let mut file = TokenFile::default();
    let now = chrono::Utc::now();
    let tokens = specs
        .iter()
        .map(|(name, scopes)| file.add(name, scopes.to_vec(), now).unwrap())
        .collect();
    file.save(&path).unwrap();
    access.auth.tokens_file = path;
    Fixture {
        guard: Guard::new("test", &access, rules).unwrap(),
        _dir: dir,
        tokens,
    }
}
