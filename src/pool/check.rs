//! Full consistency check: every checksum, every map entry, reference counts, live-block counts
//! and free space recomputed from scratch and compared with what the pool records.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::ptree::NodeIo;
use super::pvs::split;
use super::scrub::SLICE_BLOCKS;
use super::Pool;
use crate::format::node::{NodeKind, Ptr, MAP_ZERO, SEG_FREE};
use crate::format::superblock::{Superblock, SB_OFFSETS};
use crate::format::{data_crc, BLOCK, INCOMPAT_ZERO};
use std::collections::HashMap;

/// Result of a check: empty `errors` means the pool is consistent.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    pub errors: Vec<String>,
    pub volumes: u64,
    pub map_nodes: u64,
    pub data_blocks: u64,
    pub table_pages: u64,
    pub segments: u64,
    /// Map entries that say "allocated, reads as zeroes" (each may cover a whole span).
    #[serde(default)]
    pub zero_entries: u64,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A block whose content the second stage of a check reads: VBA `vba` as the first stage
/// found it, and for a data block the LU block that uses it (for messages).
struct ReadCheck {
    vba: u64,
    ptr: Ptr,
    data: Option<(u64, u64)>,
}

impl Pool {
    /// Full consistency check of the pool as it is now. The first stage runs under the pool
    /// lock and reads only metadata: superblocks, every map, reference counts, owned/shared
    /// and live counts, summaries, table pages. The second reads data in slices of at most
    /// [`SLICE_BLOCKS`] blocks: the lock is taken to plan a slice (blocks whose VBA no longer
    /// names what the first stage saw were overwritten or freed since, and are skipped), the
    /// checksums and, in a mirrored pool, the copies are compared outside it, with the
    /// `reuse` pin held so no segment read is reused meanwhile.
    pub fn check(&self) -> Result<CheckReport> {
        let (mut rep, work) = self.lock().check_meta()?;
        for slice in work.chunks(SLICE_BLOCKS) {
            self.check_slice(slice, &mut rep)?;
        }
        Ok(rep)
    }

    fn check_slice(&self, slice: &[ReadCheck], rep: &mut CheckReport) -> Result<()> {
        /// One read the slice does outside the lock.
        struct Planned<'a> {
            item: &'a ReadCheck,
            /// Copies to read for the checksum, preferred first (the next on an I/O error).
            copies: Vec<(u16, u64)>,
            /// Both copies, to compare (mirrored pools, segment whole in every group).
            pair: Option<[(u16, u64); 2]>,
            /// Messages' names: the LU, and where the block lives.
            vol: String,
            at: (String, u64),
        }
        let mut g = self.lock();
        let groups = g.pvs.groups();
        let mut plan = Vec::with_capacity(slice.len());
        for item in slice {
            let cur = g.vba_entry(item.vba)?;
            if cur.pba != item.ptr.pba || cur.crc != item.ptr.crc {
                continue; // overwritten or freed since the first stage
            }
            let pba = item.ptr.pba;
            if let Some(b) = g.streams.iter().find_map(|s| s.buffered(pba)) {
                // Not on disk yet: its checksum is checked from memory, and there are no
                // copies to compare.
                if let Some((vol, lba)) = item.data {
                    let c = data_crc(&g.pool_id, b);
                    if c != item.ptr.crc {
                        let (dev, off) = g.describe(pba);
                        rep.errors.push(format!(
                            "data block {lba} of {} on {dev} at offset {off}: checksum mismatch (stored {:#010x}, computed {c:#010x})",
                            g.vol_name(vol), item.ptr.crc
                        ));
                    }
                }
                continue;
            }
            let (seg, slot) = split(pba);
            let copies = if item.data.is_some() {
                match g.copies(pba) {
                    Ok(c) => c,
                    Err(e) => {
                        let (vol, lba) = item.data.unwrap_or((0, 0));
                        rep.errors
                            .push(format!("data block {lba} of {}: {e}", g.vol_name(vol)));
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let pair = if g.pvs.mirrored() && g.read_groups(seg).len() >= groups.len() {
                let locs: Vec<(u16, u64)> = groups
                    .iter()
                    .filter_map(|&fg| g.pvs.locate_in(fg, seg))
                    .filter_map(|(pv, s)| Some((pv, g.pvs.offset(pv, s, slot).ok()?)))
                    .collect();
                match locs[..] {
                    [a, b, ..] => Some([a, b]),
                    _ => None,
                }
            } else {
                None
            };
            plan.push(Planned {
                item,
                copies,
                pair,
                vol: g.vol_name(item.data.map_or(0, |d| d.0)),
                at: g.describe(pba),
            });
        }
        let devs = g.devs_up();
        let names: Vec<String> = (0..g.pvs.pvs.len()).map(|i| g.pvs.name(i as u16)).collect();
        let pid = g.pool_id;
        let mirror = g.mirror.clone();
        let pin = self.reuse.read().unwrap_or_else(|p| p.into_inner());
        drop(g);
        let read = |pv: u16, off: u64, buf: &mut [u8]| -> std::result::Result<(), String> {
            let name = names.get(usize::from(pv)).cloned().unwrap_or_default();
            match devs.get(usize::from(pv)) {
                Some(Some(d)) => d.read_at(buf, off).map_err(|e| {
                    PoolError::Io {
                        dev: name,
                        offset: off,
                        source: e,
                    }
                    .to_string()
                }),
                _ => Err(format!("{name}: the PV has failed")),
            }
        };
        let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        for p in plan {
            if let Some((_, lba)) = p.item.data {
                let mut last_err = None;
                let mut got = false;
                for &(pv, off) in &p.copies {
                    match read(pv, off, &mut a) {
                        Ok(()) => {
                            got = true;
                            break;
                        }
                        Err(e) => {
                            mirror.found();
                            last_err.get_or_insert(e);
                        }
                    }
                }
                if got {
                    let c = data_crc(&pid, &a);
                    if c != p.item.ptr.crc {
                        rep.errors.push(format!(
                            "data block {lba} of {} on {} at offset {}: checksum mismatch (stored {:#010x}, computed {c:#010x})",
                            p.vol, p.at.0, p.at.1, p.item.ptr.crc
                        ));
                    }
                } else if let Some(e) = last_err {
                    rep.errors
                        .push(format!("data block {lba} of {}: {e}", p.vol));
                }
            }
            if let Some([(pa, oa), (pb, ob)]) = p.pair {
                let ra = read(pa, oa, &mut a);
                let rb = read(pb, ob, &mut b);
                if ra.is_err() || rb.is_err() || a != b {
                    rep.errors.push(format!(
                        "VBA {}: the copies on {} at offset {oa} and {} at offset {ob} differ or cannot be read",
                        p.item.vba,
                        names.get(usize::from(pa)).cloned().unwrap_or_default(),
                        names.get(usize::from(pb)).cloned().unwrap_or_default(),
                    ));
                }
            }
        }
        drop(pin);
        Ok(())
    }
}

impl Inner {
    /// The first stage of [`Pool::check`]: everything but reading data blocks, which it lists.
    fn check_meta(&mut self) -> Result<(CheckReport, Vec<ReadCheck>)> {
        let mut work: Vec<ReadCheck> = Vec::new();
        let mut rep = CheckReport {
            segments: self.segs.len() as u64 - 1,
            ..Default::default()
        };
        let err = |rep: &mut CheckReport, m: String| rep.errors.push(m);

        // Superblocks: both copies of every PV must verify and agree.
        for (i, p) in self.pvs.pvs.iter().enumerate() {
            if p.failed.is_some() {
                continue; // a failed or missing PV is reported by status, resynced when back
            }
            for off in SB_OFFSETS {
                let mut buf = vec![0u8; BLOCK];
                let r = p.dev.read_at(&mut buf, off);
                match r
                    .map_err(|e| e.to_string())
                    .and_then(|_| Superblock::decode(&buf).map_err(|e| e.to_string()))
                {
                    Ok(sb) if sb == p.sb => {}
                    Ok(_) => err(
                        &mut rep,
                        format!(
                            "PV {i} ({}): superblock copy at {off} is stale",
                            p.dev.name()
                        ),
                    ),
                    Err(e) => err(
                        &mut rep,
                        format!("PV {i} ({}): superblock copy at {off}: {e}", p.dev.name()),
                    ),
                }
            }
        }

        // Walk every volume's map: count references, remember one user of each data block.
        let mut refs: HashMap<u64, u32> = HashMap::new();
        let mut node_level: HashMap<u64, u8> = HashMap::new();
        let mut user: HashMap<u64, (u64, u64)> = HashMap::new();
        let vols: Vec<_> = self.vols.values().cloned().collect();
        rep.volumes = vols.len() as u64;
        let mut zero_entries = 0u64;
        for v in &vols {
            let mut mapped = 0u64;
            if v.map_root != 0 {
                let mut stack = vec![(v.map_root, v.map_depth - 1, 0u64)];
                while let Some((vba, level, base)) = stack.pop() {
                    let c = refs.entry(vba).or_insert(0);
                    *c += 1;
                    let first_visit = *c == 1;
                    if first_visit {
                        rep.map_nodes += 1;
                    }
                    node_level.insert(vba, level);
                    let entries = match self.map_node(vba, level) {
                        Ok(n) => n.entries.clone(),
                        Err(e) => {
                            err(
                                &mut rep,
                                format!("LU {}: map node {vba} (level {level}): {e}", v.name),
                            );
                            continue;
                        }
                    };
                    let span = super::maps::entry_span(level);
                    for (i, &e) in entries.iter().enumerate() {
                        if e == 0 {
                            continue;
                        }
                        let lba = base + i as u64 * span;
                        if e == MAP_ZERO {
                            // Allocated zeroes: no VBA, no data; within the LU, and only in a
                            // pool that says it may hold them.
                            if first_visit {
                                zero_entries += 1;
                            }
                            if lba.saturating_add(span) > v.size.div_ceil(BLOCK as u64) {
                                err(
                                    &mut rep,
                                    format!(
                                        "LU {}: zero entry for blocks {lba}+{span} reaches beyond the LU's end",
                                        v.name
                                    ),
                                );
                            }
                            continue;
                        }
                        if level == 0 {
                            mapped += 1;
                            if lba * BLOCK as u64 >= v.size {
                                err(
                                    &mut rep,
                                    format!(
                                        "LU {}: block {lba} is mapped beyond the LU's end",
                                        v.name
                                    ),
                                );
                            }
                            if first_visit {
                                *refs.entry(e).or_insert(0) += 1;
                                user.entry(e).or_insert((v.id, lba));
                            }
                        } else if first_visit {
                            stack.push((e, level - 1, lba));
                        }
                    }
                }
            }
            // A volume sharing its root with one walked before is counted by the recount below.
            if mapped != v.mapped_blocks && refs.get(&v.map_root).is_none_or(|&c| c <= 1) {
                err(
                    &mut rep,
                    format!(
                        "LU {}: records {} mapped blocks, counted {mapped}",
                        v.name, v.mapped_blocks
                    ),
                );
            }
        }

        rep.zero_entries = zero_entries;
        let zero_ok = self
            .pvs
            .pvs
            .iter()
            .filter(|p| p.failed.is_none())
            .all(|p| p.sb.incompat & INCOMPAT_ZERO != 0);
        if zero_entries > 0 && !zero_ok {
            err(
                &mut rep,
                format!("{zero_entries} zero map entries, but the superblocks lack INCOMPAT_ZERO"),
            );
        }

        // Owned blocks: recount which data blocks each volume alone references.
        match self.recount_owned() {
            Ok(counts) => {
                for (id, mapped, owned) in counts {
                    let Some(v) = self.vols.get(&id) else {
                        err(
                            &mut rep,
                            format!("volume {id} was counted but is not in the directory"),
                        );
                        continue;
                    };
                    if v.mapped_blocks != mapped {
                        err(
                            &mut rep,
                            format!(
                                "{}: records {} mapped blocks, counted {mapped}",
                                v.name, v.mapped_blocks
                            ),
                        );
                    }
                    if v.owned_blocks != owned {
                        err(
                            &mut rep,
                            format!(
                                "{}: records {} owned blocks, counted {owned}",
                                v.name, v.owned_blocks
                            ),
                        );
                    }
                }
            }
            Err(e) => err(&mut rep, format!("recounting owned blocks: {e}")),
        }

        // The VBA table: reference counts, data checksums, summaries, live counts.
        let mut live: HashMap<u64, u32> = HashMap::new();
        let mut entries: Vec<(u64, Ptr)> = Vec::new();
        let mut vt = std::mem::take(&mut self.vba);
        let r = vt.for_each(self, &mut |i, p| entries.push((i, *p)));
        self.vba = vt;
        r?;
        let mirrored = self.pvs.mirrored();
        for (vba, p) in entries {
            let counted = refs.remove(&vba).unwrap_or(0);
            if p.aux != counted {
                err(
                    &mut rep,
                    format!(
                        "VBA {vba}: reference count {} but {counted} references found",
                        p.aux
                    ),
                );
            }
            if p.pba == 0 {
                if !(vba % 2 == 1 && self.maps.get(&vba).is_some_and(|n| n.dirty)) {
                    err(&mut rep, format!("VBA {vba}: referenced but has no block"));
                }
                continue;
            }
            *live.entry(split(p.pba).0).or_insert(0) += 1;
            if let Some(&level) = node_level.get(&vba) {
                if let Err(e) = self.read_node(p, NodeKind::Map, level, vba) {
                    err(&mut rep, format!("map node VBA {vba}: {e}"));
                }
                if mirrored {
                    work.push(ReadCheck {
                        vba,
                        ptr: p,
                        data: None,
                    });
                }
            } else {
                rep.data_blocks += 1;
                work.push(ReadCheck {
                    vba,
                    ptr: p,
                    data: Some(user.get(&vba).copied().unwrap_or((0, 0))),
                });
                let (seg, slot) = split(p.pba);
                if self.load_summary(seg).is_ok() {
                    let tag = self
                        .summaries
                        .get(&seg)
                        .and_then(|s| s.tags.get(slot as usize).copied())
                        .unwrap_or(0);
                    if tag != vba {
                        err(
                            &mut rep,
                            format!(
                                "segment {seg} summary slot {slot} names VBA {tag}, expected {vba}"
                            ),
                        );
                    }
                }
            }
        }
        for (vba, n) in refs {
            err(
                &mut rep,
                format!("VBA {vba}: {n} references to an unallocated VBA"),
            );
        }

        // Physical pages of the three tables and the segment summaries.
        let mut pages: Vec<(NodeKind, u8, u64, Ptr)> = Vec::new();
        macro_rules! pages_of {
            ($f:ident, $k:expr) => {{
                let mut t = std::mem::take(&mut self.$f);
                let r = t.for_each_page(self, &mut |l, i, p| pages.push(($k, l, i, p)));
                self.$f = t;
                r?;
            }};
        }
        pages_of!(vba, NodeKind::Vba);
        pages_of!(segtab, NodeKind::SegTab);
        pages_of!(voldir, NodeKind::VolDir);
        for seg in 1..self.segs.len() as u64 {
            let e = self.seg(seg);
            if e.summary != 0 {
                pages.push((
                    NodeKind::Summary,
                    0,
                    seg,
                    Ptr {
                        pba: e.summary,
                        crc: e.summary_crc,
                        aux: 0,
                    },
                ));
            }
        }
        for (kind, level, id, p) in pages {
            rep.table_pages += 1;
            *live.entry(split(p.pba).0).or_insert(0) += 1;
            if let Err(e) = self.read_node(p, kind, level, id) {
                err(&mut rep, format!("{kind:?} page {level}/{id}: {e}"));
            }
        }

        // Live counts and free space.
        for seg in 1..self.segs.len() as u64 {
            let e = self.seg(seg);
            let counted = live.remove(&seg).unwrap_or(0);
            if e.live != counted {
                err(
                    &mut rep,
                    format!(
                        "segment {seg}: records {} live blocks, counted {counted}",
                        e.live
                    ),
                );
            }
            if e.state == SEG_FREE && counted > 0 {
                err(
                    &mut rep,
                    format!("segment {seg} is marked free but holds {counted} live blocks"),
                );
            }
            if (e.state == SEG_FREE) != self.free.contains(&seg) {
                err(
                    &mut rep,
                    format!("segment {seg}: free list and segment table disagree"),
                );
            }
        }
        for (seg, n) in live {
            err(
                &mut rep,
                format!("{n} live blocks in segment {seg}, which is outside the pool"),
            );
        }
        Ok((rep, work))
    }
}
