//! How PVs do their I/O: the engine (`io_uring` or `pread`/`pwrite`) and the cache mode (the
//! host's page cache, or `O_DIRECT`). Chosen once at start (`sspd --io-engine/--cache`,
//! `sspctl --io-engine/--cache` or `SSP_IO_ENGINE`/`SSP_CACHE`) and reported in `pool status`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The engine asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    /// io_uring for PVs opened with O_DIRECT if this host allows it (a ring can be set up and
    /// runs a no-op), else sync. Through the page cache sync is used: io_uring punts buffered
    /// writes to kernel worker threads (ext4), which made a 4 KiB write ~20x slower in
    /// `benches/io_engines.rs`.
    #[default]
    Auto,
    /// io_uring, or fail to open the PV.
    Uring,
    /// `pread`/`pwrite`/`fdatasync` from the calling thread.
    Sync,
}

/// The engine a device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Uring,
    Sync,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Uring => "uring",
            Engine::Sync => "sync",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The cache mode asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheChoice {
    /// `none` for block devices, `writeback` for regular files (as qemu's defaults).
    #[default]
    Auto,
    /// Through the host's page cache; `sync` makes written data durable (fdatasync).
    Writeback,
    /// `O_DIRECT`: bypass the page cache (I/O is done in aligned buffers); `sync` still
    /// flushes the device's write cache.
    None,
}

/// The cache mode a device uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    Writeback,
    None,
}

impl Cache {
    pub fn name(self) -> &'static str {
        match self {
            Cache::Writeback => "writeback",
            Cache::None => "none",
        }
    }
}

impl fmt::Display for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to open PVs (part of the pool's `Options`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoConfig {
    pub engine: EngineChoice,
    pub cache: CacheChoice,
}

impl IoConfig {
    /// The engine and the cache mode given explicitly.
    pub fn new(engine: EngineChoice, cache: CacheChoice) -> IoConfig {
        IoConfig { engine, cache }
    }

    /// Whether a PV opens with `O_DIRECT` (`block_device`: it is one).
    pub fn cache_for(&self, block_device: bool) -> Cache {
        match self.cache {
            CacheChoice::Writeback => Cache::Writeback,
            CacheChoice::None => Cache::None,
            CacheChoice::Auto if block_device => Cache::None,
            CacheChoice::Auto => Cache::Writeback,
        }
    }

    /// The engine for a PV in cache mode `cache`: `auto` is io_uring for `O_DIRECT` when
    /// [`uring_available`] says so, sync through the page cache.
    pub fn engine(&self, cache: Cache) -> Result<Engine, String> {
        match (self.engine, cache) {
            // No probe (and no log line about io_uring) where it is not wanted.
            (EngineChoice::Sync, _) | (EngineChoice::Auto, Cache::Writeback) => Ok(Engine::Sync),
            (e, _) => resolve_engine(e, uring_available()),
        }
    }
}

impl FromStr for EngineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <EngineChoice as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown I/O engine {s:?} (use auto, uring or sync)"))
    }
}

impl FromStr for CacheChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <CacheChoice as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("unknown cache mode {s:?} (use auto, writeback or none)"))
    }
}

/// The engine for `choice` given whether io_uring works here (`Err` says why not).
pub fn resolve_engine(
    choice: EngineChoice,
    uring: Result<(), &'static str>,
) -> Result<Engine, String> {
    match (choice, uring) {
        (EngineChoice::Sync, _) => Ok(Engine::Sync),
        (_, Ok(())) => Ok(Engine::Uring),
        (EngineChoice::Auto, Err(_)) => Ok(Engine::Sync),
        (EngineChoice::Uring, Err(why)) => Err(format!(
            "the io_uring engine was asked for (--io-engine uring) but io_uring is unavailable here: {why}"
        )),
    }
}

/// Whether io_uring works in this process (checked once: a ring is set up and runs a no-op).
/// `Err` says why not (kernel without it, `io_uring_disabled`, a seccomp filter).
/// The first answer is logged: which engine `auto` picks, and why.
pub fn uring_available() -> Result<(), &'static str> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = PROBE.get_or_init(|| {
        let r = super::uring::probe();
        match &r {
            Ok(()) => tracing::info!(
                "io engine: io_uring is available (auto uses it for PVs opened with O_DIRECT)"
            ),
            Err(why) => tracing::warn!(
                "io engine: io_uring is unavailable ({why}); auto uses the sync pread/pwrite engine"
            ),
        }
        r
    });
    r.as_ref().map(|_| ()).map_err(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_and_uring_refuses_without_io_uring() {
        let no = Err("io_uring_setup: Operation not permitted");
        assert_eq!(resolve_engine(EngineChoice::Auto, no), Ok(Engine::Sync));
        assert_eq!(resolve_engine(EngineChoice::Sync, no), Ok(Engine::Sync));
        let e = resolve_engine(EngineChoice::Uring, no).unwrap_err();
        assert!(
            e.contains("unavailable") && e.contains("not permitted"),
            "{e}"
        );
        assert_eq!(
            resolve_engine(EngineChoice::Auto, Ok(())),
            Ok(Engine::Uring)
        );
        assert_eq!(resolve_engine(EngineChoice::Sync, Ok(())), Ok(Engine::Sync));
        assert_eq!(
            resolve_engine(EngineChoice::Uring, Ok(())),
            Ok(Engine::Uring)
        );
    }

    #[test]
    fn auto_uses_sync_through_the_page_cache() {
        let auto = IoConfig::default();
        assert_eq!(auto.engine(Cache::Writeback), Ok(Engine::Sync));
        let sync = IoConfig::new(EngineChoice::Sync, CacheChoice::None);
        assert_eq!(sync.engine(Cache::None), Ok(Engine::Sync));
        if uring_available().is_ok() {
            assert_eq!(auto.engine(Cache::None), Ok(Engine::Uring));
            let uring = IoConfig::new(EngineChoice::Uring, CacheChoice::Writeback);
            assert_eq!(uring.engine(Cache::Writeback), Ok(Engine::Uring));
        }
    }

    #[test]
    fn cache_defaults_follow_the_device_kind() {
        let auto = IoConfig::default();
        assert_eq!(auto.cache_for(true), Cache::None);
        assert_eq!(auto.cache_for(false), Cache::Writeback);
        let wb = IoConfig::new(EngineChoice::Auto, CacheChoice::Writeback);
        assert_eq!(wb.cache_for(true), Cache::Writeback);
        let none = IoConfig::new(EngineChoice::Auto, CacheChoice::None);
        assert_eq!(none.cache_for(false), Cache::None);
        assert_eq!("URING".parse::<EngineChoice>(), Ok(EngineChoice::Uring));
        assert!("fast"
            .parse::<EngineChoice>()
            .unwrap_err()
            .contains("auto, uring or sync"));
        assert_eq!("none".parse::<CacheChoice>(), Ok(CacheChoice::None));
        assert!("unsafe".parse::<CacheChoice>().is_err());
    }
}
