//! The background checkpointer: a thread that takes the checkpoints the data path asks for, so
//! a write that finds a checkpoint due only wakes it instead of writing and syncing every dirty
//! node itself.
//!
//! Two thresholds (see [`Inner::checkpoint_wanted`] and [`Inner::checkpoint_forced`]): past the
//! first, a writer wakes the checkpointer and carries on; past the second (the journal ring
//! three quarters full, the dirty-node cap that the metadata reserve can absorb reached, twice
//! the data writes between checkpoints) the writer checkpoints itself before going on. That is
//! the back-pressure that keeps the journal ring and the reserve from overflowing when the
//! checkpointer falls behind. The checkpoint is the same code either way, run under the pool
//! lock, so the crash argument of FORMAT.md §8 does not depend on which thread runs it. A pool
//! without a checkpointer (offline tools, tests) checkpoints inline at the first threshold's
//! classic values ([`Inner::checkpoint_due`]).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::ckpt::{DurableJob, Outcome};
use super::error::Result;
use super::inner::Inner;
use super::Pool;
use crate::sync::{Condvar, Mutex};
use std::sync::Arc;
use std::time::Duration;

/// The wake-up of the checkpointer thread.
#[derive(Default)]
pub struct Checkpointer {
    wanted: Mutex<bool>,
    cv: Condvar,
}

impl Checkpointer {
    /// Ask for a checkpoint (cheap; may be called under the pool lock).
    pub fn wake(&self) {
        let mut w = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if !*w {
            *w = true;
            self.cv.notify_one();
        }
    }

    /// Wait up to `timeout` for a request; whether one came (and clear it).
    pub fn wait(&self, timeout: Duration) -> bool {
        let w = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        let (mut w, _) = self
            .cv
            .wait_timeout_while(w, timeout, |w| !*w)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *w)
    }
}

/// A background checkpoint between its capture and the end of its [`DurableJob`]: lock holders
/// wait here (without the pool lock) for its outcome.
#[derive(Default)]
pub struct Running {
    /// `None` while the job runs; then its outcome, until committed in memory (taken).
    state: Mutex<Option<Option<Outcome>>>,
    cv: Condvar,
}

impl Running {
    fn lock(&self) -> crate::sync::MutexGuard<'_, Option<Option<Outcome>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, o: Outcome) {
        *self.lock() = Some(Some(o));
        self.cv.notify_all();
    }

    /// Whether its durable part has ended.
    pub fn finished(&self) -> bool {
        self.lock().is_some()
    }

    /// Wait until its durable part has ended.
    pub fn wait_finished(&self) {
        let mut s = self.lock();
        while s.is_none() {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wait for the outcome and take it (once).
    fn take(&self) -> Outcome {
        let mut s = self.lock();
        loop {
            if let Some(o) = s.as_mut() {
                return o.take().unwrap_or_default();
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Inner {
    /// Commit in memory the checkpoint the background checkpointer captured, waiting for its
    /// writes and syncs to end if they have not (they need no lock, so this cannot deadlock).
    /// A failure poisons the pool, as any checkpoint's does.
    pub fn finish_background_checkpoint(&mut self) -> Result<()> {
        let Some((cap, running)) = self.bg_ckpt.take() else {
            return Ok(());
        };
        let out = running.take();
        let r = self.absorb(cap, out);
        self.poison_checkpoint(r)
    }

    /// Capture a checkpoint for the background checkpointer (steps 1-6 under the lock); the
    /// caller runs the returned job without the lock.
    fn capture_background(&mut self, running: &Arc<Running>) -> Result<DurableJob> {
        let (cap, job) = self.begin_checkpoint()?;
        self.bg_ckpt = Some((cap, running.clone()));
        Ok(job)
    }

    /// Enough has changed that a checkpoint should be taken soon: the checkpointer is woken.
    /// The same journal and write thresholds as [`Inner::checkpoint_due`], and three quarters
    /// of the dirty-node cap (which is a hard limit).
    pub fn checkpoint_wanted(&self) -> bool {
        self.journal.used() * 2 >= self.journal.blocks
            || self.writes_since_ckpt >= self.opts.checkpoint_writes
            || self.dirty_nodes() * 4 >= self.dirty_cap * 3
    }

    /// A writer may not go on without a checkpoint: the journal ring is three quarters full,
    /// the dirty nodes reach what the metadata reserve can absorb, or twice the data writes
    /// allowed between checkpoints were made.
    pub fn checkpoint_forced(&self) -> bool {
        self.journal.used() * 4 >= self.journal.blocks * 3
            || self.writes_since_ckpt >= self.opts.checkpoint_writes.saturating_mul(2)
            || self.dirty_nodes() >= self.dirty_cap
    }

    /// Dirty metadata nodes a checkpoint would write.
    fn dirty_nodes(&self) -> usize {
        self.maps_dirty + self.vba.dirty_pages() + self.summaries.len()
    }

    /// The data path's checkpoint decision, after each change: with a checkpointer, wake it
    /// once a checkpoint is wanted and checkpoint here only when forced; without one,
    /// checkpoint here when one is due.
    pub fn checkpoint_step(&mut self) -> Result<()> {
        let inline = match &self.checkpointer {
            Some(c) => {
                if self.checkpoint_forced() {
                    true
                } else {
                    if self.checkpoint_wanted() {
                        c.wake();
                    }
                    false
                }
            }
            None => self.checkpoint_due(),
        };
        if inline {
            self.checkpoint()?;
            self.counters.writer_checkpoints += 1;
        }
        Ok(())
    }
}

impl Pool {
    /// Take the checkpoints writers ask for on a thread of their own until the pool is
    /// dropped (see the module docs).
    pub fn spawn_checkpointer(self: &Arc<Self>) -> crate::sync::thread::JoinHandle<()> {
        let c = Arc::new(Checkpointer::default());
        self.lock().checkpointer = Some(c.clone());
        let weak = Arc::downgrade(self);
        crate::sync::thread::spawn(move || loop {
            let woken = c.wait(Duration::from_secs(1));
            let Some(p) = weak.upgrade() else { return };
            if !woken {
                continue;
            }
            let running = Arc::new(Running::default());
            let job = {
                let mut g = p.lock();
                if g.opts.read_only || g.poisoned.is_some() || !g.checkpoint_wanted() {
                    continue;
                }
                match g.capture_background(&running) {
                    Ok(job) => {
                        g.counters.background_checkpoints += 1;
                        *p.background() = Some(running.clone());
                        job
                    }
                    Err(e) => {
                        tracing::error!("background checkpoint: {e}");
                        continue;
                    }
                }
            };
            // Writers go on meanwhile: what they change belongs to the next checkpoint.
            running.set(job.run(&p.outbound));
            let mut g = p.lock_for_write();
            *p.background() = None;
            if let Err(e) = g.finish_background_checkpoint() {
                tracing::error!("background checkpoint: {e}");
            }
            g.top_up_backing();
        })
    }
}

impl Drop for Pool {
    /// Wake the checkpointer, whose thread then finds the pool gone and ends at once rather
    /// than at its next timeout.
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = g.checkpointer.take() {
            c.wake();
        }
    }
}
