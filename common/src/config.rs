//! Configuration loading, the same for every service: built-in defaults, then an optional TOML
//! file, then `RISKSTREAM__SECTION__KEY` environment variables, then command-line overrides.
//! Unknown keys are errors; every error is reported, not just the first.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
pub use figment::value::Value;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The environment variable prefix; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "RISKSTREAM__";

/// Every problem found while loading a configuration.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .errors.join("\n  "))]
pub struct ConfigError {
    pub errors: Vec<String>,
}

impl ConfigError {
    pub fn new(errors: Vec<String>) -> Self {
        Self { errors }
    }
}

/// Something that can check itself after loading (ranges, cross-field rules), reporting every
/// problem at once.
pub trait Validate {
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Loads `T`: defaults, then `file` (if given; a missing file is an error), then the environment,
/// then `overrides` (dotted keys such as `kafka.brokers`).
pub fn load<T>(file: Option<&Path>, overrides: &[(&str, Value)]) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    load_from_env(file, overrides, Env::prefixed(ENV_PREFIX).split("__"))
}

fn load_from_env<T>(
    file: Option<&Path>,
    overrides: &[(&str, Value)],
    env: Env,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::new(vec![format!(
                "config file {} does not exist",
                path.display()
            )]));
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    fig = fig.merge(env);
    for (key, value) in overrides {
        fig = fig.merge(Serialized::default(key, value));
    }
    let value: T = fig
        .extract()
        .map_err(|e| ConfigError::new(e.into_iter().map(|e| e.to_string()).collect()))?;
    let problems = value.validate();
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(ConfigError::new(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Section {
        listen: String,
        #[serde(with = "humantime_serde")]
        timeout: Duration,
        limit: u32,
    }
    impl Default for Section {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".into(),
                timeout: Duration::from_secs(1),
                limit: 10,
            }
        }
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Root {
        svc: Section,
    }
    impl Validate for Root {
        fn validate(&self) -> Vec<String> {
            let mut v = Vec::new();
            if self.svc.limit == 0 {
                v.push("svc.limit must be at least 1".into());
            }
            v
        }
    }

    /// An environment provider that matches no variable, for tests that do not set any.
    fn no_env() -> Env {
        Env::prefixed("RISKSTREAM_TEST_UNSET_PREFIX__").split("__")
    }

    #[test]
    fn defaults_then_file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[svc]\ntimeout = \"250ms\"\nlimit = 3\n").unwrap();
        let r: Root =
            load_from_env(Some(&path), &[("svc.limit", Value::from(7u32))], no_env()).unwrap();
        assert_eq!(r.svc.timeout, Duration::from_millis(250));
        assert_eq!(r.svc.limit, 7);
        assert_eq!(r.svc.listen, "127.0.0.1:1");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error.
    fn environment_variables_override_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[svc]\nlimit = 3\n")?;
            jail.set_env("RISKSTREAM__SVC__LIMIT", "9");
            jail.set_env("RISKSTREAM__SVC__TIMEOUT", "2s");
            let r: Root = load(Some(Path::new("c.toml")), &[]).map_err(|e| e.to_string())?;
            assert_eq!(r.svc.limit, 9);
            assert_eq!(r.svc.timeout, Duration::from_secs(2));
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_bad_values_and_validation_are_all_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[svc]\ntimeout = \"soon\"\n").unwrap();
        let err = load_from_env::<Root>(Some(&path), &[], no_env()).unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");

        std::fs::write(&path, "[svc]\nlimt = 3\n").unwrap();
        let err = load_from_env::<Root>(Some(&path), &[], no_env()).unwrap_err();
        assert!(err.to_string().contains("limt"), "{err}");

        std::fs::write(&path, "[svc]\nlimit = 0\n").unwrap();
        let err = load_from_env::<Root>(Some(&path), &[], no_env()).unwrap_err();
        assert_eq!(err.errors, vec!["svc.limit must be at least 1".to_string()]);

        let err =
            load_from_env::<Root>(Some(Path::new("/nonexistent.toml")), &[], no_env()).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
