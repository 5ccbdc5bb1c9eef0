//! Bearer tokens and the tokens file.
//!
//! A token is `rst_` followed by 32 bytes from the operating system's CSPRNG in base64url (no
//! padding): 256 bits, so one unsalted SHA-256 is enough to store it (nothing to brute-force,
//! unlike a password). The file (TOML) keeps, per token, its name, scopes, SHA-256 (hex),
//! creation time and optional own rate limit; never the token itself:
//!
//! ```toml
//! [[token]]
//! name = "grafana"
//! scopes = ["decisions:read", "traces:read"]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! created = "2026-01-01T00:00:00Z"
//! ```

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::AuthError;
use crate::scope::Scope;

/// What every token starts with (so scanners and people recognise one).
pub const TOKEN_PREFIX: &str = "rst_";
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// A new random token (`rst_` + 43 base64url characters).
pub fn generate() -> Result<String, AuthError> {
    use rand::TryRngCore as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// SHA-256 of a presented token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// SHA-256 of a token as the file stores it (lowercase hex).
pub fn hash_hex(token: &str) -> String {
    const_hex::encode(hash(token))
}

/// One token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who or what holds it (unique in the file; names the token in logs and 403 answers).
    pub name: String,
    pub scopes: Vec<Scope>,
    /// SHA-256 of the token, 64 lowercase hex digits.
    pub sha256: String,
    pub created: DateTime<Utc>,
    /// This token's sustained requests per second (instead of `auth.rate_limit_per_second`);
    /// 0: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// This token's burst (instead of `auth.rate_limit_burst`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
}

impl TokenEntry {
    /// The hash as bytes (validated when the file was read).
    pub fn hash_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Checked by `TokenFile::parse`; an entry built by hand with a bad hash matches nothing.
        let _ = const_hex::decode_to_slice(&self.sha256, &mut out);
        out
    }
}

/// The whole tokens file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

const FILE_HEADER: &str = "# riskstream bearer tokens: names, scopes and SHA-256 hashes, never the tokens.\n\
# Edited by `riskstream auth add-token|revoke`; services reload it when it changes.\n\n";

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TokenFile {
    /// Parses and checks the file's text (`path` only names it in errors): unique valid names,
    /// 64-hex-digit hashes, known scopes.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let invalid = |message: String| AuthError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let file: TokenFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for t in &file.tokens {
            if !valid_name(&t.name) {
                return Err(invalid(AuthError::InvalidName(t.name.clone()).to_string()));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(invalid(format!("token name {:?} appears twice", t.name)));
            }
            let hex_ok = t.sha256.len() == 64
                && t.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(invalid(format!(
                    "token {:?}: sha256 must be 64 lowercase hex digits",
                    t.name
                )));
            }
        }
        Ok(file)
    }

    /// Reads `path` (which must exist).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Reads `path`, or an empty file if it does not exist yet.
    pub fn load_or_default(path: &Path) -> Result<Self, AuthError> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(Self::default())
        }
    }

    /// Writes the file atomically (a temporary file in the same directory, readable by the
    /// owner only, renamed over it), so a service reloading it never reads half a file.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        let io = |source| AuthError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = toml::to_string_pretty(self).map_err(|e| AuthError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map_or_else(|| "tokens".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(io)?;
        f.write_all(FILE_HEADER.as_bytes())
            .and_then(|()| f.write_all(text.as_bytes()))
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Adds a token named `name` with `scopes`; returns the token, which is not stored.
    pub fn add(
        &mut self,
        name: &str,
        scopes: Vec<Scope>,
        now: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        if !valid_name(name) {
            return Err(AuthError::InvalidName(name.to_string()));
        }
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(AuthError::DuplicateName(name.to_string()));
        }
        let token = generate()?;
        self.tokens.push(TokenEntry {
            name: name.to_string(),
            scopes,
            sha256: hash_hex(&token),
            created: now,
            rate_limit_per_second: None,
            rate_limit_burst: None,
        });
        Ok(token)
    }

    /// Removes the token named `name`.
    pub fn revoke(&mut self, name: &str) -> Result<TokenEntry, AuthError> {
        let i = self
            .tokens
            .iter()
            .position(|t| t.name == name)
            .ok_or_else(|| AuthError::NoSuchToken(name.to_string()))?;
        Ok(self.tokens.remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_long() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43, "{a}");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a[TOKEN_PREFIX.len()..])
            .unwrap();
        assert_eq!(raw.len(), TOKEN_BYTES);
    }

    #[test]
    fn the_hash_is_sha256() {
        assert_eq!(
            hash_hex("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn add_save_load_revoke_round_trip_without_the_token_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut file = TokenFile::load_or_default(&path).unwrap();
        let now = Utc::now();
        let token = file
            .add("client-1", vec![Scope::EventsWrite, Scope::Decide], now)
            .unwrap();
        file.add("grafana", vec![Scope::TracesRead], now).unwrap();
        assert!(matches!(
            file.add("grafana", vec![], now),
            Err(AuthError::DuplicateName(_))
        ));
        assert!(matches!(
            file.add("bad name", vec![], now),
            Err(AuthError::InvalidName(_))
        ));
        file.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token), "{text}");
        assert!(text.contains(&hash_hex(&token)), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner only: {mode:o}");
        }
        let mut back = TokenFile::load(&path).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.tokens[0].hash_bytes(), hash(&token));
        back.revoke("client-1").unwrap();
        assert!(matches!(
            back.revoke("client-1"),
            Err(AuthError::NoSuchToken(_))
        ));
        assert_eq!(back.tokens.len(), 1);
    }

    #[test]
    fn broken_files_are_refused_with_the_reason() {
        let p = Path::new("t.toml");
        let entry = |name: &str, hash: &str| {
            format!(
                "[[token]]\nname = \"{name}\"\nscopes = [\"decide\"]\nsha256 = \"{hash}\"\ncreated = \"2026-01-01T00:00:00Z\"\n"
            )
        };
        let good = "a".repeat(64);
        assert_eq!(TokenFile::parse("", p).unwrap().tokens.len(), 0);
        assert_eq!(
            TokenFile::parse(&entry("x", &good), p)
                .unwrap()
                .tokens
                .len(),
            1
        );
        for (text, needle) in [
            (
                format!("{}{}", entry("x", &good), entry("x", &good)),
                "twice",
            ),
            (entry("x", "abc"), "64 lowercase hex"),
            (entry("x", &"A".repeat(64)), "64 lowercase hex"),
            (entry("x", &good).replace("decide", "root"), "root"),
            (format!("{}extra = 1\n", entry("x", &good)), "extra"),
            ("[[token]\n".to_string(), "t.toml"),
        ] {
            let err = TokenFile::parse(&text, p).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
