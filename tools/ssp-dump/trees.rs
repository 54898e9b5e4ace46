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
use std::collections::BTreeMap;

/// Every leaf page of the tree at `root`, as (page index, payload).
pub fn leaf_pages(pvs: &PoolPvs, root: &Root, kind: NodeKind) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    if root.depth == 0 {
        return Ok(out);
    }
    let mut stack = vec![(
        root.depth - 1,
        0u64,
        Ptr {
            pba: root.pba,
            crc: root.crc,
            aux: 0,
        },
    )];
    while let Some((level, id, ptr)) = stack.pop() {
        let (_, payload) = pvs.node(ptr.pba, ptr.crc, kind, level, id)?;
        if level == 0 {
            out.push((id, payload));
            continue;
        }
        let children = decode_ptrs(&payload, PTR_FANOUT)?;
        for (j, c) in children.iter().enumerate().rev() {
            if !c.is_none() {
                stack.push((level - 1, id * PTR_FANOUT as u64 + j as u64, *c));
            }
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

/// The VBA table: every allocated VBA's entry (`aux` is its reference count).
pub fn vba_table(pvs: &PoolPvs) -> Result<BTreeMap<u64, Ptr>> {
    let mut t = BTreeMap::new();
    for (page, payload) in
        leaf_pages(pvs, &pvs.ckpt.vba_root, NodeKind::Vba).context("VBA table")?
    {
        for (i, p) in decode_ptrs(&payload, PTR_FANOUT)?.into_iter().enumerate() {
            if p != Ptr::default() {
                t.insert(page * PTR_FANOUT as u64 + i as u64, p);
            }
        }
    }
    Ok(t)
}

/// The segment table: (pool segment, entry) for every segment.
pub fn segment_table(pvs: &PoolPvs) -> Result<Vec<(u64, SegEntry)>> {
    let mut t = Vec::new();
    for (page, payload) in
        leaf_pages(pvs, &pvs.ckpt.segtab_root, NodeKind::SegTab).context("segment table")?
    {
        let mut r = Rd::new(&payload, "segment table page");
        for i in 0..SEG_PER_PAGE {
            let e = SegEntry::decode(&mut r)?;
            let seg = page * SEG_PER_PAGE as u64 + i as u64;
            if seg >= 1 && seg <= pvs.ckpt.pool_segments {
                t.push((seg, e));
            }
        }
    }
    Ok(t)
}

/// The volume directory: every volume record.
pub fn volumes(pvs: &PoolPvs) -> Result<Vec<VolRecord>> {
    let mut v = Vec::new();
    for (_, payload) in
        leaf_pages(pvs, &pvs.ckpt.voldir_root, NodeKind::VolDir).context("volume directory")?
    {
        let mut r = Rd::new(&payload, "volume directory page");
        for _ in 0..VOL_PER_PAGE {
            let rec = VolRecord::decode(&mut r)?;
            if rec.id != 0 {
                v.push(rec);
            }
        }
    }
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
pub fn block_map(pvs: &PoolPvs, vba: &BTreeMap<u64, Ptr>, v: &VolRecord) -> Result<Vec<MapEntry>> {
    let mut out = Vec::new();
    if v.map_root == 0 {
        return Ok(out);
    }
    let fan = MAP_FANOUT as u64;
    // (node VBA, level, first LBA it covers)
    let mut stack = vec![(v.map_root, v.map_depth.saturating_sub(1), 0u64)];
    while let Some((node_vba, level, base)) = stack.pop() {
        let p = vba.get(&node_vba).with_context(|| {
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
                    let d = vba.get(&data).with_context(|| {
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
