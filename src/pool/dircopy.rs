//! Keeping the pool directory's configuration on the PVs (`COMPAT_DIRCOPY`, FORMAT.md §3.10):
//! the files only the directory holds ([`COPIED_FILES`]: LU maps, clone origins, alerts) are
//! written to the two record slots below every PV's data area whenever they change, so
//! `sspctl pool import` can rebuild the directory from the PVs alone.
//!
//! The slots are outside the log: a record is written whole to the slot of its generation on
//! every PV that works, then synced; the older slot stays valid until the next record, so a
//! torn write leaves the previous record (FORMAT.md §3.10). Writes run under the pool lock,
//! their syncs after it is released.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::Pool;
use crate::dev::BlockDev;
use crate::format::dircopy::{slot_offsets, DirCopy, FLAG_EXPORTED, HEADER_BYTES};
use crate::format::superblock::Superblock;
use crate::format::COMPAT_DIRCOPY;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The pool directory's files copied to the PVs (the configuration not held in pool metadata;
/// `ssp-pool.json` is rebuilt from the PVs named at import, `scrub.state` is progress only).
pub const COPIED_FILES: &[&str] = &[
    crate::access::MAPS_FILE,
    crate::origins::ORIGINS_FILE,
    crate::alerts::ALERTS_FILE,
    crate::holds::HOLDS_FILE,
    crate::retention::RETENTION_FILE,
];

/// The newest valid record on `dev` (whose superblock is `sb`), if any.
pub fn read_record(dev: &dyn BlockDev, sb: &Superblock) -> Option<DirCopy> {
    let slots = slot_offsets(sb.journal_offset, sb.journal_blocks, sb.data_offset)?;
    let mut best: Option<DirCopy> = None;
    for off in slots {
        let mut head = vec![0u8; HEADER_BYTES];
        if dev.read_at(&mut head, off).is_err() {
            continue;
        }
        let Ok(len) = DirCopy::payload_len(&head) else {
            continue;
        };
        let mut buf = vec![0u8; HEADER_BYTES + len];
        if dev.read_at(&mut buf, off).is_err() {
            continue;
        }
        match DirCopy::decode(&buf, &sb.pool_id) {
            Ok(d) if best.as_ref().is_none_or(|b| d.generation > b.generation) => best = Some(d),
            Ok(_) => {}
            Err(e) => tracing::debug!("{}: directory copy at {off}: {e}", dev.name()),
        }
    }
    best
}

/// The newest record over several PVs of one pool.
pub fn newest(pvs: &[(Arc<dyn BlockDev>, Superblock)]) -> Option<DirCopy> {
    pvs.iter()
        .filter_map(|(d, sb)| read_record(d.as_ref(), sb))
        .max_by_key(|d| d.generation)
}

impl Pool {
    /// The newest copy of the pool directory on the PVs, if one was ever written.
    pub fn dircopy_load(&self) -> Option<DirCopy> {
        let g = self.shared();
        g.pvs
            .pvs
            .iter()
            .filter(|p| p.failed.is_none())
            .filter_map(|p| read_record(p.dev.as_ref(), &p.sb))
            .max_by_key(|d| d.generation)
    }

    /// Write `files` (and the exported flag) as the next record to every working PV. Sets
    /// `COMPAT_DIRCOPY` in the superblocks first if this pool never had a record.
    pub fn dircopy_store(&self, files: Vec<(String, Vec<u8>)>, exported: bool) -> Result<()> {
        let prev = self.dircopy_load().map_or(0, |d| d.generation);
        let mut g = self.lock();
        if g.opts.read_only {
            return Err(PoolError::ReadOnly);
        }
        let mut targets = Vec::new();
        for (i, p) in g.pvs.pvs.iter().enumerate() {
            if p.failed.is_some() {
                continue;
            }
            let slots = slot_offsets(p.sb.journal_offset, p.sb.journal_blocks, p.sb.data_offset)
                .ok_or_else(|| {
                    PoolError::Config(format!(
                        "PV {} has no room for a copy of the pool directory between its \
                         journal and its data area",
                        p.dev.name()
                    ))
                })?;
            targets.push((i as u16, slots));
        }
        let rec = DirCopy {
            generation: prev + 1,
            flags: if exported { FLAG_EXPORTED } else { 0 },
            files,
        };
        let bytes = rec
            .encode(&g.pool_id)
            .map_err(|e| PoolError::Invalid(format!("the pool directory's files: {e}")))?;
        if g.pvs.pvs.iter().any(|p| p.sb.compat & COMPAT_DIRCOPY == 0) {
            g.rewrite_superblocks(&|sb| sb.compat |= COMPAT_DIRCOPY)?;
        }
        let slot = (rec.generation % 2) as usize;
        let mut devs = Vec::with_capacity(targets.len());
        for (pv, slots) in &targets {
            let off = slots.get(slot).copied().unwrap_or(0);
            g.pvs.write(*pv, off, &bytes)?;
            devs.push(g.pvs.pv(*pv)?.dev.clone());
        }
        // Synced without the pool lock: clients' I/O does not wait for these syncs.
        drop(g);
        for d in devs {
            d.sync().map_err(|e| PoolError::Io {
                dev: d.name().to_owned(),
                offset: 0,
                source: e,
            })?;
        }
        Ok(())
    }
}

/// The copied files of the pool directory `dir` as they are now (absent files are left out).
pub fn dir_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in COPIED_FILES {
        match std::fs::read(dir.join(name)) {
            Ok(b) => out.push(((*name).to_owned(), b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PoolError::Config(format!(
                    "cannot read {}: {e}",
                    dir.join(name).display()
                )))
            }
        }
    }
    Ok(out)
}

/// Bring the PVs' copy up to date with the directory: write a record when the files (or the
/// exported flag) differ from the newest one. A pool that never had any of the files and is
/// not being exported gets no record (and keeps its superblocks as they are).
pub fn sync_dir(pool: &Pool, dir: &Path, exported: bool) -> Result<bool> {
    let files = dir_files(dir)?;
    let same = match pool.dircopy_load() {
        Some(d) => d.files == files && d.exported() == exported,
        None => files.is_empty() && !exported,
    };
    if same {
        return Ok(false);
    }
    pool.dircopy_store(files, exported)?;
    Ok(true)
}

/// sspd's directory-copy thread: [`sync_dir`] at start and every second (a no-op while nothing
/// changed), and once more when the handle is dropped.
pub fn spawn_sync(pool: Arc<Pool>, dir: std::path::PathBuf) -> std::io::Result<SyncHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::Builder::new()
        .name("dircopy".into())
        .spawn(move || {
            let mut warned = false;
            loop {
                let done = s.load(Ordering::Acquire);
                match sync_dir(&pool, &dir, false) {
                    Ok(_) => warned = false,
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!("cannot copy the pool directory to the PVs: {e}");
                    }
                    Err(_) => {}
                }
                if done {
                    break;
                }
                std::thread::park_timeout(std::time::Duration::from_secs(1));
            }
        })?;
    Ok(SyncHandle {
        stop,
        thread: Some(t),
    })
}

/// Stops the directory-copy thread (after a last sync) when dropped.
pub struct SyncHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}
