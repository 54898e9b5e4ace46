//! Full consistency check: every checksum, every map entry, reference counts, live-block counts
//! and free space recomputed from scratch and compared with what the pool records.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use super::pvs::split;
use super::resident::{MapSource, Uncached};
use super::scrub::SLICE_BLOCKS;
use super::share::recount_owned_in;
use super::Pool;
use crate::format::node::{decode_node, NodeKind, Ptr, MAP_ZERO, SEG_FREE};
use crate::format::superblock::{Superblock, SB_OFFSETS};
use crate::format::{data_crc, BLOCK, INCOMPAT_ZERO};
use rustc_hash::FxHashMap as HashMap;

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

/// What the second stage of a check verifies in a block.
enum What {
    /// A data block of LU `vol` at `lba` (for messages): its checksum.
    Data { vol: u64, lba: u64 },
    /// A metadata node: it decodes, carries the checksum its parent holds and is the node
    /// expected there. `label` starts the error message.
    Node {
        kind: NodeKind,
        level: u8,
        id: u64,
        label: String,
    },
}

/// A block the second stage of a check reads, as the first stage found it.
struct ReadCheck {
    ptr: Ptr,
    /// The sequence number of its segment then: a segment since freed and reused (another
    /// number) no longer holds it, and the block is skipped.
    seq: u64,
    what: What,
    /// In a mirrored pool, VBA `Some(vba)`'s copies are compared too.
    compare: Option<u64>,
}

/// Whether `buf` is the node `ptr` names (what `Inner::read_node` and the check's second stage
/// verify), for messages at `at` (device, offset).
pub(super) fn check_node_bytes(
    pid: &[u8; 16],
    at: &(String, u64),
    buf: &[u8],
    ptr: Ptr,
    kind: NodeKind,
    level: u8,
    id: u64,
) -> std::result::Result<(), PoolError> {
    let (dev, off) = (at.0.clone(), at.1);
    let (h, _) = decode_node(buf, pid).map_err(|e| PoolError::Corrupt {
        dev: dev.clone(),
        offset: off,
        source: e,
    })?;
    let stored = buf
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes);
    if stored != ptr.crc {
        return Err(PoolError::Checksum {
            dev,
            offset: off,
            what: format!("{kind:?} node {level}/{id}: parent expects another version"),
            stored,
            computed: ptr.crc,
        });
    }
    if h.kind != kind || h.level != level || h.id != id {
        return Err(PoolError::Corrupt {
            dev,
            offset: off,
            source: crate::format::FormatError::Invalid {
                what: "metadata node",
                field: "identity",
                detail: format!(
                    "found {:?} {}/{} where {kind:?} {level}/{id} was expected",
                    h.kind, h.level, h.id
                ),
            },
        });
    }
    Ok(())
}

impl Pool {
    /// Full consistency check of the pool as it is now. The first stage (map walk, reference
    /// counts, owned/shared and live counts, summaries) runs under the pool lock's shared side,
    /// so it sees one state while readers go on; metadata not in memory is read without being
    /// cached. It lists the blocks to read. The second reads them in slices of at most
    /// [`SLICE_BLOCKS`] blocks: the lock is taken to plan a slice, and the data checksums,
    /// metadata nodes and, in a mirrored pool, copy comparisons are checked outside it, with
    /// the `reuse` pin held so no segment read is reused meanwhile. A block whose segment was
    /// freed and reused since the first stage is skipped: it is no longer part of the pool.
    pub fn check(&self) -> Result<CheckReport> {
        let t = std::time::Instant::now();
        let (mut rep, work) = self.shared().check_meta()?;
        tracing::debug!(
            "check: first stage {:?}, {} blocks to read",
            t.elapsed(),
            work.len()
        );
        for slice in work.chunks(SLICE_BLOCKS) {
            self.check_slice(slice, &mut rep)?;
        }
        tracing::debug!("check: done in {:?}", t.elapsed());
        Ok(rep)
    }

    fn check_slice(&self, slice: &[ReadCheck], rep: &mut CheckReport) -> Result<()> {
        /// One block the slice reads outside the lock.
        struct Planned<'a> {
            item: &'a ReadCheck,
            /// Copies to read, preferred first.
            copies: Vec<(u16, u64)>,
            /// Both copies are read and compared (mirrored pool, segment whole in each group).
            compare: bool,
            /// For messages: the LU, and where the block lives.
            vol: String,
            at: (String, u64),
        }
        let g = self.lock();
        let ngroups = g.pvs.groups().len();
        let mirrored = g.pvs.mirrored();
        let mut plan = Vec::with_capacity(slice.len());
        for item in slice {
            let pba = item.ptr.pba;
            let (seg, _) = split(pba);
            let e = g.seg(seg);
            if e.state == SEG_FREE || e.seq != item.seq {
                continue; // freed and reused since the first stage
            }
            let vol = match item.what {
                What::Data { vol, .. } => g.vol_name(vol),
                What::Node { .. } => String::new(),
            };
            if let Some(b) = g
                .streams
                .iter()
                .find_map(|s| s.buffered(pba).map(<[u8]>::to_vec))
                .or_else(|| g.outbound.block(pba))
            {
                // Not on disk yet: checked from memory; no copies to compare.
                let at = g.describe(pba);
                check_block(&g.pool_id, item, &b, &vol, &at, rep, true);
                continue;
            }
            let copies = match g.copies(pba) {
                Ok(c) => c,
                Err(e) => {
                    report_unreadable(item, &vol, &e.to_string(), rep);
                    continue;
                }
            };
            let compare = mirrored
                && item.compare.is_some()
                && g.read_groups(seg).len() >= ngroups
                && copies.len() >= 2;
            plan.push(Planned {
                item,
                copies,
                compare,
                vol,
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
        let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; BLOCK]; 2];
        for p in plan {
            // Both copies when comparing, and of a node (a read falls back to the other copy
            // when one fails its checks); else the first that reads. The block passes if a
            // copy that reads passes, as a read through the pool would.
            let want = if p.compare || matches!(p.item.what, What::Node { .. }) {
                2
            } else {
                1
            };
            let mut got: Vec<usize> = Vec::new();
            let mut first_err = None;
            for (k, &(pv, off)) in p.copies.iter().enumerate() {
                if got.len() >= want {
                    break;
                }
                let slot = got.len();
                let Some(buf) = bufs.get_mut(slot) else { break };
                match read(pv, off, buf) {
                    Ok(()) => got.push(k),
                    Err(e) => {
                        mirror.found();
                        first_err.get_or_insert(e);
                    }
                }
            }
            let readable: Vec<&[u8]> = bufs.iter().take(got.len()).map(Vec::as_slice).collect();
            match readable.first() {
                None => report_unreadable(
                    p.item,
                    &p.vol,
                    &first_err.unwrap_or_else(|| "no copy".into()),
                    rep,
                ),
                Some(first) => {
                    // A node passes if any copy that reads does (a read repairs from it).
                    let ok_any = readable.iter().any(|b| {
                        check_block(
                            &pid,
                            p.item,
                            b,
                            &p.vol,
                            &p.at,
                            &mut CheckReport::default(),
                            false,
                        )
                    });
                    if !ok_any {
                        check_block(&pid, p.item, first, &p.vol, &p.at, rep, true);
                    }
                }
            }
            if p.compare {
                let differ = readable.len() < 2 || readable.first() != readable.get(1);
                if differ {
                    let loc = |i: usize| p.copies.get(i).copied().unwrap_or((0, 0));
                    let ((pa, oa), (pb, ob)) = (loc(0), loc(1));
                    rep.errors.push(format!(
                        "VBA {}: the copies on {} at offset {oa} and {} at offset {ob} differ or cannot be read",
                        p.item.compare.unwrap_or(0),
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

/// Check `buf` as `item` expects; with `report`, a failure goes to `rep`. Returns whether it
/// passed.
fn check_block(
    pid: &[u8; 16],
    item: &ReadCheck,
    buf: &[u8],
    vol: &str,
    at: &(String, u64),
    rep: &mut CheckReport,
    report: bool,
) -> bool {
    let err = match &item.what {
        What::Data { lba, .. } => {
            let c = data_crc(pid, buf);
            (c != item.ptr.crc).then(|| format!(
                "data block {lba} of {vol} on {} at offset {}: checksum mismatch (stored {:#010x}, computed {c:#010x})",
                at.0, at.1, item.ptr.crc
            ))
        }
        What::Node {
            kind,
            level,
            id,
            label,
        } => check_node_bytes(pid, at, buf, item.ptr, *kind, *level, *id)
            .err()
            .map(|e| format!("{label}: {e}")),
    };
    match err {
        None => true,
        Some(m) => {
            if report {
                rep.errors.push(m);
            }
            false
        }
    }
}

/// No copy of `item` could be read.
fn report_unreadable(item: &ReadCheck, vol: &str, e: &str, rep: &mut CheckReport) {
    rep.errors.push(match &item.what {
        What::Data { lba, .. } => format!("data block {lba} of {vol}: {e}"),
        What::Node { label, .. } => format!("{label}: {e}"),
    });
}

impl Inner {
    /// The first stage of [`Pool::check`]: everything but reading data blocks, which it lists.
    ///
    /// It runs under the pool lock's shared side and changes nothing: metadata that is not
    /// resident is read from disk without caching it, so readers go on meanwhile.
    fn check_meta(&self) -> Result<(CheckReport, Vec<ReadCheck>)> {
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

        // The VBA table, read once: the map walk looks nodes up in it.
        let mut entries: Vec<(u64, Ptr)> = Vec::new();
        self.vba
            .for_each_shared(self, &mut |i, p| entries.push((i, *p)))?;
        let table: HashMap<u64, Ptr> = entries.iter().copied().collect();
        let mut src = Uncached {
            inner: self,
            table: &table,
        };

        // Walk every volume's map: count references, remember one user of each data block.
        let mut refs: HashMap<u64, u32> = HashMap::default();
        let mut node_level: HashMap<u64, u8> = HashMap::default();
        let mut user: HashMap<u64, (u64, u64)> = HashMap::default();
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
                    let entries = match src.with_node(vba, level, |n| n.entries.clone()) {
                        Ok(Some(n)) => n,
                        Ok(None) => continue, // an uncached walk always finds the node
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
        match recount_owned_in(&mut src, &self.vol_roots()) {
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
        let mut live: HashMap<u64, u32> = HashMap::default();
        let mut summaries: HashMap<u64, Option<Vec<u64>>> = HashMap::default();
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
            let seq = self.seg(split(p.pba).0).seq;
            let compare = mirrored.then_some(vba);
            if let Some(&level) = node_level.get(&vba) {
                work.push(ReadCheck {
                    ptr: p,
                    seq,
                    what: What::Node {
                        kind: NodeKind::Map,
                        level,
                        id: vba,
                        label: format!("map node VBA {vba}"),
                    },
                    compare,
                });
            } else {
                rep.data_blocks += 1;
                let (vol, lba) = user.get(&vba).copied().unwrap_or((0, 0));
                work.push(ReadCheck {
                    ptr: p,
                    seq,
                    what: What::Data { vol, lba },
                    compare,
                });
                let (seg, slot) = split(p.pba);
                let tags = summaries
                    .entry(seg)
                    .or_insert_with(|| self.summary_tags(seg).ok());
                if let Some(tags) = tags {
                    let tag = tags.get(slot as usize).copied().unwrap_or(0);
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
                self.$f
                    .for_each_page_shared(self, &mut |l, i, p| pages.push(($k, l, i, p)))?;
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
            work.push(ReadCheck {
                ptr: p,
                seq: self.seg(split(p.pba).0).seq,
                what: What::Node {
                    kind,
                    level,
                    id,
                    label: format!("{kind:?} page {level}/{id}"),
                },
                compare: None,
            });
        }

        // Live counts and free space. Segments a checkpoint recorded free join the free list
        // when it is committed: until then they count as free.
        let pending_free: std::collections::BTreeSet<u64> = self
            .carried_free
            .iter()
            .chain(self.bg_ckpt.iter().flat_map(|(c, _)| c.to_free()))
            .copied()
            .collect();
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
            let listed = self.free.contains(&seg) || pending_free.contains(&seg);
            if (e.state == SEG_FREE) != listed {
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
