//! Writer stamps and seals (FORMAT.md §7.3): who owns the pool's append streams, and where a
//! writer's log ends.
//!
//! Every append stream — the journal ring and the data, metadata and cleaner segment streams
//! (whose segment summaries and segment-table pages are metadata nodes) — is written by one
//! writer, the process that opened the pool for writing, and stamped with its [`Writer`]: the
//! host id, an incarnation that goes up at every writable open, and a fencing epoch that goes up
//! at every lease change (single-host pools: every writable open takes the pool's lease). Both
//! become durable with the checkpoint the open commits.
//!
//! A [`Seal`] names the end of one writer's journal: its stamp and the sequence number of its
//! last block to replay. An opener given a seal replays that writer's log up to it and no
//! further; without one it replays to the end of the log, which also ends at the first block
//! another writer stamped. Either way the seal it reached is recorded (in memory, in
//! `pool status`, and in every checkpoint of an `RO_COMPAT_SEAL` pool).
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use super::error::{PoolError, Result};
use super::inner::{Inner, StreamId};
use crate::format::checkpoint::Checkpoint;
use crate::format::node::{STREAM_DATA, STREAM_GC, STREAM_META};
use crate::format::{Seal, Writer, RO_COMPAT_SEAL};

/// A writer stamp as `pool status` shows it, with a journal sequence number.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StampInfo {
    /// Host id, 8 hex digits.
    pub host_id: String,
    pub incarnation: u32,
    pub epoch: u64,
    /// Writer: the sequence number its next journal block gets. Seal: the last block replayed.
    pub journal_seq: u64,
}

/// The seal the pool was opened at.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct SealInfo {
    #[serde(flatten)]
    pub stamp: StampInfo,
    /// `HOST:INCARNATION:EPOCH:SEQ`, as `--to` takes it.
    pub seal: String,
    /// The opener named this seal; otherwise replay ran to the end of the log.
    pub requested: bool,
}

fn stamp(w: &Writer, journal_seq: u64) -> StampInfo {
    StampInfo {
        host_id: format!("{:08x}", w.host_id),
        incarnation: w.incarnation,
        epoch: w.fencing_epoch,
        journal_seq,
    }
}

/// The stamp of a writable open that follows `last` (the newest checkpoint's writer) on host
/// `host_id`: the next incarnation and the next fencing epoch.
pub fn next_writer(last: &Writer, host_id: u32) -> Writer {
    Writer {
        host_id,
        incarnation: last.incarnation.wrapping_add(1),
        fencing_epoch: last.fencing_epoch.max(1) + 1,
    }
}

fn refuse(s: &Seal, why: String) -> PoolError {
    PoolError::Config(format!("cannot replay up to seal {s}: {why}"))
}

/// A seal can only end the log that starts after the newest checkpoint: its writer's.
pub fn check_seal_start(s: &Seal, ck: &Checkpoint) -> Result<()> {
    if !s.writer.same_process(&ck.writer) {
        return Err(refuse(
            s,
            format!(
                "the newest checkpoint (generation {}) was written by host {:08x}, incarnation {}: the journal after it is that writer's log",
                ck.generation, ck.writer.host_id, ck.writer.incarnation
            ),
        ));
    }
    if s.journal_seq.saturating_add(1) < ck.journal_seq {
        return Err(refuse(
            s,
            format!(
                "the newest checkpoint (generation {}) already covers the journal up to block {}",
                ck.generation,
                ck.journal_seq - 1
            ),
        ));
    }
    Ok(())
}

/// Replay must reach the seal exactly: a log that ends before it lost blocks the seal says are
/// durable.
pub fn check_seal_reached(s: &Seal, reached: &Seal) -> Result<()> {
    if reached.journal_seq != s.journal_seq {
        return Err(refuse(
            s,
            format!(
                "the writer's journal ends at block {}: the blocks up to the seal are missing",
                reached.journal_seq
            ),
        ));
    }
    if reached.writer != s.writer {
        return Err(refuse(
            s,
            format!(
                "block {} was written with epoch {}, not {}",
                reached.journal_seq, reached.writer.fencing_epoch, s.writer.fencing_epoch
            ),
        ));
    }
    Ok(())
}

impl Inner {
    /// The pool has `RO_COMPAT_SEAL`: checkpoints record seals, segment entries their owner.
    fn seal_format(&self) -> bool {
        self.pvs
            .pvs
            .iter()
            .any(|p| p.sb.ro_compat & RO_COMPAT_SEAL != 0)
    }

    /// The seal a checkpoint records: only pools with `RO_COMPAT_SEAL` have the field.
    pub fn recorded_seal(&self) -> Option<Seal> {
        self.seal.filter(|_| self.seal_format())
    }

    /// Stamp segment `seg` as filled by this writer's stream `which` (`None`: a stream replay
    /// cannot tell, data or cleaner); a freed segment is unstamped with [`Self::unstamp_segment`].
    pub fn stamp_segment(&mut self, seg: u64, which: Option<StreamId>) -> Result<()> {
        if !self.seal_format() {
            return Ok(());
        }
        let w = self.writer;
        let e = self.seg_mut(seg)?;
        e.stream = match which {
            Some(StreamId::Data) => STREAM_DATA,
            Some(StreamId::Meta) => STREAM_META,
            Some(StreamId::Gc) => STREAM_GC,
            None => 0,
        };
        e.owner_host = w.host_id;
        e.owner_incarnation = w.incarnation;
        Ok(())
    }

    pub fn writer_info(&self) -> StampInfo {
        stamp(&self.writer, self.journal.seq)
    }

    pub fn log_end_info(&self) -> Option<SealInfo> {
        self.log_end.map(|s| SealInfo {
            stamp: stamp(&s.writer, s.journal_seq),
            seal: s.to_string(),
            requested: self.opts.replay_to.is_some(),
        })
    }

    pub fn seal_info(&self) -> Option<SealInfo> {
        self.seal.map(|s| SealInfo {
            stamp: stamp(&s.writer, s.journal_seq),
            seal: s.to_string(),
            requested: self.seal_requested,
        })
    }
}

impl super::Pool {
    /// The seal this pool's writer opened at (`None`: a pool created by this process, or an
    /// older pool opened read-only).
    pub fn seal(&self) -> Option<Seal> {
        self.shared().seal
    }

    /// Opened read-only: where the last writer's journal ends.
    pub fn log_end(&self) -> Option<Seal> {
        self.shared().log_end
    }

    /// This pool's writer stamp (read-only opens: the last writer's).
    pub fn writer(&self) -> Writer {
        self.shared().writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(host_id: u32, incarnation: u32, fencing_epoch: u64) -> Writer {
        Writer {
            host_id,
            incarnation,
            fencing_epoch,
        }
    }

    /// Every segment a stream opens names its stream and the writer that owned it; a segment
    /// keeps the stamp of the incarnation that filled it, and a freed one loses it.
    #[test]
    fn segments_carry_their_stream_and_owner() {
        use crate::dev::{BlockDev, MemDev};
        use crate::format::node::{SEG_DATA, SEG_FREE, SEG_META};
        use crate::pool::{CreateOptions, Options, Pool};
        use std::sync::Arc;
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 64 << 20));
        let copts = CreateOptions {
            name: "t".into(),
            journal_blocks: 256,
        };
        let opts = Options {
            host_id: 0x51,
            ..Options::default()
        };
        let stamps = |p: &Pool| {
            let g = p.lock();
            let mut v: Vec<(u8, u8, u32, u32)> = g
                .segs
                .iter()
                .skip(1)
                .filter(|e| e.state != SEG_FREE)
                .map(|e| (e.state, e.stream, e.owner_host, e.owner_incarnation))
                .collect();
            assert!(g
                .segs
                .iter()
                .filter(|e| e.state == SEG_FREE)
                .all(|e| e.stream == 0 && e.owner_host == 0 && e.owner_incarnation == 0));
            v.sort_unstable();
            v.dedup();
            v
        };
        let p = Pool::create(vec![dev.clone()], &copts, opts.clone()).unwrap();
        let id = p.lu_create("a", 8 << 20).unwrap().id;
        p.write(id, 0, &[7u8; 4096], false).unwrap();
        p.flush().unwrap();
        p.checkpoint().unwrap();
        let first = stamps(&p);
        assert!(
            first.contains(&(SEG_DATA, STREAM_DATA, 0x51, 1)),
            "{first:?}"
        );
        assert!(
            first.contains(&(SEG_META, STREAM_META, 0x51, 1)),
            "{first:?}"
        );
        p.close().unwrap();

        let p = Pool::open(vec![dev.clone()], opts).unwrap();
        assert_eq!(p.writer().incarnation, 2);
        assert_eq!(p.writer().fencing_epoch, 2);
        assert_eq!(p.seal().map(|s| s.writer.incarnation), Some(1));
        p.write(id, 4096, &[8u8; 4096], false).unwrap();
        p.flush().unwrap();
        p.checkpoint().unwrap();
        let second = stamps(&p);
        assert!(
            second.contains(&(SEG_DATA, STREAM_DATA, 0x51, 1)),
            "{second:?}"
        );
        assert!(
            second.contains(&(SEG_DATA, STREAM_DATA, 0x51, 2)),
            "{second:?}"
        );
        // Every segment in use was filled by one of the two incarnations.
        assert!(second.iter().all(|s| s.2 == 0x51 && (1..=2).contains(&s.3)));
        p.close().unwrap();
        // The stamps are durable: the segment table is read back with them.
        let p = Pool::open(vec![dev], Options::default()).unwrap();
        assert!(stamps(&p).contains(&(SEG_DATA, STREAM_DATA, 0x51, 2)));
        assert!(p.check().unwrap().errors.is_empty());
    }

    #[test]
    fn next_writer_advances_incarnation_and_epoch() {
        assert_eq!(next_writer(&w(1, 3, 1), 7), w(7, 4, 2));
        // Pools written before epochs moved carry epoch 1 (or 0 from a zeroed field).
        assert_eq!(next_writer(&w(1, 1, 0), 1).fencing_epoch, 2);
    }

    #[test]
    fn a_seal_must_name_the_checkpoint_writer_and_not_precede_it() {
        let ck = Checkpoint {
            generation: 5,
            writer: w(9, 4, 4),
            journal_seq: 100,
            ..Default::default()
        };
        let seal = |wr, seq| Seal {
            writer: wr,
            journal_seq: seq,
        };
        assert!(check_seal_start(&seal(w(9, 4, 4), 99), &ck).is_ok());
        assert!(check_seal_start(&seal(w(9, 4, 4), 150), &ck).is_ok());
        assert!(check_seal_start(&seal(w(9, 3, 3), 150), &ck).is_err());
        assert!(check_seal_start(&seal(w(8, 4, 4), 150), &ck).is_err());
        assert!(check_seal_start(&seal(w(9, 4, 4), 98), &ck).is_err());
        let s = seal(w(9, 4, 4), 120);
        assert!(check_seal_reached(&s, &s).is_ok());
        assert!(check_seal_reached(&s, &seal(w(9, 4, 4), 119)).is_err());
        assert!(check_seal_reached(&s, &seal(w(9, 4, 5), 120)).is_err());
    }
}
