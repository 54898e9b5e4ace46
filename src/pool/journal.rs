//! The journal ring: records are batched into 4096-byte blocks and written in sequence.
//! A block, once written, is never rewritten while the checkpoint that precedes it is current.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use crate::format::journal::{JournalBlock, Record, JPAYLOAD};
use crate::format::{Writer, BLOCK_U64};

/// How far past a failed journal block replay looks for proof that it had been acknowledged.
pub const JOURNAL_LOOKAHEAD: u64 = 256;

pub struct Journal {
    pub pv: u16,
    /// The ring's copy on the first PV of the other failure group (mirrored pools).
    pub mirror: Option<u16>,
    /// Byte offset of the ring on its PV.
    pub offset: u64,
    /// Ring size in blocks.
    pub blocks: u64,
    /// Sequence number and ring index of the next block to write.
    pub seq: u64,
    pub pos: u64,
    /// Where replay starts (as recorded by the last durable checkpoint).
    pub start_seq: u64,
    pub start_pos: u64,
    pub pending: Vec<Record>,
    pub pending_bytes: usize,
    /// Every block with a lower or equal sequence number is known durable (a sync covered it).
    pub durable_seq: u64,
}

impl Journal {
    /// Blocks written since the last checkpoint.
    pub fn used(&self) -> u64 {
        self.seq - self.start_seq
    }
}

impl Inner {
    /// Queue a record; a full batch is written out (not yet durable).
    pub fn journal_append(&mut self, rec: Record) -> Result<()> {
        if self.journal.pending_bytes + rec.encoded_len() > JPAYLOAD {
            self.journal_write_block()?;
        }
        self.journal.pending_bytes += rec.encoded_len();
        self.journal.pending.push(rec);
        Ok(())
    }

    /// Write the pending batch as the next journal block.
    pub fn journal_write_block(&mut self) -> Result<()> {
        if self.journal.pending.is_empty() {
            return Ok(());
        }
        if self.journal.used() + 1 >= self.journal.blocks {
            // Checkpoints are taken long before this; reaching it is a bug, not a user error.
            return Err(super::error::PoolError::Poisoned(
                "journal ring overflow".into(),
            ));
        }
        let jb = JournalBlock {
            seq: self.journal.seq,
            writer: self.writer,
            ckpt_generation: self.generation,
            durable_seq: self.journal.durable_seq,
            records: std::mem::take(&mut self.journal.pending),
        };
        self.journal.pending_bytes = 0;
        let buf = jb.encode(&self.pool_id);
        let off = self.journal.offset + self.journal.pos * BLOCK_U64;
        let mut written = 0;
        let mut err = None;
        let mut targets = Vec::new();
        for pv in std::iter::once(self.journal.pv).chain(self.journal.mirror) {
            if self.pvs.pv(pv)?.failed.is_none() {
                targets.push((pv, off));
            }
        }
        // Both copies of the ring (mirrored pools) are written at once.
        let results = self.pvs.write_copies(&targets, &buf, 0);
        for ((pv, _), r) in targets.into_iter().zip(results) {
            match r {
                Ok(()) => written += 1,
                Err(e) => match self.fail_pv(pv, e) {
                    Ok(()) => {}
                    Err(e) => err = Some(e),
                },
            }
        }
        if let Some(e) = err {
            // The batch's records are gone from memory: whatever the cause, stop here.
            self.poisoned.get_or_insert_with(|| e.to_string());
            return self.poison(Err(e));
        }
        if written == 0 {
            return self.poison(Err(PoolError::Io {
                dev: self.pvs.name(self.journal.pv),
                offset: off,
                source: std::io::Error::other("no copy of the journal could be written"),
            }));
        }
        self.journal.seq += 1;
        self.journal.pos = (self.journal.pos + 1) % self.journal.blocks;
        self.counters.journal_blocks_written += 1;
        Ok(())
    }

    /// Everything written so far was just made durable by a sync.
    pub fn journal_synced(&mut self) {
        self.journal.durable_seq = self
            .journal
            .durable_seq
            .max(self.journal.seq.saturating_sub(1));
    }

    /// Read the journal from the checkpoint's position while blocks verify and follow in
    /// sequence. Returns the blocks in order; the next block to write goes after the last one.
    ///
    /// A block that fails is normally the torn tail of writes that were never acknowledged. But
    /// if a later block in the ring carries the expected sequence number and records that the
    /// failed block had been made durable, acknowledged writes were damaged: that is an error.
    ///
    /// The log is `owner`'s, the writer of the checkpoint it starts after (FORMAT.md §7.3): a
    /// block stamped by another host or incarnation (or with an older epoch) ends it, whatever
    /// its sequence number, and so does `until`, the sequence number of a seal.
    pub fn journal_read(&self, owner: Writer, until: Option<u64>) -> Result<Vec<JournalBlock>> {
        // Mirrored pools keep the ring on two PVs; one of them may have missed blocks (its PV
        // failed, and the record saying so is in the journal itself). Replay the longer valid
        // sequence: every block in it was written to a PV that was up.
        let Some(m) = self.journal.mirror else {
            return self.journal_read_from(self.journal.pv, owner, until);
        };
        let a = self.journal_read_from(self.journal.pv, owner, until);
        let b = self.journal_read_from(m, owner, until);
        match (a, b) {
            (Ok(x), Ok(y)) => Ok(if y.len() > x.len() { y } else { x }),
            (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok(x),
            (Err(e), Err(_)) => Err(e),
        }
    }

    fn journal_read_from(
        &self,
        jpv: u16,
        owner: Writer,
        until: Option<u64>,
    ) -> Result<Vec<JournalBlock>> {
        let mut out = Vec::new();
        let (mut seq, mut pos) = (self.journal.start_seq, self.journal.start_pos);
        let mut buf = vec![0u8; crate::format::BLOCK];
        let n = self.journal.blocks;
        let mut stop = None;
        let mut epoch = owner.fencing_epoch;
        for i in 0..n {
            if until.is_some_and(|u| seq > u) {
                // Sealed: whatever follows is not part of the log, however well it verifies.
                break;
            }
            let off = self.journal.offset + pos * BLOCK_U64;
            let r = self.pvs.read(jpv, off, &mut buf);
            match r
                .ok()
                .and_then(|_| JournalBlock::decode(&buf, &self.pool_id).ok())
            {
                Some(jb) if jb.seq == seq => {
                    let w = jb.writer;
                    if !w.same_process(&owner) || w.fencing_epoch < epoch {
                        // An intact block, in sequence, from another writer (a stale one
                        // still appending after it lost the pool): not this log's. It ends
                        // the log like a torn block, but proves nothing about damage.
                        tracing::warn!(
                            "{}: journal block {seq} at offset {off} was written by host {:08x}, incarnation {}, epoch {}, not by the log's writer (host {:08x}, incarnation {}): replay ends before it",
                            self.pvs.name(jpv),
                            w.host_id,
                            w.incarnation,
                            w.fencing_epoch,
                            owner.host_id,
                            owner.incarnation
                        );
                        metrics::counter!(crate::metrics::JOURNAL_FOREIGN_BLOCKS).increment(1);
                        break;
                    }
                    epoch = w.fencing_epoch;
                    out.push(jb);
                }
                _ => {
                    stop = Some((i, seq, off));
                    break;
                }
            }
            seq += 1;
            pos = (pos + 1) % n;
        }
        if let Some((i, bad_seq, bad_off)) = stop {
            // The evidence, if any, follows within a few blocks: the block written after the
            // sync that covered the bad one. Look a bounded distance ahead.
            for j in 1..(n - i).min(JOURNAL_LOOKAHEAD) {
                let p = (pos + j) % n;
                let off = self.journal.offset + p * BLOCK_U64;
                if self.pvs.read(jpv, off, &mut buf).is_err() {
                    continue;
                }
                if let Ok(jb) = JournalBlock::decode(&buf, &self.pool_id) {
                    if jb.seq == bad_seq + j && jb.durable_seq >= bad_seq {
                        return Err(PoolError::Corrupt {
                            dev: self.pvs.name(jpv),
                            offset: bad_off,
                            source: crate::format::FormatError::Invalid {
                                what: "journal block",
                                field: "sequence",
                                detail: format!(
                                    "block {bad_seq} is unreadable but block {} records it as durable: acknowledged writes would be lost",
                                    jb.seq
                                ),
                            },
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}
