//! Group commit: concurrent flushes share one sync round, and a round syncs every PV at once,
//! outside the pool lock.
//!
//! A flush writes out, under the pool lock, what it must make durable (stream buffers and the
//! pending journal batch), then asks for a *round* that starts after that: one flusher leads the
//! round, every other flusher waiting at that moment is covered by it. Rounds run one at a time:
//! while one runs, later flushers queue for the next, which one of them leads and which covers
//! them all. So N concurrent flushes cost about two rounds, not N, and each round costs one
//! sync per PV, all PVs in parallel.
//!
//! Durability: a round's syncs start after every write its waiters issued has returned, so a
//! round that succeeds made them durable. A failed sync is handled under the pool lock before the
//! round completes, exactly as an inline sync would be ([`Inner::fail_pv`]: degraded in a
//! mirrored pool whose other group is whole, otherwise the pool is poisoned) and a round that
//! ends with the pool poisoned fails every waiter it covered. A round never claims durability for
//! a PV another sync saw fail: every sync of a PV passes its [`SyncGate`], which serialises them
//! and latches the first failure (Linux reports a writeback error to one `fsync` only, so a
//! later sync may succeed although data was lost).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::inner::Inner;
use crate::dev::BlockDev;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Condvar, Mutex, MutexGuard};
use std::sync::Arc;

/// Every sync of one PV goes through its gate: syncs of a PV never overlap, and once one has
/// failed every later one fails too, until the PV rejoins ([`SyncGate::reset`]).
#[derive(Default)]
pub struct SyncGate {
    lock: Mutex<()>,
    failed: AtomicBool,
}

impl SyncGate {
    /// Sync `dev`; an error now or from an earlier sync of this PV is an error.
    pub fn sync(&self, dev: &dyn BlockDev) -> std::io::Result<()> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed.load(Ordering::Acquire) {
            return Err(std::io::Error::other(
                "an earlier sync of this PV failed: what it held may be lost",
            ));
        }
        let r = dev.sync();
        if r.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        r
    }

    /// The PV rejoined after a failure (its stale segments are resynced): syncs count again.
    pub fn reset(&self) {
        self.failed.store(false, Ordering::Release);
    }
}

/// One PV to sync: index, device and gate.
pub type SyncTarget = (u16, Arc<dyn BlockDev>, Arc<SyncGate>);

/// Sync every target at once (one thread per PV beyond the first); the result of each.
pub fn sync_parallel(targets: &[SyncTarget]) -> Vec<(u16, std::io::Result<()>)> {
    fan_out(
        targets
            .iter()
            .map(|(i, dev, gate)| move || (*i, gate.sync(dev.as_ref())))
            .collect(),
    )
}

/// Run `jobs` at once: the first on this thread, the others on scoped threads. Results come
/// back in the order of `jobs`.
pub fn fan_out<T: Send, F: FnOnce() -> T + Send>(mut jobs: Vec<F>) -> Vec<T> {
    if jobs.len() <= 1 {
        return jobs.into_iter().map(|f| f()).collect();
    }
    let first = jobs.remove(0);
    crate::sync::thread::scope(|s| {
        let others: Vec<_> = jobs.into_iter().map(|f| s.spawn(f)).collect();
        let mut out = vec![first()];
        for h in others {
            match h.join() {
                Ok(v) => out.push(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        out
    })
}

#[derive(Default)]
struct State {
    /// Rounds started and completed (round numbers count from 1).
    started: u64,
    completed: u64,
    running: bool,
    /// The first round that failed and why. A failed round poisons the pool, which is for
    /// good, so every later round fails too.
    failed: Option<(u64, String)>,
}

/// The rendezvous of flushers and sync rounds.
#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
}

/// What a sync round needs from the pool: its PVs to sync (under the lock), and the outcome
/// recorded (under the lock again).
pub trait RoundHost {
    fn begin_round(&self) -> Result<RoundPlan>;
    fn end_round(&self, plan: RoundPlan, results: Vec<(u16, std::io::Result<()>)>) -> Result<()>;
    /// A round failed: the pool takes no more changes (every later round fails too).
    fn poison(&self, why: &str);
}

/// A round's snapshot, taken under the pool lock when it starts.
pub struct RoundPlan {
    pub targets: Vec<SyncTarget>,
    /// Highest journal block sequence written when the round started: durable if it succeeds.
    pub journal_seq: Option<u64>,
}

impl GroupCommit {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until a sync round that started after this call has completed (leading it if no
    /// round is running). The caller has written out what it needs durable.
    pub fn wait_durable(&self, host: &dyn RoundHost) -> Result<()> {
        let mut st = self.state();
        // A round already running may have taken its snapshot before the caller's writes.
        let need = st.started + 1;
        loop {
            if let Some((round, why)) = &st.failed {
                if *round <= need {
                    return Err(PoolError::Poisoned(format!("a sync failed: {why}")));
                }
            }
            if st.completed >= need {
                return Ok(());
            }
            if st.running {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.running = true;
            st.started += 1;
            let round = st.started;
            drop(st);
            let r = Self::run_round(host);
            if let Err(e) = &r {
                host.poison(&e.to_string());
            }
            st = self.state();
            st.running = false;
            st.completed = round;
            if let Err(e) = r {
                st.failed.get_or_insert((round, e.to_string()));
            }
            self.done.notify_all();
        }
    }

    fn run_round(host: &dyn RoundHost) -> Result<()> {
        // A panic must not leave the round running for ever: it becomes a failed round.
        let run = std::panic::AssertUnwindSafe(|| {
            let plan = host.begin_round()?;
            let results = sync_parallel(&plan.targets);
            host.end_round(plan, results)
        });
        std::panic::catch_unwind(run)
            .unwrap_or_else(|_| Err(PoolError::Internal("a sync round panicked".into())))
    }
}

impl Inner {
    /// The PVs that are up, for a sync.
    pub fn sync_targets(&self) -> Vec<SyncTarget> {
        self.pvs
            .pvs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.failed.is_none())
            .map(|(i, p)| (i as u16, p.dev.clone(), p.gate.clone()))
            .collect()
    }

    /// Start a round: the PVs to sync and the journal block it will make durable.
    pub fn begin_sync_round(&self) -> Result<RoundPlan> {
        self.check_writable()?;
        Ok(RoundPlan {
            targets: self.sync_targets(),
            journal_seq: self.journal.seq.checked_sub(1),
        })
    }

    /// Record the syncs of a round: each failure as [`Inner::sync_pvs`] would handle it, then
    /// the journal blocks it covered as durable. Fails if the pool is poisoned by now.
    pub fn end_sync_round(
        &mut self,
        plan: RoundPlan,
        results: Vec<(u16, std::io::Result<()>)>,
    ) -> Result<()> {
        self.counters.sync_rounds += 1;
        metrics::counter!(crate::metrics::SYNC_ROUNDS).increment(1);
        self.note_syncs(results.len());
        for (i, r) in results {
            if let Err(e) = r {
                let err = PoolError::Io {
                    dev: self.pvs.name(i),
                    offset: 0,
                    source: e,
                };
                let r = self.fail_pv(i, err);
                self.poison(r)?;
            }
        }
        // A failure another thread saw (inline sync, write) while this round ran counts too.
        self.check_writable()?;
        // Every PV still up synced: the journal blocks written before the round are durable.
        if let Some(seq) = plan.journal_seq {
            self.journal.durable_seq = self.journal.durable_seq.max(seq);
        }
        Ok(())
    }

    /// Count syncs issued (metrics and `pool status`).
    pub fn note_syncs(&mut self, n: usize) {
        let n = n as u64;
        self.counters.pv_syncs += n;
        metrics::counter!(crate::metrics::PV_SYNCS).increment(n);
    }
}
