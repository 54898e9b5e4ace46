//! The synchronisation primitives of the concurrency protocols that are checked under a
//! schedule explorer: group commit and the sync gates (`pool/commit.rs`), the checkpointer's
//! wake-up (`pool/checkpointer.rs`), the I/O thread pool's queue (`server/iopool.rs`), the pool
//! lock and the `reuse` pin (`pool/mod.rs`) and the scrubber's state (`pool/scrub.rs`).
//!
//! Normally these are `std`'s. With the `shuttle` feature they are [shuttle]'s, whose
//! scheduler runs the threads of a test one step at a time in random and PCT orders and
//! reports a deadlock (a lost wake-up) or a failed assertion with the schedule that led to it
//! (`tests/schedules.rs`, run by `scripts/test.sh`). Only a test run inside `shuttle::check_*`
//! may use these components in a build with the feature, so that build runs only those tests.
//!
//! [shuttle]: https://docs.rs/shuttle

#[cfg(not(feature = "shuttle"))]
pub use std::sync::{
    atomic, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(not(feature = "shuttle"))]
pub use std::thread;

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{
    atomic, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(feature = "shuttle")]
pub use shuttle::thread;
