//! Seals (FORMAT.md §7.3): replay of the last writer's journal stops at a given seal (writer
//! stamp + journal sequence) or, by default, at the end of that writer's log, which also ends
//! at the first block another writer stamped. Journal tails are crafted as raw bytes on the PV
//! file; the pool is driven through the `sspctl` binary.

mod common;
use common::server::{make_pool, nbdsh, sspctl, sspctl_fails, Server};
use ssp::format::checkpoint::{Checkpoint, CKPT_OFFSETS};
use ssp::format::journal::{JournalBlock, Record};
use ssp::format::superblock::{Superblock, SB_OFFSETS};
use ssp::format::{Seal, Writer, RO_COMPAT_SEAL};
use std::os::unix::fs::FileExt;
use std::path::Path;

fn read_at(pv: &Path, off: u64) -> Vec<u8> {
    let f = std::fs::File::open(pv).unwrap();
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, off).unwrap();
    b
}

fn write_at(pv: &Path, off: u64, b: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(pv).unwrap();
    f.write_all_at(b, off).unwrap();
    f.sync_all().unwrap();
}

/// The PV's superblock and newest checkpoint (with the slot offset it sits at).
fn state(pv: &Path) -> (Superblock, Checkpoint, u64) {
    let sb = Superblock::decode(&read_at(pv, 0)).unwrap();
    let ck = CKPT_OFFSETS
        .iter()
        .filter_map(|&o| {
            Checkpoint::decode(&read_at(pv, o), &sb.pool_id)
                .ok()
                .map(|c| (c, o))
        })
        .max_by_key(|(c, _)| c.generation)
        .unwrap();
    (sb, ck.0, ck.1)
}

/// Write journal block `k` after the checkpoint: sequence `seq`, stamped `writer`, creating
/// the LU `name` (id `id`).
fn put_block(pv: &Path, k: u64, seq: u64, writer: Writer, id: u64, name: &str) {
    let (sb, ck, _) = state(pv);
    let jb = JournalBlock {
        seq,
        writer,
        ckpt_generation: ck.generation,
        durable_seq: seq,
        records: vec![Record::VolCreate {
            id,
            kind: 1,
            size: 1 << 20,
            udid: [id as u8; 16],
            name: name.into(),
        }],
    };
    let pos = (ck.journal_pos + k) % sb.journal_blocks;
    write_at(pv, sb.journal_offset + pos * 4096, &jb.encode(&sb.pool_id));
}

fn lus(pool: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&sspctl(pool, &["--json", "lu", "list"])).unwrap();
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn seal(w: Writer, seq: u64) -> Seal {
    Seal {
        writer: w,
        journal_seq: seq,
    }
}

#[test]
fn replay_stops_at_a_seal_and_ignores_a_stale_writer() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[]);
    let pv = dir.path().join("pv0.img");
    let (sb, ck, _) = state(&pv);
    assert_eq!(sb.ro_compat, RO_COMPAT_SEAL, "new pools carry the seal bit");
    let w = ck.writer;
    let (s0, id) = (ck.journal_seq, ck.next_volume_id);
    // The last writer's log: three blocks, each creating one LU.
    for (k, name) in ["a", "b", "c"].iter().enumerate() {
        let k = k as u64;
        put_block(&pv, k, s0 + k, w, id + k, name);
    }
    // Read-only: the log ends at its third block.
    let end = sspctl(&pool, &["debug", "seal"]);
    assert_eq!(end.trim(), seal(w, s0 + 2).to_string());
    let st = sspctl(&pool, &["pool", "status"]);
    assert!(
        st.contains(&format!("Journal Ends At:   {}", seal(w, s0 + 2))),
        "{st}"
    );

    // A seal that does not name the log's writer, or lies past its end, is refused.
    let stale = Writer {
        incarnation: w.incarnation - 1,
        ..w
    };
    let e = sspctl_fails(
        &pool,
        &["debug", "seal", "--to", &seal(stale, s0 + 1).to_string()],
    );
    assert!(e.contains("cannot replay up to seal"), "{e}");
    let e = sspctl_fails(
        &pool,
        &["debug", "seal", "--to", &seal(w, s0 + 5).to_string()],
    );
    assert!(e.contains("ends at block"), "{e}");

    // Replay up to the second block: c is never created.
    let at = seal(w, s0 + 1).to_string();
    let out = sspctl(&pool, &["debug", "seal", "--to", &at]);
    assert_eq!(out.trim(), at);
    assert_eq!(lus(&pool), ["a", "b"]);
    // The checkpoint the open committed records the seal, under a new incarnation and epoch.
    let (_, ck2, _) = state(&pv);
    assert_eq!(ck2.seal, Some(seal(w, s0 + 1)));
    assert_eq!(ck2.writer.incarnation, w.incarnation + 1);
    assert_eq!(ck2.writer.fencing_epoch, w.fencing_epoch + 1);
    let st = sspctl(&pool, &["pool", "status"]);
    assert!(st.contains(&format!("Opened At Seal:    {at}")), "{st}");
    assert!(
        st.contains(&format!(
            "Writer:            host {:08x}, incarnation {}, epoch {}",
            ck2.writer.host_id, ck2.writer.incarnation, ck2.writer.fencing_epoch
        )),
        "{st}"
    );
    let js: serde_json::Value =
        serde_json::from_str(&sspctl(&pool, &["--json", "pool", "status"])).unwrap();
    assert_eq!(js["seal"]["journal_seq"], s0 + 1);
    assert_eq!(js["writer"]["incarnation"], ck2.writer.incarnation);

    // The old writer, still running, appends after the new incarnation's seal — in the very
    // place and with the very sequence number the new log continues with. It is ignored.
    let w2 = ck2.writer;
    let s1 = ck2.journal_seq;
    put_block(&pv, 0, s1, w, ck2.next_volume_id, "zombie");
    put_block(&pv, 1, s1 + 1, w, ck2.next_volume_id + 1, "zombie2");
    assert_eq!(lus(&pool), ["a", "b"]);
    let end = sspctl(&pool, &["debug", "seal"]);
    assert_eq!(end.trim(), seal(w2, s1 - 1).to_string());
    // Nor can a seal take it in.
    sspctl_fails(&pool, &["debug", "seal", "--to", &seal(w, s1).to_string()]);

    // The new writer's own block there is replayed; a torn block after it ends the log as
    // before.
    put_block(&pv, 0, s1, w2, ck2.next_volume_id, "d");
    let (sb2, _, _) = state(&pv);
    let torn_pos = (ck2.journal_pos + 1) % sb2.journal_blocks;
    let mut torn = read_at(&pv, sb2.journal_offset + (ck2.journal_pos) * 4096);
    torn[2048..].fill(0x5a);
    write_at(&pv, sb2.journal_offset + torn_pos * 4096, &torn);
    let end = sspctl(&pool, &["debug", "seal"]);
    assert_eq!(end.trim(), seal(w2, s1).to_string());
    assert_eq!(lus(&pool), ["a", "b", "d"]);
    sspctl(&pool, &["lu", "create", "e", "--size", "1M"]);
    assert_eq!(lus(&pool), ["a", "b", "d", "e"]);
    assert!(sspctl(&pool, &["check"]).contains("OK"));
}

/// A pool as the previous format wrote it: no `RO_COMPAT_SEAL`, no seal in the checkpoint,
/// fencing epoch 1. It opens, replays its tail, and keeps its format (the seal stays in memory).
#[test]
fn a_pool_from_before_seals_opens_and_stays_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[("x", "1M")]);
    let pv = dir.path().join("pv0.img");
    let (mut sb, mut ck, slot) = state(&pv);
    sb.ro_compat = 0;
    for off in SB_OFFSETS {
        write_at(&pv, off, &sb.encode());
    }
    ck.seal = None;
    ck.writer.fencing_epoch = 1;
    write_at(&pv, slot, &ck.encode());
    let old_ck = read_at(&pv, slot);
    assert!(old_ck[4064..4096].iter().all(|&b| b == 0));
    // Its last writer left a journal tail.
    put_block(&pv, 0, ck.journal_seq, ck.writer, ck.next_volume_id, "tail");
    let st = sspctl(&pool, &["pool", "status"]);
    assert!(!st.contains("Opened At Seal"), "{st}");
    assert!(
        st.contains(&format!(
            "Journal Ends At:   {}",
            seal(ck.writer, ck.journal_seq)
        )),
        "{st}"
    );
    assert_eq!(lus(&pool), ["tail", "x"]);
    sspctl(&pool, &["lu", "create", "y", "--size", "1M"]);
    assert_eq!(lus(&pool), ["tail", "x", "y"]);
    let (sb2, ck2, _) = state(&pv);
    assert_eq!(sb2.ro_compat, 0, "an old pool keeps its feature bits");
    assert_eq!(ck2.seal, None, "no seal field without the bit");
    assert_eq!(
        ck2.writer.fencing_epoch, 2,
        "one writable open since epoch 1"
    );
    assert!(sspctl(&pool, &["check"]).contains("OK"));
}

/// `sspd --replay-to-seal` opens the pool replaying only up to the seal, serves it, and reports
/// the seal through its admin socket.
#[test]
fn sspd_serves_the_pool_replayed_up_to_a_seal() {
    let dir = tempfile::tempdir().unwrap();
    let pool = make_pool(dir.path(), &[]);
    let pv = dir.path().join("pv0.img");
    let (_, ck, _) = state(&pv);
    for (k, name) in ["a", "b", "c"].iter().enumerate() {
        let k = k as u64;
        put_block(
            &pv,
            k,
            ck.journal_seq + k,
            ck.writer,
            ck.next_volume_id + k,
            name,
        );
    }
    let at = seal(ck.writer, ck.journal_seq + 1).to_string();
    let srv = Server::serve_with(pool.clone(), dir, &["--replay-to-seal", &at]);
    let st = sspctl(&pool, &["pool", "status"]);
    assert!(
        st.contains(&format!(
            "Opened At Seal:    {at} (replay stopped at the requested seal)"
        )),
        "{st}"
    );
    assert_eq!(lus(&pool), ["a", "b"]);
    let size = nbdsh(
        &srv.uri("b"),
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nprint(h.get_size())",
    );
    assert_eq!(size.trim(), "1048576");
    assert!(srv.stop().success());
}
