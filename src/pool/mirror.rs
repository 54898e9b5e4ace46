//! Two-way mirroring across failure groups: every pool block is written to its location in
//! each group that is up, reads are balanced between the copies and fall back (and repair) when
//! one copy is bad, a PV that fails degrades the pool instead of stopping it, and resync copies
//! back only the segments whose copy went stale.
//!
//! A group's copy of a segment is *stale* when it may not hold the segment's current content:
//! written while the group had failed, or not yet copied to a group just added. Stale flags live
//! in the segment table (`seg_flag_stale`) and every change is journaled (`SegStale`), as is a PV
//! failing or coming back (`PvState`), so a crash never forgets what resync owes.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::pvs::split;
use crate::format::journal::Record;
use crate::format::node::{seg_flag_stale, SEG_FREE};
use crate::format::{BLOCK, BLOCK_U64, SEG_BLOCKS};
use std::sync::atomic::{AtomicU64, Ordering};

/// Runs at least this long are written to the failure groups on parallel threads (shorter ones
/// cost less than starting a thread).
const PARALLEL_WRITE_MIN: usize = 64 * 1024;

/// Counters shared with reads running outside the pool lock.
#[derive(Default, Debug)]
pub struct MirrorStats {
    /// Bad copies found (checksum mismatch or I/O error) by reads, scrub or check.
    pub errors_found: AtomicU64,
    /// Bad copies rewritten from a good one.
    pub errors_repaired: AtomicU64,
    /// Round-robin cursor balancing reads between the groups.
    pub rr: AtomicU64,
    /// Bytes copied by resync since the pool was opened.
    pub resync_bytes: AtomicU64,
}

impl MirrorStats {
    pub fn found(&self) {
        self.errors_found.fetch_add(1, Ordering::Relaxed);
    }
    pub fn repaired(&self) {
        self.errors_repaired.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pool's mirror state, as `pool status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorState {
    NotMirrored,
    Syncing,
    Synced,
    Degraded(String),
}

impl MirrorState {
    pub fn name(&self) -> &'static str {
        match self {
            MirrorState::NotMirrored => "NOT_MIRRORED",
            MirrorState::Syncing => "SYNCING",
            MirrorState::Synced => "SYNCED",
            MirrorState::Degraded(_) => "DEGRADED",
        }
    }
}

impl Inner {
    pub(super) fn stale_in(&self, seg: u64, fg: u32) -> bool {
        self.segs
            .get(seg as usize)
            .is_some_and(|e| e.flags & seg_flag_stale(fg) != 0)
    }

    /// Groups holding a good copy of `seg`, the preferred one first (reads alternate).
    pub fn read_groups(&self, seg: u64) -> Vec<u32> {
        let mut g: Vec<u32> = self
            .pvs
            .groups()
            .into_iter()
            .filter(|&fg| !self.pvs.group_failed(fg) && !self.stale_in(seg, fg))
            .collect();
        if g.len() > 1 {
            let r = self.mirror.rr.fetch_add(1, Ordering::Relaxed) as usize % g.len();
            g.rotate_left(r);
        }
        g
    }

    /// Where to read `pba`: (PV, byte offset) per good copy, preferred first.
    pub fn copies(&self, pba: u64) -> Result<Vec<(u16, u64)>> {
        let (seg, slot) = split(pba);
        let mut out = Vec::new();
        for fg in self.read_groups(seg) {
            if let Some((pv, pv_seg)) = self.pvs.locate_in(fg, seg) {
                out.push((pv, self.pvs.offset(pv, pv_seg, slot)?));
            }
        }
        if out.is_empty() {
            // Name the failed PV that holds the segment, if that is why.
            let failed = self.pvs.groups().into_iter().find_map(|fg| {
                let (pv, _) = self.pvs.locate_in(fg, seg)?;
                let p = self.pvs.pv(pv).ok()?;
                Some((p.dev.name().to_owned(), p.failed.clone()?))
            });
            return Err(match failed {
                Some((dev, why)) => PoolError::Io {
                    dev,
                    offset: 0,
                    source: std::io::Error::other(format!("the PV has failed: {why}")),
                },
                None => PoolError::Io {
                    dev: format!("pool segment {seg}"),
                    offset: 0,
                    source: std::io::Error::other("no failure group holds a good copy"),
                },
            });
        }
        Ok(out)
    }

    /// Check every PV that is up against what was opened (see [`crate::dev::BlockDev::health`]:
    /// file deleted, truncated, replaced or made read-only). Such a PV is failed: in a
    /// mirrored pool its group goes degraded and the pool carries on; otherwise the pool stops
    /// taking writes and reads of that PV fail with EIO naming it. Returns how many PVs failed.
    pub fn check_pv_health(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.pvs.pvs.len() {
            let Some(p) = self.pvs.pvs.get(i) else {
                break;
            };
            if p.failed.is_some() {
                continue;
            }
            let Err(why) = p.dev.health() else {
                continue;
            };
            n += 1;
            let err = PoolError::Io {
                dev: p.dev.name().to_owned(),
                offset: 0,
                source: std::io::Error::other(why.clone()),
            };
            let Ok(pv) = u16::try_from(i) else {
                break;
            };
            if let Err(e) = self.fail_pv(pv, err) {
                // No other copy can stand in for it: nothing more may be written.
                tracing::error!("{e}: the pool refuses writes, reads of this PV fail");
                if let Some(p) = self.pvs.pvs.get_mut(i) {
                    p.failed = Some(why);
                }
                self.poisoned.get_or_insert_with(|| e.to_string());
            }
        }
        n
    }

    /// Read consecutive blocks of one segment from a good copy; on an I/O error try the next.
    pub fn read_copies(&self, pba: u64, out: &mut [u8]) -> Result<()> {
        let mut first_err = None;
        for (pv, off) in self.copies(pba)? {
            match self.pvs.read(pv, off, out) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.mirror.found();
                    tracing::warn!("{e}: trying the other copy");
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| PoolError::Internal(format!("no copy of block {pba}"))))
    }

    /// Read one block, accepting only data that passes `good`; a bad copy is repaired from a
    /// good one. Errors name the first copy that failed.
    pub fn read_verified(&self, pba: u64, good: &dyn Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; BLOCK];
        let mut bad: Vec<(u16, u64)> = Vec::new();
        let mut first_err = None;
        for (pv, off) in self.copies(pba)? {
            match self.pvs.read(pv, off, &mut buf) {
                Ok(()) if good(&buf) => {
                    for &(bpv, boff) in &bad {
                        if self.pvs.write(bpv, boff, &buf).is_ok() {
                            self.mirror.repaired();
                            tracing::warn!(
                                "repaired block at {} offset {boff} from the other copy",
                                self.pvs.name(bpv)
                            );
                        }
                    }
                    return Ok(buf);
                }
                Ok(()) => {
                    self.mirror.found();
                    bad.push((pv, off));
                    first_err.get_or_insert(PoolError::Io {
                        dev: self.pvs.name(pv),
                        offset: off,
                        source: std::io::Error::other("bad checksum"),
                    });
                }
                Err(e) => {
                    self.mirror.found();
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| PoolError::Internal(format!("no copy of block {pba}"))))
    }

    /// Replay of a block written since the last checkpoint: a crash may have come between the
    /// write to one group and the record saying the other failed, so make every copy that is
    /// up match the one that verifies against `crc`.
    pub fn repair_copies(&self, pba: u64, crc: u32) {
        if !self.pvs.mirrored() {
            return;
        }
        let (seg, slot) = split(pba);
        let mut good: Option<Vec<u8>> = None;
        let mut bad = Vec::new();
        let mut buf = vec![0u8; BLOCK];
        for fg in self.pvs.groups() {
            if self.pvs.group_failed(fg) {
                continue;
            }
            let Some((pv, s)) = self.pvs.locate_in(fg, seg) else {
                continue;
            };
            let Ok(off) = self.pvs.offset(pv, s, slot) else {
                continue;
            };
            let ok = self.pvs.read(pv, off, &mut buf).is_ok()
                && crate::format::data_crc(&self.pool_id, &buf) == crc;
            if ok {
                good.get_or_insert_with(|| buf.clone());
            } else {
                bad.push((pv, off));
            }
        }
        if let Some(g) = good {
            for (pv, off) in bad {
                if self.pvs.write(pv, off, &g).is_ok() {
                    self.mirror.repaired();
                }
            }
        }
    }

    /// Write blocks starting at `pba` (within one segment) to every group that is up. A failed
    /// write degrades its group when another group holds the data; otherwise it is an error.
    pub fn put_run(&mut self, pba: u64, buf: &[u8]) -> Result<()> {
        let (seg, slot) = split(pba);
        let mut targets = Vec::new();
        for fg in self.pvs.groups() {
            if self.pvs.group_failed(fg) {
                continue;
            }
            let Some((pv, pv_seg)) = self.pvs.locate_in(fg, seg) else {
                continue;
            };
            targets.push((pv, self.pvs.offset(pv, pv_seg, slot)?));
        }
        // The groups' copies are written at once (a segment write-out takes as long as the
        // slower group, not both in turn).
        let results = self.pvs.write_copies(&targets, buf, PARALLEL_WRITE_MIN);
        let mut written = 0;
        let mut last_err = None;
        for ((pv, _), r) in targets.into_iter().zip(results) {
            match r {
                Ok(()) => written += 1,
                // Not a failed PV: the caller keeps the blocks and the client gets ENOSPC.
                Err(e @ PoolError::NoSpace(_)) => return Err(e),
                Err(e) => {
                    last_err = Some(e.to_string());
                    self.fail_pv(pv, e)?;
                }
            }
        }
        if written == 0 {
            return Err(PoolError::Io {
                dev: format!("pool segment {seg}"),
                offset: 0,
                source: std::io::Error::other(
                    last_err.unwrap_or_else(|| "no failure group can take the write".into()),
                ),
            });
        }
        Ok(())
    }

    /// Sync every PV that is up, all at once; one failing degrades its group (mirrored) or is
    /// an error.
    pub fn sync_pvs(&mut self) -> Result<()> {
        let results = super::commit::sync_parallel(&self.sync_targets());
        self.note_syncs(results.len());
        for (i, r) in results {
            if let Err(e) = r {
                let err = PoolError::Io {
                    dev: self.pvs.name(i),
                    offset: 0,
                    source: e,
                };
                self.fail_pv(i, err)?;
            }
        }
        Ok(())
    }

    /// PV `pv` failed with `err`. In a mirrored pool whose other group is whole, the PV's group
    /// goes degraded: the failure and every segment its copy may now lack are journaled, and
    /// the pool carries on. Otherwise `err` is returned.
    pub fn fail_pv(&mut self, pv: u16, err: PoolError) -> Result<()> {
        let fg = self.pvs.pv(pv)?.sb.fg_id;
        let others_ok = self
            .pvs
            .groups()
            .into_iter()
            .any(|g| g != fg && !self.pvs.group_failed(g));
        if !self.pvs.mirrored() || !others_ok {
            return Err(err);
        }
        if self.pvs.pv(pv)?.failed.is_some() {
            return Ok(());
        }
        tracing::error!(
            "PV {} of failure group {} failed ({err}): the pool goes on degraded on the other group",
            self.pvs.name(pv),
            self.pvs.group_name(fg)
        );
        if let Some(p) = self.pvs.pvs.get_mut(usize::from(pv)) {
            p.failed = Some(err.to_string());
        }
        self.journal_append(Record::PvState {
            pv: u32::from(pv),
            failed: 1,
        })?;
        // What the failed group may lack: every segment written since the last sync that
        // covered it (opened at or after the generation of the last checkpoint) and the open
        // append heads.
        let since = self.generation;
        let mut stale: Vec<u64> = (1..self.segs.len() as u64)
            .filter(|&s| {
                let e = self.seg(s);
                e.state != SEG_FREE && e.seq >= since
            })
            .collect();
        stale.extend(self.streams.iter().map(|s| s.seg).filter(|&s| s != 0));
        // Runs written without the lock may belong to a head's previous segment.
        stale.extend(self.outbound.segments());
        stale.sort_unstable();
        stale.dedup();
        for seg in stale {
            self.set_stale(seg, fg, true)?;
        }
        Ok(())
    }

    /// Journal and apply a stale flag change.
    pub fn set_stale(&mut self, seg: u64, fg: u32, stale: bool) -> Result<()> {
        if self.stale_in(seg, fg) == stale {
            return Ok(());
        }
        self.journal_append(Record::SegStale {
            seg,
            fg: fg as u8,
            stale: u8::from(stale),
        })?;
        self.apply_seg_stale(seg, fg, stale);
        Ok(())
    }

    pub fn apply_seg_stale(&mut self, seg: u64, fg: u32, stale: bool) {
        if seg == 0 {
            return;
        }
        let Ok(e) = self.seg_mut(seg) else {
            return;
        };
        if stale {
            e.flags |= seg_flag_stale(fg);
        } else {
            e.flags &= !seg_flag_stale(fg);
        }
    }

    /// A segment was just opened for appending: groups that are failed do not get it.
    pub fn note_segment_opened(&mut self, seg: u64) -> Result<()> {
        if !self.pvs.mirrored() {
            return Ok(());
        }
        for fg in self.pvs.groups() {
            let failed = self.pvs.group_failed(fg);
            self.set_stale(seg, fg, failed)?;
        }
        Ok(())
    }

    /// Groups with stale segments to copy (and whose PVs are all up), and how many bytes.
    pub fn resync_pending(&self) -> u64 {
        let mut n = 0;
        for fg in self.pvs.groups() {
            if self.pvs.group_failed(fg) {
                continue;
            }
            n += self
                .segs
                .iter()
                .skip(1)
                .filter(|e| e.state != SEG_FREE && e.flags & seg_flag_stale(fg) != 0)
                .count() as u64;
        }
        n * SEG_BLOCKS * BLOCK_U64
    }

    pub fn mirror_state(&self) -> MirrorState {
        let groups = self.pvs.groups();
        if groups.len() < 2 {
            return MirrorState::NotMirrored;
        }
        if let Some(p) = self.pvs.pvs.iter().find(|p| p.failed.is_some()) {
            return MirrorState::Degraded(format!(
                "PV {} of failure group {} failed: {}",
                p.dev.name(),
                p.sb.fg_name,
                p.failed.as_deref().unwrap_or("")
            ));
        }
        if self.resync_pending() > 0 {
            MirrorState::Syncing
        } else {
            MirrorState::Synced
        }
    }

    /// Try failed PVs again: a PV that answers (its superblock reads back as ours) is back; its
    /// group is resynced from the other. Returns how many came back.
    pub fn retry_failed(&mut self) -> Result<usize> {
        let mut back = 0;
        for i in 0..self.pvs.pvs.len() {
            let Some(p) = self.pvs.pvs.get(i) else {
                break;
            };
            if p.failed.is_none() {
                continue;
            }
            // A PV whose file was deleted, truncated or replaced stays failed; one made
            // writable again (chmod, remount) passes its health check and rejoins.
            let ok = p.dev.health().is_ok()
                && super::open::read_superblock(p.dev.as_ref())
                    .map(|sb| sb.pv_id == p.sb.pv_id && sb.pool_id == self.pool_id)
                    .unwrap_or(false)
                && p.dev.sync().is_ok();
            if !ok {
                continue;
            }
            tracing::info!("PV {} is back: resyncing its failure group", p.dev.name());
            if let Some(p) = self.pvs.pvs.get_mut(i) {
                p.failed = None;
                p.gate.reset();
            }
            self.journal_append(Record::PvState {
                pv: i as u32,
                failed: 0,
            })?;
            back += 1;
        }
        if back > 0 {
            // A checkpoint rewrites the slots and starts a journal both groups hold in full.
            self.checkpoint()?;
        }
        Ok(back)
    }
}

impl Inner {
    /// The checkpoint's PV table: every PV's group, range and failed flag (mirrored pools).
    pub fn pv_table(&self) -> Vec<crate::format::checkpoint::PvEntry> {
        if !self.pvs.mirrored() {
            return Vec::new();
        }
        self.pvs
            .pvs
            .iter()
            .map(|p| crate::format::checkpoint::PvEntry {
                pv_index: p.sb.pv_index,
                fg_id: p.sb.fg_id,
                first_pool_segment: p.sb.first_pool_segment,
                pv_segments: p.sb.pv_segments,
                flags: if p.failed.is_some() {
                    crate::format::checkpoint::PvEntry::FAILED
                } else {
                    0
                },
            })
            .collect()
    }
}
