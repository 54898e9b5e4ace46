//! Capacity alerts (SSP's `alert -set -type threshold|overcommit -value N`): a pool-used
//! threshold and an overcommit ratio, both in percent of the pool's capacity.
//!
//! The alerts are configuration, not pool metadata: they live in the pool directory
//! (`DIR/alerts.json`, replaced atomically) and travel with the pool in the copy of the
//! directory kept on its PVs ([`crate::pool::dircopy`]). An alert is *active* while its
//! figure is at or above its value. sspd's watcher ([`spawn_watcher`]) evaluates them every
//! second and right after each admin verb that changes provisioning, and acts on each
//! *crossing* only: inactive→active logs one warning with the numbers, sets the gauge
//! `ssp_alert_active{type}` to 1, counts `ssp_alert_firings_total{type}` and runs the alert's
//! hook once (`sh -c CMD` with `SSP_ALERT_*` and `SSP_POOL*` in its environment, reaped on its
//! own thread, its exit status logged); active→inactive logs once and sets the gauge to 0.
//! An overcommit alert with `enforce` is also a hard limit: new LUs, clones and grows that
//! would take provisioning past it are refused with the numbers ([`check_provision`]).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::pool::{PoolError, PoolStatus};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub const ALERTS_FILE: &str = "alerts.json";
/// Version of `alerts.json`.
const ALERTS_FORMAT: u32 = 1;
/// How often sspd's watcher evaluates the alerts when nothing pokes it.
pub const WATCH_PERIOD: Duration = Duration::from_secs(1);

/// What an alert watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertType {
    /// Space used (live blocks) in percent of the pool's capacity.
    Threshold,
    /// Space provisioned (sizes of LUs, clones and images) in percent of the capacity.
    Overcommit,
}

impl AlertType {
    pub fn name(self) -> &'static str {
        match self {
            AlertType::Threshold => "threshold",
            AlertType::Overcommit => "overcommit",
        }
    }

    /// The current figure, in percent of the capacity (0 for an empty pool).
    pub fn current(self, st: &PoolStatus) -> f64 {
        let num = match self {
            AlertType::Threshold => st.used_bytes,
            AlertType::Overcommit => st.provisioned_bytes,
        };
        percent(num, st.total_bytes)
    }
}

impl std::str::FromStr for AlertType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "threshold" => Ok(AlertType::Threshold),
            "overcommit" => Ok(AlertType::Overcommit),
            _ => Err(format!(
                "unknown alert type {s:?}: use threshold or overcommit"
            )),
        }
    }
}

impl std::fmt::Display for AlertType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn percent(num: u64, den: u64) -> f64 {
    if den == 0 {
        return 0.0;
    }
    // Rounded to 0.01 % so listings and logs show stable figures.
    ((num as f64) * 10000.0 / den as f64).round() / 100.0
}

/// One configured alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    #[serde(rename = "type")]
    pub kind: AlertType,
    /// Percent of the pool's capacity (threshold 1–100, overcommit 1–100000).
    pub value: u32,
    /// Run by `sh -c` at each crossing into the active state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// Overcommit only: refuse new LUs, clones and grows past `value`.
    #[serde(default)]
    pub enforce: bool,
}

impl Alert {
    /// Check the value's range and that only overcommit alerts enforce.
    pub fn validate(&self) -> Result<(), PoolError> {
        let max = match self.kind {
            AlertType::Threshold => 100,
            AlertType::Overcommit => 100_000,
        };
        if self.value == 0 || self.value > max {
            return Err(PoolError::Invalid(format!(
                "a {} alert's value is a percentage from 1 to {max}, not {}",
                self.kind, self.value
            )));
        }
        if self.enforce && self.kind != AlertType::Overcommit {
            return Err(PoolError::Invalid(
                "--enforce applies to overcommit alerts only (a threshold cannot be enforced: \
                 writes to thin LUs already hold their promise)"
                    .into(),
            ));
        }
        if self.exec.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(PoolError::Invalid("--exec needs a command".into()));
        }
        Ok(())
    }

    pub fn active(&self, current: f64) -> bool {
        current >= f64::from(self.value)
    }
}

/// An alert as listed: its configuration, the current figure and whether it is active.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertInfo {
    #[serde(rename = "type")]
    pub kind: AlertType,
    pub value: u32,
    /// The current figure, percent of capacity.
    pub current: f64,
    pub active: bool,
    pub enforce: bool,
    #[serde(default)]
    pub exec: String,
}

#[derive(Serialize, Deserialize)]
struct AlertsFile {
    format: u32,
    alerts: Vec<Alert>,
}

/// The alerts of the pool directory `dir` (no file: none).
pub fn load(dir: &Path) -> Result<Vec<Alert>, PoolError> {
    let p = dir.join(ALERTS_FILE);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PoolError::Config(format!("{}: {e}", p.display()))),
    };
    let f: AlertsFile = serde_json::from_str(&text)
        .map_err(|e| PoolError::Config(format!("{}: {e}", p.display())))?;
    if f.format != ALERTS_FORMAT {
        return Err(PoolError::Config(format!(
            "{}: format {} is not supported (this version reads {ALERTS_FORMAT})",
            p.display(),
            f.format
        )));
    }
    Ok(f.alerts)
}

fn save(dir: &Path, alerts: &[Alert]) -> Result<(), PoolError> {
    let f = AlertsFile {
        format: ALERTS_FORMAT,
        alerts: alerts.to_vec(),
    };
    let body = serde_json::to_string_pretty(&f).map_err(|e| PoolError::Config(e.to_string()))?;
    let tmp = dir.join(format!("{ALERTS_FILE}.tmp"));
    std::fs::write(&tmp, body + "\n")
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, dir.join(ALERTS_FILE)))
        .map_err(|e| PoolError::Config(format!("cannot write {}: {e}", dir.display())))
}

/// Serialises read-modify-write of `alerts.json` between admin threads.
static FILE_LOCK: Mutex<()> = Mutex::new(());

/// Set (add or replace) the alert of `alert.kind`.
pub fn set(dir: &Path, alert: Alert) -> Result<(), PoolError> {
    alert.validate()?;
    let _g = FILE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut all = load(dir)?;
    all.retain(|a| a.kind != alert.kind);
    all.push(alert);
    all.sort_by_key(|a| a.kind);
    save(dir, &all)
}

/// Remove the alert of `kind`; an error if there is none.
pub fn unset(dir: &Path, kind: AlertType) -> Result<(), PoolError> {
    let _g = FILE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut all = load(dir)?;
    let n = all.len();
    all.retain(|a| a.kind != kind);
    if all.len() == n {
        return Err(PoolError::NotFound(format!("no {kind} alert is set")));
    }
    save(dir, &all)
}

/// The alerts with their current figures.
pub fn list(dir: &Path, st: &PoolStatus) -> Result<Vec<AlertInfo>, PoolError> {
    Ok(load(dir)?
        .into_iter()
        .map(|a| {
            let current = a.kind.current(st);
            AlertInfo {
                kind: a.kind,
                value: a.value,
                current,
                active: a.active(current),
                enforce: a.enforce,
                exec: a.exec.clone().unwrap_or_default(),
            }
        })
        .collect())
}

/// The hard overcommit limit: refuse provisioning `extra` more bytes (`what`, e.g. "creating
/// LU vm1 of 10 GiB") when an enforced overcommit alert would be exceeded.
pub fn check_provision(
    dir: &Path,
    st: &PoolStatus,
    extra: u64,
    what: &str,
) -> Result<(), PoolError> {
    let Some(a) = load(dir)?
        .into_iter()
        .find(|a| a.kind == AlertType::Overcommit && a.enforce)
    else {
        return Ok(());
    };
    let after = st.provisioned_bytes.saturating_add(extra);
    let pct = percent(after, st.total_bytes);
    if pct <= f64::from(a.value) {
        return Ok(());
    }
    let limit = (st.total_bytes as u128 * u128::from(a.value) / 100) as u64;
    Err(PoolError::NoSpace(format!(
        "{what} would provision {} MiB of the pool's {} MiB ({pct:.2} %), past the enforced \
         overcommit limit of {} % ({} MiB; {} MiB provisioned now, {} MiB left under the \
         limit); raise it with `alert set --type overcommit --value N --enforce` or remove it \
         with `alert unset --type overcommit`",
        after >> 20,
        st.total_bytes >> 20,
        a.value,
        limit >> 20,
        st.provisioned_bytes >> 20,
        limit.saturating_sub(st.provisioned_bytes) >> 20,
    )))
}

/// Wakes sspd's watcher after an admin verb that changed provisioning or alerts (a no-op
/// when no watcher runs, as offline).
pub fn poke() {
    let (m, cv) = &*WAKE;
    *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
    cv.notify_all();
}

static WAKE: std::sync::LazyLock<(Mutex<bool>, Condvar)> =
    std::sync::LazyLock::new(|| (Mutex::new(false), Condvar::new()));

fn wait_poke(period: Duration) {
    let (m, cv) = &*WAKE;
    let g = m.lock().unwrap_or_else(|p| p.into_inner());
    let (mut g, _) = cv
        .wait_timeout_while(g, period, |poked| !*poked)
        .unwrap_or_else(|p| p.into_inner());
    *g = false;
}

/// What the watcher remembers between evaluations: which alerts are active.
#[derive(Default)]
pub struct Watch {
    active: std::collections::BTreeMap<AlertType, bool>,
}

/// One crossing found by [`Watch::evaluate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Crossing {
    pub alert: Alert,
    pub current: f64,
    /// true: became active; false: cleared.
    pub fired: bool,
}

impl Watch {
    /// Compare the alerts with `st`; return the crossings since the last call (an alert that
    /// was removed counts as cleared if it was active).
    pub fn evaluate(&mut self, alerts: &[Alert], st: &PoolStatus) -> Vec<Crossing> {
        let mut out = Vec::new();
        for a in alerts {
            let current = a.kind.current(st);
            let now = a.active(current);
            let was = self.active.insert(a.kind, now).unwrap_or(false);
            if now != was {
                out.push(Crossing {
                    alert: a.clone(),
                    current,
                    fired: now,
                });
            }
        }
        let gone: Vec<AlertType> = self
            .active
            .keys()
            .filter(|k| !alerts.iter().any(|a| a.kind == **k))
            .copied()
            .collect();
        for k in gone {
            if self.active.remove(&k) == Some(true) {
                out.push(Crossing {
                    alert: Alert {
                        kind: k,
                        value: 0,
                        exec: None,
                        enforce: false,
                    },
                    current: k.current(st),
                    fired: false,
                });
            }
        }
        out
    }
}

/// Act on a crossing: log it, set the metrics, run the hook.
fn act(c: &Crossing, st: &PoolStatus, dir: &Path) {
    let kind = c.alert.kind.name();
    let (used, prov, total) = (
        st.used_bytes >> 20,
        st.provisioned_bytes >> 20,
        st.total_bytes >> 20,
    );
    if c.fired {
        tracing::warn!(
            alert = kind,
            value = c.alert.value,
            current = c.current,
            "pool {} {kind} alert: {:.2} % >= {} % (used {used} MiB, provisioned {prov} MiB, \
             capacity {total} MiB)",
            st.name,
            c.current,
            c.alert.value
        );
        crate::metrics::alert_fired(kind);
        if let Some(cmd) = &c.alert.exec {
            run_hook(cmd, c, st, dir);
        }
    } else {
        tracing::warn!(
            alert = kind,
            value = c.alert.value,
            current = c.current,
            "pool {} {kind} alert cleared: {:.2} % (used {used} MiB, provisioned {prov} MiB, \
             capacity {total} MiB)",
            st.name,
            c.current
        );
    }
    crate::metrics::alert_active(kind, c.fired);
}

/// Start `sh -c cmd` with the alert in its environment; a thread reaps it and logs its status.
fn run_hook(cmd: &str, c: &Crossing, st: &PoolStatus, dir: &Path) {
    let kind = c.alert.kind.name();
    let spawned = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("SSP_ALERT_TYPE", kind)
        .env("SSP_ALERT_VALUE", c.alert.value.to_string())
        .env("SSP_ALERT_CURRENT", format!("{:.2}", c.current))
        .env("SSP_POOL", &st.name)
        .env("SSP_POOL_DIR", dir)
        .env("SSP_POOL_ID", &st.pool_id)
        .env("SSP_POOL_TOTAL_BYTES", st.total_bytes.to_string())
        .env("SSP_POOL_USED_BYTES", st.used_bytes.to_string())
        .env(
            "SSP_POOL_PROVISIONED_BYTES",
            st.provisioned_bytes.to_string(),
        )
        .stdin(std::process::Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                alert = kind,
                "cannot run the {kind} alert hook {cmd:?}: {e}"
            );
            return;
        }
    };
    let cmd = cmd.to_owned();
    let reaper = std::thread::Builder::new()
        .name("alert-hook".into())
        .spawn(move || match child.wait() {
            Ok(s) if s.success() => tracing::info!(alert = kind, "alert hook {cmd:?} exited: {s}"),
            Ok(s) => tracing::warn!(alert = kind, "alert hook {cmd:?} failed: {s}"),
            Err(e) => tracing::warn!(alert = kind, "alert hook {cmd:?}: {e}"),
        });
    if let Err(e) = reaper {
        tracing::warn!("cannot start a thread to reap the alert hook: {e}");
    }
}

/// sspd's alert watcher: a thread that evaluates the alerts of the pool directory `dir` every
/// [`WATCH_PERIOD`] and whenever [`poke`]d, until the returned handle is dropped.
pub fn spawn_watcher(pool: Arc<crate::pool::Pool>, dir: PathBuf) -> std::io::Result<WatcherHandle> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    std::thread::Builder::new()
        .name("alerts".into())
        .spawn(move || {
            let mut w = Watch::default();
            let mut warned = false;
            while !s.load(std::sync::atomic::Ordering::Acquire) {
                match load(&dir) {
                    Ok(alerts) => {
                        warned = false;
                        let st = pool.status();
                        for c in w.evaluate(&alerts, &st) {
                            act(&c, &st, &dir);
                        }
                        for a in &alerts {
                            crate::metrics::alert_active(
                                a.kind.name(),
                                a.active(a.kind.current(&st)),
                            );
                        }
                    }
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!("alerts: {e}");
                    }
                    Err(_) => {}
                }
                wait_poke(WATCH_PERIOD);
            }
        })?;
    Ok(WatcherHandle(stop))
}

/// Stops the alert watcher when dropped.
pub struct WatcherHandle(Arc<std::sync::atomic::AtomicBool>);

impl Drop for WatcherHandle {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
        poke();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(used: u64, prov: u64) -> PoolStatus {
        let mut st: PoolStatus = serde_json::from_value(serde_json::json!({
            "name": "p", "pool_id": "00", "pvs": [], "block_size": 4096,
            "segment_size": 1048576, "total_bytes": 1000, "free_bytes": 0, "used_bytes": 0,
            "provisioned_bytes": 0, "overcommit_bytes": 0, "lus": 0, "mirror_state": "NOT_MIRRORED",
            "checkpoint_generation": 1, "write_amplification": 1.0,
            "counters": serde_json::to_value(crate::pool::Counters::default()).unwrap()
        }))
        .unwrap();
        st.used_bytes = used;
        st.provisioned_bytes = prov;
        st
    }

    #[test]
    fn fires_once_per_crossing() {
        let a = vec![Alert {
            kind: AlertType::Threshold,
            value: 50,
            exec: None,
            enforce: false,
        }];
        let mut w = Watch::default();
        assert!(w.evaluate(&a, &status(100, 0)).is_empty());
        let c = w.evaluate(&a, &status(500, 0));
        assert_eq!(c.len(), 1);
        assert!(c[0].fired);
        assert_eq!(c[0].current, 50.0);
        assert!(w.evaluate(&a, &status(900, 0)).is_empty());
        let c = w.evaluate(&a, &status(499, 0));
        assert!(!c[0].fired);
        assert!(w.evaluate(&a, &status(10, 0)).is_empty());
        assert!(w.evaluate(&a, &status(600, 0))[0].fired);
        // Removing an active alert clears it.
        assert!(!w.evaluate(&[], &status(600, 0))[0].fired);
    }

    #[test]
    fn enforcement_names_the_numbers() {
        let d = tempfile::tempdir().unwrap();
        set(
            d.path(),
            Alert {
                kind: AlertType::Overcommit,
                value: 200,
                exec: None,
                enforce: true,
            },
        )
        .unwrap();
        let st = status(0, 1500);
        assert!(check_provision(d.path(), &st, 500, "x").is_ok());
        let e = check_provision(d.path(), &st, 501, "creating LU a").unwrap_err();
        assert!(e.to_string().contains("200 %"), "{e}");
        assert!(matches!(e, PoolError::NoSpace(_)));
    }

    #[test]
    fn validation() {
        let bad = Alert {
            kind: AlertType::Threshold,
            value: 101,
            exec: None,
            enforce: false,
        };
        assert!(bad.validate().is_err());
        let bad = Alert {
            value: 80,
            enforce: true,
            ..bad
        };
        assert!(bad.validate().is_err());
        assert!("nope".parse::<AlertType>().is_err());
    }
}
