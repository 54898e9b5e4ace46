//! What `sspd --metrics ADDR` serves beyond the request metrics of [`crate::metrics`]: the
//! Prometheus exporter (latency as histograms with fixed buckets), the pool's state as gauges
//! (refreshed from the pool's status APIs on a timer), `ssp_build_info` and the process
//! metrics Prometheus clients conventionally export (read from /proc).
//!
//! Per-LU labels are bounded: the first [`set_lu_label_limit`] LUs that clients attach to get
//! their own `lu` label; requests to any other LU are counted under `lu="_other"`.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::pool::Pool;
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram's buckets: 50 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// LUs labelled by name unless `--metrics-lu-limit` says otherwise.
pub const DEFAULT_LU_LABEL_LIMIT: usize = 32;
/// The `lu` label of requests to LUs beyond the limit.
pub const OTHER_LU: &str = "_other";
/// How often the pool gauges are refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

pub const BUILD_INFO: &str = "ssp_build_info";
pub const PROVISIONED: &str = "ssp_pool_provisioned_bytes";
pub const OVERCOMMIT: &str = "ssp_pool_overcommit_bytes";
pub const RESERVED: &str = "ssp_pool_reserved_bytes";
pub const VOLUMES: &str = "ssp_pool_volumes";
pub const REMOVING_BYTES: &str = "ssp_pool_removing_bytes";
pub const MIRROR_STATE: &str = "ssp_mirror_state";
pub const RESYNC_LEFT: &str = "ssp_resync_remaining_bytes";
pub const RESYNC_COPIED: &str = "ssp_resync_copied_bytes_total";
pub const BAD_COPIES_FOUND: &str = "ssp_bad_copies_found_total";
pub const BAD_COPIES_REPAIRED: &str = "ssp_bad_copies_repaired_total";
pub const SCRUB_RUNNING: &str = "ssp_scrub_running";
pub const SCRUB_DONE: &str = "ssp_scrub_done_bytes";
pub const SCRUB_TOTAL: &str = "ssp_scrub_total_bytes";
pub const SCRUB_ERRORS: &str = "ssp_scrub_errors";
pub const SCRUB_UNREPAIRABLE: &str = "ssp_scrub_unrepairable_blocks";
pub const PV_UP: &str = "ssp_pv_up";
pub const FG_UP: &str = "ssp_failure_group_up";
pub const BLOCKS_WRITTEN: &str = "ssp_blocks_written_total";
pub const CHECKPOINTS: &str = "ssp_checkpoints_total";
pub const CHECKPOINT_GENERATION: &str = "ssp_checkpoint_generation";
pub const SEGMENTS_CLEANED: &str = "ssp_cleaner_segments_cleaned_total";
pub const GC_BLOCKS_MOVED: &str = "ssp_cleaner_blocks_moved_total";
pub const WRITE_AMPLIFICATION: &str = "ssp_write_amplification";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_VSIZE: &str = "process_virtual_memory_bytes";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START: &str = "process_start_time_seconds";
pub const PROCESS_THREADS: &str = "process_threads";

/// NBD errnos (and 0, "other") whose error counters are exported from the start.
const NBD_ERRNOS: [u32; 9] = [1, 5, 12, 22, 28, 75, 95, 108, 0];

/// The mirror states `ssp_mirror_state{state}` has one series for (1 for the current one).
pub const MIRROR_STATES: [&str; 4] = ["NOT_MIRRORED", "SYNCING", "SYNCED", "DEGRADED"];

#[derive(Debug, thiserror::Error)]
pub enum MonitoringError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Exporter {
        addr: SocketAddr,
        #[source]
        source: BuildError,
    },
    #[error("cannot start the metrics refresh thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Install the Prometheus exporter on `addr` and describe every series.
pub fn install(addr: SocketAddr) -> Result<(), MonitoringError> {
    let err = |source| MonitoringError::Exporter { addr, source };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full(crate::metrics::LATENCY.into()),
            &LATENCY_BUCKETS,
        )
        .map_err(err)?
        .install()
        .map_err(err)?;
    crate::metrics::describe();
    describe();
    // Every errno series exists from the start, so rate() and alerts see a 0, not nothing.
    for e in NBD_ERRNOS {
        counter!(crate::metrics::ERRORS, "errno" => crate::metrics::errno_name(e)).increment(0);
    }
    counter!(crate::metrics::REFUSED).increment(0);
    gauge!(crate::metrics::CONNECTIONS).increment(0.0);
    Ok(())
}

fn describe() {
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the sspd version and the git commit it was built from"
    );
    describe_gauge!(
        PROVISIONED,
        Unit::Bytes,
        "Sum of the sizes of the pool's LUs and images (snapshots excluded)"
    );
    describe_gauge!(
        OVERCOMMIT,
        Unit::Bytes,
        "Provisioned bytes beyond the pool's size (0 when the pool could hold every LU full)"
    );
    describe_gauge!(
        RESERVED,
        Unit::Bytes,
        "Space reserved for thick LUs and not yet written by them"
    );
    describe_gauge!(
        VOLUMES,
        "Volumes in the pool, by kind (lu, snapshot, image)"
    );
    describe_gauge!(
        REMOVING_BYTES,
        Unit::Bytes,
        "Data of removed volumes that background reclaim has still to give back"
    );
    describe_gauge!(
        MIRROR_STATE,
        "1 for the pool's mirror state (NOT_MIRRORED, SYNCING, SYNCED, DEGRADED), 0 for the others"
    );
    describe_gauge!(
        RESYNC_LEFT,
        Unit::Bytes,
        "Bytes mirror resync still has to copy between the failure groups"
    );
    describe_counter!(
        RESYNC_COPIED,
        Unit::Bytes,
        "Bytes mirror resync copied since sspd started"
    );
    describe_counter!(
        BAD_COPIES_FOUND,
        "Bad block copies found (by reads and scrub) since sspd started"
    );
    describe_counter!(
        BAD_COPIES_REPAIRED,
        "Bad block copies repaired from a good copy since sspd started"
    );
    describe_gauge!(SCRUB_RUNNING, "1 while a scrub runs");
    describe_gauge!(
        SCRUB_DONE,
        Unit::Bytes,
        "Bytes the current (or last) scrub verified"
    );
    describe_gauge!(
        SCRUB_TOTAL,
        Unit::Bytes,
        "Bytes the current (or last) scrub has to verify (live data when it started)"
    );
    describe_gauge!(
        SCRUB_ERRORS,
        "Bad copies the current (or last) scrub found, by outcome (found, repaired)"
    );
    describe_gauge!(
        SCRUB_UNREPAIRABLE,
        "Blocks with no intact copy the current (or last) scrub found"
    );
    describe_gauge!(
        PV_UP,
        "1 while the PV is read and written, 0 when it failed or is missing"
    );
    describe_gauge!(
        FG_UP,
        "1 while the failure group is ONLINE or SYNCING, 0 when it FAILED"
    );
    describe_counter!(
        BLOCKS_WRITTEN,
        "4 KiB blocks written to the PVs since sspd started, by kind (user, cleaner, metadata, journal)"
    );
    describe_counter!(
        CHECKPOINTS,
        "Checkpoints committed since sspd started, by who took them (writer, background)"
    );
    describe_gauge!(
        CHECKPOINT_GENERATION,
        "Generation of the pool's newest checkpoint"
    );
    describe_counter!(
        SEGMENTS_CLEANED,
        "Segments the cleaner emptied since sspd started"
    );
    describe_counter!(
        GC_BLOCKS_MOVED,
        "Live blocks the cleaner copied since sspd started"
    );
    describe_gauge!(
        WRITE_AMPLIFICATION,
        "Blocks written to the PVs per user block written since sspd started (0 before any)"
    );
    describe_gauge!(
        PROCESS_RSS,
        Unit::Bytes,
        "Resident memory of the sspd process"
    );
    describe_gauge!(
        PROCESS_VSIZE,
        Unit::Bytes,
        "Virtual memory of the sspd process"
    );
    describe_gauge!(
        PROCESS_CPU,
        Unit::Seconds,
        "User and system CPU time of the sspd process (a float, so exported as a gauge)"
    );
    describe_gauge!(PROCESS_FDS, "Open file descriptors of the sspd process");
    describe_gauge!(PROCESS_MAX_FDS, "The sspd process's open file limit");
    describe_gauge!(
        PROCESS_START,
        Unit::Seconds,
        "Start time of the sspd process, Unix seconds"
    );
    describe_gauge!(PROCESS_THREADS, "Threads of the sspd process");
}

/// Export `ssp_build_info{version, commit} 1`.
pub fn build_info(version: &str, commit: &str) {
    gauge!(BUILD_INFO, "version" => version.to_owned(), "commit" => commit.to_owned()).set(1.0);
}

/// The LUs that have their own `lu` label.
struct LuLabels {
    limit: usize,
    named: HashSet<String>,
}

static LU_LABELS: Mutex<Option<LuLabels>> = Mutex::new(None);

/// At most `limit` LUs get their own `lu` label (0: every request is counted under
/// `lu="_other"`).
pub fn set_lu_label_limit(limit: usize) {
    let mut g = LU_LABELS.lock().unwrap_or_else(|p| p.into_inner());
    *g = Some(LuLabels {
        limit,
        named: HashSet::new(),
    });
}

/// The `lu` label value for requests to LU `name`: its name while fewer than the limit are
/// named (a name once given keeps it), [`OTHER_LU`] after that.
pub fn lu_label(name: &str) -> String {
    let mut g = LU_LABELS.lock().unwrap_or_else(|p| p.into_inner());
    let l = g.get_or_insert_with(|| LuLabels {
        limit: DEFAULT_LU_LABEL_LIMIT,
        named: HashSet::new(),
    });
    if l.named.contains(name) {
        return name.to_owned();
    }
    if l.named.len() < l.limit && name != OTHER_LU {
        l.named.insert(name.to_owned());
        return name.to_owned();
    }
    OTHER_LU.to_owned()
}

/// Refresh the pool gauges and process metrics every [`REFRESH_EVERY`] on a thread of their
/// own (the pool's status takes its lock; the network threads never wait for it). `dir` is
/// the pool directory (the scrub's state file lives there). The thread runs as long as the
/// process.
pub fn spawn_refresh(pool: Arc<Pool>, dir: PathBuf) -> Result<(), MonitoringError> {
    refresh(&pool, &dir);
    std::thread::Builder::new()
        .name("ssp-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(REFRESH_EVERY);
            refresh(&pool, &dir);
        })
        .map(|_| ())
        .map_err(MonitoringError::Thread)
}

/// Read the pool's status, PV list and scrub state once and set every gauge.
pub fn refresh(pool: &Pool, dir: &Path) {
    let st = pool.status();
    crate::metrics::pool_space(st.total_bytes, st.free_bytes, st.used_bytes);
    gauge!(PROVISIONED).set(st.provisioned_bytes as f64);
    gauge!(OVERCOMMIT).set(st.overcommit_bytes as f64);
    gauge!(RESERVED).set(st.reserved_bytes as f64);
    gauge!(VOLUMES, "kind" => "lu").set(st.lus as f64);
    gauge!(VOLUMES, "kind" => "snapshot").set(st.snapshots as f64);
    gauge!(VOLUMES, "kind" => "image").set(st.images as f64);
    gauge!(REMOVING_BYTES).set(st.removing_bytes as f64);
    for s in MIRROR_STATES {
        let v = if st.mirror_state == s { 1.0 } else { 0.0 };
        gauge!(MIRROR_STATE, "state" => s).set(v);
    }
    gauge!(RESYNC_LEFT).set(st.resync_bytes_left as f64);
    counter!(RESYNC_COPIED).absolute(st.resync_bytes_copied);
    counter!(BAD_COPIES_FOUND).absolute(st.scrub_errors_found);
    counter!(BAD_COPIES_REPAIRED).absolute(st.scrub_errors_repaired);
    let c = st.counters;
    counter!(BLOCKS_WRITTEN, "kind" => "user").absolute(c.user_blocks_written);
    counter!(BLOCKS_WRITTEN, "kind" => "cleaner").absolute(c.gc_blocks_moved);
    counter!(BLOCKS_WRITTEN, "kind" => "metadata").absolute(c.meta_blocks_written);
    counter!(BLOCKS_WRITTEN, "kind" => "journal").absolute(c.journal_blocks_written);
    counter!(CHECKPOINTS, "by" => "writer").absolute(c.writer_checkpoints);
    counter!(CHECKPOINTS, "by" => "background").absolute(c.background_checkpoints);
    gauge!(CHECKPOINT_GENERATION).set(st.checkpoint_generation as f64);
    counter!(SEGMENTS_CLEANED).absolute(c.segments_cleaned);
    counter!(GC_BLOCKS_MOVED).absolute(c.gc_blocks_moved);
    gauge!(WRITE_AMPLIFICATION).set(st.write_amplification);
    for pv in pool.pv_list() {
        let up = if pv.state == "ONLINE" { 1.0 } else { 0.0 };
        gauge!(PV_UP, "pv" => pv.name, "failure_group" => pv.failure_group).set(up);
    }
    for fg in &st.failure_groups {
        let up = if fg.state == "FAILED" { 0.0 } else { 1.0 };
        gauge!(FG_UP, "failure_group" => fg.name.clone()).set(up);
    }
    let scrub = pool.scrub_status(dir);
    gauge!(SCRUB_RUNNING).set(if scrub.running() { 1.0 } else { 0.0 });
    gauge!(SCRUB_DONE).set(scrub.bytes_done as f64);
    gauge!(SCRUB_TOTAL).set(scrub.bytes_total as f64);
    gauge!(SCRUB_ERRORS, "outcome" => "found").set(scrub.report.errors_found as f64);
    gauge!(SCRUB_ERRORS, "outcome" => "repaired").set(scrub.report.errors_repaired as f64);
    gauge!(SCRUB_UNREPAIRABLE).set(scrub.report.unrepairable as f64);
    if let Some(p) = ProcessStats::read() {
        gauge!(PROCESS_RSS).set(p.rss_bytes as f64);
        gauge!(PROCESS_VSIZE).set(p.vsize_bytes as f64);
        gauge!(PROCESS_CPU).set(p.cpu_seconds);
        gauge!(PROCESS_FDS).set(p.open_fds as f64);
        gauge!(PROCESS_MAX_FDS).set(p.max_fds as f64);
        gauge!(PROCESS_START).set(p.start_time as f64);
        gauge!(PROCESS_THREADS).set(p.threads as f64);
    }
}

/// The figures Prometheus clients export as `process_*`, from /proc/self.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub rss_bytes: u64,
    pub vsize_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Unix seconds.
    pub start_time: u64,
    pub threads: u64,
}

impl ProcessStats {
    /// None when /proc is not readable (not Linux, or no procfs mounted).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let mut s = parse_stat(&stat, u64::try_from(ticks).ok()?, boot)?;
        s.rss_bytes = s.rss_bytes.saturating_mul(u64::try_from(page).ok()?);
        s.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        s.max_fds = max_fds(&std::fs::read_to_string("/proc/self/limits").ok()?).unwrap_or(0);
        Some(s)
    }
}

/// `btime` of /proc/stat: boot time, Unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// "Max open files" soft limit of /proc/self/limits.
fn max_fds(limits: &str) -> Option<u64> {
    let l = limits.lines().find(|l| l.starts_with("Max open files"))?;
    l.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Parse /proc/self/stat (proc(5)): the fields after the parenthesised command name, which may
/// itself hold spaces and parentheses. `rss_bytes` is left in pages.
fn parse_stat(stat: &str, ticks: u64, boot: u64) -> Option<ProcessStats> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // Field 3 (state) is the first after the name; field N is at index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| -> Option<u64> { f.get(n.checked_sub(3)?)?.parse().ok() };
    let ticks = ticks.max(1);
    Some(ProcessStats {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks as f64,
        threads: num(20)?,
        start_time: boot + num(22)? / ticks,
        vsize_bytes: num(23)?,
        rss_bytes: num(24)?,
        open_fds: 0,
        max_fds: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let stat = "4242 (ssp d) (x)) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 7 0 \
                    12000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let s = parse_stat(stat, 100, 1_700_000_000).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time, 1_700_000_000 + 120);
        assert_eq!(s.vsize_bytes, 104_857_600);
        assert_eq!(s.rss_bytes, 2560);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_fds(limits), Some(1024));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn lu_labels_are_bounded() {
        set_lu_label_limit(2);
        assert_eq!(lu_label("a"), "a");
        assert_eq!(lu_label("b"), "b");
        assert_eq!(lu_label("c"), OTHER_LU);
        assert_eq!(lu_label("a"), "a");
        assert_eq!(lu_label(OTHER_LU), OTHER_LU);
    }
}
