//! The journal ring: records are batched into 4096-byte blocks and written in sequence.
//! A block, once written, is never rewritten while the checkpoint that precedes it is current.

use super::error::Result;
use super::inner::Inner;
use crate::format::journal::{JournalBlock, Record, JPAYLOAD};
use crate::format::BLOCK_U64;

pub struct Journal {
    pub pv: u16,
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
            records: std::mem::take(&mut self.journal.pending),
        };
        self.journal.pending_bytes = 0;
        let buf = jb.encode(&self.pool_id);
        let off = self.journal.offset + self.journal.pos * BLOCK_U64;
        let r = self.pvs.write(self.journal.pv, off, &buf);
        self.poison(r)?;
        self.journal.seq += 1;
        self.journal.pos = (self.journal.pos + 1) % self.journal.blocks;
        self.counters.journal_blocks_written += 1;
        Ok(())
    }

    /// Read the journal from the checkpoint's position while blocks verify and follow in
    /// sequence. Returns the blocks in order; the next block to write goes after the last one.
    pub fn journal_read(&self) -> Vec<JournalBlock> {
        let mut out = Vec::new();
        let (mut seq, mut pos) = (self.journal.start_seq, self.journal.start_pos);
        let mut buf = vec![0u8; crate::format::BLOCK];
        for _ in 0..self.journal.blocks {
            let off = self.journal.offset + pos * BLOCK_U64;
            if self.pvs.read(self.journal.pv, off, &mut buf).is_err() {
                break;
            }
            match JournalBlock::decode(&buf, &self.pool_id) {
                Ok(jb) if jb.seq == seq => out.push(jb),
                _ => break,
            }
            seq += 1;
            pos = (pos + 1) % self.journal.blocks;
        }
        out
    }
}
