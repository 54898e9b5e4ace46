//! Snapshot retention: `snapshot prune LU --keep N [--older-than D]` and the limit on the
//! automatic `LU@undo-TIME` snapshots rollback takes.
//!
//! Nothing here removes a snapshot a clone was made from, one that is held ([`crate::holds`])
//! or one a client has open: such snapshots are listed as kept, with the reason. The undo
//! limit (how many `LU@undo-*` snapshots each LU keeps after a rollback, default
//! [`DEFAULT_KEEP_UNDO`]) is a pool directory setting in `retention.json`
//! (`sspctl snapshot keep-undo K`).

use crate::admin::Attachments;
use crate::holds;
use crate::pool::{Pool, PoolError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name inside the pool directory.
pub const RETENTION_FILE: &str = "retention.json";
/// Undo snapshots each LU keeps when the pool directory sets nothing.
pub const DEFAULT_KEEP_UNDO: u32 = 3;

/// One snapshot's fate in a prune.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneEntry {
    pub name: String,
    /// When it was taken (RFC 3339, UTC).
    pub created: String,
    /// `keep`, `remove` (a dry run) or `removed`.
    pub action: String,
    /// Why it is kept (empty when it goes).
    pub reason: String,
    /// Blocks the removal gave back (0 unless removed).
    pub freed_blocks: u64,
}

/// What the planner knows of a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Candidate {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    /// Clones made from it.
    pub clones: Vec<String>,
    /// Its hold tags.
    pub holds: Vec<String>,
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Decide, for snapshots given oldest first: the `keep` newest stay; of the others, with
/// `older_than` (seconds), only those at least that old go; and never one with clones or holds.
pub fn plan(
    snaps: &[Candidate],
    keep: usize,
    older_than: Option<u64>,
    now: u64,
) -> Vec<PruneEntry> {
    let n = snaps.len();
    snaps
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let newest_rank = n - i; // 1 = the newest
            let reason = if newest_rank <= keep {
                format!("one of the {keep} newest")
            } else if let Some(age) = older_than.filter(|&a| now.saturating_sub(c.created) < a) {
                format!(
                    "newer than {}",
                    humantime::format_duration(std::time::Duration::from_secs(age))
                )
            } else if !c.clones.is_empty() {
                format!("clone {} was made from it", c.clones.join(", "))
            } else if !c.holds.is_empty() {
                format!("held: {}", c.holds.join(", "))
            } else {
                String::new()
            };
            PruneEntry {
                name: c.name.clone(),
                created: rfc3339(c.created),
                action: if reason.is_empty() { "remove" } else { "keep" }.into(),
                reason,
                freed_blocks: 0,
            }
        })
        .collect()
}

/// The snapshots of `base`, oldest first, with their clones and holds.
fn candidates(dir: &Path, pool: &Pool, base: &str) -> Result<Vec<(Candidate, String)>, PoolError> {
    let mut clones: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for v in pool.export_list() {
        if v.kind == "clone" && !v.parent.is_empty() {
            clones.entry(v.parent).or_default().push(v.name);
        }
    }
    pool.snapshot_times(base)?
        .into_iter()
        .map(|(s, created)| {
            let holds = holds::is_held(dir, &s.udid)?;
            Ok((
                Candidate {
                    clones: clones.remove(&s.name).unwrap_or_default(),
                    name: s.name,
                    created,
                    holds,
                },
                s.udid,
            ))
        })
        .collect()
}

/// Remove the planned snapshots (under the hold lock), skipping any a client has open.
fn carry_out(pool: &Pool, att: &dyn Attachments, plan: &mut [PruneEntry]) -> Result<(), PoolError> {
    for e in plan.iter_mut().filter(|e| e.action == "remove") {
        att.fence(&e.name);
        let clients = att.clients(&e.name);
        let r = if clients.is_empty() {
            pool.snapshot_remove(&e.name).map(Some)
        } else {
            Ok(None)
        };
        att.unfence(&e.name);
        match r? {
            Some(freed) => {
                e.action = "removed".into();
                e.freed_blocks = freed;
                tracing::info!(snapshot = %e.name, freed, "pruned");
            }
            None => {
                e.action = "keep".into();
                e.reason = format!(
                    "open by {} client(s): {}",
                    clients.len(),
                    clients.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// `snapshot prune`: see [`plan`]; with `dry_run` nothing is removed.
pub fn prune(
    dir: &Path,
    pool: &Pool,
    att: &dyn Attachments,
    base: &str,
    keep: u32,
    older_than: Option<u64>,
    dry_run: bool,
) -> Result<Vec<PruneEntry>, PoolError> {
    let l = pool.lu_get(base)?;
    if l.kind == "snapshot" {
        return Err(PoolError::Invalid(format!(
            "{base} is a snapshot: name its LU or image"
        )));
    }
    let _g = holds::guard();
    let cands: Vec<Candidate> = candidates(dir, pool, base)?
        .into_iter()
        .map(|c| c.0)
        .collect();
    let mut p = plan(&cands, keep as usize, older_than, now_secs());
    if !dry_run {
        carry_out(pool, att, &mut p)?;
    }
    Ok(p)
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_undo: Option<u32>,
}

fn settings_path(dir: &Path) -> PathBuf {
    dir.join(RETENTION_FILE)
}

fn load(dir: &Path) -> Result<Settings, PoolError> {
    let p = settings_path(dir);
    match std::fs::read_to_string(&p) {
        Ok(t) => serde_json::from_str(&t)
            .map_err(|e| PoolError::Config(format!("{} is not valid: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(PoolError::Config(format!(
            "cannot read {}: {e}",
            p.display()
        ))),
    }
}

/// How many undo snapshots each LU keeps after a rollback.
pub fn keep_undo(dir: &Path) -> Result<u32, PoolError> {
    Ok(load(dir)?.keep_undo.unwrap_or(DEFAULT_KEEP_UNDO))
}

/// Set how many undo snapshots each LU keeps (replaced atomically).
pub fn set_keep_undo(dir: &Path, k: u32) -> Result<(), PoolError> {
    let mut s = load(dir)?;
    s.keep_undo = Some(k);
    let p = settings_path(dir);
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_string_pretty(&s)
        .map_err(|e| PoolError::Internal(format!("retention settings: {e}")))?;
    std::fs::write(&tmp, body + "\n")
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &p))
        .map_err(|e| PoolError::Config(format!("cannot write {}: {e}", p.display())))
}

/// After a rollback of `base` that took `undo`: remove `undo` at once with `no_undo`, then
/// keep only the newest `keep_undo` (default: the pool directory's setting) `base@undo-*`
/// snapshots. Returns the undo snapshot still kept (empty if removed) and those pruned. Undo
/// snapshots with clones, holds or clients stay. Failures are logged: the rollback is done.
pub fn after_rollback(
    dir: &Path,
    pool: &Pool,
    att: &dyn Attachments,
    base: &str,
    undo: &str,
    no_undo: bool,
    keep_undo_arg: Option<u32>,
) -> (String, Vec<String>) {
    let mut kept = undo.to_owned();
    let mut pruned = Vec::new();
    let _g = holds::guard();
    if no_undo {
        match pool.snapshot_remove(undo) {
            Ok(_) => kept.clear(),
            Err(e) => tracing::warn!(snapshot = undo, "cannot remove the undo snapshot: {e}"),
        }
    }
    let r = (|| -> Result<(), PoolError> {
        let k = match keep_undo_arg {
            Some(k) => k,
            None => keep_undo(dir)?,
        };
        let prefix = format!("{base}@undo-");
        let cands: Vec<Candidate> = candidates(dir, pool, base)?
            .into_iter()
            .map(|c| c.0)
            .filter(|c| c.name.starts_with(&prefix))
            .collect();
        let mut p = plan(&cands, k as usize, None, now_secs());
        carry_out(pool, att, &mut p)?;
        for e in p {
            if e.action == "removed" {
                if e.name == kept {
                    kept.clear();
                } else {
                    pruned.push(e.name);
                }
            } else if !e.reason.starts_with("one of") {
                tracing::info!(snapshot = %e.name, reason = %e.reason, "undo snapshot kept");
            }
        }
        Ok(())
    })();
    if let Err(e) = r {
        tracing::warn!(lu = base, "pruning undo snapshots: {e}");
    }
    (kept, pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, created: u64) -> Candidate {
        Candidate {
            name: name.into(),
            created,
            ..Candidate::default()
        }
    }

    #[test]
    fn plan_keeps_the_newest_the_young_and_the_needed() {
        let mut s = vec![
            c("a@1", 100),
            c("a@2", 200),
            c("a@3", 300),
            c("a@4", 400),
            c("a@5", 500),
        ];
        s[0].clones = vec!["vm".into()];
        s[1].holds = vec!["backup".into(), "send".into()];
        let p = plan(&s, 1, None, 1000);
        let acts: Vec<(&str, &str)> = p
            .iter()
            .map(|e| (e.action.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            acts,
            [
                ("keep", "clone vm was made from it"),
                ("keep", "held: backup, send"),
                ("remove", ""),
                ("remove", ""),
                ("keep", "one of the 1 newest"),
            ]
        );
        // Only those at least 650 s old go.
        let p = plan(&s, 0, Some(650), 1000);
        let acts: Vec<&str> = p.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(acts, ["keep", "keep", "remove", "keep", "keep"]);
        assert_eq!(p[3].reason, "newer than 10m 50s");
        assert_eq!(p[0].created, "1970-01-01T00:01:40Z");
        // keep beyond the count keeps all.
        assert!(plan(&s, 9, None, 1000).iter().all(|e| e.action == "keep"));
    }
}
