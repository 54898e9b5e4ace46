//! What ssp-dump prints: one JSON document (`--json`) or text, from the same values.

use crate::pvs::{hex, PoolPvs, Slot};
use crate::trees::{self, MapEntry};
use crate::Args;
use anyhow::{bail, Result};
use serde_json::{json, Value};
use ssp::format::checkpoint::{Checkpoint, Root};
use ssp::format::journal::{JournalBlock, Record};
use ssp::format::node::{
    SegEntry, VolRecord, SEG_DATA, SEG_FREE, SEG_META, VOL_IMAGE, VOL_LU, VOL_SNAPSHOT,
};
use ssp::format::superblock::Superblock;
use ssp::format::{Writer, BLOCK_U64};
use std::io::Write;

pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    let pvs = PoolPvs::open(&args.pvs)?;
    let vba_allocated = trees::vba_count(&pvs)?;
    let segs = trees::segment_table(&pvs)?;
    let vols = trees::volumes(&pvs)?;
    let journal = journal(&pvs);
    let map = match &args.volume {
        None => None,
        Some(want) => {
            let found = vols.iter().find(|v| v.name == *want).or_else(|| {
                let id: u64 = want.parse().ok()?;
                vols.iter().find(|v| v.id == id)
            });
            let Some(v) = found else {
                let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
                bail!(
                    "no volume {want:?} in the pool (volumes: {})",
                    names.join(", ")
                );
            };
            Some((
                v,
                trees::block_map(&pvs, &mut trees::VbaTable::new(&pvs), v)?,
            ))
        }
    };
    let doc = json!({
        "pool": {
            "name": pvs.pvs.first().map(|p| p.sb.pool_name.clone()),
            "pool_id": hex(&pvs.pool_id),
            "pvs_given": pvs.pvs.len(),
            "pv_count": pvs.ckpt.pv_count,
            "checkpoint_from": {"pv_index": pvs.ckpt_from.0, "offset": pvs.ckpt_from.1},
        },
        "pvs": pvs.pvs.iter().map(|p| json!({
            "path": p.path.display().to_string(),
            "superblocks": p.superblocks.iter().map(|s| slot_json(s, sb_json)).collect::<Vec<_>>(),
            "checkpoint_slots": p.checkpoints.iter().map(|s| slot_json(s, ckpt_json)).collect::<Vec<_>>(),
            "directory_copy_slots": p.directory_copies().iter().map(|s| slot_json(s, dircopy_json)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "directory_copy": pvs.pvs.iter()
            .flat_map(|p| p.directory_copies().into_iter().filter_map(|s| s.found.ok()))
            .max_by_key(|d| d.generation)
            .map(|d| dircopy_json(&d)),
        "checkpoint": ckpt_json(&pvs.ckpt),
        "journal": journal,
        "vba_table": {"allocated": vba_allocated},
        "segments": segs.iter().filter(|(_, e)| *e != SegEntry::default())
            .map(|(s, e)| seg_json(*s, e)).collect::<Vec<_>>(),
        "segments_free": segs.iter().filter(|(_, e)| e.state == SEG_FREE).count(),
        "volumes": vols.iter().map(vol_json).collect::<Vec<_>>(),
        "block_map": map.as_ref().map(|(v, m)| json!({
            "volume": v.name,
            "id": v.id,
            "data_blocks": m.iter().filter(|e| matches!(e, MapEntry::Data { .. })).count(),
            "entries": m,
        })),
    });
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
    } else {
        text(&doc, out)?;
    }
    Ok(())
}

/// A pool directory copy: generation, the exported flag, and its files (text when UTF-8).
fn dircopy_json(d: &ssp::format::dircopy::DirCopy) -> Value {
    json!({
        "generation": d.generation,
        "exported": d.exported(),
        "files": d.files.iter().map(|(name, bytes)| json!({
            "name": name,
            "bytes": bytes.len(),
            "text": std::str::from_utf8(bytes).ok(),
        })).collect::<Vec<_>>(),
    })
}

fn slot_json<T>(s: &Slot<T>, f: fn(&T) -> Value) -> Value {
    match &s.found {
        Ok(v) => json!({"offset": s.offset, "valid": true, "value": f(v)}),
        Err(e) => json!({"offset": s.offset, "valid": false, "error": e}),
    }
}

fn writer(w: &Writer) -> String {
    format!("{}:{}:{}", w.host_id, w.incarnation, w.fencing_epoch)
}

fn sb_json(sb: &Superblock) -> Value {
    json!({
        "generation": sb.generation,
        "pool_name": sb.pool_name,
        "pool_id": hex(&sb.pool_id),
        "pv_id": hex(&sb.pv_id),
        "pv_index": sb.pv_index,
        "fg_id": sb.fg_id,
        "fg_name": sb.fg_name,
        "pv_size": sb.pv_size,
        "incompat": sb.incompat,
        "compat": sb.compat,
        "ro_compat": sb.ro_compat,
        "journal_offset": sb.journal_offset,
        "journal_blocks": sb.journal_blocks,
        "data_offset": sb.data_offset,
        "pv_segments": sb.pv_segments,
        "first_pool_segment": sb.first_pool_segment,
        "created": sb.created,
        "writer": writer(&sb.writer),
    })
}

fn root_json(r: &Root) -> Value {
    json!({"pba": r.pba, "crc": r.crc, "depth": r.depth})
}

fn ckpt_json(c: &Checkpoint) -> Value {
    json!({
        "generation": c.generation,
        "writer": writer(&c.writer),
        "timestamp": c.timestamp,
        "journal_seq": c.journal_seq,
        "journal_pos": c.journal_pos,
        "journal_pv": c.journal_pv,
        "next_vba": c.next_vba,
        "next_node_vba": c.next_node_vba,
        "next_volume_id": c.next_volume_id,
        "epoch": c.epoch,
        "pool_segments": c.pool_segments,
        "pv_count": c.pv_count,
        "vba_root": root_json(&c.vba_root),
        "segtab_root": root_json(&c.segtab_root),
        "voldir_root": root_json(&c.voldir_root),
        "pv_table": c.pv_table.iter().map(|p| json!({
            "pv_index": p.pv_index, "fg_id": p.fg_id, "first_pool_segment": p.first_pool_segment,
            "pv_segments": p.pv_segments, "failed": p.flags & 1 != 0,
        })).collect::<Vec<_>>(),
        "seal": c.seal.as_ref().map(|s| s.to_string()),
    })
}

fn vol_kind(k: u8) -> String {
    match k {
        VOL_LU => "lu".into(),
        VOL_SNAPSHOT => "snapshot".into(),
        VOL_IMAGE => "image".into(),
        other => format!("kind{other}"),
    }
}

fn vol_json(v: &VolRecord) -> Value {
    json!({
        "id": v.id,
        "name": v.name,
        "kind": vol_kind(v.kind),
        "size": v.size,
        "parent": v.parent,
        "family": v.family,
        "flags": v.flags,
        "map_depth": v.map_depth,
        "map_root": v.map_root,
        "mapped_blocks": v.mapped_blocks,
        "owned_blocks": v.owned_blocks,
        "udid": hex(&v.udid),
        "created_epoch": v.created_epoch,
        "created_time": v.created_time,
    })
}

fn seg_json(seg: u64, e: &SegEntry) -> Value {
    json!({
        "segment": seg,
        "state": match e.state { SEG_FREE => "free", SEG_DATA => "data", SEG_META => "meta", _ => "invalid" },
        "flags": e.flags,
        "stream": match e.stream { 1 => "data", 2 => "meta", 3 => "cleaner", _ => "unknown" },
        "live": e.live,
        "seq": e.seq,
        "summary": e.summary,
        "owner": format!("{}:{}", e.owner_host, e.owner_incarnation),
    })
}

fn record_json(r: &Record) -> Value {
    match r {
        Record::Write {
            vol,
            lba,
            vba,
            pba,
            crc,
        } => {
            json!({"kind": "write", "vol": vol, "lba": lba, "vba": vba, "pba": pba, "crc": crc})
        }
        Record::Unmap { vol, lba, count } => {
            json!({"kind": "unmap", "vol": vol, "lba": lba, "count": count})
        }
        Record::Zero { vol, lba, count } => {
            json!({"kind": "zero", "vol": vol, "lba": lba, "count": count})
        }
        Record::VolCreate {
            id,
            kind,
            size,
            udid,
            name,
        } => json!({"kind": "vol_create", "id": id,
            "vol_kind": vol_kind(*kind), "size": size, "udid": hex(udid), "name": name}),
        Record::VolResize { id, size } => json!({"kind": "vol_resize", "id": id, "size": size}),
        Record::VolRemove { id } => json!({"kind": "vol_remove", "id": id}),
        Record::VolProvision { id, thick } => {
            json!({"kind": "vol_provision", "id": id, "thick": thick != &0})
        }
        Record::GcMove {
            vba,
            old_pba,
            new_pba,
            crc,
        } => json!({"kind": "gc_move", "vba": vba,
            "old_pba": old_pba, "new_pba": new_pba, "crc": crc}),
        Record::VolShare {
            id,
            src,
            kind,
            udid,
            name,
        } => json!({"kind": "vol_share", "id": id,
            "src": src, "vol_kind": vol_kind(*kind), "udid": hex(udid), "name": name}),
        Record::VolRollback {
            id,
            src,
            undo_id,
            undo_udid,
            undo_name,
        } => json!({
            "kind": "vol_rollback", "id": id, "src": src, "undo_id": undo_id,
            "undo_udid": hex(undo_udid), "undo_name": undo_name}),
        Record::VolRename { id, name } => json!({"kind": "vol_rename", "id": id, "name": name}),
        Record::SegStale { seg, fg, stale } => {
            json!({"kind": "seg_stale", "seg": seg, "fg": fg, "stale": stale})
        }
        Record::PvState { pv, failed } => json!({"kind": "pv_state", "pv": pv, "failed": failed}),
    }
}

/// Every journal block in the ring of the checkpoint's journal PV that verifies, by sequence
/// number. `state`: "applied" (before the checkpoint), "replay" (the chain an open would replay:
/// from the checkpoint's position, consecutive, stamped by its writer) or "stale" (an older lap
/// or another writer's).
fn journal(pvs: &PoolPvs) -> Value {
    let c = &pvs.ckpt;
    let Some(pv) = pvs.pv(c.journal_pv) else {
        return json!({"pv_index": c.journal_pv, "error": "the journal PV was not given"});
    };
    let (off, n) = (pv.sb.journal_offset, pv.sb.journal_blocks);
    let mut found: Vec<(u64, JournalBlock)> = Vec::new();
    let mut unreadable = 0u64;
    for pos in 0..n {
        match pv.read(off + pos * BLOCK_U64) {
            Ok(b) => {
                if let Ok(jb) = JournalBlock::decode(&b, &pvs.pool_id) {
                    found.push((pos, jb));
                }
            }
            Err(_) => unreadable += 1,
        }
    }
    // The replay chain: consecutive sequence numbers from the checkpoint's position.
    let mut replay = std::collections::BTreeSet::new();
    let (mut pos, mut seq) = (c.journal_pos, c.journal_seq);
    while let Some((_, jb)) = found.iter().find(|(p, _)| *p == pos) {
        if jb.seq != seq || !jb.writer.same_process(&c.writer) || replay.len() as u64 >= n {
            break;
        }
        replay.insert(seq);
        seq += 1;
        pos = (pos + 1) % n.max(1);
    }
    found.sort_by_key(|(_, jb)| jb.seq);
    json!({
        "pv_index": c.journal_pv,
        "ring_blocks": n,
        "valid_blocks": found.len(),
        "unreadable_blocks": unreadable,
        "replay_from_seq": c.journal_seq,
        "replay_blocks": replay.len(),
        "blocks": found.iter().map(|(pos, jb)| json!({
            "pos": pos,
            "seq": jb.seq,
            "writer": writer(&jb.writer),
            "ckpt_generation": jb.ckpt_generation,
            "durable_seq": jb.durable_seq,
            "state": if replay.contains(&jb.seq) { "replay" }
                     else if jb.seq < c.journal_seq { "applied" } else { "stale" },
            "records": jb.records.iter().map(record_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// `k=v` pairs of a JSON object, in order, skipping `skip`.
fn fields(v: &Value, skip: &[&str]) -> String {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !skip.contains(&k.as_str()))
                .map(|(k, v)| match v {
                    Value::Object(_) => format!("{k}=[{}]", fields(v, &[])),
                    _ => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn text(d: &Value, out: &mut dyn Write) -> Result<()> {
    let p = &d["pool"];
    writeln!(
        out,
        "Pool {} id {} ({} of {} PVs given); newest checkpoint: PV {} at byte {}",
        p["name"],
        p["pool_id"].as_str().unwrap_or(""),
        p["pvs_given"],
        p["pv_count"],
        p["checkpoint_from"]["pv_index"],
        p["checkpoint_from"]["offset"]
    )?;
    for pv in d["pvs"].as_array().into_iter().flatten() {
        writeln!(out, "\nPV {}", pv["path"].as_str().unwrap_or(""))?;
        for (what, key) in [
            ("superblock", "superblocks"),
            ("checkpoint", "checkpoint_slots"),
            ("directory copy", "directory_copy_slots"),
        ] {
            for s in pv[key].as_array().into_iter().flatten() {
                if s["valid"] == true {
                    writeln!(
                        out,
                        "  {what} @{}: {}",
                        s["offset"],
                        fields(&s["value"], &[])
                    )?;
                } else {
                    writeln!(
                        out,
                        "  {what} @{}: INVALID: {}",
                        s["offset"],
                        s["error"].as_str().unwrap_or("")
                    )?;
                }
            }
        }
    }
    writeln!(
        out,
        "\nCheckpoint: {}",
        fields(&d["checkpoint"], &["pv_table"])
    )?;
    for e in d["checkpoint"]["pv_table"].as_array().into_iter().flatten() {
        writeln!(out, "  pv_table: {}", fields(e, &[]))?;
    }
    let j = &d["journal"];
    writeln!(out, "\nJournal: {}", fields(j, &["blocks"]))?;
    for b in j["blocks"].as_array().into_iter().flatten() {
        writeln!(out, "  block {}", fields(b, &["records"]))?;
        for r in b["records"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "    {} {}",
                r["kind"].as_str().unwrap_or(""),
                fields(r, &["kind"])
            )?;
        }
    }
    let segs = d["segments"].as_array().map_or(0, Vec::len);
    writeln!(
        out,
        "\nSegments: {segs} in use or marked, {} free; VBA table: {} allocated",
        d["segments_free"], d["vba_table"]["allocated"]
    )?;
    for s in d["segments"].as_array().into_iter().flatten() {
        writeln!(out, "  {}", fields(s, &[]))?;
    }
    writeln!(out, "\nVolumes:")?;
    for v in d["volumes"].as_array().into_iter().flatten() {
        writeln!(out, "  {}", fields(v, &[]))?;
    }
    if let Some(m) = d["block_map"].as_object() {
        writeln!(
            out,
            "\nBlock map of {} (id {}): {} data blocks",
            m["volume"], m["id"], m["data_blocks"]
        )?;
        for e in m["entries"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  {} {}",
                e["type"].as_str().unwrap_or(""),
                fields(e, &["type"])
            )?;
        }
    }
    Ok(())
}
