//! What `sspctl send` / `sspctl receive` need from the pool: volume identities (the 16-byte
//! UDID, stable for a volume's life and carried across pools by receive), a hidden staging
//! volume a receive writes into, and the one journal batch that makes a finished receive
//! visible (or throws the staging volume away). See `ondisk-format/STREAM.md`.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::reclaim::is_removing;
use super::{LuInfo, Pool, MAX_LU_SIZE};
use crate::format::journal::Record;
use crate::format::node::{VolRecord, VOL_LU, VOL_SNAPSHOT};
use rand::RngCore;

/// Who a volume is, as a stream names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolIdent {
    pub id: u64,
    pub name: String,
    pub udid: [u8; 16],
    pub size: u64,
    pub family: u64,
    pub snapshot: bool,
}

fn ident(v: &VolRecord) -> VolIdent {
    VolIdent {
        id: v.id,
        name: v.name.clone(),
        udid: v.udid,
        size: v.size,
        family: v.family,
        snapshot: v.kind == VOL_SNAPSHOT,
    }
}

/// How a finished receive becomes visible.
#[derive(Clone, Debug)]
pub enum Publish {
    /// The staging volume becomes LU `name` (which must not exist).
    NewLu { name: String },
    /// LU `name` takes the staging volume's blocks (a rollback to it, O(1)); what the LU held
    /// is kept as snapshot `keep_old` when given, else dropped.
    OntoLu {
        name: String,
        keep_old: Option<String>,
    },
}

fn random_udid() -> [u8; 16] {
    let mut u = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut u);
    u
}

impl Pool {
    /// The pool's 16-byte id.
    pub fn pool_uuid(&self) -> [u8; 16] {
        self.pool_id
    }

    /// Identity of the volume named `name` (any kind).
    pub fn vol_ident(&self, name: &str) -> Result<VolIdent> {
        let g = self.shared();
        g.names
            .get(name)
            .and_then(|id| g.vols.get(id))
            .map(ident)
            .ok_or_else(|| PoolError::NotFound(name.into()))
    }

    /// Snapshots whose UDID is `udid` (a received snapshot keeps its sender's UDID), oldest
    /// first; volumes being removed are not counted.
    pub fn snapshots_by_udid(&self, udid: &[u8; 16]) -> Vec<VolIdent> {
        let g = self.shared();
        let mut v: Vec<&VolRecord> = g
            .vols
            .values()
            .filter(|v| v.kind == VOL_SNAPSHOT && &v.udid == udid && !is_removing(v))
            .collect();
        v.sort_by_key(|v| (v.created_epoch, v.id));
        v.into_iter().map(ident).collect()
    }

    /// A new hidden (name starts with '.') LU of `size` bytes for a full receive to fill.
    pub fn staging_create(&self, name: &str, size: u64) -> Result<VolIdent> {
        if !name.starts_with('.') {
            return Err(PoolError::Invalid(format!("{name} is not a hidden name")));
        }
        if size == 0 || size > MAX_LU_SIZE {
            return Err(PoolError::Invalid(format!(
                "volume size must be between 1 byte and 1 PiB, not {size}"
            )));
        }
        let mut g = self.lock();
        if g.names.contains_key(name) {
            return Err(PoolError::Exists(format!("{name} already exists")));
        }
        let id = g.next_volume_id;
        g.log_and_apply(Record::VolCreate {
            id,
            kind: VOL_LU,
            size,
            udid: random_udid(),
            name: name.to_owned(),
        })?;
        g.flush()?;
        g.vols
            .get(&id)
            .map(ident)
            .ok_or_else(|| PoolError::Internal(format!("staging volume {name} is missing")))
    }

    /// A new hidden writable clone of snapshot `base` (by id), resized to `size`, for an
    /// incremental receive to apply its changes to.
    pub fn staging_clone(&self, base: u64, name: &str, size: u64) -> Result<VolIdent> {
        if !name.starts_with('.') {
            return Err(PoolError::Invalid(format!("{name} is not a hidden name")));
        }
        let mut g = self.lock();
        if g.names.contains_key(name) {
            return Err(PoolError::Exists(format!("{name} already exists")));
        }
        if !g.sharing_enabled() {
            return Err(PoolError::Config(
                "this pool was created by an older ssp without snapshot support".into(),
            ));
        }
        let b = g
            .vols
            .get(&base)
            .cloned()
            .ok_or_else(|| PoolError::NotFound(format!("volume {base}")))?;
        let id = g.next_volume_id;
        g.log_and_apply(Record::VolShare {
            id,
            src: b.id,
            kind: VOL_LU,
            udid: random_udid(),
            name: name.to_owned(),
        })?;
        if size != b.size {
            if size == 0 || size > MAX_LU_SIZE {
                return Err(PoolError::Invalid(format!("bad volume size {size}")));
            }
            g.log_and_apply(Record::VolResize { id, size })?;
        }
        g.flush()?;
        g.vols
            .get(&id)
            .map(ident)
            .ok_or_else(|| PoolError::Internal(format!("staging volume {name} is missing")))
    }

    /// Make a finished receive visible in one journal batch: the staging volume's content
    /// becomes an LU (`publish`) and its snapshot `snap` with the sender's `snap_udid`; the
    /// staging volume's name is gone afterwards. A crash leaves all of it or none of it: the
    /// batch is a handful of small records written as one journal block at the flush.
    pub fn staging_publish(
        &self,
        staging: u64,
        publish: &Publish,
        snap: &str,
        snap_udid: [u8; 16],
    ) -> Result<LuInfo> {
        let mut g = self.lock();
        let st = g
            .vols
            .get(&staging)
            .cloned()
            .ok_or_else(|| PoolError::NotFound(format!("staging volume {staging}")))?;
        if g.names.contains_key(snap) {
            return Err(PoolError::Exists(format!("snapshot {snap} already exists")));
        }
        // Start from an empty journal batch so the records below go out together.
        g.flush()?;
        let lu = match publish {
            Publish::NewLu { name } => {
                if g.names.contains_key(name) {
                    return Err(PoolError::Exists(format!(
                        "an LU named {name} already exists"
                    )));
                }
                g.log_and_apply(Record::VolRename {
                    id: st.id,
                    name: name.clone(),
                })?;
                st.id
            }
            Publish::OntoLu { name, keep_old } => {
                let lu = g
                    .names
                    .get(name)
                    .and_then(|id| g.vols.get(id))
                    .cloned()
                    .ok_or_else(|| PoolError::NotFound(name.clone()))?;
                if lu.kind != VOL_LU {
                    return Err(PoolError::Invalid(format!("{name} is not an LU")));
                }
                let undo_id = g.next_volume_id;
                let undo_name = match keep_old {
                    Some(k) if g.names.contains_key(k) => {
                        return Err(PoolError::Exists(format!("{k} already exists")))
                    }
                    Some(k) => k.clone(),
                    None => format!(".recv-old-{undo_id}"),
                };
                g.log_and_apply(Record::VolRollback {
                    id: lu.id,
                    src: st.id,
                    undo_id,
                    undo_udid: random_udid(),
                    undo_name,
                })?;
                if keep_old.is_none() {
                    g.begin_remove(undo_id)?;
                }
                g.begin_remove(st.id)?;
                lu.id
            }
        };
        let sid = g.next_volume_id;
        g.log_and_apply(Record::VolShare {
            id: sid,
            src: lu,
            kind: VOL_SNAPSHOT,
            udid: snap_udid,
            name: snap.to_owned(),
        })?;
        g.flush()?;
        let v = g
            .vols
            .get(&lu)
            .cloned()
            .ok_or_else(|| PoolError::Internal(format!("volume {lu} is missing")))?;
        Ok(Self::vol_info(&g, &v))
    }

    /// Drop a staging volume (an aborted receive); its space comes back.
    pub fn staging_discard(&self, staging: u64) -> Result<()> {
        let mut g = self.lock();
        let Some(v) = g.vols.get(&staging).cloned() else {
            return Ok(());
        };
        if !v.name.starts_with('.') || is_removing(&v) {
            return Ok(());
        }
        g.begin_remove(staging)?;
        g.flush()?;
        drop(g);
        self.reclaim_unless_background()
    }
}
