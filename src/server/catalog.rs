//! The pool's LUs as NBD exports: every LU is an export named after it.

use crate::access::{MapStore, Peer};
use crate::nbd::{ExportCatalog, ExportEntry, ExportInfo, Lookup};
use crate::pool::Pool;
use std::sync::Arc;

/// The exports one client may see: LUs without maps, and LUs mapped to this client.
pub struct PoolCatalog {
    pub pool: Arc<Pool>,
    pub maps: Arc<MapStore>,
    pub peer: Peer,
}

fn describe(size_mb: u64) -> String {
    format!("ssp thin LU, {size_mb} MiB")
}

impl ExportCatalog for PoolCatalog {
    fn list(&self) -> Vec<ExportEntry> {
        self.pool
            .lu_list()
            .into_iter()
            .filter(|l| self.maps.allows(&l.name, &self.peer))
            .map(|l| ExportEntry {
                description: describe(l.size_mb),
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
                description: describe(l.size_mb),
                name: l.name,
                size: l.size,
                read_only: false,
                // Every connection shares one pool and its caches, and FLUSH makes every
                // completed write durable, whichever connection made it.
                can_multi_conn: true,
                min_block: 1,
            }),
            Err(_) => Lookup::NotFound,
        }
    }

    fn meta_contexts(&self) -> Vec<String> {
        Vec::new()
    }
}
