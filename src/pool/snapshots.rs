//! Snapshots (`LU@SNAP`), client images, linked clones, and what `file stat`, `file layout`
//! and `diff` report about sharing. Everything here but image capture is metadata only.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::reclaim::{is_hidden, is_removing};
use super::{validate_name, LuInfo, Pool};
use crate::format::journal::Record;
use crate::format::node::{VolRecord, VOL_IMAGE, VOL_LU, VOL_SNAPSHOT};
use crate::format::{BLOCK_U64, SEG_BLOCKS};
use rand::RngCore;

/// Names of client images being captured (removed if a capture never finished).
pub const CAPTURE_PREFIX: &str = ".capture-";

/// `pooladm file stat`, plus what is shared.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStat {
    pub name: String,
    /// "lu", "clone", "snapshot" or "image".
    pub kind: String,
    pub udid: String,
    /// What it was made from (a clone's snapshot, a snapshot's LU); empty if nothing.
    pub parent: String,
    pub size: u64,
    /// Size in pool blocks.
    pub number_blocks: u64,
    /// Blocks that hold data.
    pub data_blocks: u64,
    pub pool_block_size: u64,
    pub tier: String,
    /// Data blocks no other LU, image or snapshot references.
    pub owned_blocks: u64,
    /// Data blocks also referenced by another LU, image or snapshot.
    pub shared_blocks: u64,
    /// Blocks it could hold: its size in pool blocks.
    pub max_blocks: u64,
    /// What it would still need to own all of its blocks (Max − Owned).
    pub block_debt: u64,
}

/// Where a run of an extent's blocks lives.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub pv: String,
    pub failure_group: String,
    pub offset: u64,
    pub blocks: u64,
}

/// One 1 MiB extent of `file layout`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayoutExtent {
    pub start: u64,
    pub end: u64,
    /// "owned", "shared" or "mixed".
    pub state: String,
    pub owned_blocks: u64,
    pub shared_blocks: u64,
    pub placement: Vec<Placement>,
}

/// A changed range between two volumes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiffExtent {
    pub offset: u64,
    pub length: u64,
}

pub fn kind_name(v: &VolRecord) -> &'static str {
    match v.kind {
        VOL_SNAPSHOT => "snapshot",
        VOL_IMAGE => "image",
        _ if v.parent != 0 => "clone",
        _ => "lu",
    }
}

/// Split `BASE@SNAP`, checking both parts.
pub fn split_snapshot(name: &str) -> Result<(&str, &str)> {
    let Some((base, snap)) = name.split_once('@') else {
        return Err(PoolError::Invalid(format!(
            "{name:?} is not a snapshot name: use LU@SNAPSHOT"
        )));
    };
    validate_name(base)?;
    validate_name(snap)
        .map_err(|_| PoolError::Invalid(format!("bad snapshot name {snap:?} in {name:?}")))?;
    if name.len() > 128 {
        return Err(PoolError::Invalid(format!(
            "{name:?} is longer than 128 bytes"
        )));
    }
    Ok((base, snap))
}

fn new_udid() -> [u8; 16] {
    let mut u = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut u);
    u
}

impl Pool {
    fn vol_by_name(g: &super::Inner, name: &str) -> Result<VolRecord> {
        g.names
            .get(name)
            .and_then(|id| g.vols.get(id))
            .cloned()
            .ok_or_else(|| PoolError::NotFound(name.into()))
    }

    fn need_sharing(g: &super::Inner) -> Result<()> {
        if g.sharing_enabled() {
            Ok(())
        } else {
            Err(PoolError::Config(
                "this pool was created by an older ssp without snapshot support".into(),
            ))
        }
    }

    fn info_of(g: &super::Inner, id: u64) -> Result<LuInfo> {
        let v = g
            .vols
            .get(&id)
            .ok_or_else(|| PoolError::NotFound(format!("volume {id}")))?;
        Ok(Self::vol_info(g, v))
    }

    pub(super) fn vol_info(g: &super::Inner, v: &VolRecord) -> LuInfo {
        let mut i = Self::lu_info(v);
        i.kind = kind_name(v).into();
        i.parent = g
            .vols
            .get(&v.parent)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        i
    }

    /// Snapshot several LUs or images in one consistent step (`A@s B@s`): no write lands
    /// between them. Metadata only: the time does not depend on the LU's size or data.
    pub fn snapshot_create(&self, names: &[&str]) -> Result<Vec<LuInfo>> {
        let mut g = self.lock();
        Self::need_sharing(&g)?;
        let mut plan = Vec::new();
        for (i, &name) in names.iter().enumerate() {
            let (base, _) = split_snapshot(name)?;
            let b = Self::vol_by_name(&g, base)?;
            if b.kind == VOL_SNAPSHOT {
                return Err(PoolError::Invalid(format!(
                    "{base} is a snapshot: snapshots of snapshots are made by cloning it first"
                )));
            }
            if g.names.contains_key(name) || names.iter().take(i).any(|n| *n == name) {
                return Err(PoolError::Exists(format!("snapshot {name} already exists")));
            }
            plan.push((b.id, name));
        }
        g.ensure_snapshot_reservable(&plan.iter().map(|p| p.0).collect::<Vec<_>>())?;
        let mut out = Vec::new();
        for (src, name) in plan {
            let id = g.next_volume_id;
            g.log_and_apply(Record::VolShare {
                id,
                src,
                kind: VOL_SNAPSHOT,
                udid: new_udid(),
                name: name.to_owned(),
            })?;
            out.push(id);
        }
        g.flush()?;
        out.into_iter().map(|id| Self::info_of(&g, id)).collect()
    }

    /// Snapshots, of one LU or image or of all, oldest first.
    pub fn snapshot_list(&self, base: Option<&str>) -> Result<Vec<LuInfo>> {
        let g = self.lock();
        let parent = match base {
            Some(b) => Some(Self::vol_by_name(&g, b)?.id),
            None => None,
        };
        let mut v: Vec<&VolRecord> = g
            .vols
            .values()
            .filter(|v| v.kind == VOL_SNAPSHOT && parent.is_none_or(|p| v.parent == p))
            .filter(|v| !is_removing(v))
            .collect();
        v.sort_by_key(|v| (v.created_epoch, v.id));
        Ok(v.into_iter().map(|v| Self::vol_info(&g, v)).collect())
    }

    /// Roll an LU back to any of its snapshots, online and in O(1). An undo snapshot of the
    /// LU as it was is taken first (returned as the second value); every other snapshot stays.
    pub fn snapshot_rollback(&self, name: &str) -> Result<(LuInfo, String)> {
        let (base, _) = split_snapshot(name)?;
        let mut g = self.lock();
        Self::need_sharing(&g)?;
        let s = Self::vol_by_name(&g, name)?;
        let lu = Self::vol_by_name(&g, base)?;
        if s.kind != VOL_SNAPSHOT || s.parent != lu.id {
            return Err(PoolError::Invalid(format!(
                "{name} is not a snapshot of {base}"
            )));
        }
        if lu.kind != VOL_LU {
            return Err(PoolError::VolumeReadOnly(format!("client image {base}")));
        }
        g.ensure_rollback_reservable(lu.id, s.id)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut undo = format!("{base}@undo-{secs}");
        let mut n = 1;
        while g.names.contains_key(&undo) {
            n += 1;
            undo = format!("{base}@undo-{secs}-{n}");
        }
        split_snapshot(&undo)?;
        let undo_id = g.next_volume_id;
        g.log_and_apply(Record::VolRollback {
            id: lu.id,
            src: s.id,
            undo_id,
            undo_udid: new_udid(),
            undo_name: undo.clone(),
        })?;
        g.flush()?;
        Ok((Self::info_of(&g, lu.id)?, undo))
    }

    /// Remove any snapshot, even one clones were made from (they keep working). Returns the
    /// blocks it alone held, which are free again at once.
    pub fn snapshot_remove(&self, name: &str) -> Result<u64> {
        split_snapshot(name)?;
        let mut g = self.lock();
        let s = Self::vol_by_name(&g, name)?;
        if s.kind != VOL_SNAPSHOT {
            return Err(PoolError::Invalid(format!("{name} is not a snapshot")));
        }
        let owned = g.begin_remove(s.id)?;
        g.flush()?;
        drop(g);
        self.reclaim_unless_background()?;
        Ok(owned)
    }

    /// A writable LU sharing every block of a snapshot or client image until written: one
    /// atomic, O(1) step. Refused when the pool has no room left for clones to diverge.
    pub fn clone_create(&self, src: &str, name: &str) -> Result<LuInfo> {
        validate_name(name)?;
        let mut g = self.lock();
        Self::need_sharing(&g)?;
        let s = Self::vol_by_name(&g, src)?;
        if s.kind == VOL_LU {
            return Err(PoolError::Invalid(format!(
                "{src} is a writable LU: clone a snapshot of it ({src}@SNAP) or a client image"
            )));
        }
        if g.names.contains_key(name) {
            return Err(PoolError::Exists(format!(
                "an LU named {name} already exists"
            )));
        }
        let (total, _, _) = g.space();
        let free = g.free_for(super::inner::StreamId::Data) * SEG_BLOCKS;
        let need = (total / 50).max(4 * SEG_BLOCKS);
        if free < need {
            return Err(PoolError::NoSpace(format!(
                "{} MiB free of {} MiB; a new clone needs at least {} MiB free to diverge \
                 (it may grow to {} MiB)",
                (free * BLOCK_U64) >> 20,
                (total * BLOCK_U64) >> 20,
                (need * BLOCK_U64) >> 20,
                s.size >> 20
            )));
        }
        let id = g.next_volume_id;
        g.log_and_apply(Record::VolShare {
            id,
            src: s.id,
            kind: VOL_LU,
            udid: new_udid(),
            name: name.to_owned(),
        })?;
        g.flush()?;
        Self::info_of(&g, id)
    }

    /// Copy an LU (or a snapshot) into a new client image: a real copy of every block that
    /// holds data, done in 1 MiB slices (reads outside the pool lock, the slice's writes under
    /// one hold of it) so clients keep running; cancellable at a slice boundary
    /// ([`Pool::copy_cancel`]). `progress(done, total)` counts data blocks. Capture from a snapshot, or while the LU is not being written, for a
    /// consistent image. A capture cut short leaves nothing behind.
    pub fn image_capture(
        &self,
        src: &str,
        image: &str,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LuInfo> {
        self.image_capture_at(src, image, 0, progress)
    }

    /// [`Pool::image_capture`] copying at most `rate` bytes per second (0: unlimited).
    pub fn image_capture_at(
        &self,
        src: &str,
        image: &str,
        rate: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<LuInfo> {
        validate_name(image)?;
        let tmp = format!("{CAPTURE_PREFIX}{image}");
        let (src_id, size, total, tmp_id) = {
            let mut g = self.lock();
            let s = Self::vol_by_name(&g, src)?;
            if g.names.contains_key(image) {
                return Err(PoolError::Exists(format!("{image} already exists")));
            }
            if let Some(&stale) = g.names.get(&tmp) {
                g.begin_remove(stale)?;
            }
            let id = g.next_volume_id;
            g.log_and_apply(Record::VolCreate {
                id,
                kind: VOL_IMAGE,
                size: s.size,
                udid: new_udid(),
                name: tmp.clone(),
            })?;
            (s.id, s.size, s.mapped_blocks, id)
        };
        let r = self.copy_blocks(src_id, tmp_id, size, total, rate, progress);
        let mut g = self.lock();
        if let Err(e) = r {
            let _ = g.begin_remove(tmp_id);
            return Err(e);
        }
        g.flush()?;
        if g.names.contains_key(image) {
            g.begin_remove(tmp_id)?;
            return Err(PoolError::Exists(format!("{image} already exists")));
        }
        g.log_and_apply(Record::VolRename {
            id: tmp_id,
            name: image.to_owned(),
        })?;
        g.flush()?;
        Self::info_of(&g, tmp_id)
    }

    fn copy_blocks(
        &self,
        src: u64,
        dst: u64,
        size: u64,
        total: u64,
        rate: u64,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let blocks = size.div_ceil(BLOCK_U64);
        let mut throttle = super::throttle::Throttle::new(rate);
        let guard = self.copy_start("image capture");
        let mut done = 0u64;
        let mut lba = 0u64;
        while lba < blocks {
            let n = SEG_BLOCKS.min(blocks - lba);
            std::thread::sleep(throttle.wait_time());
            guard.check()?;
            let mapped = {
                let mut g = self.lock();
                if !g.vols.contains_key(&src) {
                    return Err(PoolError::NotFound(format!(
                        "the capture's source was removed (volume {src})"
                    )));
                }
                g.map_range(src, lba, n)?
            };
            // Runs of consecutive mapped blocks, each copied with one read and one write. The
            // reads plan under the shared side and do their I/O outside the pool lock; the
            // writes take it once per slice.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for &(lba, _) in &mapped {
                match runs.last_mut() {
                    Some((first, count)) if *first + *count == lba => *count += 1,
                    _ => runs.push((lba, 1)),
                }
            }
            let mut bufs = Vec::with_capacity(runs.len());
            for (first, count) in runs {
                let off = first * BLOCK_U64;
                let len = (count * BLOCK_U64).min(size - off) as usize;
                let mut buf = vec![0u8; len];
                self.read(src, off, &mut buf)?;
                bufs.push((off, buf));
            }
            let mut g = self.lock();
            for (off, buf) in &bufs {
                g.write_any(dst, *off, buf)?;
            }
            g.trim_caches();
            drop(g);
            throttle.spend(mapped.len() as u64 * BLOCK_U64);
            done += mapped.len() as u64;
            progress(done.min(total), total);
            lba += n;
        }
        Ok(())
    }

    /// Every volume a client may open: LUs, clones, snapshots and images (not captures in
    /// progress), by name.
    pub fn export_list(&self) -> Vec<LuInfo> {
        let g = self.lock();
        let mut v: Vec<LuInfo> = g
            .vols
            .values()
            .filter(|v| !is_hidden(&v.name))
            .map(|v| Self::vol_info(&g, v))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The other volumes that share history with `name` (for `ssp:changed:` contexts).
    pub fn family_names(&self, name: &str) -> Vec<String> {
        let g = self.lock();
        let Ok(me) = Self::vol_by_name(&g, name) else {
            return Vec::new();
        };
        let mut v: Vec<String> = g
            .vols
            .values()
            .filter(|v| v.family == me.family && v.id != me.id)
            .filter(|v| !is_hidden(&v.name))
            .map(|v| v.name.clone())
            .collect();
        v.sort();
        v
    }

    /// Client images, by name.
    pub fn image_list(&self) -> Vec<LuInfo> {
        let g = self.lock();
        let mut v: Vec<LuInfo> = g
            .vols
            .values()
            .filter(|v| v.kind == VOL_IMAGE && !is_hidden(&v.name))
            .map(|v| Self::vol_info(&g, v))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Remove a client image (its snapshots first). Clones made from it keep working.
    pub fn image_remove(&self, name: &str) -> Result<u64> {
        let mut g = self.lock();
        let v = Self::vol_by_name(&g, name)?;
        if v.kind != VOL_IMAGE {
            return Err(PoolError::Invalid(format!("{name} is not a client image")));
        }
        Self::refuse_if_snapshots(&g, &v)?;
        let owned = g.begin_remove(v.id)?;
        g.flush()?;
        drop(g);
        self.reclaim_unless_background()?;
        Ok(owned)
    }

    pub(super) fn refuse_if_snapshots(g: &super::Inner, v: &VolRecord) -> Result<()> {
        let snaps: Vec<&str> = g
            .vols
            .values()
            .filter(|s| s.kind == VOL_SNAPSHOT && s.parent == v.id && !is_removing(s))
            .map(|s| s.name.as_str())
            .collect();
        if snaps.is_empty() {
            return Ok(());
        }
        Err(PoolError::InUse(format!(
            "{} has {} snapshot(s) ({}): remove them first (clones made from them keep working)",
            v.name,
            snaps.len(),
            snaps.join(", ")
        )))
    }

    /// `pooladm file stat`: instant (counters kept up to date by every operation).
    pub fn file_stat(&self, name: &str) -> Result<FileStat> {
        let g = self.lock();
        let v = Self::vol_by_name(&g, name)?;
        let number_blocks = v.size.div_ceil(BLOCK_U64);
        Ok(FileStat {
            name: v.name.clone(),
            kind: kind_name(&v).into(),
            udid: super::hex(&v.udid),
            parent: g
                .vols
                .get(&v.parent)
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            size: v.size,
            number_blocks,
            data_blocks: v.mapped_blocks,
            pool_block_size: BLOCK_U64,
            tier: "SYSTEM".into(),
            owned_blocks: v.owned_blocks,
            shared_blocks: v.mapped_blocks - v.owned_blocks.min(v.mapped_blocks),
            max_blocks: number_blocks,
            block_debt: number_blocks.saturating_sub(v.owned_blocks),
        })
    }

    /// `pooladm file layout`: per 1 MiB extent that holds data, owned or shared, and where
    /// its blocks live.
    pub fn file_layout(&self, name: &str) -> Result<Vec<LayoutExtent>> {
        let mut g = self.lock();
        let v = Self::vol_by_name(&g, name)?;
        let blocks = v.size.div_ceil(BLOCK_U64);
        let mut out = Vec::new();
        let mut lba = 0;
        while lba < blocks {
            let n = SEG_BLOCKS.min(blocks - lba);
            let info = g.map_sharing(v.id, lba, n)?;
            let owned = info.iter().filter(|(s, _)| *s == 1).count() as u64;
            let shared = info.iter().filter(|(s, _)| *s == 2).count() as u64;
            if owned + shared > 0 {
                let mut placement: Vec<Placement> = Vec::new();
                let mut last_pba = 0;
                for &(_, pba) in info.iter().filter(|(s, _)| *s != 0) {
                    let (pv, offset) = g.locate(pba)?;
                    match placement.last_mut() {
                        Some(p) if last_pba + 1 == pba => p.blocks += 1,
                        _ => placement.push(Placement {
                            pv: g.pvs.name(pv),
                            failure_group: g.pvs.pv(pv)?.sb.fg_name.clone(),
                            offset,
                            blocks: 1,
                        }),
                    }
                    last_pba = pba;
                }
                out.push(LayoutExtent {
                    start: lba * BLOCK_U64,
                    end: ((lba + n) * BLOCK_U64).min(v.size),
                    state: match (owned, shared) {
                        (_, 0) => "owned",
                        (0, _) => "shared",
                        _ => "mixed",
                    }
                    .into(),
                    owned_blocks: owned,
                    shared_blocks: shared,
                    placement,
                });
            }
            lba += n;
            g.trim_caches();
        }
        Ok(out)
    }

    /// Changed byte ranges between two volumes of one family (two snapshots of an LU, a
    /// clone and its snapshot, an LU and one of its snapshots). Unchanged subtrees are skipped
    /// without reading them.
    pub fn diff(&self, a: &str, b: &str) -> Result<Vec<DiffExtent>> {
        let mut g = self.lock();
        let va = Self::vol_by_name(&g, a)?;
        let vb = Self::vol_by_name(&g, b)?;
        if va.family != vb.family {
            return Err(PoolError::Invalid(format!(
                "{a} and {b} share no history (one is not a snapshot or clone of the other)"
            )));
        }
        let blocks = va.size.max(vb.size).div_ceil(BLOCK_U64);
        Ok(g.map_diff(va.id, vb.id, 0, blocks)?
            .into_iter()
            .map(|(l, n)| DiffExtent {
                offset: l * BLOCK_U64,
                length: n * BLOCK_U64,
            })
            .collect())
    }

    /// Changed blocks of `vol` against `base` in `[offset, offset+len)`, as (start, length,
    /// changed) byte runs covering the range (for the NBD `ssp:changed:` meta context).
    pub fn changed_extents(
        &self,
        vol: u64,
        base: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, bool)>> {
        let mut g = self.lock();
        g.check_range(vol, offset, len)?;
        if len == 0 {
            return Ok(vec![]);
        }
        let first = offset / BLOCK_U64;
        let last = (offset + len - 1) / BLOCK_U64;
        let runs = g.map_diff(vol, base, first, last - first + 1)?;
        Ok(cover(offset, len, runs))
    }

    /// Shared blocks of `vol` in `[offset, offset+len)` as (start, length, shared) byte runs
    /// covering the range (for the NBD `ssp:sharing` meta context).
    pub fn shared_extents(&self, vol: u64, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        let mut g = self.lock();
        g.check_range(vol, offset, len)?;
        if len == 0 {
            return Ok(vec![]);
        }
        let first = offset / BLOCK_U64;
        let last = (offset + len - 1) / BLOCK_U64;
        let info = g.map_sharing(vol, first, last - first + 1)?;
        g.trim_caches();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (i, (s, _)) in info.iter().enumerate() {
            if *s == 2 {
                let l = first + i as u64;
                match runs.last_mut() {
                    Some((st, n)) if *st + *n == l => *n += 1,
                    _ => runs.push((l, 1)),
                }
            }
        }
        Ok(cover(offset, len, runs))
    }
}

/// Turn block runs that have a property into byte runs covering `[offset, offset+len)`.
fn cover(offset: u64, len: u64, runs: Vec<(u64, u64)>) -> Vec<(u64, u64, bool)> {
    let end = offset + len;
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut push = |s: u64, e: u64, m: bool| {
        let (s, e) = (s.max(offset), e.min(end));
        if s < e {
            match out.last_mut() {
                Some(l) if l.2 == m && l.0 + l.1 == s => l.1 += e - s,
                _ => out.push((s, e - s, m)),
            }
        }
    };
    let mut cur = offset;
    for (l, n) in runs {
        let (s, e) = (l * BLOCK_U64, (l + n) * BLOCK_U64);
        if s > cur {
            push(cur, s, false);
        }
        push(s, e, true);
        cur = cur.max(e);
    }
    if cur < end {
        push(cur, end, false);
    }
    out
}
