//! Clone origins: the name of the snapshot or image each linked clone was made from, kept in
//! the pool directory's `clone-origins.json` so that a clone whose snapshot or image was
//! removed still names its origin in `lu list` and `file stat`.
//!
//! The pool records a clone's parent by volume id, and a removed volume's name is gone with
//! it; this file is non-normative metadata beside `lu-maps.json` (the on-disk format is
//! unchanged). Entries are keyed by the clone's UDID, so a name used again never inherits an
//! old origin. They are recorded when a clone is made and, for clones made before this file
//! existed, when their snapshot or image is removed; an entry goes when its clone is removed.

use crate::pool::{FileStat, LuInfo, Pool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use thiserror::Error;

/// File name inside the pool directory.
pub const ORIGINS_FILE: &str = "clone-origins.json";

/// Serializes read-modify-write of the file within this process (sspd serves admin
/// connections in parallel; offline sspctl holds the pool directory's lock).
static UPDATE: Mutex<()> = Mutex::new(());

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OriginsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a JSON object of UDID to origin name: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The clone-origin file of one pool directory.
pub struct Origins {
    path: PathBuf,
}

impl Origins {
    pub fn new(dir: &Path) -> Origins {
        Origins {
            path: dir.join(ORIGINS_FILE),
        }
    }

    /// Every entry, UDID → origin name (none when the file does not exist).
    pub fn load(&self) -> Result<BTreeMap<String, String>, OriginsError> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => serde_json::from_str(&t).map_err(|source| OriginsError::Parse {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(OriginsError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn save(&self, m: &BTreeMap<String, String>) -> Result<(), OriginsError> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_string_pretty(m).map_err(|source| OriginsError::Parse {
            path: self.path.clone(),
            source,
        })?;
        std::fs::write(&tmp, body + "\n")
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|source| OriginsError::Write {
                path: self.path.clone(),
                source,
            })
    }

    fn update(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, String>) -> bool,
    ) -> Result<(), OriginsError> {
        let _g = UPDATE.lock().unwrap_or_else(|p| p.into_inner());
        let mut m = self.load()?;
        if f(&mut m) {
            self.save(&m)?;
        }
        Ok(())
    }

    /// Record `(clone UDID, origin name)` pairs; empty names are skipped.
    pub fn record<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), OriginsError> {
        let entries: Vec<(&str, &str)> = entries
            .into_iter()
            .filter(|(u, o)| !u.is_empty() && !o.is_empty())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        self.update(|m| {
            let mut changed = false;
            for (u, o) in entries {
                if m.get(u).map(String::as_str) != Some(o) {
                    m.insert(u.to_owned(), o.to_owned());
                    changed = true;
                }
            }
            changed
        })
    }

    /// Drop the entry of a removed clone.
    pub fn forget(&self, udid: &str) -> Result<(), OriginsError> {
        self.update(|m| m.remove(udid).is_some())
    }
}

impl Origins {
    /// Name the origin of clones whose snapshot or image is gone (their `parent` is empty).
    /// The file is advisory: a read failure is logged and the listing goes on.
    pub fn fill(&self, lus: &mut [LuInfo]) {
        if !lus.iter().any(|l| l.kind == "clone" && l.parent.is_empty()) {
            return;
        }
        match self.load() {
            Ok(m) => {
                for l in lus
                    .iter_mut()
                    .filter(|l| l.kind == "clone" && l.parent.is_empty())
                {
                    if let Some(o) = m.get(&l.udid) {
                        l.parent.clone_from(o);
                    }
                }
            }
            Err(e) => tracing::warn!("clone origins: {e}"),
        }
    }

    /// [`Origins::fill`] for `file stat`.
    pub fn fill_stat(&self, st: &mut FileStat) {
        if st.kind != "clone" || !st.parent.is_empty() {
            return;
        }
        match self.load() {
            Ok(m) => {
                if let Some(o) = m.get(&st.udid) {
                    st.parent.clone_from(o);
                }
            }
            Err(e) => tracing::warn!("clone origins: {e}"),
        }
    }

    /// Before the snapshot or image `name` is removed: record the clones made from it.
    pub fn keep_for(&self, pool: &Pool, name: &str) -> Result<(), OriginsError> {
        let clones: Vec<LuInfo> = pool
            .lu_list()
            .into_iter()
            .filter(|l| l.kind == "clone" && l.parent == name)
            .collect();
        self.record(clones.iter().map(|l| (l.udid.as_str(), l.parent.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_load_forget() {
        let d = tempfile::tempdir().unwrap();
        let o = Origins::new(d.path());
        assert!(o.load().unwrap().is_empty());
        o.record([("aa", "img@s1"), ("bb", ""), ("", "x")]).unwrap();
        o.record([("cc", "lu@s2")]).unwrap();
        let m = o.load().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["aa"], "img@s1");
        o.forget("aa").unwrap();
        assert_eq!(o.load().unwrap().keys().collect::<Vec<_>>(), ["cc"]);
        std::fs::write(d.path().join(ORIGINS_FILE), "[1]").unwrap();
        assert!(matches!(o.load(), Err(OriginsError::Parse { .. })));
    }
}
