//! When each snapshot was taken, for retention (`snapshot prune`, the undo-snapshot limit).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::reclaim::is_removing;
use super::{LuInfo, Pool};
use crate::format::node::VOL_SNAPSHOT;

impl Pool {
    /// The snapshots of LU or image `base`, oldest first, each with its creation time (Unix
    /// seconds, as recorded in its volume record).
    pub fn snapshot_times(&self, base: &str) -> Result<Vec<(LuInfo, u64)>> {
        let g = self.lock();
        let parent = g
            .names
            .get(base)
            .copied()
            .ok_or_else(|| PoolError::NotFound(base.into()))?;
        let mut v: Vec<_> = g
            .vols
            .values()
            .filter(|v| v.kind == VOL_SNAPSHOT && v.parent == parent && !is_removing(v))
            .collect();
        v.sort_by_key(|v| (v.created_epoch, v.id));
        Ok(v.into_iter()
            .map(|v| (Self::vol_info(&g, v), v.created_time))
            .collect())
    }
}
