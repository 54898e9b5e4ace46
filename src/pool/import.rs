//! `sspctl pool import` and `pool export`: rebuild a pool directory from the PVs alone, and
//! close a pool cleanly so another host (or another directory) can import it — SSP's
//! `viosbr -recoverdb`. The PVs name the pool (superblocks, checkpoint); the directory-only
//! files come from the copy on the PVs ([`super::dircopy`]).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::dir::{lock, open_dev, write_config, Config, PoolDir, CONFIG_FILE};
use super::dircopy::{newest, sync_dir};
use super::error::{PoolError, Result};
use super::{describe_pv, read_superblock, Options};
use crate::dev::BlockDev;
use crate::format::superblock::Superblock;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where `pool export` moves the directory's configuration: the directory no longer opens.
pub const EXPORTED_CONFIG: &str = "ssp-pool.json.exported";

/// What an import found and restored.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    pub name: String,
    pub pool_id: String,
    /// The PVs in pool order.
    pub pvs: Vec<PathBuf>,
    /// Directory files restored from the copy on the PVs.
    pub restored_files: Vec<String>,
    /// The pool had been exported cleanly (else `--force` was given).
    pub exported: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl PoolDir {
    /// Rebuild the pool directory `dir` from `pvs` (every PV of the pool, any order) and open
    /// the pool. Refused, with nothing written, when `dir` already holds a pool, a path is not
    /// a PV of an ssp pool, the PVs belong to different pools, or the pool was not exported
    /// cleanly and `force` is not set (it may still be in use on another host).
    pub fn import(
        dir: &Path,
        pvs: &[PathBuf],
        force: bool,
        opts: Options,
    ) -> Result<(PoolDir, ImportReport)> {
        if pvs.is_empty() {
            return Err(PoolError::Invalid(
                "give every PV of the pool with --pv PATH".into(),
            ));
        }
        if PoolDir::exists(dir) {
            return Err(PoolError::Exists(format!(
                "{} already holds a pool; import into a new directory",
                dir.display()
            )));
        }
        let mut found: Vec<(PathBuf, Arc<dyn BlockDev>, Superblock)> = Vec::new();
        for p in pvs {
            let abs = std::fs::canonicalize(p)
                .map_err(|e| PoolError::Config(format!("cannot open PV {}: {e}", p.display())))?;
            if found.iter().any(|(q, _, _)| *q == abs) {
                return Err(PoolError::Invalid(format!(
                    "PV {} is given twice",
                    p.display()
                )));
            }
            let dev = open_dev(&abs, &opts.io)?;
            let sb = read_superblock(dev.as_ref()).map_err(|e| {
                PoolError::Config(format!(
                    "{} is not a PV of an ssp pool (no valid superblock: {e})",
                    p.display()
                ))
            })?;
            if let Some((q, d0, sb0)) = found.first() {
                if sb.pool_id != sb0.pool_id {
                    let this = describe_pv(dev.as_ref()).unwrap_or_default();
                    let first = describe_pv(d0.as_ref()).unwrap_or_default();
                    return Err(PoolError::Invalid(format!(
                        "{} belongs to another pool than {}: it is {this}; {} is {first}",
                        p.display(),
                        q.display(),
                        q.display()
                    )));
                }
            }
            if let Some((q, _, _)) = found.iter().find(|(_, _, s)| s.pv_index == sb.pv_index) {
                return Err(PoolError::Invalid(format!(
                    "{} and {} are both PV {} of the pool (one is a copy of the other)",
                    q.display(),
                    p.display(),
                    sb.pv_index
                )));
            }
            found.push((abs, dev, sb));
        }
        found.sort_by_key(|(_, _, sb)| sb.pv_index);
        let (name, pool_id) = match found.first() {
            Some((_, _, sb)) => (sb.pool_name.clone(), hex(&sb.pool_id)),
            None => return Err(PoolError::Invalid("no PV given".into())),
        };
        let pairs: Vec<(Arc<dyn BlockDev>, Superblock)> = found
            .iter()
            .map(|(_, d, sb)| (d.clone(), sb.clone()))
            .collect();
        let rec = newest(&pairs);
        let exported = rec.as_ref().is_some_and(|r| r.exported());
        if !exported && !force {
            let last = found
                .first()
                .and_then(|(_, d, _)| describe_pv(d.as_ref()))
                .unwrap_or_default();
            let why = if rec.is_some() {
                "was not exported (`sspctl pool export`)"
            } else {
                "has no record of an export on its PVs"
            };
            return Err(PoolError::InUse(format!(
                "pool {name} (id {pool_id}) {why}: it may still be in use on another host \
                 ({last}); export it there, or give --force if that host is gone"
            )));
        }
        let paths: Vec<PathBuf> = found.iter().map(|(p, _, _)| p.clone()).collect();
        // The PVs are opened again (and taken) by the pool.
        drop(pairs);
        drop(found);
        std::fs::create_dir_all(dir)
            .map_err(|e| PoolError::Config(format!("cannot create {}: {e}", dir.display())))?;
        let restored = {
            let _l = lock(dir)?;
            let mut restored = Vec::new();
            for (f, bytes) in rec.iter().flat_map(|r| r.files.iter()) {
                let tmp = dir.join(format!("{f}.tmp"));
                std::fs::write(&tmp, bytes)
                    .and_then(|_| std::fs::rename(&tmp, dir.join(f)))
                    .map_err(|e| {
                        PoolError::Config(format!("cannot write {}: {e}", dir.join(f).display()))
                    })?;
                restored.push(f.clone());
            }
            write_config(
                dir,
                &Config {
                    format: 1,
                    name: name.clone(),
                    pvs: paths.clone(),
                },
            )?;
            restored
        };
        // A pool that does not open (say, a PV was left out) leaves the directory as it was.
        let undo = |e: PoolError| {
            let _ = std::fs::remove_file(dir.join(CONFIG_FILE));
            for f in &restored {
                let _ = std::fs::remove_file(dir.join(f));
            }
            e
        };
        let pd = PoolDir::open(dir, opts).map_err(undo)?;
        // The pool is this directory's now: the next record says so (not exported).
        if let Err(e) = sync_dir(&pd.pool, dir, false) {
            tracing::warn!("cannot update the pool directory's copy on the PVs: {e}");
        }
        Ok((
            pd,
            ImportReport {
                name,
                pool_id,
                pvs: paths,
                restored_files: restored,
                exported,
            },
        ))
    }

    /// Close the pool cleanly for another host to import: the copy on the PVs is brought up to
    /// date and marked exported, the pool closed (checkpointed), and the directory's
    /// configuration renamed to [`EXPORTED_CONFIG`] so this directory no longer opens it.
    pub fn export(self) -> Result<()> {
        let dir = self.dir.clone();
        sync_dir(&self.pool, &dir, true)?;
        let (pool, lock) = self.into_shared();
        let pool = Arc::try_unwrap(pool)
            .map_err(|_| PoolError::Internal("the pool is still shared".into()))?;
        pool.close()?;
        std::fs::rename(dir.join(CONFIG_FILE), dir.join(EXPORTED_CONFIG)).map_err(|e| {
            PoolError::Config(format!(
                "the pool is exported but {} could not be renamed: {e}",
                dir.join(CONFIG_FILE).display()
            ))
        })?;
        drop(lock);
        Ok(())
    }
}
