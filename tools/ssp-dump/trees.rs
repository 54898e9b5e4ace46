//! The checkpoint's physical trees (FORMAT.md §4.1) — VBA table, segment table, volume
//! directory — and a volume's block map (§4.2), read from the PVs through [`PoolPvs::node`].

use crate::pvs::PoolPvs;
use anyhow::{Context, Result};
use ssp::format::checkpoint::Root;
use ssp::format::node::{
    decode_ptrs, decode_u64s, NodeKind, Ptr, SegEntry, VolRecord, MAP_FANOUT, MAP_ZERO, PTR_FANOUT,
    SEG_PER_PAGE, VOL_PER_PAGE,
};
use ssp::format::Rd;
use std::collections::HashMap;

/// Visit every leaf page of the tree at `root` in page order, as (page index, payload); one
/// page is held at a time.
pub fn for_each_leaf(
    pvs: &PoolPvs,
    root: &Root,
    kind: NodeKind,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    if root.depth == 0 {
        return Ok(());
    }
    let top = Ptr {
        pba: root.pba,
        crc: root.crc,
        aux: 0,
    };
    // Depth first, children pushed in reverse: leaves come out in page order.
    let mut stack = vec![(root.depth - 1, 0u64, top)];
    while let Some((level, id, ptr)) = stack.pop() {
        let (_, payload) = pvs.node(ptr.pba, ptr.crc, kind, level, id)?;
        if level == 0 {
            f(id, &payload)?;
            continue;
        }
        let children = decode_ptrs(&payload, PTR_FANOUT)?;
        for (j, c) in children.iter().enumerate().rev() {
            if !c.is_none() {
                stack.push((level - 1, id * PTR_FANOUT as u64 + j as u64, *c));
            }
        }
    }
    Ok(())
}

/// The VBA table, looked up one VBA at a time (FORMAT.md §3.6: entry `i` of leaf page `p` is
/// VBA `p*252 + i`); the pages read are kept, so a block map walk reads each page once.
pub struct VbaTable<'a> {
    pvs: &'a PoolPvs,
    /// (level, page index) → the page's 252 pointers.
    pages: HashMap<(u8, u64), Vec<Ptr>>,
}

impl<'a> VbaTable<'a> {
    pub fn new(pvs: &'a PoolPvs) -> Self {
        VbaTable {
            pvs,
            pages: HashMap::new(),
        }
    }

    fn page(&mut self, level: u8, id: u64, ptr: Ptr) -> Result<&Vec<Ptr>> {
        if !self.pages.contains_key(&(level, id)) {
            let (_, payload) = self
                .pvs
                .node(ptr.pba, ptr.crc, NodeKind::Vba, level, id)
                .context("VBA table")?;
            self.pages
                .insert((level, id), decode_ptrs(&payload, PTR_FANOUT)?);
        }
        Ok(&self.pages[&(level, id)])
    }

    /// The entry of `vba` (`aux` is its reference count); None if it is not allocated.
    pub fn get(&mut self, vba: u64) -> Result<Option<Ptr>> {
        let root = self.pvs.ckpt.vba_root;
        if root.depth == 0 {
            return Ok(None);
        }
        let fan = PTR_FANOUT as u64;
        let top = root.depth - 1;
        // Page index of `vba`'s ancestor at `level`.
        let at = |level: u8| (vba / fan).checked_div(fan.checked_pow(u32::from(level))?);
        if at(top) != Some(0) {
            return Ok(None);
        }
        let mut ptr = Ptr {
            pba: root.pba,
            crc: root.crc,
            aux: 0,
        };
        let mut level = top;
        loop {
            let id = at(level).unwrap_or(0);
            let page = self.page(level, id, ptr)?;
            let idx = if level == 0 {
                vba % fan
            } else {
                at(level - 1).unwrap_or(0) % fan
            };
            let e = page.get(idx as usize).copied().unwrap_or_default();
            if level == 0 {
                return Ok((e != Ptr::default()).then_some(e));
            }
            if e.is_none() {
                return Ok(None);
            }
            ptr = e;
            level -= 1;
        }
    }
}

/// Allocated VBAs (non-empty VBA-table entries), counted page by page.
pub fn vba_count(pvs: &PoolPvs) -> Result<u64> {
    let mut n = 0u64;
    for_each_leaf(pvs, &pvs.ckpt.vba_root, NodeKind::Vba, &mut |_, payload| {
        n += decode_ptrs(payload, PTR_FANOUT)?
            .iter()
            .filter(|p| **p != Ptr::default())
            .count() as u64;
        Ok(())
    })
    .context("VBA table")?;
    Ok(n)
}

/// The segment table: (pool segment, entry) for every segment.
pub fn segment_table(pvs: &PoolPvs) -> Result<Vec<(u64, SegEntry)>> {
    let mut t = Vec::new();
    for_each_leaf(
        pvs,
        &pvs.ckpt.segtab_root,
        NodeKind::SegTab,
        &mut |page, payload| {
            let mut r = Rd::new(payload, "segment table page");
            for i in 0..SEG_PER_PAGE {
                let e = SegEntry::decode(&mut r)?;
                let seg = page * SEG_PER_PAGE as u64 + i as u64;
                if seg >= 1 && seg <= pvs.ckpt.pool_segments {
                    t.push((seg, e));
                }
            }
            Ok(())
        },
    )
    .context("segment table")?;
    Ok(t)
}

/// The volume directory: every volume record.
pub fn volumes(pvs: &PoolPvs) -> Result<Vec<VolRecord>> {
    let mut v = Vec::new();
    for_each_leaf(
        pvs,
        &pvs.ckpt.voldir_root,
        NodeKind::VolDir,
        &mut |_, payload| {
            let mut r = Rd::new(payload, "volume directory page");
            for _ in 0..VOL_PER_PAGE {
                let rec = VolRecord::decode(&mut r)?;
                if rec.id != 0 {
                    v.push(rec);
                }
            }
            Ok(())
        },
    )
    .context("volume directory")?;
    Ok(v)
}

/// One block-map entry that names something.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MapEntry {
    /// Blocks `[lba, lba + blocks)` map data VBA `vba` (one block: `blocks` is 1).
    Data {
        lba: u64,
        vba: u64,
        pba: u64,
        crc: u32,
        refs: u32,
    },
    /// Blocks `[lba, lba + blocks)` are allocated and read as zeroes (a zero entry, §4.2).
    Zero { lba: u64, blocks: u64 },
}

/// Walk volume `v`'s block map; every data entry is resolved through the VBA table.
pub fn block_map(pvs: &PoolPvs, vba: &mut VbaTable, v: &VolRecord) -> Result<Vec<MapEntry>> {
    let mut out = Vec::new();
    if v.map_root == 0 {
        return Ok(out);
    }
    let fan = MAP_FANOUT as u64;
    // (node VBA, level, first LBA it covers)
    let mut stack = vec![(v.map_root, v.map_depth.saturating_sub(1), 0u64)];
    while let Some((node_vba, level, base)) = stack.pop() {
        let p = vba.get(node_vba)?.with_context(|| {
            format!(
                "map node VBA {node_vba} of volume {} is not in the VBA table",
                v.id
            )
        })?;
        let (_, payload) = pvs
            .node(p.pba, p.crc, NodeKind::Map, level, node_vba)
            .with_context(|| format!("block map of volume {}", v.id))?;
        let span = fan.pow(u32::from(level));
        let entries = decode_u64s(&payload, MAP_FANOUT)?;
        for (i, &e) in entries.iter().enumerate().rev() {
            let lba = base + i as u64 * span;
            match e {
                0 => {}
                MAP_ZERO => out.push(MapEntry::Zero { lba, blocks: span }),
                child if level > 0 => stack.push((child, level - 1, lba)),
                data => {
                    let d = vba.get(data)?.with_context(|| {
                        format!(
                            "volume {} LBA {lba} maps VBA {data}, which is not allocated",
                            v.id
                        )
                    })?;
                    out.push(MapEntry::Data {
                        lba,
                        vba: data,
                        pba: d.pba,
                        crc: d.crc,
                        refs: d.aux,
                    });
                }
            }
        }
    }
    out.sort_by_key(|e| match e {
        MapEntry::Data { lba, .. } | MapEntry::Zero { lba, .. } => *lba,
    });
    Ok(out)
}
