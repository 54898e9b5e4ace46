//! The pool directory: its configuration (which PVs make the pool) and its lock.
//!
//! `DIR/ssp-pool.json` lists the PV paths (non-normative: the PVs' superblocks are the truth,
//! and opening checks that every listed PV belongs to the pool). `DIR/lock` is held with an
//! exclusive `flock` while the pool is open, so a second process gets a clear error.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::{CreateOptions, Options, Pool};
use crate::dev::{BlockDev, FileDev, IoConfig};
use fs2::FileExt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const CONFIG_FILE: &str = "ssp-pool.json";
pub const LOCK_FILE: &str = "lock";

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Config {
    pub(super) format: u32,
    pub(super) name: String,
    pub(super) pvs: Vec<PathBuf>,
}

/// A PV named on the command line: a path and, for a new file, its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PvSpec {
    pub path: PathBuf,
    pub size: Option<u64>,
}

impl std::str::FromStr for PvSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.rsplit_once(':') {
            Some((p, sz)) if !p.is_empty() => Ok(PvSpec {
                path: p.into(),
                size: Some(parse_size(sz).map_err(|e| e.to_string())?),
            }),
            _ => Ok(PvSpec {
                path: s.into(),
                size: None,
            }),
        }
    }
}

/// Parse a size like `10G`, `512M`, `4096`, `1.5T` (binary units; `B` suffix optional).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix(['i']).unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                _ => {
                    return Err(PoolError::Invalid(format!(
                        "bad size {s:?}: unknown unit {c:?} (use K, M, G, T or P)"
                    )))
                }
            };
            (&t[..t.len() - 1], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| {
        PoolError::Invalid(format!(
            "bad size {s:?}: expected a number with an optional K/M/G/T/P unit"
        ))
    })?;
    if !v.is_finite() || v < 0.0 || v * mult as f64 > u64::MAX as f64 / 2.0 {
        return Err(PoolError::Invalid(format!("bad size {s:?}")));
    }
    Ok((v * mult as f64) as u64)
}

/// An open pool with its directory lock held.
pub struct PoolDir {
    pub dir: PathBuf,
    pub pool: Pool,
    _lock: File,
}

pub(super) fn lock(dir: &Path) -> Result<File> {
    let p = dir.join(LOCK_FILE);
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| PoolError::Config(format!("cannot open {}: {e}", p.display())))?;
    f.try_lock_exclusive()
        .map_err(|_| PoolError::Locked(p.display().to_string()))?;
    Ok(f)
}

pub(super) fn open_dev(path: &Path, io: &IoConfig) -> Result<Arc<dyn BlockDev>> {
    let d = FileDev::open_with(path, io).map_err(|e| dev_error(path, "open", e))?;
    Ok(Arc::new(d))
}

/// A PV that cannot be opened. One another process holds is `InUse`, named with its pool and
/// last writer as the PV records them (read through a separate, unlocked descriptor).
fn dev_error(path: &Path, op: &str, e: std::io::Error) -> PoolError {
    if e.kind() != std::io::ErrorKind::ResourceBusy {
        return PoolError::Config(format!("cannot {op} PV {}: {e}", path.display()));
    }
    let owner = std::fs::File::open(path)
        .ok()
        .and_then(|f| super::describe_pv(&ReadOnlyFile(f, path.display().to_string())))
        .map(|d| format!("; it is {d}"))
        .unwrap_or_default();
    PoolError::InUse(format!("{e}{owner}"))
}

/// Reads a PV without taking it (only to describe who holds it).
struct ReadOnlyFile(File, String);

impl BlockDev for ReadOnlyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
    }
    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len(&self) -> u64 {
        self.0.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn name(&self) -> &str {
        &self.1
    }
}

/// Refuse a PV that holds a valid superblock of any pool (this one included) unless `force`:
/// writing a new superblock would destroy that pool.
fn check_unused(path: &Path, dev: &dyn BlockDev, force: bool) -> Result<()> {
    let Some(owner) = super::describe_pv(dev) else {
        return Ok(());
    };
    if force {
        tracing::warn!("{}: overwriting {owner} (--force)", path.display());
        return Ok(());
    }
    Err(PoolError::Exists(format!(
        "{} holds {owner}: writing a new superblock would destroy that pool; give --force to \
         overwrite it",
        path.display()
    )))
}

/// Keeps a pool directory locked while alive.
pub struct DirLock(#[allow(dead_code)] File);

impl PoolDir {
    /// Share the pool between threads; the returned guard keeps the directory locked.
    pub fn into_shared(self) -> (std::sync::Arc<Pool>, DirLock) {
        (std::sync::Arc::new(self.pool), DirLock(self._lock))
    }

    /// Whether `dir` holds a pool configuration.
    pub fn exists(dir: &Path) -> bool {
        dir.join(CONFIG_FILE).exists()
    }

    /// Create a pool: new files are made sparse at the given size; existing block devices or
    /// files without a size are used as they are.
    pub fn create(
        dir: &Path,
        pvs: &[PvSpec],
        copts: &CreateOptions,
        opts: Options,
    ) -> Result<PoolDir> {
        Self::create_with(dir, pvs, copts, opts, false)
    }

    /// [`PoolDir::create`]; with `force`, PVs that hold another pool's superblock are
    /// overwritten instead of refused.
    pub fn create_with(
        dir: &Path,
        pvs: &[PvSpec],
        copts: &CreateOptions,
        opts: Options,
        force: bool,
    ) -> Result<PoolDir> {
        if pvs.is_empty() {
            return Err(PoolError::Invalid(
                "give at least one --pv PATH[:SIZE]".into(),
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| PoolError::Config(format!("cannot create {}: {e}", dir.display())))?;
        if Self::exists(dir) {
            return Err(PoolError::Exists(format!(
                "{} already holds a pool",
                dir.display()
            )));
        }
        let l = lock(dir)?;
        let (paths, devs): (Vec<PathBuf>, Vec<Arc<dyn BlockDev>>) =
            make_devs_with(pvs, force, &opts.io)?.into_iter().unzip();
        let pool = Pool::create(devs, copts, opts)?;
        let abs: Vec<PathBuf> = paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let cfg = Config {
            format: 1,
            name: copts.name.clone(),
            pvs: abs,
        };
        write_config(dir, &cfg)?;
        Ok(PoolDir {
            dir: dir.to_owned(),
            pool,
            _lock: l,
        })
    }

    /// Open the pool in `dir` (takes the lock, replays the journal).
    pub fn open(dir: &Path, opts: Options) -> Result<PoolDir> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            PoolError::Config(format!(
                "{} is not a pool directory ({}: {e})",
                dir.display(),
                cfg_path.display()
            ))
        })?;
        let cfg: Config = serde_json::from_str(&text)
            .map_err(|e| PoolError::Config(format!("{}: {e}", cfg_path.display())))?;
        let l = lock(dir)?;
        // A PV that cannot be opened stands in as missing: a mirrored pool opens degraded
        // without it, any other pool refuses with this error.
        // A PV another process holds is an error: the pool is open elsewhere (another sspd or
        // sspctl, perhaps through a copy of this directory).
        let mut devs: Vec<Arc<dyn BlockDev>> = Vec::new();
        for p in &cfg.pvs {
            devs.push(match open_dev(p, &opts.io) {
                Ok(d) => d,
                Err(e @ PoolError::InUse(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!("{e}");
                    Arc::new(super::pvs::MissingDev {
                        name: p.display().to_string(),
                        len: 0,
                    })
                }
            });
        }
        let pool = Pool::open(devs, opts)?;
        Ok(PoolDir {
            dir: dir.to_owned(),
            pool,
            _lock: l,
        })
    }
}

/// Create (or open) the PVs named by `specs` for adding to a pool: new files are made sparse at
/// their size; existing devices or files without a size are used as they are.
/// Every PV is taken for this process (see [`FileDev::open`]); one that holds a valid
/// superblock of any pool is refused unless `force`.
/// On a refusal, the files made here are removed again.
pub fn make_devs(specs: &[PvSpec], force: bool) -> Result<Vec<(PathBuf, Arc<dyn BlockDev>)>> {
    make_devs_with(specs, force, &IoConfig::default())
}

/// [`make_devs`], opening the PVs with the engine and cache mode `io` asks for.
pub fn make_devs_with(
    specs: &[PvSpec],
    force: bool,
    io: &IoConfig,
) -> Result<Vec<(PathBuf, Arc<dyn BlockDev>)>> {
    let mut made: Vec<PathBuf> = Vec::new();
    let r = make_devs_into(specs, force, io, &mut made);
    if r.is_err() {
        for p in &made {
            let _ = std::fs::remove_file(p);
        }
    }
    r
}

fn make_devs_into(
    specs: &[PvSpec],
    force: bool,
    io: &IoConfig,
    made: &mut Vec<PathBuf>,
) -> Result<Vec<(PathBuf, Arc<dyn BlockDev>)>> {
    let mut out: Vec<(PathBuf, Arc<dyn BlockDev>)> = Vec::new();
    for spec in specs {
        if out.iter().any(|(p, _)| *p == spec.path) {
            return Err(PoolError::Invalid(format!(
                "PV {} is given twice",
                spec.path.display()
            )));
        }
        let dev: Arc<dyn BlockDev> = match spec.size {
            Some(size) => {
                if spec.path.exists() && !is_block_device(&spec.path) {
                    return Err(PoolError::Exists(format!(
                        "{} already exists; give a new file or an existing PV without a size",
                        spec.path.display()
                    )));
                }
                let new_file = !is_block_device(&spec.path);
                let dev = FileDev::create_with(&spec.path, size, io)
                    .map_err(|e| dev_error(&spec.path, "create", e))?;
                if new_file {
                    made.push(spec.path.clone());
                }
                // A block device keeps its content: it may hold a pool.
                check_unused(&spec.path, &dev, force)?;
                Arc::new(dev)
            }
            None => {
                let dev = open_dev(&spec.path, io)?;
                check_unused(&spec.path, dev.as_ref(), force)?;
                dev
            }
        };
        out.push((spec.path.clone(), dev));
    }
    Ok(out)
}

/// Add PVs to the pool directory's configuration (before the pool commits them: a PV listed
/// but never committed is ignored at open).
pub fn config_add_pvs(dir: &Path, paths: &[PathBuf]) -> Result<()> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| PoolError::Config(format!("{}: {e}", cfg_path.display())))?;
    let mut cfg: Config = serde_json::from_str(&text)
        .map_err(|e| PoolError::Config(format!("{}: {e}", cfg_path.display())))?;
    for p in paths {
        let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if cfg.pvs.contains(&abs) {
            return Err(PoolError::Exists(format!(
                "{} is already a PV of this pool",
                abs.display()
            )));
        }
        cfg.pvs.push(abs);
    }
    write_config(dir, &cfg)
}

/// Put `new` where `old` was in the configuration (pv replace).
pub fn config_replace_pv(dir: &Path, old: &Path, new: &Path) -> Result<()> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| PoolError::Config(format!("{}: {e}", cfg_path.display())))?;
    let mut cfg: Config = serde_json::from_str(&text)
        .map_err(|e| PoolError::Config(format!("{}: {e}", cfg_path.display())))?;
    let old = std::fs::canonicalize(old).unwrap_or_else(|_| old.to_owned());
    let new = std::fs::canonicalize(new).unwrap_or_else(|_| new.to_owned());
    let Some(slot) = cfg.pvs.iter_mut().find(|p| **p == old) else {
        return Err(PoolError::NotFound(format!(
            "{} is not listed in {}",
            old.display(),
            cfg_path.display()
        )));
    };
    *slot = new;
    write_config(dir, &cfg)
}

/// Drop PVs from the configuration (undoing `config_add_pvs` after a refusal).
pub fn config_remove_pvs(dir: &Path, paths: &[PathBuf]) -> Result<()> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path)
        .map_err(|e| PoolError::Config(format!("{}: {e}", cfg_path.display())))?;
    let mut cfg: Config = serde_json::from_str(&text)
        .map_err(|e| PoolError::Config(format!("{}: {e}", cfg_path.display())))?;
    let abs: Vec<PathBuf> = paths
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    cfg.pvs.retain(|p| !abs.contains(p));
    write_config(dir, &cfg)
}

pub(super) fn write_config(dir: &Path, cfg: &Config) -> Result<()> {
    let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
    let body = serde_json::to_string_pretty(cfg).map_err(|e| PoolError::Config(e.to_string()))?;
    std::fs::write(&tmp, body + "\n")
        .and_then(|_| File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, dir.join(CONFIG_FILE)))
        .map_err(|e| PoolError::Config(format!("cannot write {}: {e}", dir.display())))
}

fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("10Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn pv_specs() {
        let s: PvSpec = "/tmp/a.img:1G".parse().unwrap();
        assert_eq!(
            s,
            PvSpec {
                path: "/tmp/a.img".into(),
                size: Some(1 << 30)
            }
        );
        let s: PvSpec = "/dev/sdb".parse().unwrap();
        assert_eq!(s.size, None);
        assert!("/tmp/a.img:10Q".parse::<PvSpec>().is_err());
    }
}
