//! Full consistency check: every checksum, every map entry, reference counts, live-block counts
//! and free space recomputed from scratch and compared with what the pool records.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::Result;
use super::inner::Inner;
use super::ptree::NodeIo;
use super::pvs::split;
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

impl Inner {
    pub fn check(&mut self) -> Result<CheckReport> {
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
        if self.pvs.mirrored() {
            self.check_copies(&entries, &mut rep);
        }
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
            } else {
                rep.data_blocks += 1;
                let (vol, lba) = user.get(&vba).copied().unwrap_or((0, 0));
                let (dev, off) = self.describe(p.pba);
                match self.read_block(p.pba) {
                    Ok(b) => {
                        let c = data_crc(&self.pool_id, &b);
                        if c != p.crc {
                            err(&mut rep, format!(
                                "data block {lba} of {} on {dev} at offset {off}: checksum mismatch (stored {:#010x}, computed {c:#010x})",
                                self.vol_name(vol), p.crc
                            ));
                        }
                    }
                    Err(e) => err(
                        &mut rep,
                        format!("data block {lba} of {}: {e}", self.vol_name(vol)),
                    ),
                }
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
        Ok(rep)
    }
}

impl Inner {
    /// Mirrored pools: both copies of every live block in a segment neither group has stale
    /// must be readable and equal.
    fn check_copies(&self, entries: &[(u64, Ptr)], rep: &mut CheckReport) {
        let groups = self.pvs.groups();
        let (mut a, mut b) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        for &(vba, p) in entries {
            if p.pba == 0 || self.streams.iter().any(|s| s.buffered(p.pba).is_some()) {
                continue;
            }
            let (seg, slot) = split(p.pba);
            if self.read_groups(seg).len() < groups.len() {
                continue; // a stale or failed copy is resync's business, reported by status
            }
            let locs: Vec<(u16, u64)> = groups
                .iter()
                .filter_map(|&g| self.pvs.locate_in(g, seg))
                .filter_map(|(pv, s)| Some((pv, self.pvs.offset(pv, s, slot).ok()?)))
                .collect();
            let [(pa, oa), (pb, ob), ..] = locs[..] else {
                continue;
            };
            let ra = self.pvs.read(pa, oa, &mut a);
            let rb = self.pvs.read(pb, ob, &mut b);
            if ra.is_err() || rb.is_err() || a != b {
                rep.errors.push(format!(
                    "VBA {vba}: the copies on {} at offset {oa} and {} at offset {ob} differ or cannot be read",
                    self.pvs.name(pa),
                    self.pvs.name(pb),
                ));
            }
        }
    }
}
