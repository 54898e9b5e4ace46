//! Data-stream write-outs done without the pool lock ("flights").
//!
//! When the data stream's buffer fills (64 blocks), the buffer is not written while the pool
//! lock is held: it becomes a *flight*, queued here with the PV copies it goes to, and the
//! writer whose append filled it writes it after releasing the lock ([`super::Pool::write`]).
//! Copying a run into the host's page cache is most of a write's cost, so writers of several
//! connections and LUs now overlap it instead of taking turns.
//!
//! Until a flight is written its blocks are read from memory ([`Outbound::block`]). Anything
//! that relies on what the PVs hold (flush and checkpoint syncs, scrub, resync, `pv replace`,
//! a change of the PV set) first *settles* the flights under the pool lock
//! ([`super::inner::Inner::settle_flights`]): queued and failed ones are written there as
//! before, and ones being written by a writer are waited for. A writer never needs the pool
//! lock to finish a flight, so that wait cannot deadlock; a flight whose write failed is left
//! for the next settle, which handles the failure (a failed PV, a poisoned pool, ENOSPC) with
//! the lock held, exactly as a write-out under the lock did.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::pvs::split;
use crate::dev::BlockDev;
use crate::format::{BLOCK, BLOCK_U64};
use crate::sync::{Condvar, Mutex, MutexGuard};
use std::sync::Arc;

/// Where a flight's copies go: PV index, device, byte offset.
pub type Target = (u16, Arc<dyn BlockDev>, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for its writer (or a settle).
    Queued,
    /// A writer or a settle is writing it.
    Writing,
    /// Its writer's write failed: the next settle writes it again and handles the error.
    Failed,
}

struct Flight {
    seq: u64,
    pba: u64,
    buf: Arc<Vec<u8>>,
    targets: Vec<Target>,
    state: State,
}

impl Flight {
    fn holds(&self, pba: u64) -> bool {
        pba >= self.pba && pba < self.pba + (self.buf.len() / BLOCK) as u64
    }
}

/// A flight claimed for writing.
pub struct Claimed {
    pub seq: u64,
    pub pba: u64,
    pub buf: Arc<Vec<u8>>,
    pub targets: Vec<Target>,
}

#[derive(Default)]
struct Flights {
    next_seq: u64,
    list: Vec<Flight>,
}

/// The pool's flights (shared by the pool lock's holders and the writers outside it).
#[derive(Default)]
pub struct Outbound {
    flights: Mutex<Flights>,
    /// Signalled when a flight stops being written.
    done: Condvar,
}

impl Outbound {
    fn state(&self) -> MutexGuard<'_, Flights> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `buf` (whole blocks from `pba` on) for writing to `targets`; returns its number.
    pub fn push(&self, pba: u64, buf: Vec<u8>, targets: Vec<Target>) -> u64 {
        let mut s = self.state();
        s.next_seq += 1;
        let seq = s.next_seq;
        s.list.push(Flight {
            seq,
            pba,
            buf: Arc::new(buf),
            targets,
            state: State::Queued,
        });
        seq
    }

    /// A copy of block `pba` if a flight holds it.
    pub fn block(&self, pba: u64) -> Option<Vec<u8>> {
        let s = self.state();
        let f = s.list.iter().rev().find(|f| f.holds(pba))?;
        let at = ((pba - f.pba) * BLOCK_U64) as usize;
        f.buf.get(at..at + BLOCK).map(<[u8]>::to_vec)
    }

    /// Whether any of the `n` blocks from `pba` on is in a flight.
    pub fn holds_any(&self, pba: u64, n: u64) -> bool {
        let s = self.state();
        s.list
            .iter()
            .any(|f| pba < f.pba + (f.buf.len() / BLOCK) as u64 && f.pba < pba + n)
    }

    /// Whether a flight goes to pool segment `seg`.
    pub fn in_segment(&self, seg: u64) -> bool {
        self.state().list.iter().any(|f| split(f.pba).0 == seg)
    }

    /// The pool segments flights go to.
    pub fn segments(&self) -> Vec<u64> {
        self.state().list.iter().map(|f| split(f.pba).0).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.state().list.is_empty()
    }

    /// Claim queued flights `seqs` for writing (those a settle has not taken already).
    pub fn claim(&self, seqs: &[u64]) -> Vec<Claimed> {
        let mut s = self.state();
        let mut out = Vec::new();
        for f in s.list.iter_mut() {
            if f.state == State::Queued && seqs.contains(&f.seq) {
                f.state = State::Writing;
                out.push(Claimed {
                    seq: f.seq,
                    pba: f.pba,
                    buf: f.buf.clone(),
                    targets: f.targets.clone(),
                });
            }
        }
        out
    }

    /// A claimed flight was written (`ok`), or failed and is left for the next settle.
    pub fn finish(&self, seq: u64, ok: bool) {
        let mut s = self.state();
        if ok {
            s.list.retain(|f| f.seq != seq);
        } else if let Some(f) = s.list.iter_mut().find(|f| f.seq == seq) {
            f.state = State::Failed;
        }
        drop(s);
        self.done.notify_all();
    }

    /// Wait until no flight is being written, then claim every remaining one (queued or
    /// failed), oldest first. Called with the pool lock held: writers finish flights without
    /// it, so the wait ends.
    pub fn take_all(&self) -> Vec<Claimed> {
        let mut s = self.state();
        while s.list.iter().any(|f| f.state == State::Writing) {
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.list
            .iter_mut()
            .map(|f| {
                f.state = State::Writing;
                Claimed {
                    seq: f.seq,
                    pba: f.pba,
                    buf: f.buf.clone(),
                    targets: f.targets.clone(),
                }
            })
            .collect()
    }
}

impl Outbound {
    /// Claim and write those of flights `seqs` still queued (a settle may have taken others);
    /// whether every write succeeded. A failed flight is left for a settle.
    pub fn write_queued(&self, seqs: &[u64]) -> bool {
        let mut ok = true;
        for c in self.claim(seqs) {
            let done = write_claimed(&c).is_ok();
            self.finish(c.seq, done);
            ok &= done;
        }
        ok
    }

    /// Write flights `seqs` (claiming those still queued; waiting for any a settle is
    /// writing). An error if any of them failed: a settle under the pool lock handles it.
    pub fn write_own(&self, seqs: &[u64]) -> Result<()> {
        let failed = !self.write_queued(seqs);
        let mut s = self.state();
        loop {
            let mine = s.list.iter().filter(|f| seqs.contains(&f.seq));
            let (mut busy, mut bad) = (false, failed);
            for f in mine {
                match f.state {
                    State::Failed => bad = true,
                    State::Queued | State::Writing => busy = true,
                }
            }
            if !busy {
                return match bad {
                    false => Ok(()),
                    true => Err(PoolError::Io {
                        dev: "pool metadata".into(),
                        offset: 0,
                        source: std::io::Error::other("a metadata run could not be written"),
                    }),
                };
            }
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Write a claimed flight to each of its targets (at once when there are several). The first
/// error, if any; the caller reports it with [`Outbound::finish`].
pub fn write_claimed(c: &Claimed) -> Result<()> {
    let jobs: Vec<_> = c
        .targets
        .iter()
        .map(|(_, dev, off)| {
            let (dev, off, buf) = (dev.clone(), *off, c.buf.clone());
            move || {
                dev.write_at(&buf, off).map_err(|e| PoolError::Io {
                    dev: dev.name().to_owned(),
                    offset: off,
                    source: e,
                })
            }
        })
        .collect();
    super::commit::fan_out(jobs).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(n: usize, tag: u8) -> Vec<u8> {
        vec![tag; n * BLOCK]
    }

    #[test]
    fn queued_blocks_read_from_memory_until_written() {
        let o = Outbound::default();
        let base = super::super::pvs::seg_start(3);
        let seq = o.push(base + 4, blocks(2, 7), Vec::new());
        assert!(o.block(base + 3).is_none());
        assert_eq!(o.block(base + 5).as_deref(), Some(&blocks(1, 7)[..]));
        assert!(o.holds_any(base, 5) && !o.holds_any(base, 4) && o.in_segment(3));
        let c = o.claim(&[seq]);
        assert_eq!(c.len(), 1);
        // A second claim (a settle got there first, or a repeat) takes nothing.
        assert!(o.claim(&[seq]).is_empty());
        o.finish(seq, true);
        assert!(o.block(base + 5).is_none() && o.is_empty());
    }

    #[test]
    fn a_failed_flight_stays_readable_and_is_taken_by_the_next_settle() {
        let o = Outbound::default();
        let a = o.push(10, blocks(1, 1), Vec::new());
        let b = o.push(11, blocks(1, 2), Vec::new());
        let c = o.claim(&[a]);
        assert_eq!(c.len(), 1);
        o.finish(a, false);
        assert_eq!(o.block(10).as_deref(), Some(&blocks(1, 1)[..]));
        let all = o.take_all();
        assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![a, b]);
        // Taken by the settle: a late claim by b's writer finds nothing to do.
        assert!(o.claim(&[b]).is_empty());
    }

    #[test]
    fn take_all_waits_for_a_flight_being_written() {
        let o = Arc::new(Outbound::default());
        let seq = o.push(20, blocks(1, 9), Vec::new());
        assert_eq!(o.claim(&[seq]).len(), 1);
        let o2 = o.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            o2.finish(seq, true);
        });
        // Returns only once the writer is done: nothing is left to take.
        assert!(o.take_all().is_empty());
        t.join().expect("writer");
    }
}
