//! ssp: a shared storage pool of thin LUs, snapshots and linked clones, served over NBD.
//!
//! Layers (each depends only on those below it):
//! ```text
//!   cli (sspctl)          admin verbs, offline on a stopped pool
//!   pool                  log-structured pool: journal, checkpoints, maps, cleaner, check
//!   format                on-disk structures: pure encode/decode, no I/O
//!   dev                   block devices: file, memory, fault-injecting
//! ```

pub mod access;
pub mod admin;
pub mod alerts;
pub mod audit;
pub mod cli;
pub mod daemon;
pub mod dev;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod holds;
pub mod logging;
pub mod metrics;
pub mod monitoring;
pub mod nbd;
pub mod origins;
pub mod pool;
pub mod replication;
pub mod retention;
pub mod server;
pub mod stream;
pub mod sync;
pub mod systemd;
