//! The pool's LUs as NBD exports: every LU is an export named after it; and the sessions
//! attached to each export.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::access::{MapStore, Peer};
use crate::admin::Attachments;
use crate::nbd::{ExportCatalog, ExportEntry, ExportInfo, Lookup};
use crate::pool::Pool;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The exports one client may see: LUs without maps, and LUs mapped to this client.
pub struct PoolCatalog {
    pub pool: Arc<Pool>,
    pub maps: Arc<MapStore>,
    pub peer: Peer,
}

/// Block-status context reporting shared (bit 0 set) and owned blocks.
pub const CONTEXT_SHARING: &str = "ssp:sharing";
/// Prefix of the contexts reporting blocks changed (bit 0 set) since another volume of the
/// export's family: `ssp:changed:LU@SNAP`.
pub const CONTEXT_CHANGED: &str = "ssp:changed:";
/// qemu's name for the same view (`qemu:dirty-bitmap:LU@SNAP`, docs/interop/nbd.txt): bit 0
/// set where the block is dirty, i.e. differs from volume NAME.
pub const CONTEXT_QEMU_BITMAP: &str = "qemu:dirty-bitmap:";
/// Allocation depth as `qemu-nbd -A` reports it: 0 a hole in the whole clone chain, 1 the
/// volume's own block, 2 and more inherited ([`Pool::allocation_depth`]).
pub const CONTEXT_QEMU_DEPTH: &str = "qemu:allocation-depth";

fn describe(l: &crate::pool::LuInfo) -> String {
    match l.kind.as_str() {
        "snapshot" => format!("ssp snapshot (read-only), {} MiB", l.size_mb),
        "image" => format!("ssp client image (read-only), {} MiB", l.size_mb),
        "clone" => format!("ssp linked clone of {}, {} MiB", l.parent, l.size_mb),
        _ => format!("ssp thin LU, {} MiB", l.size_mb),
    }
}

fn read_only(l: &crate::pool::LuInfo) -> bool {
    matches!(l.kind.as_str(), "snapshot" | "image")
}

impl ExportCatalog for PoolCatalog {
    fn list(&self) -> Vec<ExportEntry> {
        self.pool
            .export_list()
            .into_iter()
            .filter(|l| self.maps.allows(&l.name, &self.peer))
            .map(|l| ExportEntry {
                description: describe(&l),
                name: l.name,
            })
            .collect()
    }

    fn lookup(&self, name: &str) -> Lookup {
        // There is no default export: a client must name an LU.
        match self.pool.lu_get(name) {
            // Refused, like an LU that does not exist to this client.
            Ok(l) if !self.maps.allows(&l.name, &self.peer) => Lookup::Refused,
            Ok(l) => Lookup::Found(ExportInfo {
                description: describe(&l),
                read_only: read_only(&l),
                name: l.name,
                size: l.size,
                // Every connection shares one pool and its caches, and FLUSH makes every
                // completed write durable, whichever connection made it.
                can_multi_conn: true,
                min_block: 1,
            }),
            Err(_) => Lookup::NotFound,
        }
    }

    fn meta_contexts(&self, export: &str) -> Vec<String> {
        let mut v = vec![CONTEXT_SHARING.to_owned()];
        let family = self.pool.family_names(export);
        v.extend(family.iter().map(|n| format!("{CONTEXT_CHANGED}{n}")));
        v.push(CONTEXT_QEMU_DEPTH.to_owned());
        v.extend(family.iter().map(|n| format!("{CONTEXT_QEMU_BITMAP}{n}")));
        v
    }
}

/// The sessions attached to each export, so that removing, shrinking or rolling back an
/// attached LU can be refused, and, when forced, those sessions ended first.
///
/// A session ends when told to (its `ended` signal turns true): it stops reading requests,
/// lets the ones in flight finish and send their replies, then closes the connection. While an
/// export is fenced (an operation changes it under its clients), a session attaching to it is
/// ended at once.
#[derive(Default)]
pub struct AttachMap {
    state: Mutex<AttachState>,
    /// Signalled whenever a session detaches.
    detached: Condvar,
}

#[derive(Default)]
struct AttachState {
    next_id: u64,
    sessions: HashMap<String, Vec<Session>>,
    /// Exports fenced by running operations (a count: operations may overlap).
    fenced: HashMap<String, usize>,
}

struct Session {
    id: u64,
    peer: String,
    end: watch::Sender<bool>,
}

impl AttachMap {
    fn lock(&self) -> MutexGuard<'_, AttachState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait up to `wait` until no session is attached to `export`; the peers still attached.
    fn wait_gone(
        &self,
        mut st: MutexGuard<'_, AttachState>,
        export: &str,
        wait: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + wait;
        loop {
            let now = Instant::now();
            match st.sessions.get(export) {
                None => return Vec::new(),
                Some(v) if now >= deadline => return v.iter().map(|s| s.peer.clone()).collect(),
                Some(_) => {}
            }
            st = self
                .detached
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Attachments for AttachMap {
    fn clients(&self, export: &str) -> Vec<String> {
        self.lock()
            .sessions
            .get(export)
            .map(|v| v.iter().map(|s| s.peer.clone()).collect())
            .unwrap_or_default()
    }

    fn fence(&self, export: &str) {
        *self.lock().fenced.entry(export.to_owned()).or_insert(0) += 1;
    }

    fn unfence(&self, export: &str) {
        let mut st = self.lock();
        if let Some(n) = st.fenced.get_mut(export) {
            *n -= 1;
            if *n == 0 {
                st.fenced.remove(export);
            }
        }
    }

    fn settle(&self, export: &str, wait: Duration) -> Vec<String> {
        self.wait_gone(self.lock(), export, wait)
    }

    fn end_sessions(&self, export: &str, wait: Duration) -> Result<(), Vec<String>> {
        let st = self.lock();
        for s in st.sessions.get(export).into_iter().flatten() {
            tracing::info!(export, peer = %s.peer, "ending session");
            s.end.send_replace(true);
        }
        let left = self.wait_gone(st, export, wait);
        if left.is_empty() {
            Ok(())
        } else {
            Err(left)
        }
    }
}

/// A session attached to an export, until dropped.
pub struct Attached {
    map: Arc<AttachMap>,
    export: String,
    id: u64,
    ended: watch::Receiver<bool>,
}

impl Attached {
    /// Attach a session of `peer` (its address, for messages) to `export`.
    pub fn new(map: Arc<AttachMap>, export: &str, peer: &str) -> Self {
        let mut st = map.lock();
        let id = st.next_id;
        st.next_id += 1;
        // Attaching to a fenced export: ended from the start.
        let (end, ended) = watch::channel(st.fenced.contains_key(export));
        st.sessions
            .entry(export.to_owned())
            .or_default()
            .push(Session {
                id,
                peer: peer.to_owned(),
                end,
            });
        drop(st);
        Attached {
            map,
            export: export.to_owned(),
            id,
            ended,
        }
    }

    /// Turns true when the session is to end.
    pub fn ended(&self) -> watch::Receiver<bool> {
        self.ended.clone()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut st = self.map.lock();
        if let Some(v) = st.sessions.get_mut(&self.export) {
            v.retain(|s| s.id != self.id);
            if v.is_empty() {
                st.sessions.remove(&self.export);
            }
        }
        drop(st);
        self.map.detached.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ending_sessions_signals_them_and_waits_until_they_detach() {
        let map = Arc::new(AttachMap::default());
        let a = Attached::new(map.clone(), "vm1", "10.0.0.1:1000");
        let b = Attached::new(map.clone(), "vm1", "10.0.0.2:2000");
        let other = Attached::new(map.clone(), "vm2", "10.0.0.3:3000");
        assert_eq!(map.attached("vm1"), 2);
        // Nobody detaches: the wait ends with the peers still attached.
        let left = map
            .end_sessions("vm1", Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(left, ["10.0.0.1:1000", "10.0.0.2:2000"]);
        assert!(*a.ended().borrow() && *b.ended().borrow());
        assert!(!*other.ended().borrow());
        // Settling waits for clients leaving by themselves, without ending anyone.
        assert_eq!(
            map.settle("vm2", Duration::from_millis(10)),
            ["10.0.0.3:3000"]
        );
        assert!(!*other.ended().borrow());
        assert!(map.settle("vm3", Duration::from_secs(10)).is_empty());
        // Sessions that detach when told to.
        let t = std::thread::spawn(move || {
            drop(a);
            drop(b);
        });
        map.end_sessions("vm1", Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert_eq!(map.attached("vm1"), 0);
        // A session attaching to a fenced export is ended from the start.
        map.fence("vm1");
        assert!(*Attached::new(map.clone(), "vm1", "x").ended().borrow());
        map.unfence("vm1");
        assert!(!*Attached::new(map.clone(), "vm1", "x").ended().borrow());
    }
}
