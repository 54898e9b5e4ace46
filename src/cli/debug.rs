//! Hidden test helpers for `sspctl debug ...`: a write loop that a kill -9 test can shoot.

use crate::pool::dir::PoolDir;
use crate::pool::Options;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// A 4 KiB block that encodes (lba, version); every write of the loop is distinguishable.
pub fn pattern_block(lba: u64, version: u64) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    let mut x =
        lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ 1;
    for chunk in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    b
}

/// The LU block written by write number `i` (1-based) of a loop with this seed.
pub fn loop_lba(seed: u64, i: u64, blocks: u64) -> u64 {
    let mut x = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) % blocks
}

/// Write `pattern_block(loop_lba(i), i)` for i = 1.., flushing every `flush_every` writes and
/// recording the last acknowledged `i` in `ack_file` (fsynced) after each flush.
pub fn write_loop(
    dir: &Path,
    lu: &str,
    blocks: u64,
    seed: u64,
    flush_every: u64,
    ack_file: &Path,
    max_writes: u64,
) -> Result<()> {
    let pd = PoolDir::open(
        dir,
        Options {
            checkpoint_writes: 2000,
            ..Options::default()
        },
    )?;
    let pool = &pd.pool;
    let id = match pool.lu_id(lu) {
        Ok(id) => id,
        Err(_) => pool.lu_create(lu, blocks * 4096)?.id,
    };
    for i in 1..=max_writes {
        let lba = loop_lba(seed, i, blocks);
        pool.write(id, lba * 4096, &pattern_block(lba, i), false)?;
        if i % flush_every == 0 {
            pool.flush()?;
            let tmp = ack_file.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp).context("ack file")?;
            writeln!(f, "{i}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, ack_file)?;
        }
    }
    Ok(())
}
