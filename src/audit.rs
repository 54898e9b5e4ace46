//! The audit trail: every admin operation that changes the pool is logged once, at info level
//! under the target `ssp::audit`, with who asked and how it ended.
//!
//! Who asked is the admin socket peer's credentials (`SO_PEERCRED`: uid and pid) when the
//! request came through sspd, or this process's uid and pid when sspctl ran it on a stopped
//! pool. Requests that only look (status, lists, check, stat) are logged at debug level.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::admin::AdminRequest;
use std::fmt;

/// The tracing target of audit records (`SSP_LOG=ssp::audit=info` selects them alone).
pub const TARGET: &str = "ssp::audit";

/// How a request reached the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Through sspd's admin socket.
    AdminSocket,
    /// sspctl on a pool it opened itself (no sspd running).
    Offline,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::AdminSocket => "admin-socket",
            Via::Offline => "offline",
        })
    }
}

/// Who asked for an admin operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requester {
    /// `None` when the peer's credentials could not be read.
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub via: Via,
}

impl Requester {
    /// This process (sspctl running a request offline).
    pub fn this_process() -> Requester {
        // SAFETY: getuid and getpid cannot fail and touch no memory of ours.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid()) };
        Requester {
            uid: Some(uid),
            pid: Some(pid),
            via: Via::Offline,
        }
    }

    /// The process at the other end of an admin socket connection (`SO_PEERCRED`).
    pub fn socket_peer(stream: &std::os::unix::net::UnixStream) -> Requester {
        use std::os::fd::AsRawFd;
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` is a writable ucred and `len` its size, as SO_PEERCRED expects; the
        // descriptor is borrowed from a live stream.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        let ok = r == 0 && len as usize == std::mem::size_of::<libc::ucred>();
        Requester {
            uid: ok.then_some(cred.uid),
            pid: ok.then_some(cred.pid),
            via: Via::AdminSocket,
        }
    }
}

/// Requests that change nothing: logged at debug level, not in the audit trail.
pub fn looks_only(req: &AdminRequest) -> bool {
    matches!(
        req,
        AdminRequest::PoolStatus
            | AdminRequest::LuList
            | AdminRequest::Check
            | AdminRequest::SnapshotList { .. }
            | AdminRequest::ImageList
            | AdminRequest::FileStat { .. }
            | AdminRequest::FileLayout { .. }
            | AdminRequest::Diff { .. }
            | AdminRequest::FailgrpList
            | AdminRequest::PvList
            | AdminRequest::ScrubStatus
            | AdminRequest::SnapshotHolds { .. }
            | AdminRequest::SnapshotPrune { dry_run: true, .. }
            | AdminRequest::SnapshotKeepUndo { keep: None }
            | AdminRequest::AlertList
    )
}

/// The operation's name (the admin protocol's `cmd`, e.g. `lu_create`) and its arguments as
/// one JSON object.
fn describe(req: &AdminRequest) -> (String, String) {
    match serde_json::to_value(req) {
        Ok(serde_json::Value::Object(mut m)) => {
            let op = match m.remove("cmd") {
                Some(serde_json::Value::String(s)) => s,
                _ => "unknown".to_owned(),
            };
            (op, serde_json::Value::Object(m).to_string())
        }
        _ => ("unknown".to_owned(), "{}".to_owned()),
    }
}

/// Log one admin operation and its outcome (`Err` holds the error text sent back).
pub fn record(who: &Requester, req: &AdminRequest, outcome: Result<(), &str>) {
    let (op, args) = describe(req);
    let level = if looks_only(req) {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    emit(level, who, &op, &args, outcome);
}

/// Log an operation that is not an admin request (`pool create`, which makes the pool the
/// requests run on): `op` names it, `args` is its arguments as a JSON object.
pub fn record_op(who: &Requester, op: &str, args: &serde_json::Value, outcome: Result<(), &str>) {
    emit(tracing::Level::INFO, who, op, &args.to_string(), outcome);
}

fn emit(level: tracing::Level, who: &Requester, op: &str, args: &str, outcome: Result<(), &str>) {
    let (uid, pid, via) = (who.uid, who.pid, who.via);
    macro_rules! log {
        ($level:expr) => {
            match outcome {
                Ok(()) => tracing::event!(target: TARGET, $level, op, args, uid, pid, %via, outcome = "ok", "admin operation"),
                Err(error) => tracing::event!(target: TARGET, $level, op, args, uid, pid, %via, outcome = "error", error, "admin operation"),
            }
        };
    }
    if level == tracing::Level::DEBUG {
        log!(tracing::Level::DEBUG);
    } else {
        log!(tracing::Level::INFO);
    }
}

/// Log an admin request that was refused before it could run (malformed, wrong version).
pub fn record_refused(who: &Requester, why: &str) {
    let (uid, pid, via) = (who.uid, who.pid, who.via);
    tracing::warn!(target: TARGET, uid, pid, %via, outcome = "error", error = why, "admin request refused");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_the_operation_and_keeps_its_arguments() {
        let (op, args) = describe(&AdminRequest::LuCreate {
            name: "vol".into(),
            size: 1 << 20,
            thick: false,
        });
        assert_eq!(op, "lu_create");
        let v: serde_json::Value = serde_json::from_str(&args).unwrap();
        assert_eq!(v, serde_json::json!({"name": "vol", "size": 1048576}));
        assert!(looks_only(&AdminRequest::LuList));
        assert!(!looks_only(&AdminRequest::ScrubCancel));
    }

    #[test]
    fn socket_peer_is_this_process_over_a_socketpair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let who = Requester::socket_peer(&a);
        let me = Requester::this_process();
        assert_eq!((who.uid, who.pid), (me.uid, me.pid));
        assert_eq!(who.via, Via::AdminSocket);
    }
}
