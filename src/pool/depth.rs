//! Allocation depth (the NBD `qemu:allocation-depth` context, as `qemu-nbd -A` reports it):
//! for each block of a volume, how far down its clone chain the block's content was written.
//!
//! A volume's layers are the volume itself, then the snapshot or image it was cloned from,
//! then, when that snapshot's LU is itself a clone, the snapshot *that* LU was cloned from, and
//! so on (same family only). A block's depth is `i + 1` for the first layer `i` whose map
//! entry differs from the next layer's (written, zeroed or trimmed there); a block equal all
//! the way down has the depth of the last layer if it is allocated there, and 0 (a hole in the
//! whole chain) if not. So a plain LU reports 1 for allocated blocks and 0 for holes, and a
//! fresh clone 2 for what it inherited.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::Result;
use super::maps::MapKind;
use super::reclaim::is_removing;
use super::{Inner, Pool};
use crate::format::node::{VOL_LU, VOL_SNAPSHOT};
use crate::format::BLOCK_U64;

/// Chains longer than this are cut off (their deeper blocks report this depth).
pub const MAX_LAYERS: usize = 64;

impl Inner {
    /// The layers of `vol`: itself, then each volume it inherits blocks from.
    fn layers(&self, vol: u64) -> Vec<u64> {
        let mut out = vec![vol];
        let mut cur = vol;
        while out.len() < MAX_LAYERS {
            let Some(v) = self.vols.get(&cur) else { break };
            let next = match v.kind {
                // A snapshot inherits what its LU inherited: the LU's origin, if it is a clone.
                VOL_SNAPSHOT => self
                    .vols
                    .get(&v.parent)
                    .filter(|lu| lu.kind == VOL_LU && lu.parent != 0)
                    .map(|lu| lu.parent),
                // A clone inherits from the snapshot or image it was made from.
                VOL_LU if v.parent != 0 => Some(v.parent),
                _ => None,
            };
            let Some(next) = next else { break };
            match self.vols.get(&next) {
                Some(n) if n.family == v.family && !is_removing(n) && !out.contains(&next) => {
                    out.push(next);
                    cur = next;
                }
                _ => break,
            }
        }
        out
    }
}

/// Blocks worked on per step (bounds the per-call memory whatever the range).
const CHUNK: u64 = 16 * 1024;

impl Inner {
    /// Depth of each block of `[first, first+count)` of the volume whose layers are `layers`.
    fn layer_depths(&mut self, layers: &[u64], first: u64, count: u64) -> Result<Vec<u32>> {
        // 0: not decided yet.
        let mut depth = vec![0u32; usize::try_from(count).unwrap_or(usize::MAX)];
        let mark = |depth: &mut Vec<u32>, lo: u64, hi: u64, d: u32| {
            for b in lo..hi {
                if let Some(slot) = depth.get_mut(b as usize) {
                    if *slot == 0 {
                        *slot = d;
                    }
                }
            }
        };
        for (i, pair) in layers.windows(2).enumerate() {
            let [upper, lower] = pair else { continue };
            let d = u32::try_from(i + 1).unwrap_or(u32::MAX);
            for (l, n) in self.map_diff(*upper, *lower, first, count)? {
                mark(&mut depth, l - first, l - first + n, d);
            }
        }
        // Equal all the way down: the last layer's, if it is allocated there.
        let Some(&last) = layers.last() else {
            return Ok(depth);
        };
        let bottom = u32::try_from(layers.len()).unwrap_or(u32::MAX);
        let last_blocks = self.vol_size(last)?.div_ceil(BLOCK_U64);
        if first < last_blocks {
            for (l, n, kind) in self.map_runs(last, first, count.min(last_blocks - first))? {
                if kind != MapKind::Hole {
                    let lo = l.max(first) - first;
                    let hi = (l + n).min(first + count) - first;
                    mark(&mut depth, lo, hi, bottom);
                }
            }
        }
        Ok(depth)
    }
}

impl Pool {
    /// Allocation depth of `vol`'s blocks in `[offset, offset+len)` as (start, length, depth)
    /// byte runs covering the range (see the module documentation).
    pub fn allocation_depth(
        &self,
        vol: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64, u32)>> {
        let mut g = self.lock();
        g.check_range(vol, offset, len)?;
        if len == 0 {
            return Ok(vec![]);
        }
        let first = offset / BLOCK_U64;
        let count = (offset + len - 1) / BLOCK_U64 - first + 1;
        let layers = g.layers(vol);
        let end = offset + len;
        let mut out: Vec<(u64, u64, u32)> = Vec::new();
        let mut at = first;
        while at < first + count {
            let n = CHUNK.min(first + count - at);
            let depth = g.layer_depths(&layers, at, n)?;
            g.trim_caches();
            for (i, d) in depth.into_iter().enumerate() {
                let s = ((at + i as u64) * BLOCK_U64).max(offset);
                let e = ((at + i as u64 + 1) * BLOCK_U64).min(end);
                match out.last_mut() {
                    Some(r) if r.2 == d && r.0 + r.1 == s => r.1 += e - s,
                    _ => out.push((s, e - s, d)),
                }
            }
            at += n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::dev::{BlockDev, MemDev};
    use crate::pool::{CreateOptions, Options, Pool};
    use std::sync::Arc;

    const MB: u64 = 1 << 20;
    const GB: u64 = 1 << 30;

    #[test]
    fn depths_over_many_chunks_of_a_clone_chain() {
        let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("mem0", 64 * MB));
        let copts = CreateOptions {
            name: "t".into(),
            journal_blocks: 256,
        };
        let p = Pool::create(vec![dev], &copts, Options::default()).expect("create");
        let lu = p.lu_create("lu", GB).unwrap().id;
        let blk = vec![7u8; 4096];
        p.write(lu, 0, &blk, false).unwrap();
        p.write_zeroes_allocated(lu, 100 * MB, 300 * MB, false)
            .unwrap();
        p.snapshot_create(&["lu@s"]).unwrap();
        let c = p.clone_create("lu@s", "c").unwrap().id;
        p.write(c, 200 * MB, &blk, false).unwrap();
        p.trim(c, 0, 4096).unwrap();
        // The whole GiB in one call: 16 chunks, runs merged across them.
        let d = p.allocation_depth(c, 0, GB).unwrap();
        assert_eq!(
            d,
            vec![
                (0, 4096, 1),
                (4096, 100 * MB - 4096, 0),
                (100 * MB, 100 * MB, 2),
                (200 * MB, 4096, 1),
                (200 * MB + 4096, 200 * MB - 4096, 2),
                (400 * MB, 624 * MB, 0),
            ]
        );
        // An unaligned range is covered exactly.
        assert_eq!(
            p.allocation_depth(lu, 1000, 5000).unwrap(),
            vec![(1000, 3096, 1), (4096, 1904, 0)]
        );
        assert!(p.allocation_depth(lu, GB, 1).is_err());
    }
}
