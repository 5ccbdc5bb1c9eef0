//! Keeping strangers out of riskstream's HTTP and gRPC surfaces, the same way in every service:
//!
//! - [`token`]: bearer tokens (`rst_` + 32 random bytes, base64url) and the tokens file that
//!   stores only their SHA-256 hashes with a name, scopes and creation time
//!   (`riskstream auth add-token|list|revoke` edit it);
//! - [`scope`]: what a token may do (`events:write`, `decide`, `traces:read`, ..., `admin`);
//! - [`store`]: the token set a service checks against, reloaded when the file changes (a
//!   broken file keeps the previous set);
//! - [`guard`]: per-route access rules, the check of one request (401, 403, 429) and per-token
//!   rate limits;
//! - [`http`]: the axum middleware applying a guard plus the header-size limit (431) and the
//!   request timeout (408), and the JSON error answers;
//! - [`grpc`]: the same check as a tonic interceptor;
//! - [`config`]: the `[auth]` and `[http]` configuration sections.
//!
//! Without a tokens file a guard lets every request through (and the service warns at start);
//! the header limit and the timeout apply either way. See docs/security.md.

pub mod config;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod scope;
pub mod store;
pub mod token;

#[cfg(test)]
mod fixture;

pub use config::{AccessConfig, AuthConfig, HttpConfig};
pub use guard::{Access, Denial, Guard, Principal, Rule};
pub use scope::Scope;
pub use token::{TokenEntry, TokenFile};

/// Everything that can go wrong reading or writing tokens and their file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("tokens file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("unknown scope {0:?} (known: {known})", known = scope::Scope::names().join(", "))]
    UnknownScope(String),
    #[error("a token named {0:?} already exists (revoke it first)")]
    DuplicateName(String),
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    #[error("invalid token name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}
