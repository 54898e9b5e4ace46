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

/// Block-status context reporting shared (bit 0 set) and owned blocks.
pub const CONTEXT_SHARING: &str = "ssp:sharing";
/// Prefix of the contexts reporting blocks changed (bit 0 set) since another volume of the
/// export's family: `ssp:changed:LU@SNAP`.
pub const CONTEXT_CHANGED: &str = "ssp:changed:";

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
        v.extend(
            self.pool
                .family_names(export)
                .into_iter()
                .map(|n| format!("{CONTEXT_CHANGED}{n}")),
        );
        v
    }
}
