//! The token set a service checks requests against, and its reload.
//!
//! [`TokenStore::open`] reads the tokens file once (a missing or broken file is an error: the
//! service does not start), then a background thread looks at the file's modification time and
//! size every `reload_interval` and reads it again when they change. A file that cannot be read
//! or parsed then keeps the previous set and logs an error (once per change). The thread holds
//! only a weak reference and ends once the store is dropped.
//!
//! A presented token is hashed (SHA-256) and compared with every stored hash in constant time
//! ([`subtle`]), so neither the comparison nor the lookup depends on how much of a hash matched.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use subtle::ConstantTimeEq as _;

use crate::AuthError;
use crate::scope::Scope;
use crate::token::{self, TokenEntry, TokenFile};

/// Requests per second and burst; 0 per second: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    fn quota(self) -> Option<Quota> {
        let rate = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// One usable token.
pub struct ActiveToken {
    pub name: Arc<str>,
    pub scopes: Vec<Scope>,
    hash: [u8; 32],
    limit: RateLimit,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl ActiveToken {
    /// Takes one request from this token's budget; `Err(wait)` when there is none left.
    pub fn take(&self) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        }
    }
}

/// The tokens of one version of the file.
#[derive(Default)]
pub struct TokenSet {
    tokens: Vec<ActiveToken>,
}

impl TokenSet {
    /// The set of `file`'s tokens with `defaults` for those without their own limits; a token
    /// whose name and limits are unchanged keeps its rate-limit budget from `previous`.
    pub fn compile(file: &TokenFile, defaults: RateLimit, previous: Option<&TokenSet>) -> Self {
        let tokens = file
            .tokens
            .iter()
            .map(|e: &TokenEntry| {
                let limit = RateLimit {
                    per_second: e.rate_limit_per_second.unwrap_or(defaults.per_second),
                    burst: e.rate_limit_burst.unwrap_or(defaults.burst),
                };
                let kept = previous
                    .and_then(|p| p.tokens.iter().find(|t| *t.name == *e.name))
                    .filter(|t| t.limit == limit)
                    .and_then(|t| t.limiter.clone());
                ActiveToken {
                    name: Arc::from(e.name.as_str()),
                    scopes: e.scopes.clone(),
                    hash: e.hash_bytes(),
                    limit,
                    limiter: kept
                        .or_else(|| limit.quota().map(|q| Arc::new(RateLimiter::direct(q)))),
                }
            })
            .collect();
        Self { tokens }
    }

    /// The token `presented` is, if any.
    pub fn find(&self, presented: &str) -> Option<&ActiveToken> {
        let hash = token::hash(presented);
        let mut found = None;
        // Every stored hash is compared, each in constant time.
        for t in &self.tokens {
            if bool::from(t.hash.ct_eq(&hash)) {
                found = Some(t);
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

struct Shared {
    path: PathBuf,
    defaults: RateLimit,
    current: ArcSwap<TokenSet>,
    /// Successful loads so far (the first one included).
    loads: AtomicU64,
}

/// The current token set, reloaded from its file in the background.
#[derive(Clone)]
pub struct TokenStore {
    shared: Arc<Shared>,
}

/// What tells a changed file: its modification time and size.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl TokenStore {
    /// Loads `path` (an error if it is missing or broken) and watches it every `interval`.
    pub fn open(path: &Path, interval: Duration, defaults: RateLimit) -> Result<Self, AuthError> {
        let first = stamp(path);
        let file = TokenFile::load(path)?;
        let store = Self {
            shared: Arc::new(Shared {
                path: path.to_path_buf(),
                defaults,
                current: ArcSwap::from_pointee(TokenSet::compile(&file, defaults, None)),
                loads: AtomicU64::new(1),
            }),
        };
        let weak = Arc::downgrade(&store.shared);
        let spawned = std::thread::Builder::new()
            .name("tokens-reload".into())
            .spawn(move || watch(weak, interval, first));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the tokens file watcher; changes need a restart");
        }
        Ok(store)
    }

    /// A store with no token and no file: every protected route is refused.
    pub fn empty() -> Self {
        Self {
            shared: Arc::new(Shared {
                path: PathBuf::new(),
                defaults: RateLimit {
                    per_second: 0,
                    burst: 0,
                },
                current: ArcSwap::from_pointee(TokenSet::default()),
                loads: AtomicU64::new(0),
            }),
        }
    }

    pub fn current(&self) -> Arc<TokenSet> {
        self.shared.current.load_full()
    }

    /// How many times the file was loaded successfully (1 after `open`).
    pub fn loads(&self) -> u64 {
        self.shared.loads.load(Ordering::SeqCst)
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

fn watch(weak: Weak<Shared>, interval: Duration, mut last: Stamp) {
    loop {
        std::thread::sleep(interval);
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let now = stamp(&shared.path);
        if now == last {
            continue;
        }
        last = now;
        match TokenFile::load(&shared.path) {
            Ok(file) => {
                let previous = shared.current.load();
                let set = TokenSet::compile(&file, shared.defaults, Some(&previous));
                let n = set.len();
                shared.current.store(Arc::new(set));
                shared.loads.fetch_add(1, Ordering::SeqCst);
                tracing::info!(path = %shared.path.display(), tokens = n, "tokens file reloaded");
            }
            Err(e) => tracing::error!(
                error = %e,
                "tokens file not reloaded; the previous tokens stay in force"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    const UNLIMITED: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn finds_tokens_by_hash_only() {
        let mut file = TokenFile::default();
        let a = file.add("a", vec![Scope::Decide], Utc::now()).unwrap();
        let b = file.add("b", vec![Scope::Admin], Utc::now()).unwrap();
        let set = TokenSet::compile(&file, UNLIMITED, None);
        assert_eq!(&*set.find(&a).unwrap().name, "a");
        assert_eq!(set.find(&b).unwrap().scopes, vec![Scope::Admin]);
        assert!(set.find("rst_nope").is_none());
        assert!(set.find(&a[..a.len() - 1]).is_none());
        assert!(
            set.find(&file.tokens[0].sha256).is_none(),
            "the hash is no token"
        );
    }

    #[test]
    fn the_burst_then_the_rate_and_budgets_survive_an_unchanged_reload() {
        let mut file = TokenFile::default();
        let a = file.add("a", vec![], Utc::now()).unwrap();
        let limit = RateLimit {
            per_second: 1,
            burst: 3,
        };
        let set = TokenSet::compile(&file, limit, None);
        let t = set.find(&a).unwrap();
        for _ in 0..3 {
            t.take().unwrap();
        }
        let wait = t.take().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        let again = TokenSet::compile(&file, limit, Some(&set));
        assert!(again.find(&a).unwrap().take().is_err(), "same budget");
        file.tokens[0].rate_limit_per_second = Some(0);
        let unlimited = TokenSet::compile(&file, limit, Some(&set));
        for _ in 0..100 {
            unlimited.find(&a).unwrap().take().unwrap();
        }
    }

    #[test]
    fn reloads_changes_and_keeps_the_previous_set_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut file = TokenFile::default();
        let first = file.add("first", vec![Scope::Decide], Utc::now()).unwrap();
        file.save(&path).unwrap();
        let store = TokenStore::open(&path, Duration::from_millis(20), UNLIMITED).unwrap();
        assert!(store.current().find(&first).is_some());

        let second = file.add("second", vec![Scope::Decide], Utc::now()).unwrap();
        file.save(&path).unwrap();
        wait_for("second token", || store.current().find(&second).is_some());
        assert_eq!(store.loads(), 2);

        std::fs::write(&path, "[[token]\nthis is not toml").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(store.current().find(&second).is_some(), "previous set kept");
        assert_eq!(store.loads(), 2);

        file.revoke("first").unwrap();
        file.save(&path).unwrap();
        wait_for("first revoked", || store.current().find(&first).is_none());
        assert!(store.current().find(&second).is_some());

        assert!(
            TokenStore::open(
                &dir.path().join("missing"),
                Duration::from_secs(1),
                UNLIMITED
            )
            .is_err()
        );
    }
}
