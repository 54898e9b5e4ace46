//! Shared helpers for engine tests: in-memory pools and deterministic block patterns.
#![allow(dead_code)]

pub mod server;

use ssp::dev::{BlockDev, FaultControl, FaultDev, MemDev};
use ssp::pool::{CreateOptions, Options, Pool};
use std::sync::Arc;

pub const MB: u64 = 1 << 20;

/// Small caches and frequent checkpoints so tests exercise eviction and replay.
pub fn small_opts() -> Options {
    Options {
        map_cache_nodes: 8,
        vba_cache_pages: 8,
        dirty_limit: 512,
        checkpoint_writes: 300,
        ..Options::default()
    }
}

/// Tiny caches and very frequent checkpoints for the model-based property tests and the
/// regressions they found.
pub fn model_opts() -> Options {
    Options {
        map_cache_nodes: 6,
        vba_cache_pages: 6,
        dirty_limit: 200,
        checkpoint_writes: 150,
        ..Options::default()
    }
}

pub fn copts() -> CreateOptions {
    CreateOptions {
        name: "test".into(),
        journal_blocks: 256,
    }
}

pub fn mem_pool(size: u64, opts: Options) -> (Pool, Arc<dyn BlockDev>) {
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", size));
    let pool = Pool::create(vec![dev.clone()], &copts(), opts).expect("create pool");
    (pool, dev)
}

pub fn fault_pool(size: u64, opts: Options) -> (Pool, FaultControl) {
    let (dev, ctl) = FaultDev::new("fault0", size);
    let pool = Pool::create(vec![Arc::new(dev)], &copts(), opts).expect("create pool");
    (pool, ctl)
}

/// A block whose bytes depend on (lba, version): distinguishes every write.
pub fn pattern(lba: u64, version: u64) -> Vec<u8> {
    ssp::cli::debug::pattern_block(lba, version)
}

pub fn assert_check(pool: &Pool) {
    let rep = pool.check().expect("check runs");
    assert!(rep.ok(), "check found errors: {:#?}", rep.errors);
}
