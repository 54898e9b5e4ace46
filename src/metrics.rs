//! Every metric the server exports, with its description (the `metrics` facade; `sspd
//! --metrics ADDR` serves them in Prometheus format).

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

pub const REQUESTS: &str = "ssp_nbd_requests_total";
pub const BYTES: &str = "ssp_nbd_bytes_total";
pub const LATENCY: &str = "ssp_nbd_request_seconds";
pub const ERRORS: &str = "ssp_nbd_errors_total";
pub const CONNECTIONS: &str = "ssp_nbd_connections";
pub const POOL_FREE: &str = "ssp_pool_free_bytes";
pub const POOL_USED: &str = "ssp_pool_used_bytes";
pub const POOL_TOTAL: &str = "ssp_pool_total_bytes";

/// Register descriptions (once, at start-up).
pub fn describe() {
    describe_counter!(REQUESTS, "NBD requests completed, by command");
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "Bytes read or written by NBD requests, by command"
    );
    describe_histogram!(LATENCY, Unit::Seconds, "NBD request latency, by command");
    describe_counter!(ERRORS, "NBD requests that failed, by errno");
    describe_gauge!(CONNECTIONS, "Clients in the transmission phase");
    describe_gauge!(POOL_FREE, Unit::Bytes, "Free space in the pool");
    describe_gauge!(POOL_USED, Unit::Bytes, "Space holding live blocks");
    describe_gauge!(POOL_TOTAL, Unit::Bytes, "Size of the pool's data area");
}

/// Account one completed request.
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

pub fn connections(delta: f64) {
    gauge!(CONNECTIONS).increment(delta);
}

pub fn pool_space(total: u64, free: u64, used: u64) {
    gauge!(POOL_TOTAL).set(total as f64);
    gauge!(POOL_FREE).set(free as f64);
    gauge!(POOL_USED).set(used as f64);
}

fn errno_name(e: u32) -> &'static str {
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
