//! Every metric the server exports, with its description (the `metrics` facade; `sspd
//! --metrics ADDR` serves them in Prometheus format).

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Histogram, Unit,
};

pub const REQUESTS: &str = "ssp_nbd_requests_total";
pub const BYTES: &str = "ssp_nbd_bytes_total";
pub const LATENCY: &str = "ssp_nbd_request_seconds";
pub const ERRORS: &str = "ssp_nbd_errors_total";
pub const CONNECTIONS: &str = "ssp_nbd_connections";
pub const REFUSED: &str = "ssp_nbd_connections_refused_total";
pub const POOL_FREE: &str = "ssp_pool_free_bytes";
pub const POOL_USED: &str = "ssp_pool_used_bytes";
pub const POOL_TOTAL: &str = "ssp_pool_total_bytes";
pub const PV_SYNCS: &str = "ssp_pool_pv_syncs_total";
pub const SYNC_ROUNDS: &str = "ssp_pool_sync_rounds_total";
pub const JOURNAL_FOREIGN_BLOCKS: &str = "ssp_journal_foreign_blocks_total";
pub const ALERT_ACTIVE: &str = "ssp_alert_active";
pub const ALERT_FIRINGS: &str = "ssp_alert_firings_total";

/// Register descriptions (once, at start-up).
pub fn describe() {
    describe_counter!(REQUESTS, "NBD requests completed, by command and LU");
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Bytes read or written by NBD requests, by command and LU"
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "NBD request latency, by command and LU (a histogram)"
    );
    describe_counter!(ERRORS, "NBD requests that failed, by errno");
    describe_gauge!(CONNECTIONS, "Clients in the transmission phase");
    describe_counter!(REFUSED, "Clients refused at the connection limit");
    describe_gauge!(POOL_FREE, Unit::Bytes, "Free space in the pool");
    describe_gauge!(POOL_USED, Unit::Bytes, "Space holding live blocks");
    describe_gauge!(POOL_TOTAL, Unit::Bytes, "Size of the pool's data area");
    describe_counter!(PV_SYNCS, "Syncs (fdatasync) issued to PVs");
    describe_counter!(
        SYNC_ROUNDS,
        "Group-commit sync rounds (one covers every flush waiting when it starts)"
    );
    describe_counter!(
        JOURNAL_FOREIGN_BLOCKS,
        "Journal blocks replay refused because another writer (host, incarnation) stamped them"
    );
    describe_gauge!(
        ALERT_ACTIVE,
        "1 while a capacity alert (type threshold or overcommit) is active, else 0"
    );
    describe_counter!(ALERT_FIRINGS, "Capacity alerts that became active, by type");
}

/// A capacity alert of `kind` became active (`true`) or cleared.
pub fn alert_active(kind: &'static str, active: bool) {
    gauge!(ALERT_ACTIVE, "type" => kind).set(if active { 1.0 } else { 0.0 });
}

/// A capacity alert of `kind` fired (crossed into the active state).
pub fn alert_fired(kind: &'static str) {
    counter!(ALERT_FIRINGS, "type" => kind).increment(1);
}

/// Account one completed request (looks the metrics up by name on every call; the data path
/// uses [`RequestMetrics`], which looks them up once).
pub fn request(cmd: &'static str, bytes: u64, seconds: f64, errno: u32) {
    counter!(REQUESTS, "cmd" => cmd).increment(1);
    if bytes > 0 {
        counter!(BYTES, "cmd" => cmd).increment(bytes);
    }
    histogram!(LATENCY, "cmd" => cmd).record(seconds);
    if errno != 0 {
        counter!(ERRORS, "errno" => errno_name(errno)).increment(1);
    }
}

/// The commands requests are counted by (the `cmd` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Read,
    Write,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Other,
}

impl Cmd {
    const ALL: [Cmd; 8] = [
        Cmd::Read,
        Cmd::Write,
        Cmd::Flush,
        Cmd::Trim,
        Cmd::Cache,
        Cmd::WriteZeroes,
        Cmd::BlockStatus,
        Cmd::Other,
    ];

    /// The `cmd` label value.
    pub fn name(self) -> &'static str {
        match self {
            Cmd::Read => "read",
            Cmd::Write => "write",
            Cmd::Flush => "flush",
            Cmd::Trim => "trim",
            Cmd::Cache => "cache",
            Cmd::WriteZeroes => "write_zeroes",
            Cmd::BlockStatus => "block_status",
            Cmd::Other => "other",
        }
    }
}

/// Handles of one command's request metrics.
struct CmdMetrics {
    requests: Counter,
    bytes: Counter,
    latency: Histogram,
}

/// Request metrics registered once (per connection) with the recorder installed at that time,
/// so accounting a request is a few atomic updates: no key building, label allocation or
/// registry lookup per request.
pub struct RequestMetrics {
    by_cmd: [CmdMetrics; 8],
}

impl RequestMetrics {
    /// The metrics of requests to LU `lu`, labelled `lu` (bounded: see
    /// [`crate::monitoring::lu_label`]).
    pub fn new(lu: &str) -> Self {
        let lu = crate::monitoring::lu_label(lu);
        RequestMetrics {
            by_cmd: Cmd::ALL.map(|c| CmdMetrics {
                requests: counter!(REQUESTS, "cmd" => c.name(), "lu" => lu.clone()),
                bytes: counter!(BYTES, "cmd" => c.name(), "lu" => lu.clone()),
                latency: histogram!(LATENCY, "cmd" => c.name(), "lu" => lu.clone()),
            }),
        }
    }

    /// Account one completed request; `bytes` is only counted when nonzero, like [`request`].
    pub fn record(&self, cmd: Cmd, bytes: u64, seconds: f64, errno: u32) {
        // `by_cmd` holds one entry per `Cmd::ALL`, in discriminant order.
        if let Some(m) = self.by_cmd.get(cmd as usize) {
            m.requests.increment(1);
            if bytes > 0 {
                m.bytes.increment(bytes);
            }
            m.latency.record(seconds);
        }
        if errno != 0 {
            counter!(ERRORS, "errno" => errno_name(errno)).increment(1);
        }
    }
}

pub fn connections(delta: f64) {
    gauge!(CONNECTIONS).increment(delta);
}

pub fn connection_refused() {
    counter!(REFUSED).increment(1);
}

pub fn pool_space(total: u64, free: u64, used: u64) {
    gauge!(POOL_TOTAL).set(total as f64);
    gauge!(POOL_FREE).set(free as f64);
    gauge!(POOL_USED).set(used as f64);
}

/// The `errno` label of an NBD errno ("other" for those not listed).
pub fn errno_name(e: u32) -> &'static str {
    match e {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "other",
    }
}
