//! The log-structured storage pool: PVs, thin LUs, journal, checkpoints, cleaner and check.
//!
//! ```text
//!   LU block ──map tree (per volume, COW, VBA-addressed nodes)──▶ data VBA
//!   VBA ──VBA table (pba, crc32c, refcount)──▶ pool block ──segment──▶ PV + offset
//! ```
//! Every change is journaled before it is applied in memory; a checkpoint writes the dirty
//! metadata copy-on-write and commits it by writing a checkpoint slot on every PV. Opening a pool
//! replays only the journal written since the last checkpoint.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

pub mod activation;
mod check;
pub mod checkpointer;
pub mod ckpt;
mod clean;
pub mod commit;
mod depth;
pub mod dir;
pub mod dircopy;
pub mod error;
mod failgrp;
mod gc;
pub mod import;
mod inner;
mod io;
mod iomode;
mod journal;
mod maps;
mod mirror;
mod open;
mod ops;
pub mod outbound;
mod provision;
mod ptree;
mod pvcopy;
pub mod pvs;
pub mod receive;
pub mod reclaim;
mod resident;
mod resync;
pub mod scrub;
pub mod seal;
mod share;
mod snapshots;
mod snaptimes;
pub mod throttle;

pub use check::CheckReport;
pub use error::{PoolError, Result};
pub use failgrp::{FailGroupInfo, PvListEntry, ScrubReport};
pub use gc::GcStats;
pub use inner::Counters;
pub use io::is_zero_block;
pub use maps::MapKind;
pub use open::{describe_pv, local_host_id, read_superblock, CreateOptions};
pub use provision::Provision;
pub use snapshots::{
    kind_name, split_snapshot, DiffExtent, FileStat, LayoutExtent, Placement, CAPTURE_PREFIX,
};

use crate::dev::BlockDev;
use crate::format::journal::Record;
use crate::format::node::{VOL_IMAGE, VOL_LU, VOL_SNAPSHOT};
use crate::format::{BLOCK_U64, SEG_BLOCKS};
use crate::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use inner::Inner;
use rand::RngCore;
use std::sync::Arc;

/// Tunables of an open pool.
#[derive(Clone, Debug)]
pub struct Options {
    /// Clean block-map nodes kept in memory (4 KiB each).
    pub map_cache_nodes: usize,
    /// Clean VBA-table pages kept in memory (4 KiB each).
    pub vba_cache_pages: usize,
    /// Dirty nodes allowed before a checkpoint is forced.
    pub dirty_limit: usize,
    /// Data blocks written between checkpoints (bounds the journal replayed after a crash).
    pub checkpoint_writes: u64,
    /// Open without writing anything (no replay commit, no changes).
    pub read_only: bool,
    /// Writer host id stamped on metadata (FORMAT.md §7.3; this host's id by default).
    pub host_id: u32,
    /// Replay the last writer's journal only up to this seal (FORMAT.md §7.3); `None`: to the
    /// end of its log.
    pub replay_to: Option<crate::format::Seal>,
    /// How PVs are opened: I/O engine and cache mode.
    pub io: crate::dev::IoConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            map_cache_nodes: 16384,
            vba_cache_pages: 16384,
            dirty_limit: 8192,
            checkpoint_writes: 262_144,
            read_only: false,
            host_id: open::local_host_id(),
            replay_to: None,
            io: crate::dev::IoConfig::default(),
        }
    }
}

/// One LU as listed by `lu list`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct LuInfo {
    pub name: String,
    pub id: u64,
    pub size: u64,
    pub size_mb: u64,
    pub unused_mb: u64,
    pub udid: String,
    pub mapped_blocks: u64,
    pub owned_blocks: u64,
    /// Clients the LU is mapped to (empty: every client). Filled in by the admin layer.
    #[serde(default)]
    pub maps: Vec<String>,
    /// "lu", "clone", "snapshot" or "image".
    #[serde(default)]
    pub kind: String,
    /// A clone's snapshot or image, a snapshot's LU or image; empty if none.
    #[serde(default)]
    pub parent: String,
    /// "THIN" or "THICK" (SSP's PROVISION_TYPE).
    #[serde(default)]
    pub provision: String,
    /// Bytes the pool keeps reserved for this LU (thick: its size less what it owns alone).
    #[serde(default)]
    pub reserved_bytes: u64,
}

/// One PV as shown by `pool status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PvInfo {
    pub index: u32,
    pub name: String,
    pub size: u64,
    pub failure_group: String,
    pub segments: u64,
    pub udid: String,
}

/// Pool-wide figures.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub pool_id: String,
    pub pvs: Vec<PvInfo>,
    pub block_size: u64,
    pub segment_size: u64,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub provisioned_bytes: u64,
    pub overcommit_bytes: u64,
    /// Space reserved for thick LUs and not yet written by them.
    #[serde(default)]
    pub reserved_bytes: u64,
    pub lus: u64,
    #[serde(default)]
    pub snapshots: u64,
    #[serde(default)]
    pub images: u64,
    pub mirror_state: String,
    /// Why the pool is degraded (empty otherwise).
    #[serde(default)]
    pub mirror_reason: String,
    /// Bytes resync still has to copy between the failure groups.
    #[serde(default)]
    pub resync_bytes_left: u64,
    /// Bytes resync copied since the pool was opened.
    #[serde(default)]
    pub resync_bytes_copied: u64,
    /// Volumes removed whose space background reclaim is still giving back, and the bytes of
    /// data they still map (free space grows as reclaim proceeds).
    #[serde(default)]
    pub removing_volumes: u64,
    #[serde(default)]
    pub removing_bytes: u64,
    /// Bad copies found / repaired (reads, scrub) since the pool was opened.
    #[serde(default)]
    pub scrub_errors_found: u64,
    #[serde(default)]
    pub scrub_errors_repaired: u64,
    /// Failure groups and their sizes; usable capacity is the smaller group's.
    #[serde(default)]
    pub failure_groups: Vec<FailGroupInfo>,
    pub checkpoint_generation: u64,
    /// Who writes the pool now (or, opened read-only, last wrote it) and its next journal block.
    #[serde(default)]
    pub writer: seal::StampInfo,
    /// The seal the writer opened at: where the log it replayed ended (FORMAT.md §7.3).
    #[serde(default)]
    pub seal: Option<seal::SealInfo>,
    /// Opened read-only: where the last writer's journal ends now.
    #[serde(default)]
    pub log_end: Option<seal::SealInfo>,
    pub counters: Counters,
    pub write_amplification: f64,
    /// The PVs' I/O engine (`uring`, `sync`) and cache mode (`writeback`, `none`).
    #[serde(default)]
    pub io_engine: String,
    #[serde(default)]
    pub cache: String,
}

/// An open pool. All methods may be called from several threads.
///
/// Everything that changes the pool takes `inner` exclusively ([`Pool::lock`]); reads plan
/// under its shared side ([`Pool::shared`]) against resident metadata, so reads of the same and
/// of different LUs plan in parallel and a read never waits for another read (only a read whose
/// map node or VBA page is not cached takes the exclusive side, to load it).
pub struct Pool {
    inner: RwLock<Inner>,
    /// Shared with `Inner`: readers doing I/O outside the pool lock hold it for reading.
    reuse: Arc<RwLock<()>>,
    /// Flushes share sync rounds, run outside the pool lock.
    commit: commit::GroupCommit,
    /// The pool's scrub (background or foreground) and its state.
    scrubber: scrub::Scrubber,
    /// Rates of background maintenance.
    rates: throttle::Rates,
    /// A background thread reclaims the space of removed volumes ([`Pool::spawn_cleaner`]);
    /// without one, removals reclaim it in the caller's thread, slice by slice.
    reclaimer: std::sync::atomic::AtomicBool,
    /// Cancellation of long copies (capture, single-copy `pv replace`), see `pvcopy.rs`.
    copies: pvcopy::Copies,
    /// Shared with `Inner`: data runs writers write after releasing the lock.
    outbound: Arc<outbound::Outbound>,
    /// The pool's id, for checksums computed before taking the lock.
    pool_id: [u8; 16],
    /// The background checkpoint between capture and durable (see `checkpointer.rs`).
    bg: crate::sync::Mutex<Option<Arc<checkpointer::Running>>>,
}

impl commit::RoundHost for Pool {
    fn begin_round(&self) -> Result<commit::RoundPlan> {
        self.lock_for_write().begin_sync_round()
    }
    fn end_round(
        &self,
        plan: commit::RoundPlan,
        results: Vec<(u16, std::io::Result<()>)>,
    ) -> Result<()> {
        self.lock_for_write().end_sync_round(plan, results)
    }
    fn poison(&self, why: &str) {
        self.lock_for_write()
            .poisoned
            .get_or_insert_with(|| format!("a sync round failed: {why}"));
    }
}

/// The record of volume `id`, which `name` resolved to under the same lock.
fn vol_rec<'a>(g: &'a Inner, id: u64, name: &str) -> Result<&'a crate::format::node::VolRecord> {
    g.vols
        .get(&id)
        .ok_or_else(|| PoolError::Internal(format!("{name} names volume {id}, which is missing")))
}

/// Block runs (first lba, blocks, kind) as byte runs clipped to `[offset, offset+len)`.
fn clip_runs(runs: Vec<(u64, u64, MapKind)>, offset: u64, len: u64) -> Vec<(u64, u64, MapKind)> {
    let end = offset + len;
    runs.into_iter()
        .map(|(l, n, k)| {
            let s = (l * BLOCK_U64).max(offset);
            let e = ((l + n) * BLOCK_U64).min(end);
            (s, e - s, k)
        })
        .collect()
}

/// Byte runs by kind as (start, length, mapped), adjacent runs of the same answer merged.
fn data_extents(runs: Vec<(u64, u64, MapKind)>) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for (s, n, k) in runs {
        let m = k == MapKind::Data;
        match out.last_mut() {
            Some(l) if l.2 == m && l.0 + l.1 == s => l.1 += n,
            _ => out.push((s, n, m)),
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Check an LU name: printable, no '@' or '/', at most 128 bytes.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 || name.starts_with('.') {
        return Err(PoolError::Invalid(format!(
            "a name must be 1 to 128 bytes long and not start with '.': {name:?}"
        )));
    }
    if name
        .chars()
        .any(|c| c == '@' || c == '/' || c.is_control() || c.is_whitespace())
    {
        return Err(PoolError::Invalid(format!(
            "LU name {name:?} may not contain '@', '/', spaces or control characters"
        )));
    }
    Ok(())
}

/// Largest LU: the map tree and VBA space are far larger; this keeps sizes sane (1 PiB).
pub const MAX_LU_SIZE: u64 = 1 << 50;

impl Pool {
    /// Create a new pool on `devs` (their current content is overwritten).
    pub fn create(
        devs: Vec<Arc<dyn BlockDev>>,
        copts: &CreateOptions,
        opts: Options,
    ) -> Result<Pool> {
        let inner = open::create(devs, copts, opts)?;
        Ok(Pool {
            reuse: inner.reuse.clone(),
            outbound: inner.outbound.clone(),
            pool_id: inner.pool_id,
            bg: Default::default(),
            inner: RwLock::new(inner),
            commit: commit::GroupCommit::default(),
            scrubber: Default::default(),
            rates: Default::default(),
            reclaimer: Default::default(),
            copies: Default::default(),
        })
    }

    /// Open an existing pool from all of its PVs (any order).
    pub fn open(devs: Vec<Arc<dyn BlockDev>>, opts: Options) -> Result<Pool> {
        let inner = open::open(devs, opts)?;
        Ok(Pool {
            reuse: inner.reuse.clone(),
            outbound: inner.outbound.clone(),
            pool_id: inner.pool_id,
            bg: Default::default(),
            inner: RwLock::new(inner),
            commit: commit::GroupCommit::default(),
            scrubber: Default::default(),
            rates: Default::default(),
            reclaimer: Default::default(),
            copies: Default::default(),
        })
    }

    /// The pool's exclusive lock: every change, and reads that must load metadata. Its holder
    /// sees every data run on the PVs or in a stream buffer: flights are settled first
    /// (`outbound.rs`; a failure is latched as the pool's poison or left for the next settle).
    ///
    /// A background checkpoint making itself durable is waited for first, without the lock
    /// (writers go on meanwhile), then committed in memory: the holder sees the pool as after
    /// a checkpoint taken under the lock.
    fn lock(&self) -> RwLockWriteGuard<'_, Inner> {
        loop {
            let running = self.background().clone();
            if let Some(r) = running {
                r.wait_finished();
            }
            let mut g = self.lock_for_write();
            if g.bg_ckpt.as_ref().is_some_and(|(_, r)| !r.finished()) {
                // Another one started in between: wait for it outside the lock too.
                drop(g);
                continue;
            }
            if let Err(e) = g.finish_background_checkpoint() {
                tracing::warn!("{e}");
            }
            if !g.opts.read_only && !self.outbound.is_empty() {
                if let Err(e) = g.settle_flights() {
                    tracing::warn!("writing out data runs: {e}");
                }
            }
            return g;
        }
    }

    /// The background checkpoint making itself durable, if any.
    fn background(&self) -> crate::sync::MutexGuard<'_, Option<Arc<checkpointer::Running>>> {
        self.bg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exclusive lock for the data path: flights other writers are still writing stay in
    /// flight (their blocks read from memory until done).
    fn lock_for_write(&self) -> RwLockWriteGuard<'_, Inner> {
        // A panic while holding the lock leaves state unknown: refuse to go on.
        match self.inner.write() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                g.poisoned
                    .get_or_insert_with(|| "a thread panicked inside the pool".into());
                g
            }
        }
    }

    /// The pool lock's shared side: reads plan under it, in parallel with each other. Nothing
    /// changes while it is held (every change holds [`Pool::lock`]), so what a reader sees under
    /// it is one consistent state. A panic under the exclusive side is latched in `poisoned` by
    /// the next [`Pool::lock`]; reads go on as they did before it.
    fn shared(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lu_info(v: &crate::format::node::VolRecord) -> LuInfo {
        let used = v.mapped_blocks * BLOCK_U64;
        LuInfo {
            name: v.name.clone(),
            id: v.id,
            size: v.size,
            size_mb: v.size >> 20,
            unused_mb: v.size.saturating_sub(used) >> 20,
            udid: hex(&v.udid),
            mapped_blocks: v.mapped_blocks,
            owned_blocks: v.owned_blocks,
            provision: provision::Provision::of(v).name().into(),
            reserved_bytes: provision::reserved_blocks(v) * BLOCK_U64,
            maps: Vec::new(),
            kind: kind_name(v).into(),
            parent: String::new(),
        }
    }

    /// Create a thin LU of `size` bytes (a multiple of 4096 is not required; I/O past the size
    /// is refused).
    pub fn lu_create(&self, name: &str, size: u64) -> Result<LuInfo> {
        validate_name(name)?;
        if size == 0 || size > MAX_LU_SIZE {
            return Err(PoolError::Invalid(format!(
                "LU size must be between 1 byte and 1 PiB, not {size}"
            )));
        }
        let mut g = self.lock();
        if g.names.contains_key(name) {
            return Err(PoolError::Exists(format!(
                "an LU named {name} already exists"
            )));
        }
        let id = g.next_volume_id;
        let mut udid = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut udid);
        g.log_and_apply(Record::VolCreate {
            id,
            kind: VOL_LU,
            size,
            udid,
            name: name.to_owned(),
        })?;
        g.flush()?;
        let v = g
            .vols
            .get(&id)
            .cloned()
            .ok_or_else(|| PoolError::NotFound(name.into()))?;
        Ok(Self::lu_info(&v))
    }

    /// LUs and clones (snapshots and images have their own lists).
    pub fn lu_list(&self) -> Vec<LuInfo> {
        let g = self.lock();
        let mut v: Vec<LuInfo> = g
            .vols
            .values()
            .filter(|v| v.kind == VOL_LU && !reclaim::is_hidden(&v.name))
            .map(|v| Self::vol_info(&g, v))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Any volume by name: LU, clone, snapshot (`LU@SNAP`) or client image.
    pub fn lu_get(&self, name: &str) -> Result<LuInfo> {
        let g = self.lock();
        let id = *g
            .names
            .get(name)
            .ok_or_else(|| PoolError::NotFound(name.into()))?;
        Ok(Self::vol_info(&g, vol_rec(&g, id, name)?))
    }

    /// Size in bytes of the volume with this id (cheap: for the data path).
    pub fn lu_size(&self, vol: u64) -> Result<u64> {
        self.shared().vol_size(vol)
    }

    /// [`Pool::lu_size`] if the pool lock's shared side is free now (`None`: it would wait).
    pub fn try_lu_size(&self, vol: u64) -> Option<Result<u64>> {
        match self.inner.try_read() {
            Ok(g) => Some(g.vol_size(vol)),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner().vol_size(vol)),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Volume id of an LU, for the data path.
    pub fn lu_id(&self, name: &str) -> Result<u64> {
        self.shared()
            .names
            .get(name)
            .copied()
            .ok_or_else(|| PoolError::NotFound(name.into()))
    }

    pub fn lu_resize(&self, name: &str, size: u64) -> Result<LuInfo> {
        if size == 0 || size > MAX_LU_SIZE {
            return Err(PoolError::Invalid(format!(
                "LU size must be between 1 byte and 1 PiB, not {size}"
            )));
        }
        let mut g = self.lock();
        let id = *g
            .names
            .get(name)
            .ok_or_else(|| PoolError::NotFound(name.into()))?;
        g.check_vol_writable(id)?;
        g.ensure_resize_reservable(id, size, name)?;
        g.log_and_apply(Record::VolResize { id, size })?;
        g.flush()?;
        Ok(Self::lu_info(vol_rec(&g, id, name)?))
    }

    /// Remove an LU or clone (its snapshots first). Returns the blocks freed.
    pub fn lu_remove(&self, name: &str) -> Result<u64> {
        let mut g = self.lock();
        let id = *g
            .names
            .get(name)
            .ok_or_else(|| PoolError::NotFound(name.into()))?;
        let v = vol_rec(&g, id, name)?.clone();
        match v.kind {
            VOL_LU => {}
            VOL_SNAPSHOT => {
                return Err(PoolError::Invalid(format!(
                    "{name} is a snapshot: use snapshot remove"
                )))
            }
            _ => {
                return Err(PoolError::Invalid(format!(
                    "{name} is a client image: use image remove"
                )))
            }
        }
        Self::refuse_if_snapshots(&g, &v)?;
        let owned = g.begin_remove(id)?;
        g.flush()?;
        drop(g);
        self.reclaim_unless_background()?;
        Ok(owned)
    }

    /// Read; several readers plan in parallel under the pool lock's shared side and do their I/O
    /// outside the lock.
    ///
    /// Old-or-new: writers change the block maps, the VBA table and the stream buffers only
    /// under the exclusive side, so a plan made under either side sees, for every block, the
    /// state before or after each write, trim or snapshot, never a mix of a map entry from one
    /// and a VBA entry from another. The plan names physical blocks (and copies blocks still in
    /// a stream buffer while the lock is held); those blocks are not overwritten until their
    /// segment is reused, which a checkpoint allows only after taking `reuse` for writing, and
    /// the reader takes `reuse` for reading before it lets the pool lock go.
    pub fn read(&self, vol: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        {
            let g = self.shared();
            if let Some(plan) = g.plan_read_resident(vol, offset, buf)? {
                // No deadlock: `reuse` is taken for writing only under the exclusive side,
                // which cannot be held while this thread holds the shared side.
                let _reading = self.reuse.read().unwrap_or_else(|p| p.into_inner());
                drop(g);
                return plan.execute(offset, buf);
            }
        }
        // Metadata to load: plan (and cache it) under the exclusive side.
        let mut g = self.lock();
        let plan = g.plan_read(vol, offset, buf);
        g.trim_caches();
        let plan = plan?;
        // Taken before the pool lock is released: no segment this plan reads from can be
        // reused until the I/O below is done (a checkpoint waits for readers before it hands
        // freed segments to the allocator).
        let _reading = self.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(g);
        plan.execute(offset, buf)
    }

    /// [`Pool::read`] if it needs no wait: not for the pool lock (a writer holds or wants the
    /// exclusive side), not to load metadata, not for a device ([`BlockDev::try_read_at`]).
    /// `Ok(false)`: it would wait, and `buf` may hold anything; the caller reads with
    /// [`Pool::read`] where waiting is fine (the server: on a blocking thread, not on the
    /// connection's task).
    pub fn try_read(&self, vol: u64, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let g = match self.inner.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
        };
        let Some(plan) = g.plan_read_resident(vol, offset, buf)? else {
            return Ok(false);
        };
        // As in `read`: no segment of the plan is reused before its I/O is done.
        let _reading = self.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(g);
        plan.try_execute(offset, buf)
    }

    /// Write; with `fua` the data is durable when this returns.
    pub fn write(&self, vol: u64, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        // Checksums of the whole blocks are computed before taking the lock.
        let sums = io::block_sums(&self.pool_id, offset, data);
        self.on_data_path(|g| g.write_with(vol, offset, data, Some(&sums)))?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Run a data-path change under the exclusive lock, then write the data runs it filled
    /// (flights) with the lock released, so writers overlap their PV writes.
    fn on_data_path<R>(&self, f: impl FnOnce(&mut Inner) -> Result<R>) -> Result<R> {
        let (r, seqs) = {
            let mut g = self.lock_for_write();
            let r = f(&mut g);
            g.trim_caches();
            (r, std::mem::take(&mut g.queued))
        };
        let flown = self.fly(&seqs);
        let r = r?;
        flown?;
        Ok(r)
    }

    /// Write the flights `seqs` (those no settle has taken). A failed one is handled under the
    /// lock at once, so this caller hears of it (ENOSPC, or the error that poisoned the pool).
    fn fly(&self, seqs: &[u64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        if !self.outbound.write_queued(seqs) {
            self.lock_for_write().settle_flights()?;
        }
        Ok(())
    }

    /// TRIM: whole blocks in the range are unmapped and their space returned.
    pub fn trim(&self, vol: u64, offset: u64, len: u64) -> Result<()> {
        self.on_data_path(|g| g.unmap(vol, offset, len, false))
    }

    /// WRITE_ZEROES with NO_HOLE: the range reads as zeroes and stays allocated; whole blocks
    /// become zero entries (metadata only, whatever the length) and use no data space.
    pub fn write_zeroes_allocated(&self, vol: u64, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.on_data_path(|g| g.zero(vol, offset, len))?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// WRITE_ZEROES: the range reads as zeroes afterwards; whole blocks use no space.
    pub fn write_zeroes(&self, vol: u64, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.on_data_path(|g| g.unmap(vol, offset, len, true))?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Make every completed write durable. What is buffered is written out under the pool
    /// lock; the syncs run outside it, shared with every flush waiting at the same time
    /// (group commit, see `commit.rs`).
    pub fn flush(&self) -> Result<()> {
        if !self.lock_for_write().flush_write_out()? {
            return Ok(());
        }
        self.commit.wait_durable(self)?;
        self.lock_for_write().checkpoint_step()
    }

    /// Which 4 KiB blocks of `[offset, offset+len)` hold data: sorted runs as (start byte,
    /// length, mapped) covering the range. Zero entries read as zeroes and count as unmapped.
    pub fn extents(&self, vol: u64, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        Ok(data_extents(self.allocation(vol, offset, len)?))
    }

    /// [`Pool::extents`] if it needs no wait (for the pool lock's exclusive side or to load
    /// metadata); `None` if it would.
    pub fn try_extents(
        &self,
        vol: u64,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<(u64, u64, bool)>>> {
        Ok(self
            .allocation_resident(vol, offset, len, false)?
            .map(data_extents))
    }

    /// What `[offset, offset+len)` holds: sorted runs as (start byte, length, kind) covering the
    /// range, a zero span being one run however long (NBD `base:allocation`). Planned like a
    /// read: under the shared side if the map is resident, else under the exclusive side.
    pub fn allocation(&self, vol: u64, offset: u64, len: u64) -> Result<Vec<(u64, u64, MapKind)>> {
        if let Some(runs) = self.allocation_resident(vol, offset, len, true)? {
            return Ok(runs);
        }
        let mut g = self.lock();
        g.check_range(vol, offset, len)?;
        if len == 0 {
            return Ok(vec![]);
        }
        let first = offset / BLOCK_U64;
        let last = (offset + len - 1) / BLOCK_U64;
        let runs = g.map_runs(vol, first, last - first + 1)?;
        g.trim_caches();
        Ok(clip_runs(runs, offset, len))
    }

    /// [`Pool::allocation`] from resident metadata under the shared side; `None` if a map node
    /// is not resident or (without `wait`) the shared side is not free now.
    fn allocation_resident(
        &self,
        vol: u64,
        offset: u64,
        len: u64,
        wait: bool,
    ) -> Result<Option<Vec<(u64, u64, MapKind)>>> {
        let g = if wait {
            self.shared()
        } else {
            match self.inner.try_read() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(None),
            }
        };
        g.check_range(vol, offset, len)?;
        if len == 0 {
            return Ok(Some(vec![]));
        }
        let first = offset / BLOCK_U64;
        let last = (offset + len - 1) / BLOCK_U64;
        let (root, depth) = g.map_root(vol)?;
        let runs = resident::map_runs_in(
            &mut resident::Resident(&g),
            root,
            depth,
            first,
            last - first + 1,
        )?;
        Ok(runs.map(|r| clip_runs(r, offset, len)))
    }

    /// Commit all metadata now (also bounds the next replay).
    pub fn checkpoint(&self) -> Result<()> {
        self.lock().checkpoint()
    }

    /// Clean up to `max_segments` segments and commit, returning the space they held.
    pub fn gc(&self, max_segments: usize) -> Result<GcStats> {
        let mut g = self.lock();
        let st = g.gc_run(max_segments)?;
        g.checkpoint()?;
        Ok(st)
    }

    /// Write back what the PVs hold in their caches, without the pool lock, so the next
    /// checkpoint's sync has little left to do (it would otherwise stall every client). A failed
    /// sync poisons the pool: it is never retried as if it had worked.
    pub fn background_sync(&self) -> Result<()> {
        {
            let g = self.lock();
            if g.opts.read_only || g.poisoned.is_some() {
                return Ok(());
            }
        }
        // A sync round like a flush's (it also makes the journal written so far durable).
        self.commit.wait_durable(self)
    }

    /// Check each PV is still the file that was opened, whole and writable; a PV that is not
    /// is failed (see `Inner::check_pv_health`). Returns how many PVs failed now.
    pub fn check_pv_health(&self) -> usize {
        let mut g = self.lock();
        if g.opts.read_only {
            return 0;
        }
        g.check_pv_health()
    }

    /// Run [`Pool::check_pv_health`] and [`Pool::maintenance`] every `period` on a thread
    /// until the pool is dropped.
    pub fn spawn_cleaner(
        self: &Arc<Self>,
        period: std::time::Duration,
    ) -> std::thread::JoinHandle<()> {
        // Checkpoints the data path asks for are taken on a thread of their own.
        let _checkpointer = self.spawn_checkpointer();
        let weak = Arc::downgrade(self);
        let mut resync = throttle::Throttle::new(self.rates.resync());
        let mut reclaim = throttle::Throttle::new(self.rates.reclaim());
        self.reclaimer
            .store(true, std::sync::atomic::Ordering::Relaxed);
        std::thread::spawn(move || loop {
            std::thread::sleep(period);
            let Some(p) = weak.upgrade() else { return };
            p.check_pv_health();
            // Space of removed volumes comes back in bounded slices, at the reclaim rate.
            if let Err(e) = p.reclaim_background(&mut reclaim) {
                tracing::warn!("reclaim: {e}");
            }
            if let Err(e) = p.maintenance() {
                tracing::warn!("cleaner: {e}");
            }
            // Mirror upkeep: failed PVs that answer again rejoin; stale copies are rewritten
            // one segment per slice, outside the pool lock, at the resync rate.
            if let Err(e) = p.resync_background(&mut resync) {
                tracing::warn!("resync: {e}");
            }
            if let Err(e) = p.background_sync() {
                tracing::error!("background sync: {e}");
            }
        })
    }

    /// The pool's name.
    pub fn name(&self) -> String {
        self.lock().pool_name()
    }

    pub fn status(&self) -> PoolStatus {
        let mut st = self.status_inner();
        st.failure_groups = self.failgrp_list();
        (st.io_engine, st.cache) = self.io_modes();
        st
    }

    fn status_inner(&self) -> PoolStatus {
        let g = self.lock();
        let ms = g.mirror_state();
        let (total, free, live) = g.space();
        let provisioned: u64 = g
            .vols
            .values()
            .filter(|v| v.kind != VOL_SNAPSHOT && !reclaim::is_removing(v))
            .map(|v| v.size)
            .sum();
        let total_bytes = total * BLOCK_U64;
        let c = g.counters;
        let user = c.user_blocks_written.max(1) as f64;
        let wa = (c.user_blocks_written
            + c.gc_blocks_moved
            + c.meta_blocks_written
            + c.journal_blocks_written) as f64
            / user;
        PoolStatus {
            name: g.pool_name(),
            pool_id: hex(&g.pool_id),
            pvs: g
                .pvs
                .pvs
                .iter()
                .map(|p| PvInfo {
                    index: p.sb.pv_index,
                    name: p.dev.name().to_owned(),
                    size: p.sb.pv_size,
                    failure_group: p.sb.fg_name.clone(),
                    segments: p.sb.pv_segments,
                    udid: hex(&p.sb.pv_id),
                })
                .collect(),
            block_size: BLOCK_U64,
            segment_size: SEG_BLOCKS * BLOCK_U64,
            total_bytes,
            free_bytes: free * BLOCK_U64,
            used_bytes: live * BLOCK_U64,
            provisioned_bytes: provisioned,
            overcommit_bytes: provisioned.saturating_sub(total_bytes),
            reserved_bytes: g.thick_reserved() * BLOCK_U64,
            lus: g
                .vols
                .values()
                .filter(|v| v.kind == VOL_LU && !reclaim::is_removing(v))
                .count() as u64,
            snapshots: g
                .vols
                .values()
                .filter(|v| v.kind == VOL_SNAPSHOT && !reclaim::is_removing(v))
                .count() as u64,
            images: g
                .vols
                .values()
                .filter(|v| v.kind == VOL_IMAGE && !reclaim::is_removing(v))
                .count() as u64,
            mirror_state: ms.name().into(),
            mirror_reason: match &ms {
                mirror::MirrorState::Degraded(r) => r.clone(),
                _ => String::new(),
            },
            writer: g.writer_info(),
            seal: g.seal_info(),
            log_end: g.log_end_info(),
            resync_bytes_left: g.resync_pending(),
            removing_volumes: g.removing().len() as u64,
            removing_bytes: g.removing_blocks() * BLOCK_U64,
            resync_bytes_copied: g
                .mirror
                .resync_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            scrub_errors_found: g
                .mirror
                .errors_found
                .load(std::sync::atomic::Ordering::Relaxed),
            scrub_errors_repaired: g
                .mirror
                .errors_repaired
                .load(std::sync::atomic::Ordering::Relaxed),
            failure_groups: Vec::new(),
            checkpoint_generation: g.generation,
            counters: c,
            write_amplification: if c.user_blocks_written == 0 { 0.0 } else { wa },
            io_engine: String::new(),
            cache: String::new(),
        }
    }

    /// Checkpoint and release (the pool is also usable after a crash without this).
    pub fn close(self) -> Result<()> {
        let mut g = self.lock();
        if g.opts.read_only || g.poisoned.is_some() {
            return Ok(());
        }
        g.flush()?;
        g.checkpoint()
    }

    /// Debug: cache occupancy (map nodes, VBA pages).
    pub fn cache_usage(&self) -> (usize, usize) {
        let g = self.lock();
        (g.maps.len(), g.vba.cached_pages())
    }
}
