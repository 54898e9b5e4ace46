//! The I/O thread pool: a fixed set of threads that run every pool call of the data path
//! (read, write, flush, trim, zeroes, block status), so no tokio worker ever blocks on the pool
//! lock, a device or a sync. Sessions only parse, queue and reply.
//!
//! The queue is a `Mutex<VecDeque>` with a `Condvar`; a job is woken for only when a thread is
//! idle (a busy thread takes the next job itself when it is done), and sessions hand over
//! several requests per job (see `session.rs`), so the hand-off costs far less than a thread
//! wake-up per request.

use crate::sync::{Condvar, Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::Arc;

type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    closed: bool,
}

struct Inner {
    q: Mutex<Queue>,
    cv: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fixed pool of I/O threads; dropping the last handle lets them finish the queue and exit.
pub struct IoPool {
    inner: Arc<Inner>,
    threads: usize,
}

/// The default number of I/O threads: twice the cores, at least 4 (device reads overlap).
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 2).max(4)
}

impl IoPool {
    /// Start `threads` I/O threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<IoPool> {
        let inner = Arc::new(Inner {
            q: Mutex::new(Queue::default()),
            cv: Condvar::new(),
        });
        let threads = threads.max(1);
        for i in 0..threads {
            let inner = inner.clone();
            crate::sync::thread::Builder::new()
                .name(format!("ssp-io-{i}"))
                .spawn(move || worker(&inner))?;
        }
        Ok(IoPool { inner, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queue `job` for an I/O thread.
    pub fn submit(&self, job: impl FnOnce() + Send + 'static) {
        let mut q = self.inner.lock();
        q.jobs.push_back(Box::new(job));
        // A thread that is busy takes the job when it is done: wake one only if one is idle.
        let wake = q.idle > 0;
        drop(q);
        if wake {
            self.inner.cv.notify_one();
        }
    }

    /// Run `f` on an I/O thread and wait for its result without blocking the async runtime.
    /// `None` if the job panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if let Ok(v) = r {
                let _ = tx.send(v);
            }
        });
        rx.await.ok()
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.cv.notify_all();
    }
}

fn worker(inner: &Inner) {
    let mut q = inner.lock();
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            // A panicking job answers its own client (see the session); the thread lives on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            q = inner.lock();
            continue;
        }
        if q.closed {
            return;
        }
        q.idle += 1;
        q = inner.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        q.idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn jobs_run_on_pool_threads_and_in_parallel() {
        let pool = IoPool::new(3).unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..3 {
            let (started, gate, tx) = (started.clone(), gate.clone(), tx.clone());
            pool.submit(move || {
                started.fetch_add(1, Ordering::SeqCst);
                let (m, cv) = &*gate;
                let mut open = m.lock().unwrap();
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                let name = std::thread::current().name().unwrap_or("").to_owned();
                tx.send(name).unwrap();
            });
        }
        // All three block at once: three threads run them.
        for _ in 0..500 {
            if started.load(Ordering::SeqCst) == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(started.load(Ordering::SeqCst), 3);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        for _ in 0..3 {
            let name = rx.recv().unwrap();
            assert!(name.starts_with("ssp-io-"), "{name}");
        }
    }

    #[test]
    fn a_panicking_job_does_not_kill_its_thread() {
        let pool = IoPool::new(1).unwrap();
        pool.submit(|| panic!("boom"));
        let (tx, rx) = std::sync::mpsc::channel();
        pool.submit(move || tx.send(7).unwrap());
        assert_eq!(rx.recv().unwrap(), 7);
    }
}
