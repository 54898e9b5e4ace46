//! Creating a pool on fresh PVs, and opening one: pick the newest valid superblock and
//! checkpoint, load the tables, replay the journal, and commit a fresh checkpoint.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use super::error::{PoolError, Result};
use super::inner::{Counters, Inner, Stream};
use super::journal::Journal;
use super::ops::Mode;
use super::ptree::PhysTree;
use super::pvs::{geometry, Pv, PvSet};
use super::Options;
use crate::dev::BlockDev;
use crate::format::checkpoint::{Checkpoint, CKPT_OFFSETS};
use crate::format::node::{SegEntry, VolRecord, SEG_FREE};
use crate::format::superblock::{Superblock, SB_OFFSETS};
use crate::format::{Writer, BLOCK, SEG_BLOCKS};
use rand::RngCore;
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Parameters of a new pool.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub name: String,
    /// Journal ring size in blocks, reserved on every PV.
    pub journal_blocks: u64,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            name: "ssp".into(),
            journal_blocks: 4096,
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This host's writer id (FORMAT.md §7.3): CRC-32C of `/etc/machine-id`, so every process on a
/// host stamps the same id and another host (almost surely) a different one; 1 when the file is
/// unreadable. Never 0.
pub fn local_host_id() -> u32 {
    static ID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .map(|s| crc32c::crc32c(s.as_bytes()).max(1))
            .unwrap_or(1)
    })
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_time(secs: u64) -> String {
    let c = super::activation::Civil::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Who a PV belongs to, for refusals and "in use" errors: its pool (name, id, index) and the
/// last writer recorded in its newest valid checkpoint (host, incarnation, time), or the
/// creator from the superblock when no checkpoint verifies. `None`: no valid superblock.
pub fn describe_pv(dev: &dyn BlockDev) -> Option<String> {
    let sb = read_superblock(dev).ok()?;
    let mut best: Option<Checkpoint> = None;
    for off in CKPT_OFFSETS {
        let mut buf = vec![0u8; BLOCK];
        if dev.read_at(&mut buf, off).is_err() {
            continue;
        }
        if let Ok(c) = Checkpoint::decode(&buf, &sb.pool_id) {
            if best.as_ref().is_none_or(|b| c.generation > b.generation) {
                best = Some(c);
            }
        }
    }
    let (w, t) = match &best {
        Some(c) => (c.writer, c.timestamp),
        None => (sb.writer, sb.created),
    };
    let here = if w.host_id == local_host_id() {
        " (this host)"
    } else {
        ""
    };
    let id: String = sb.pool_id.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "PV {} of pool {} (id {id}), last written by host {:08x}{here}, incarnation {}, at {}",
        sb.pv_index,
        sb.pool_name,
        w.host_id,
        w.incarnation,
        fmt_time(t)
    ))
}

/// Write superblocks and an empty first checkpoint to `devs`. Returns the pool id.
pub fn create(devs: Vec<Arc<dyn BlockDev>>, copts: &CreateOptions, opts: Options) -> Result<Inner> {
    if devs.is_empty() {
        return Err(PoolError::Invalid("a pool needs at least one PV".into()));
    }
    if copts.journal_blocks < 64 {
        return Err(PoolError::Invalid(
            "the journal needs at least 64 blocks".into(),
        ));
    }
    let mut pool_id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut pool_id);
    let writer = Writer {
        host_id: opts.host_id,
        incarnation: 1,
        fencing_epoch: 1,
    };
    let mut pvs = Vec::new();
    let mut first = 1u64;
    for (i, dev) in devs.into_iter().enumerate() {
        let g = geometry(dev.len(), copts.journal_blocks)
            .map_err(|e| PoolError::Invalid(format!("{}: {e}", dev.name())))?;
        let mut pv_id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut pv_id);
        let sb = Superblock {
            incompat: crate::format::INCOMPAT_SHARING | crate::format::INCOMPAT_ZERO,
            compat: 0,
            ro_compat: crate::format::RO_COMPAT_SEAL,
            generation: 1,
            pool_id,
            pv_id,
            pv_index: i as u32,
            fg_id: 0,
            fg_name: "Default".into(),
            pv_size: dev.len(),
            block_size: BLOCK as u32,
            seg_blocks: SEG_BLOCKS as u32,
            journal_offset: g.journal_offset,
            journal_blocks: g.journal_blocks,
            data_offset: g.data_offset,
            pv_segments: g.pv_segments,
            first_pool_segment: first,
            created: now(),
            writer,
            pool_name: copts.name.clone(),
        };
        first += g.pv_segments;
        // Superblocks, journal ring and checkpoint slots are rewritten in place for the
        // pool's life: give them their backing store now, so a full host cannot refuse them.
        dev.reserve(0, g.data_offset).map_err(|e| {
            if crate::dev::is_no_space(&e) {
                PoolError::NoSpace(format!(
                    "no room on the host for the PV's metadata area: {e}"
                ))
            } else {
                PoolError::Io {
                    dev: dev.name().to_owned(),
                    offset: 0,
                    source: e,
                }
            }
        })?;
        let buf = sb.encode();
        let io = |off| {
            dev.write_at(&buf, off).map_err(|e| PoolError::Io {
                dev: dev.name().to_owned(),
                offset: off,
                source: e,
            })
        };
        for off in SB_OFFSETS {
            io(off)?;
        }
        // Clear both checkpoint slots so nothing from an earlier pool is ever considered.
        for off in CKPT_OFFSETS {
            dev.write_at(&[0u8; BLOCK], off)
                .map_err(|e| PoolError::Io {
                    dev: dev.name().to_owned(),
                    offset: off,
                    source: e,
                })?;
        }
        pvs.push(Pv::new(dev, sb));
    }
    let total = first - 1;
    let segs = (0..=total).map(|_| SegEntry::default()).collect::<Vec<_>>();
    let ck = Checkpoint {
        generation: 0,
        pool_id,
        writer,
        journal_seq: 1,
        journal_pos: 0,
        next_vba: 2,
        next_node_vba: 1,
        next_volume_id: 1,
        epoch: 0,
        ..Default::default()
    };
    let mut inner = assemble(PvSet { pvs }, &ck, opts, segs, BTreeMap::new())?;
    for seg in 1..=total {
        inner.segs_dirty.insert(seg);
    }
    inner.top_up_backing();
    inner.checkpoint()?;
    Ok(inner)
}

/// Build the in-memory state around a checkpoint.
fn assemble(
    pvs: PvSet,
    ck: &Checkpoint,
    opts: Options,
    segs: Vec<SegEntry>,
    vols: BTreeMap<u64, VolRecord>,
) -> Result<Inner> {
    let jpv = ck.journal_pv as u16;
    let jsb = &pvs.pv(jpv)?.sb;
    let jfg = jsb.fg_id;
    let mirror = pvs
        .pvs
        .iter()
        .position(|p| p.sb.fg_id != jfg)
        .map(|i| i as u16);
    let journal = Journal {
        pv: jpv,
        mirror,
        offset: jsb.journal_offset,
        blocks: jsb.journal_blocks,
        seq: ck.journal_seq,
        pos: ck.journal_pos,
        start_seq: ck.journal_seq,
        start_pos: ck.journal_pos,
        pending: Vec::new(),
        pending_bytes: 0,
        durable_seq: ck.journal_seq.saturating_sub(1),
    };
    let free: BTreeSet<u64> = (1..segs.len() as u64)
        .filter(|&s| segs.get(s as usize).is_some_and(|e| e.state == SEG_FREE))
        .collect();
    let names: HashMap<String, u64> = vols.values().map(|v| (v.name.clone(), v.id)).collect();
    let total = segs.len() as u64 - 1;
    // The reserve must always hold a whole checkpoint (every dirty node, capped below, every
    // page of the segment table and volume directory, and a metadata head) and, on top of
    // that, one cleaning round with its own checkpoint (FORMAT.md §5.4.1).
    let table_pages = super::ckpt::table_pages(total);
    let gc = super::ckpt::gc_reserve(table_pages);
    let ckpt = super::ckpt::ckpt_segments(opts.dirty_limit as u64, table_pages);
    let reserve = (ckpt + gc).min(total / 4).max(3);
    // The checkpoint's share (all of it but the cleaning round's; half in a pool too small for
    // both) bounds the dirty nodes.
    let ckpt_share = reserve.saturating_sub(gc).max(reserve / 2);
    let dirty_cap = (ckpt_share.saturating_sub(1) * SEG_BLOCKS)
        .saturating_sub(table_pages)
        .clamp(32, opts.dirty_limit.max(32) as u64) as usize;
    Ok(Inner {
        pool_id: ck.pool_id,
        writer: ck.writer,
        pvs,
        generation: ck.generation,
        next_vba: ck.next_vba.max(2),
        next_node_vba: ck.next_node_vba.max(1),
        free_vbas: BTreeSet::new(),
        free_node_vbas: BTreeSet::new(),
        next_volume_id: ck.next_volume_id.max(1),
        epoch: ck.epoch,
        vba: PhysTree::new(ck.vba_root, opts.vba_cache_pages),
        segtab: PhysTree::new(ck.segtab_root, usize::MAX),
        voldir: PhysTree::new(ck.voldir_root, usize::MAX),
        segs,
        segs_dirty: Default::default(),
        free,
        vols,
        vols_dirty: BTreeSet::new(),
        names,
        maps: HashMap::default(),
        maps_dirty: 0,
        map_tick: Default::default(),
        summaries: HashMap::default(),
        streams: [Stream::default(), Stream::default(), Stream::default()],
        journal,
        counters: Counters::default(),
        poisoned: None,
        writes_since_ckpt: 0,
        reserve,
        dirty_cap,
        reuse: Default::default(),
        mirror: Default::default(),
        alloc_cursor: 0,
        backed: BTreeSet::new(),
        checkpointer: None,
        seal: ck.seal,
        seal_requested: false,
        log_end: None,
        pv_copy_dirty: None,
        outbound: Default::default(),
        queued: Vec::new(),
        carried_free: Vec::new(),
        bg_ckpt: None,
        opts,
    })
}

/// Read both superblock copies; the valid one with the highest generation wins.
pub fn read_superblock(dev: &dyn BlockDev) -> Result<Superblock> {
    let mut best: Option<Superblock> = None;
    let mut last_err = None;
    for off in SB_OFFSETS {
        let mut buf = vec![0u8; BLOCK];
        if let Err(e) = dev.read_at(&mut buf, off) {
            last_err = Some(PoolError::Io {
                dev: dev.name().to_owned(),
                offset: off,
                source: e,
            });
            continue;
        }
        match Superblock::decode(&buf) {
            Ok(sb) => {
                if best.as_ref().is_none_or(|b| sb.generation > b.generation) {
                    best = Some(sb);
                }
            }
            Err(e) => {
                tracing::warn!("{}: superblock copy at {off} is unusable: {e}", dev.name());
                last_err = Some(PoolError::Corrupt {
                    dev: dev.name().to_owned(),
                    offset: off,
                    source: e,
                });
            }
        }
    }
    best.ok_or_else(|| last_err.unwrap_or_else(|| PoolError::Invalid("no superblock".into())))
}

/// Put the PVs in `pv_index` order, check the set against the checkpoint, and stand in for PVs
/// of a mirrored pool that are missing or unusable (they open as failed: the pool is degraded).
fn place_pvs(
    mut pvs: Vec<Pv>,
    mut unusable: Vec<(Arc<dyn BlockDev>, PoolError)>,
    ck: &Checkpoint,
) -> Result<Vec<Pv>> {
    let n = ck.pv_count as usize;
    // A PV beyond the committed count was being added when a crash came: not part of the pool.
    pvs.retain(|p| {
        let keep = (p.sb.pv_index as usize) < n;
        if !keep {
            tracing::warn!(
                "{} is not part of the pool (an interrupted failgrp create or pv add): ignored",
                p.dev.name()
            );
        }
        keep
    });
    let mut out: Vec<Option<Pv>> = (0..n).map(|_| None).collect();
    for p in pvs {
        let i = p.sb.pv_index as usize;
        // `pvs` holds only indexes below `n` (filtered above).
        let Some(slot) = out.get_mut(i) else {
            continue;
        };
        if slot.is_some() {
            return Err(PoolError::Config(format!(
                "two PVs claim index {i} ({})",
                p.dev.name()
            )));
        }
        *slot = Some(p);
    }
    let template = out.iter().flatten().next().map(|p| p.sb.clone());
    for i in 0..n {
        if out.get(i).is_none_or(Option::is_some) {
            continue;
        }
        let entry = ck.pv_table.iter().find(|e| e.pv_index as usize == i);
        let (Some(e), Some(t)) = (entry, template.as_ref()) else {
            return Err(match unusable.pop() {
                Some((_, err)) => err,
                None => PoolError::Config(format!(
                    "the pool has {n} PVs but PV index {i} was not given"
                )),
            });
        };
        let (dev, why): (Arc<dyn BlockDev>, String) = match unusable.pop() {
            Some((d, err)) => (d, err.to_string()),
            None => (
                Arc::new(super::pvs::MissingDev {
                    name: format!("pv{i}"),
                    len: 0,
                }),
                "missing".into(),
            ),
        };
        let fg_name = out
            .iter()
            .flatten()
            .find(|p| p.sb.fg_id == e.fg_id)
            .map(|p| p.sb.fg_name.clone())
            .unwrap_or_else(|| format!("fg{}", e.fg_id));
        let mut sb = t.clone();
        sb.pv_index = e.pv_index;
        sb.fg_id = e.fg_id;
        sb.fg_name = fg_name;
        sb.first_pool_segment = e.first_pool_segment;
        sb.pv_segments = e.pv_segments;
        sb.pv_id = [0; 16];
        tracing::error!(
            "PV {i} ({}) of the mirrored pool is unusable ({why}): opening degraded",
            dev.name()
        );
        let mut p = Pv::new(dev, sb);
        p.failed = Some(why);
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(p);
        }
    }
    let mut pvs: Vec<Pv> = out.into_iter().flatten().collect();
    for e in &ck.pv_table {
        if e.flags & crate::format::checkpoint::PvEntry::FAILED != 0 {
            if let Some(p) = pvs.get_mut(e.pv_index as usize) {
                p.failed
                    .get_or_insert_with(|| "failed before the restart".into());
            }
        }
    }
    // Some group must hold every segment.
    let set = PvSet { pvs };
    if !set.groups().into_iter().any(|g| !set.group_failed(g)) {
        return Err(PoolError::Config(
            "no failure group has all of its PVs: the pool cannot open".into(),
        ));
    }
    Ok(set.pvs)
}

/// A crash between the two ordered writes of a superblock rewrite (FORMAT.md §5.6) leaves one
/// copy older or torn: rewrite it from the copy that won, one copy at a time, synced.
fn repair_superblocks(inner: &mut Inner) -> Result<()> {
    for i in 0..inner.pvs.pvs.len() {
        let Some(pv) = inner.pvs.pvs.get(i).filter(|p| p.failed.is_none()) else {
            continue;
        };
        let want = pv.sb.encode();
        let dev = pv.dev.clone();
        for off in SB_OFFSETS {
            let mut buf = vec![0u8; BLOCK];
            if dev.read_at(&mut buf, off).is_ok() && buf == want {
                continue;
            }
            tracing::warn!(
                "{}: superblock copy at {off} is stale or damaged (an interrupted rewrite): rewriting it",
                dev.name()
            );
            let r = inner.pvs.write(i as u16, off, &want).and_then(|_| {
                dev.sync().map_err(|e| PoolError::Io {
                    dev: dev.name().to_owned(),
                    offset: 0,
                    source: e,
                })
            });
            if let Err(e) = r {
                inner.fail_pv(i as u16, e)?;
                break;
            }
        }
    }
    Ok(())
}

/// Open a pool from its PVs (in any order), replay the journal and commit a fresh checkpoint.
pub fn open(devs: Vec<Arc<dyn BlockDev>>, opts: Options) -> Result<Inner> {
    if devs.is_empty() {
        return Err(PoolError::Invalid("no PVs given".into()));
    }
    let mut pvs: Vec<Pv> = Vec::new();
    // PVs without a usable superblock: a mirrored pool may open without them (degraded).
    let mut unusable: Vec<(Arc<dyn BlockDev>, PoolError)> = Vec::new();
    for dev in devs {
        let sb = match read_superblock(dev.as_ref()) {
            Ok(sb) => sb,
            Err(e) => {
                unusable.push((dev, e));
                continue;
            }
        };
        if dev.len() < sb.pv_size {
            let e = PoolError::Invalid(format!(
                "{} is truncated: {} bytes, the superblock says {}",
                dev.name(),
                dev.len(),
                sb.pv_size
            ));
            unusable.push((dev, e));
            continue;
        }
        pvs.push(Pv::new(dev, sb));
    }
    if pvs.is_empty() {
        return Err(unusable
            .pop()
            .map(|(_, e)| e)
            .unwrap_or_else(|| PoolError::Invalid("no PVs given".into())));
    }
    let Some(pool_id) = pvs.first().map(|p| p.sb.pool_id) else {
        return Err(PoolError::Invalid("no PVs given".into()));
    };
    if let Some(p) = pvs.iter().find(|p| p.sb.pool_id != pool_id) {
        return Err(PoolError::Config(format!(
            "{} belongs to another pool",
            p.dev.name()
        )));
    }
    pvs.sort_by_key(|p| p.sb.pv_index);
    // The newest valid checkpoint on any PV.
    let mut best: Option<Checkpoint> = None;
    for p in &pvs {
        for off in CKPT_OFFSETS {
            let mut buf = vec![0u8; BLOCK];
            if p.dev.read_at(&mut buf, off).is_err() {
                continue;
            }
            if let Ok(c) = Checkpoint::decode(&buf, &pool_id) {
                if best.as_ref().is_none_or(|b| c.generation > b.generation) {
                    best = Some(c);
                }
            }
        }
    }
    let ck = best.ok_or_else(|| PoolError::Config("no valid checkpoint on any PV".into()))?;
    if !opts.read_only {
        tracing::info!(
            "pool {} last written by host {:08x}, incarnation {}, at {}; opening as host {:08x}, incarnation {}",
            pvs.first().map_or("?", |p| p.sb.pool_name.as_str()),
            ck.writer.host_id,
            ck.writer.incarnation,
            fmt_time(ck.timestamp),
            opts.host_id,
            ck.writer.incarnation.wrapping_add(1)
        );
    }
    let pvs = place_pvs(pvs, unusable, &ck)?;
    let total: u64 = if ck.pool_segments > 0 {
        ck.pool_segments
    } else {
        pvs.iter().map(|p| p.sb.pv_segments).sum()
    };
    let mut opts = opts;
    if let Some(p) = pvs
        .iter()
        .find(|p| p.sb.ro_compat & !crate::format::RO_COMPAT_SUPPORTED != 0)
    {
        tracing::warn!(
            "{}: unknown read-only-compatible features: opening read-only",
            p.dev.name()
        );
        opts.read_only = true;
    }
    let pvset = PvSet { pvs };
    let read_only = opts.read_only;
    let mut inner = assemble(
        pvset,
        &ck,
        opts,
        vec![SegEntry::default(); total as usize + 1],
        BTreeMap::new(),
    )?;

    // Load the segment table and volume directory (small, kept whole in memory).
    let mut segtab = std::mem::take(&mut inner.segtab);
    let mut segs = std::mem::take(&mut inner.segs);
    let r = segtab.for_each(&inner, &mut |i, e| {
        if let Some(s) = segs.get_mut(i as usize) {
            *s = *e;
        }
    });
    inner.segtab = segtab;
    inner.segs = segs;
    r?;
    let mut voldir = std::mem::take(&mut inner.voldir);
    let mut vols = BTreeMap::new();
    let r = voldir.for_each(&inner, &mut |_, v| {
        vols.insert(v.id, v.clone());
    });
    inner.voldir = voldir;
    r?;
    inner.names = vols.values().map(|v| (v.name.clone(), v.id)).collect();
    inner.vols = vols;
    inner.free = (1..inner.segs.len() as u64)
        .filter(|&s| {
            inner
                .segs
                .get(s as usize)
                .is_some_and(|e| e.state == SEG_FREE)
        })
        .collect();

    // Replay: the checkpoint's writer's log, to its end or to the seal the opener names.
    let seal = inner.opts.replay_to;
    if let Some(s) = &seal {
        super::seal::check_seal_start(s, &ck)?;
    }
    let blocks = inner.journal_read(ck.writer, seal.map(|s| s.journal_seq))?;
    let mut applied = 0u64;
    let mut skipped = 0u64;
    // Blocks up to the highest sequence any block records as durable were covered by a
    // completed sync, data included: only the tail after it needs its data verified.
    let durable = blocks.iter().map(|b| b.durable_seq).max().unwrap_or(0);
    for jb in &blocks {
        let mode = if jb.seq <= durable {
            Mode::ReplayDurable
        } else {
            Mode::ReplayUnsure
        };
        for rec in &jb.records {
            if inner.apply(rec, mode)? {
                applied += 1;
            } else {
                skipped += 1;
            }
        }
    }
    // Segments that were free at the checkpoint but received blocks since are in use now.
    for seg in 1..inner.segs.len() as u64 {
        let reused = inner
            .segs
            .get(seg as usize)
            .is_some_and(|e| e.state == SEG_FREE && e.live > 0);
        if reused {
            inner.free.remove(&seg);
            let gen = inner.generation;
            let e = inner.seg_mut(seg)?;
            e.state = crate::format::node::SEG_DATA;
            e.seq = gen;
            // Filled by the replayed log's writer; which of its streams, replay cannot tell.
            inner.stamp_segment(seg, None)?;
        }
    }
    let last_seq = blocks.last().map(|b| b.seq).unwrap_or(ck.journal_seq - 1);
    let reached = crate::format::Seal {
        writer: blocks.last().map_or(ck.writer, |b| b.writer),
        journal_seq: last_seq,
    };
    if let Some(s) = &seal {
        super::seal::check_seal_reached(s, &reached)?;
        tracing::info!("replayed the journal up to seal {s}");
    }
    if read_only {
        inner.log_end = Some(reached);
    } else {
        inner.seal = Some(reached);
        inner.seal_requested = seal.is_some();
    }
    tracing::info!(
        "opened pool: checkpoint {} , replayed {} journal blocks ({applied} records applied, {skipped} skipped)",
        ck.generation,
        blocks.len()
    );
    // New journal blocks continue after the replayed ones, with sequence numbers no block
    // left in the ring can carry, so a stale block can never be mistaken for a successor.
    inner.journal.pos = (ck.journal_pos + blocks.len() as u64) % inner.journal.blocks;
    inner.journal.seq = last_seq + 1 + inner.journal.blocks;
    inner.journal.start_seq = inner.journal.seq;
    inner.journal.start_pos = inner.journal.pos;
    // This opener stamps itself on everything it writes (checkpoints, journal, nodes): a new
    // incarnation, and a new fencing epoch (a writable open takes the pool's single-host
    // lease, FORMAT.md §7.3). Both become durable with the checkpoint below. A read-only open
    // writes nothing and keeps showing the last writer.
    if !read_only {
        inner.writer = super::seal::next_writer(&ck.writer, inner.opts.host_id);
    }
    if !read_only && inner.pvs.pvs.iter().any(|p| p.failed.is_some()) {
        // PVs that failed before may be back: they rejoin and resync in the background.
        inner.retry_failed()?;
    }
    if !read_only {
        // A client-image capture cut short by a crash leaves a hidden, partial image.
        let stale: Vec<(u64, String)> = inner
            .vols
            .values()
            .filter(|v| v.name.starts_with(super::CAPTURE_PREFIX))
            .map(|v| (v.id, v.name.clone()))
            .collect();
        for (id, name) in stale {
            tracing::warn!("removing {name}: a client-image capture that did not finish");
            inner.begin_remove(id)?;
        }
        repair_superblocks(&mut inner)?;
        // Pools created before the metadata area was reserved, or PVs restored sparse.
        for p in inner.pvs.pvs.iter().filter(|p| p.failed.is_none()) {
            if let Err(e) = p.dev.reserve(0, p.sb.data_offset) {
                tracing::warn!("cannot back the metadata area of {}: {e}", p.dev.name());
            }
        }
        inner.top_up_backing();
        inner.checkpoint()?;
    }
    Ok(inner)
}
