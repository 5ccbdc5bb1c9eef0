//! Allow and block lists per entity (`account_id`, `card_id`, `device_id`, `ip`,
//! `merchant_id`, `email`), held in moka caches with a TTL per entry (or a default TTL), loaded
//! from a file and updated entry by entry (the worker feeds the `lists` control topic).
//!
//! File format, one entry a line, `#` comments and blank lines ignored (values cannot contain
//! commas in this format; the JSON update form has no such limit):
//! ```text
//! entity,value,list[,ttl]
//! card_id,card-stolen-1,block,30d
//! email,vip@example.com,allow
//! ```
//! Matching is exact (case-sensitive). Precedence in the decision: a block hit declines; an
//! allow hit approves unless a rule forces a worse outcome (see `docs/scoring.md`).

use std::fmt;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use riskstream_common::Event;
use riskstream_common::event::fields;
use serde::{Deserialize, Serialize};

/// Separator inside cache keys (`entity \x1f value`); not valid in any entity field.
const KEY_SEPARATOR: char = '\u{1f}';

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Block => "block",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Add or remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListOp {
    #[default]
    Upsert,
    Remove,
}

/// One list update, as a file line or a JSON message on the `lists` topic, e.g.
/// `{"op":"upsert","entity":"card_id","value":"c-1","list":"block","ttl":"1h"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListUpdate {
    #[serde(default)]
    pub op: ListOp,
    pub entity: String,
    pub value: String,
    pub list: ListKind,
    /// How long the entry lives; absent: the lists' default TTL.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
}

impl ListUpdate {
    /// Parses one `entity,value,list[,ttl]` line.
    pub fn parse_line(line: &str) -> Result<Self, String> {
        let parts: Vec<&str> = line.split(',').map(str::trim).collect();
        let (entity, value, list, ttl) = match parts.as_slice() {
            [e, v, l] => (*e, *v, *l, None),
            [e, v, l, t] => (*e, *v, *l, Some(*t).filter(|t| !t.is_empty())),
            _ => {
                return Err(format!(
                    "expected entity,value,list[,ttl], got {} fields",
                    parts.len()
                ));
            }
        };
        let list = match list {
            "allow" => ListKind::Allow,
            "block" => ListKind::Block,
            other => return Err(format!("list {other:?} is not allow or block")),
        };
        let ttl = ttl
            .map(|t| humantime::parse_duration(t).map_err(|e| format!("ttl {t:?}: {e}")))
            .transpose()?;
        let update = Self {
            op: ListOp::Upsert,
            entity: entity.to_string(),
            value: value.to_string(),
            list,
            ttl,
        };
        update.validate()?;
        Ok(update)
    }

    /// Checks the entity is an entity field and the value is not empty.
    pub fn validate(&self) -> Result<(), String> {
        if !fields::ENTITY_FIELDS.contains(&self.entity.as_str()) {
            return Err(format!(
                "entity {:?} is not one of {}",
                self.entity,
                fields::ENTITY_FIELDS.join(", ")
            ));
        }
        if self.value.is_empty() || self.value.contains(KEY_SEPARATOR) {
            return Err("value must be non-empty text".into());
        }
        Ok(())
    }
}

/// Why a list file or update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListsError {
    /// Every bad line of a file (1-based line numbers); nothing was loaded.
    #[error("invalid list file: {}", .0.iter().map(|(l, m)| format!("line {l}: {m}")).collect::<Vec<_>>().join("; "))]
    File(Vec<(usize, String)>),
    #[error("invalid list update: {0}")]
    Update(String),
    #[error("cannot read list file {path}: {message}")]
    Io { path: String, message: String },
}

/// A list hit for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListHit {
    /// The entity field that matched.
    pub entity: &'static str,
    pub list: ListKind,
}

/// The lists' verdict for one event: the first block hit and the first allow hit, in
/// [`fields::ENTITY_FIELDS`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListVerdict {
    pub block: Option<ListHit>,
    pub allow: Option<ListHit>,
}

#[derive(Debug, Clone, Copy)]
struct EntryTtl(Option<Duration>);

struct PerEntryTtl;

impl Expiry<String, EntryTtl> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, v: &EntryTtl, _: Instant) -> Option<Duration> {
        v.0
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &EntryTtl,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.0
    }
}

/// The allow and block lists. Cheap to clone (the caches are shared).
#[derive(Clone)]
pub struct Lists {
    allow: Cache<String, EntryTtl>,
    block: Cache<String, EntryTtl>,
    default_ttl: Option<Duration>,
}

impl fmt::Debug for Lists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lists")
            .field("allow", &self.allow.entry_count())
            .field("block", &self.block.entry_count())
            .field("default_ttl", &self.default_ttl)
            .finish()
    }
}

impl Lists {
    /// Empty lists holding up to `max_entries` entries each; entries without a TTL live for
    /// `default_ttl` (`None`: until removed).
    pub fn new(max_entries: u64, default_ttl: Option<Duration>) -> Self {
        let cache = || {
            Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build()
        };
        Self {
            allow: cache(),
            block: cache(),
            default_ttl,
        }
    }

    fn cache(&self, list: ListKind) -> &Cache<String, EntryTtl> {
        match list {
            ListKind::Allow => &self.allow,
            ListKind::Block => &self.block,
        }
    }

    /// Applies one update (validated first).
    pub fn apply(&self, update: &ListUpdate) -> Result<(), ListsError> {
        update.validate().map_err(ListsError::Update)?;
        let key = cache_key(&update.entity, &update.value);
        let cache = self.cache(update.list);
        match update.op {
            ListOp::Upsert => cache.insert(key, EntryTtl(update.ttl.or(self.default_ttl))),
            ListOp::Remove => cache.invalidate(&key),
        }
        Ok(())
    }

    /// Applies a JSON update message (the `lists` topic's format).
    pub fn apply_json(&self, bytes: &[u8]) -> Result<(), ListsError> {
        let update: ListUpdate =
            serde_json::from_slice(bytes).map_err(|e| ListsError::Update(e.to_string()))?;
        self.apply(&update)
    }

    /// Loads a list file's text: every line is validated first; on any bad line nothing is
    /// loaded. Returns the number of entries loaded.
    pub fn load_str(&self, text: &str) -> Result<usize, ListsError> {
        let mut updates = Vec::new();
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match ListUpdate::parse_line(line) {
                Ok(u) => updates.push(u),
                Err(m) => bad.push((i + 1, m)),
            }
        }
        if !bad.is_empty() {
            return Err(ListsError::File(bad));
        }
        for u in &updates {
            self.apply(u)?;
        }
        Ok(updates.len())
    }

    /// Loads a list file.
    pub fn load_file(&self, path: &std::path::Path) -> Result<usize, ListsError> {
        let text = std::fs::read_to_string(path).map_err(|e| ListsError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        self.load_str(&text)
    }

    /// Whether `value` of `entity` is on `list` (and not expired).
    pub fn contains(&self, entity: &str, value: &str, list: ListKind) -> bool {
        self.cache(list).contains_key(&cache_key(entity, value))
    }

    /// Checks every entity field the event has against both lists.
    pub fn check(&self, event: &Event) -> ListVerdict {
        let mut verdict = ListVerdict::default();
        let mut key = String::with_capacity(64);
        for entity in fields::ENTITY_FIELDS {
            let Some(value) = event.field_str(entity) else {
                continue;
            };
            key.clear();
            key.push_str(entity);
            key.push(KEY_SEPARATOR);
            key.push_str(value);
            if verdict.block.is_none() && self.block.contains_key(key.as_str()) {
                verdict.block = Some(ListHit {
                    entity,
                    list: ListKind::Block,
                });
            }
            if verdict.allow.is_none() && self.allow.contains_key(key.as_str()) {
                verdict.allow = Some(ListHit {
                    entity,
                    list: ListKind::Allow,
                });
            }
        }
        verdict
    }

    /// Entries in a list (approximate: moka counts lazily).
    pub fn len(&self, list: ListKind) -> u64 {
        let c = self.cache(list);
        c.run_pending_tasks();
        c.entry_count()
    }
}

fn cache_key(entity: &str, value: &str) -> String {
    let mut k = String::with_capacity(entity.len() + value.len() + 1);
    k.push_str(entity);
    k.push(KEY_SEPARATOR);
    k.push_str(value);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_lines_are_all_named() {
        let u = ListUpdate::parse_line("card_id, c-1 ,block,30m").unwrap();
        assert_eq!(u.value, "c-1");
        assert_eq!(u.ttl, Some(Duration::from_secs(1800)));
        let lists = Lists::new(100, None);
        let err = lists
            .load_str("# comment\n\ncard_id,c-1,block\ncolour,red,block\nip,1.2.3.4,grey\nemail,a@b,allow,soon\n")
            .unwrap_err();
        let ListsError::File(bad) = err else {
            panic!("{err}")
        };
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![4, 5, 6]);
        assert!(
            !lists.contains("card_id", "c-1", ListKind::Block),
            "nothing loads from a bad file"
        );
    }

    #[test]
    fn json_updates_add_and_remove() {
        let lists = Lists::new(100, None);
        lists
            .apply_json(br#"{"entity":"ip","value":"203.0.113.9","list":"block","ttl":"1h"}"#)
            .unwrap();
        assert!(lists.contains("ip", "203.0.113.9", ListKind::Block));
        assert!(!lists.contains("ip", "203.0.113.9", ListKind::Allow));
        lists
            .apply_json(br#"{"op":"remove","entity":"ip","value":"203.0.113.9","list":"block"}"#)
            .unwrap();
        assert!(!lists.contains("ip", "203.0.113.9", ListKind::Block));
        assert!(
            lists
                .apply_json(br#"{"entity":"ip","value":"x","list":"block","extra":1}"#)
                .is_err()
        );
    }
}
