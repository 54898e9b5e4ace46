//! Shared helpers for engine tests: in-memory pools and deterministic block patterns.
#![allow(dead_code)]

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

pub fn copts() -> CreateOptions {
    CreateOptions { name: "test".into(), journal_blocks: 256 }
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
    let mut b = vec![0u8; 4096];
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ 1;
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    b
}

pub fn assert_check(pool: &Pool) {
    let rep = pool.check().expect("check runs");
    assert!(rep.ok(), "check found errors: {:#?}", rep.errors);
}
