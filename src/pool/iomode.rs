//! How the pool's PVs do their I/O, for `pool status` and for PVs added while it runs.

use super::Pool;
use crate::dev::IoConfig;

impl Pool {
    /// The engine and cache mode the pool was opened with (PVs added later open with them).
    pub fn io_config(&self) -> IoConfig {
        self.shared().opts.io
    }

    /// The engine and the cache mode the open PVs use, as `pool status` shows them: one name
    /// when every PV agrees, else `PV=mode` for each (`-` when no PV is open on a file).
    pub(super) fn io_modes(&self) -> (String, String) {
        let g = self.shared();
        let modes: Vec<(String, crate::dev::Engine, crate::dev::Cache)> = g
            .pvs
            .pvs
            .iter()
            .filter_map(|p| {
                p.dev
                    .io_mode()
                    .map(|(e, c)| (p.dev.name().to_owned(), e, c))
            })
            .collect();
        let summary =
            |f: &dyn Fn(&(String, crate::dev::Engine, crate::dev::Cache)) -> &'static str| {
                let mut names: Vec<&str> = modes.iter().map(f).collect();
                names.dedup();
                match names.as_slice() {
                    [] => "-".to_owned(),
                    [one] => (*one).to_owned(),
                    _ => modes
                        .iter()
                        .map(|m| format!("{}={}", m.0, f(m)))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            };
        (summary(&|m| m.1.name()), summary(&|m| m.2.name()))
    }
}
