//! Snapshot holds (zfs hold semantics): named tags on a snapshot; a held snapshot cannot be
//! removed (`snapshot remove`, `snapshot prune`, the undo-snapshot limit) until every tag is
//! released.
//!
//! Holds are kept in the pool directory's `snapshot-holds.json`, beside `clone-origins.json`:
//! non-normative metadata, so the on-disk format is unchanged. Entries are keyed by the
//! snapshot's UDID, so a snapshot removed and made again under the same name starts without
//! holds. The file is replaced atomically (write, fsync, rename). Every change and every
//! removal that must respect holds runs under one process-wide lock ([`guard`]); sspd is the
//! only process with the pool open while it runs, and offline sspctl holds the pool
//! directory's lock, so a hold cannot slip in between a removal's check and the removal.
//!
//! The API (`add`, `remove`, `list`, `is_held`) takes the pool directory and the open pool; a
//! send/receive that needs a base snapshot kept can hold it with its own tag.

use crate::pool::{split_snapshot, Pool, PoolError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;

/// File name inside the pool directory.
pub const HOLDS_FILE: &str = "snapshot-holds.json";

/// Longest tag accepted.
pub const MAX_TAG_LEN: usize = 64;

static LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HoldsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a snapshot hold file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad hold tag {0:?}: use 1 to {MAX_TAG_LEN} letters, digits, '.', '_', '-', ':'")]
    BadTag(String),
    #[error("{0} is not a snapshot")]
    NotSnapshot(String),
    #[error("{snapshot} already has a hold {tag:?}")]
    Exists { snapshot: String, tag: String },
    #[error("{snapshot} has no hold {tag:?}")]
    NoSuchHold { snapshot: String, tag: String },
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl From<HoldsError> for PoolError {
    fn from(e: HoldsError) -> PoolError {
        match e {
            HoldsError::Pool(p) => p,
            HoldsError::BadTag(_) | HoldsError::NotSnapshot(_) => PoolError::Invalid(e.to_string()),
            HoldsError::Exists { .. } => PoolError::Exists(e.to_string()),
            HoldsError::NoSuchHold { .. } => PoolError::NotFound(e.to_string()),
            HoldsError::Read { .. } | HoldsError::Parse { .. } | HoldsError::Write { .. } => {
                PoolError::Config(e.to_string())
            }
        }
    }
}

/// One snapshot's holds as stored: its name when last held (for people reading the file) and
/// tag → Unix seconds the hold was placed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Entry {
    name: String,
    tags: BTreeMap<String, u64>,
}

/// One hold, as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    pub name: String,
    pub tag: String,
    /// When it was placed (RFC 3339, UTC).
    pub since: String,
}

/// Serializes hold changes with removals that check holds; keep it while removing.
pub fn guard() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn path(dir: &Path) -> PathBuf {
    dir.join(HOLDS_FILE)
}

fn load(dir: &Path) -> Result<BTreeMap<String, Entry>, HoldsError> {
    let path = path(dir);
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t).map_err(|source| HoldsError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(source) => Err(HoldsError::Read { path, source }),
    }
}

fn save(dir: &Path, m: &BTreeMap<String, Entry>) -> Result<(), HoldsError> {
    let path = path(dir);
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_string_pretty(m).map_err(|source| HoldsError::Parse {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, body + "\n")
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .and_then(|_| std::fs::File::open(dir)?.sync_all())
        .map_err(|source| HoldsError::Write { path, source })
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn check_tag(tag: &str) -> Result<(), HoldsError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(HoldsError::BadTag(tag.to_owned()))
    }
}

/// The UDID of snapshot `name`, checking that it is one.
fn snapshot_udid(pool: &Pool, name: &str) -> Result<String, HoldsError> {
    split_snapshot(name)?;
    let l = pool.lu_get(name)?;
    if l.kind != "snapshot" {
        return Err(HoldsError::NotSnapshot(name.to_owned()));
    }
    Ok(l.udid)
}

/// Place hold `tag` on snapshot `name`.
pub fn add(dir: &Path, pool: &Pool, name: &str, tag: &str) -> Result<Hold, HoldsError> {
    check_tag(tag)?;
    let _g = guard();
    let udid = snapshot_udid(pool, name)?;
    let mut m = load(dir)?;
    let e = m.entry(udid).or_default();
    if e.tags.contains_key(tag) {
        return Err(HoldsError::Exists {
            snapshot: name.to_owned(),
            tag: tag.to_owned(),
        });
    }
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    e.name = name.to_owned();
    e.tags.insert(tag.to_owned(), since);
    save(dir, &m)?;
    Ok(Hold {
        name: name.to_owned(),
        tag: tag.to_owned(),
        since: rfc3339(since),
    })
}

/// Release hold `tag` of snapshot `name`.
pub fn remove(dir: &Path, pool: &Pool, name: &str, tag: &str) -> Result<(), HoldsError> {
    let _g = guard();
    let udid = snapshot_udid(pool, name)?;
    let mut m = load(dir)?;
    let gone = match m.get_mut(&udid) {
        Some(e) => e.tags.remove(tag).is_some(),
        None => false,
    };
    if !gone {
        return Err(HoldsError::NoSuchHold {
            snapshot: name.to_owned(),
            tag: tag.to_owned(),
        });
    }
    if m.get(&udid).is_some_and(|e| e.tags.is_empty()) {
        m.remove(&udid);
    }
    save(dir, &m)
}

/// The holds of snapshot `name`, by tag.
pub fn list(dir: &Path, pool: &Pool, name: &str) -> Result<Vec<Hold>, HoldsError> {
    let udid = snapshot_udid(pool, name)?;
    let m = load(dir)?;
    Ok(m.get(&udid)
        .map(|e| {
            e.tags
                .iter()
                .map(|(t, s)| Hold {
                    name: name.to_owned(),
                    tag: t.clone(),
                    since: rfc3339(*s),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The tags holding the volume with UDID `udid` (empty: not held). Call under [`guard`] when
/// a removal depends on the answer.
pub fn is_held(dir: &Path, udid: &str) -> Result<Vec<String>, HoldsError> {
    Ok(load(dir)?
        .get(udid)
        .map(|e| e.tags.keys().cloned().collect())
        .unwrap_or_default())
}

/// Refuse to remove snapshot `name` (UDID `udid`) while it is held. Call under [`guard`].
pub fn refuse_if_held(dir: &Path, name: &str, udid: &str) -> Result<(), PoolError> {
    let tags = is_held(dir, udid)?;
    if tags.is_empty() {
        return Ok(());
    }
    Err(PoolError::InUse(format!(
        "{name} is held (tags: {}): release each with `sspctl snapshot release {name} TAG` first",
        tags.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked() {
        for t in ["backup", "send:A-1", "x.y_z"] {
            check_tag(t).unwrap();
        }
        for t in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(matches!(check_tag(t), Err(HoldsError::BadTag(_))), "{t:?}");
        }
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_set() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(HOLDS_FILE), "{not json").unwrap();
        assert!(matches!(
            is_held(d.path(), "00"),
            Err(HoldsError::Parse { .. })
        ));
        std::fs::remove_file(d.path().join(HOLDS_FILE)).unwrap();
        assert!(is_held(d.path(), "00").unwrap().is_empty());
    }
}
