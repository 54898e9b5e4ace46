//! Admin requests shared by `sspctl` and `sspd`. Offline, `sspctl` executes them on a pool it
//! opened itself; online it sends them to the running server over the unix socket
//! `DIR/admin.sock` (mode 0600), one JSON line each way, in a versioned envelope.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::access::{ClientSpec, MapStore};
use crate::pool::activation::Activation;
use crate::pool::scrub::ScrubStatus;
use crate::pool::Provision;
use crate::pool::{
    CheckReport, DiffExtent, FailGroupInfo, FileStat, GcStats, LayoutExtent, LuInfo, Pool,
    PoolError, PoolStatus, PvListEntry, ScrubReport,
};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Version of the admin wire format; a peer with another version is refused with a message.
/// Version 2 added snapshots, clones, images, file stat/layout, diff and progress lines.
pub const ADMIN_VERSION: u32 = 2;
/// Socket file name inside the pool directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Longest request line the server reads; a longer one gets an error and the connection closes.
pub const MAX_ADMIN_LINE: usize = 1 << 20;
/// Admin connections served at once; more get an error line and are closed.
pub const MAX_ADMIN_CONNECTIONS: usize = 16;
/// Default for sspd's `--admin-timeout`: a connection must send each request line, and take
/// each reply, within this time (idle or stuck connections close and free their slot).
pub const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    PoolStatus,
    LuCreate {
        name: String,
        size: u64,
        /// Reserve the LU's full size (a thick LU).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        thick: bool,
    },
    /// Make an LU thick (its full size reserved) or thin.
    LuModify {
        name: String,
        thick: bool,
    },
    LuList,
    LuResize {
        name: String,
        size: u64,
        /// A smaller size discards the LU's tail: refused unless set.
        #[serde(default)]
        allow_shrink: bool,
        /// Shrink even with clients attached: their sessions are ended first.
        #[serde(default)]
        force: bool,
    },
    LuRemove {
        name: String,
        force: bool,
    },
    LuMap {
        name: String,
        client: String,
    },
    LuUnmap {
        name: String,
        client: String,
    },
    Check,
    Gc {
        max_segments: usize,
    },
    SnapshotCreate {
        names: Vec<String>,
    },
    SnapshotList {
        base: Option<String>,
    },
    SnapshotRollback {
        name: String,
        /// Roll back even with clients attached to the LU: their sessions are ended first.
        #[serde(default)]
        force: bool,
        /// Remove the undo snapshot right after the rollback.
        #[serde(default)]
        no_undo: bool,
        /// Undo snapshots of the LU to keep (absent: the pool directory's setting).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_undo: Option<u32>,
    },
    /// Remove the oldest snapshots of `lu` beyond the `keep` newest (and, with `older_than`
    /// seconds, only those that old), never one with clones, holds or clients.
    SnapshotPrune {
        lu: String,
        keep: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        older_than: Option<u64>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Place hold `tag` on a snapshot ([`crate::holds`]).
    SnapshotHold {
        name: String,
        tag: String,
    },
    /// Release hold `tag` of a snapshot.
    SnapshotRelease {
        name: String,
        tag: String,
    },
    /// A snapshot's holds.
    SnapshotHolds {
        name: String,
    },
    /// Show (`keep` absent) or set how many undo snapshots each LU keeps after a rollback.
    SnapshotKeepUndo {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<u32>,
    },
    SnapshotRemove {
        name: String,
        force: bool,
    },
    Clone {
        src: String,
        name: String,
        /// Also make the clone's activation config disk `NAME-config` (a read-only client
        /// image). Absent in requests from older clients: a plain clone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activation: Option<Activation>,
    },
    ImageCapture {
        src: String,
        name: String,
        /// Bytes copied per second (absent or 0: unlimited).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u64>,
    },
    ImageList,
    ImageRemove {
        name: String,
        force: bool,
    },
    FileStat {
        name: String,
    },
    FileLayout {
        name: String,
    },
    Diff {
        from: String,
        to: String,
    },
    /// Add the second failure group on new PVs (`PATH` or `PATH:SIZE` each).
    FailgrpCreate {
        name: String,
        pvs: Vec<String>,
        /// Overwrite PVs that hold another pool's superblock (absent from older clients).
        #[serde(default)]
        force: bool,
    },
    FailgrpList,
    FailgrpModify {
        name: String,
        new_name: String,
    },
    /// Drop a failure group (back to one copy); `confirm` must be set.
    FailgrpRemove {
        name: String,
        confirm: bool,
    },
    PvList,
    /// Grow failure group `fg` with new PVs.
    PvAdd {
        fg: String,
        pvs: Vec<String>,
        /// Overwrite PVs that hold another pool's superblock (absent from older clients).
        #[serde(default)]
        force: bool,
    },
    /// Replace PV `old` with `new` (`PATH` or `PATH:SIZE`).
    PvReplace {
        old: String,
        new: String,
        /// Overwrite a PV that holds another pool's superblock (absent from older clients).
        #[serde(default)]
        force: bool,
    },
    /// Scrub. With `wait` (the default for older clients) the reply is the report once it is
    /// done; without, sspd starts it in the background and replies at once with its status.
    Scrub {
        #[serde(default = "yes")]
        wait: bool,
        /// Bytes per second (0: unlimited); sspd's `--scrub-rate` if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<u64>,
    },
    /// The running or last scrub.
    ScrubStatus,
    /// Stop the running scrub at a slice boundary.
    ScrubCancel,
    /// Cancel running captures and single-copy `pv replace` copies at a slice boundary.
    CopyCancel,
    Resync,
    /// Send a snapshot as a stream (`sspctl send`): the reply line is followed by the stream's
    /// bytes, then the connection closes.
    Send(crate::replication::SendSpec),
    /// Receive a stream (`sspctl receive`): the stream's bytes follow the request line; one
    /// reply line when it is applied or refused, then the connection closes.
    Receive(crate::replication::ReceiveSpec),
    /// Discard a partial receive.
    ReceiveAbort {
        name: String,
    },
    /// Set (add or replace) a capacity alert ([`crate::alerts`]).
    AlertSet {
        #[serde(flatten)]
        alert: crate::alerts::Alert,
    },
    /// The capacity alerts with their current figures.
    AlertList,
    /// Remove the capacity alert of this type.
    AlertUnset {
        #[serde(rename = "type")]
        kind: crate::alerts::AlertType,
    },
}

fn yes() -> bool {
    true
}

/// Replies: one of these, as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum AdminReply {
    Status(Box<PoolStatus>),
    Lus {
        pool: String,
        lus: Vec<LuInfo>,
    },
    Removed {
        name: String,
        /// Removed with it: a clone's activation config disk.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also_removed: Vec<String>,
    },
    Check(CheckReport),
    Gc(GcStats),
    Snapshots {
        pool: String,
        snapshots: Vec<LuInfo>,
    },
    RolledBack {
        lu: Box<LuInfo>,
        /// The undo snapshot taken (empty when removed: `no_undo` or a limit of 0).
        undo: String,
        /// Older undo snapshots removed by the undo limit.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pruned: Vec<String>,
    },
    Pruned {
        lu: String,
        dry_run: bool,
        snapshots: Vec<crate::retention::PruneEntry>,
    },
    Holds {
        name: String,
        holds: Vec<crate::holds::Hold>,
    },
    KeepUndo {
        keep_undo: u32,
    },
    /// A snapshot or image was removed; `freed_blocks` were referenced by nothing else.
    Freed {
        name: String,
        freed_blocks: u64,
        /// Clones made from it (they keep working; named so that the removal says so).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clones: Vec<String>,
    },
    Stat(FileStat),
    Layout {
        name: String,
        extents: Vec<LayoutExtent>,
    },
    Diff {
        from: String,
        to: String,
        extents: Vec<DiffExtent>,
    },
    FailGroups {
        groups: Vec<FailGroupInfo>,
        mirror_state: String,
        resync_bytes_left: u64,
    },
    Pvs {
        pvs: Vec<PvListEntry>,
    },
    Scrubbed(ScrubReport),
    /// Copies told to stop (running when the cancel arrived).
    CopiesCancelled {
        running: u64,
    },
    ScrubState(ScrubStatus),
    Resynced {
        bytes_copied: u64,
        mirror_state: String,
    },
    /// The stream's bytes follow this line.
    Sending {
        snapshot: String,
        base: String,
        volume_size: u64,
        resume_offset: u64,
    },
    Received(crate::replication::ReceiveSummary),
    ReceiveAborted {
        name: String,
        snapshot: String,
    },
    Alerts {
        pool: String,
        alerts: Vec<crate::alerts::AlertInfo>,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    #[serde(flatten)]
    body: T,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ok(AdminReply),
    Error(String),
    /// Progress of a long request (image capture), before its final reply.
    Progress {
        done: u64,
        total: u64,
    },
}

/// The client sessions attached to each export (the server knows; offline there are none).
pub trait Attachments {
    /// The addresses of the clients attached to `export`.
    fn clients(&self, export: &str) -> Vec<String>;
    /// How many clients have `export` attached.
    fn attached(&self, export: &str) -> usize {
        self.clients(export).len()
    }
    /// End new sessions of `export` as soon as they attach, until [`Attachments::unfence`].
    fn fence(&self, export: &str);
    fn unfence(&self, export: &str);
    /// Wait up to `wait` for the clients of `export` to detach by themselves (a client that
    /// just sent its disconnect is still finishing); the clients still attached then.
    fn settle(&self, export: &str, wait: std::time::Duration) -> Vec<String>;
    /// End the sessions attached to `export` cleanly (requests in flight finish and get their
    /// replies, then the connection closes) and wait up to `wait` for them to go; `Err` holds
    /// the clients still attached then.
    fn end_sessions(&self, export: &str, wait: std::time::Duration) -> Result<(), Vec<String>>;
}

/// Nobody is attached (offline use).
pub struct NoAttachments;
impl Attachments for NoAttachments {
    fn clients(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
    fn settle(&self, _: &str, _: std::time::Duration) -> Vec<String> {
        Vec::new()
    }
    fn fence(&self, _: &str) {}
    fn unfence(&self, _: &str) {}
    fn end_sessions(&self, _: &str, _: std::time::Duration) -> Result<(), Vec<String>> {
        Ok(())
    }
}

/// How long an operation on an attached export waits for clients that are leaving anyway (a
/// client that sent its disconnect stays attached until the session's final flush is done,
/// which takes a while on a busy host).
pub const DETACH_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a forced operation waits for the sessions it ends to finish their requests.
pub const SESSION_END_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps new sessions away from an export while an operation changes it under them.
pub(crate) struct Fence<'a> {
    att: &'a dyn Attachments,
    export: String,
}

impl Drop for Fence<'_> {
    fn drop(&mut self) {
        self.att.unfence(&self.export);
    }
}

/// Take `export` for an operation (`what`, e.g. "shrinking LU vm1 to 4096 bytes") that changes
/// its size or contents under its clients: refused while clients are attached unless `force`,
/// which ends their sessions cleanly first. Sessions attaching meanwhile are ended while the
/// returned fence lives.
pub(crate) fn exclusive<'a>(
    att: &'a dyn Attachments,
    export: &str,
    what: &str,
    force: bool,
) -> Result<Fence<'a>, PoolError> {
    att.fence(export);
    let fence = Fence {
        att,
        export: export.to_owned(),
    };
    let clients = att.settle(export, DETACH_GRACE);
    if clients.is_empty() {
        return Ok(fence);
    }
    let n = clients.len();
    let list = clients.join(", ");
    if !force {
        return Err(PoolError::InUse(format!(
            "{what}: {export} has {n} client(s) attached ({list}); detach them, or use --force to disconnect them"
        )));
    }
    tracing::warn!(export, clients = %list, "{what}: disconnecting {n} client(s)");
    att.end_sessions(export, SESSION_END_WAIT).map_err(|left| {
        PoolError::InUse(format!(
            "{what}: {} of {n} client(s) of {export} did not disconnect within {} s ({})",
            left.len(),
            SESSION_END_WAIT.as_secs(),
            left.join(", ")
        ))
    })?;
    Ok(fence)
}

/// A new clone, its origin recorded (a failure is only logged: removing the origin records
/// it again).
fn recorded(origins: &crate::origins::Origins, clone: LuInfo) -> LuInfo {
    if let Err(e) = origins.record([(clone.udid.as_str(), clone.parent.as_str())]) {
        tracing::warn!("clone origins: {e}");
    }
    clone
}

/// What a request runs against: the pool, who is attached, and the LU maps.
pub struct AdminCtx<'a> {
    pub pool: &'a Pool,
    pub attach: &'a dyn Attachments,
    pub maps: &'a MapStore,
    /// Who asked: recorded with the outcome in the audit trail ([`crate::audit`]).
    pub who: crate::audit::Requester,
}

/// Execute a request on an open pool.
pub fn execute(ctx: &AdminCtx, req: &AdminRequest) -> Result<AdminReply, PoolError> {
    execute_with_progress(ctx, req, &mut |_, _| {})
}

/// Execute a request; long ones report `progress(done, total)` as they go. Every request is
/// recorded once in the audit trail with its outcome.
pub fn execute_with_progress(
    ctx: &AdminCtx,
    req: &AdminRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AdminReply, PoolError> {
    let r = dispatch(ctx, req, progress);
    let err = r.as_ref().err().map(|e| e.to_string());
    crate::audit::record(&ctx.who, req, err.as_deref().map_or(Ok(()), Err));
    r
}

fn dispatch(
    ctx: &AdminCtx,
    req: &AdminRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AdminReply, PoolError> {
    let pool = ctx.pool;
    let origins = crate::origins::Origins::new(ctx.maps.dir());
    let lus = |mut v: Vec<LuInfo>| {
        origins.fill(&mut v);
        for l in &mut v {
            l.maps = ctx.maps.of(&l.name);
        }
        AdminReply::Lus {
            pool: pool.name(),
            lus: v,
        }
    };
    let spec = |c: &str| c.parse::<ClientSpec>().map_err(PoolError::Invalid);
    let r = dispatch_inner(ctx, req, progress, &origins, &lus, &spec);
    if r.is_ok() && !crate::audit::looks_only(req) {
        crate::alerts::poke();
    }
    r
}

/// Refuse provisioning `extra` bytes past an enforced overcommit alert.
fn provision(ctx: &AdminCtx, extra: u64, what: &str) -> Result<(), PoolError> {
    crate::alerts::check_provision(ctx.maps.dir(), &ctx.pool.status(), extra, what)
}

fn alerts_reply(ctx: &AdminCtx) -> Result<AdminReply, PoolError> {
    Ok(AdminReply::Alerts {
        pool: ctx.pool.name(),
        alerts: crate::alerts::list(ctx.maps.dir(), &ctx.pool.status())?,
    })
}

fn dispatch_inner(
    ctx: &AdminCtx,
    req: &AdminRequest,
    progress: &mut dyn FnMut(u64, u64),
    origins: &crate::origins::Origins,
    lus: &dyn Fn(Vec<LuInfo>) -> AdminReply,
    spec: &dyn Fn(&str) -> Result<ClientSpec, PoolError>,
) -> Result<AdminReply, PoolError> {
    let (pool, att) = (ctx.pool, ctx.attach);
    Ok(match req {
        AdminRequest::AlertSet { alert } => {
            crate::alerts::set(ctx.maps.dir(), alert.clone())?;
            alerts_reply(ctx)?
        }
        AdminRequest::AlertList => alerts_reply(ctx)?,
        AdminRequest::AlertUnset { kind } => {
            crate::alerts::unset(ctx.maps.dir(), *kind)?;
            alerts_reply(ctx)?
        }
        AdminRequest::PoolStatus => AdminReply::Status(Box::new(pool.status())),
        AdminRequest::LuCreate { name, size, thick } => {
            provision(
                ctx,
                *size,
                &format!("creating LU {name} of {} MiB", size >> 20),
            )?;
            let p = if *thick {
                Provision::Thick
            } else {
                Provision::Thin
            };
            lus(vec![pool.lu_create_provisioned(name, *size, p)?])
        }
        AdminRequest::LuModify { name, thick } => {
            let p = if *thick {
                Provision::Thick
            } else {
                Provision::Thin
            };
            lus(vec![pool.lu_set_provision(name, p)?])
        }
        AdminRequest::LuList => lus(pool.lu_list()),
        AdminRequest::LuResize {
            name,
            size,
            allow_shrink,
            force,
        } => {
            let cur = pool.lu_get(name)?.size;
            if *size >= cur {
                let what = format!("growing LU {name} by {} MiB", (size - cur) >> 20);
                provision(ctx, size - cur, &what)?;
                lus(vec![pool.lu_resize(name, *size)?])
            } else {
                let what = format!("shrinking LU {name} from {cur} to {size} bytes");
                if !allow_shrink {
                    return Err(PoolError::Invalid(format!(
                        "{what} discards its last {} bytes: add --allow-shrink",
                        cur - size
                    )));
                }
                let _fence = exclusive(att, name, &what, *force)?;
                lus(vec![pool.lu_resize(name, *size)?])
            }
        }
        AdminRequest::LuMap { name, client } => {
            let info = pool.lu_get(name)?;
            ctx.maps
                .map(name, &spec(client)?)
                .map_err(PoolError::Config)?;
            lus(vec![info])
        }
        AdminRequest::LuUnmap { name, client } => {
            let info = pool.lu_get(name)?;
            ctx.maps
                .unmap(name, &spec(client)?)
                .map_err(PoolError::Invalid)?;
            lus(vec![info])
        }
        AdminRequest::LuRemove { name, force } => {
            let udid = pool.lu_get(name)?.udid;
            let _fence = exclusive(att, name, &format!("removing LU {name}"), *force)?;
            // A clone's activation config disk goes with it.
            let config = pool.activation_disk_of(name);
            let _config_fence = match &config {
                Some(c) => Some(exclusive(
                    att,
                    c,
                    &format!("removing config disk {c}"),
                    *force,
                )?),
                None => None,
            };
            pool.lu_remove(name)?;
            ctx.maps.forget(name).map_err(PoolError::Config)?;
            if let Err(e) = origins.forget(&udid) {
                tracing::warn!("clone origins: {e}");
            }
            let mut also_removed = Vec::new();
            if let Some(c) = config {
                match pool.image_remove(&c) {
                    Ok(_) => {
                        ctx.maps.forget(&c).map_err(PoolError::Config)?;
                        also_removed.push(c);
                    }
                    // Kept (it has snapshots): `image remove` it later.
                    Err(e) => tracing::warn!("keeping config disk {c}: {e}"),
                }
            }
            AdminReply::Removed {
                name: name.clone(),
                also_removed,
            }
        }
        AdminRequest::Check => AdminReply::Check(pool.check()?),
        AdminRequest::Gc { max_segments } => AdminReply::Gc(pool.gc(*max_segments)?),
        AdminRequest::SnapshotCreate { names } => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            AdminReply::Snapshots {
                pool: pool.name(),
                snapshots: pool.snapshot_create(&names)?,
            }
        }
        AdminRequest::SnapshotList { base } => AdminReply::Snapshots {
            pool: pool.name(),
            snapshots: pool.snapshot_list(base.as_deref())?,
        },
        AdminRequest::SnapshotRollback {
            name,
            force,
            no_undo,
            keep_undo,
        } => {
            let (base, _) = crate::pool::split_snapshot(name)?;
            pool.lu_get(name)?;
            let what = format!("rolling back to {name}");
            let fence = exclusive(att, base, &what, *force)?;
            let (lu, undo) = pool.snapshot_rollback(name)?;
            drop(fence);
            let (undo, pruned) = crate::retention::after_rollback(
                ctx.maps.dir(),
                pool,
                att,
                base,
                &undo,
                *no_undo,
                *keep_undo,
            );
            AdminReply::RolledBack {
                lu: Box::new(lu),
                undo,
                pruned,
            }
        }
        AdminRequest::SnapshotPrune {
            lu,
            keep,
            older_than,
            dry_run,
        } => AdminReply::Pruned {
            lu: lu.clone(),
            dry_run: *dry_run,
            snapshots: crate::retention::prune(
                ctx.maps.dir(),
                pool,
                att,
                lu,
                *keep,
                *older_than,
                *dry_run,
            )?,
        },
        AdminRequest::SnapshotHold { name, tag } => {
            crate::holds::add(ctx.maps.dir(), pool, name, tag)?;
            AdminReply::Holds {
                name: name.clone(),
                holds: crate::holds::list(ctx.maps.dir(), pool, name)?,
            }
        }
        AdminRequest::SnapshotRelease { name, tag } => {
            crate::holds::remove(ctx.maps.dir(), pool, name, tag)?;
            AdminReply::Holds {
                name: name.clone(),
                holds: crate::holds::list(ctx.maps.dir(), pool, name)?,
            }
        }
        AdminRequest::SnapshotHolds { name } => AdminReply::Holds {
            name: name.clone(),
            holds: crate::holds::list(ctx.maps.dir(), pool, name)?,
        },
        AdminRequest::SnapshotKeepUndo { keep } => {
            if let Some(k) = keep {
                crate::retention::set_keep_undo(ctx.maps.dir(), *k)?;
            }
            AdminReply::KeepUndo {
                keep_undo: crate::retention::keep_undo(ctx.maps.dir())?,
            }
        }
        AdminRequest::SnapshotRemove { name, force } => {
            crate::pool::split_snapshot(name)?;
            let udid = pool.lu_get(name)?.udid;
            // Refused before any client is disconnected, and checked again under the lock.
            crate::holds::refuse_if_held(ctx.maps.dir(), name, &udid)?;
            let _fence = exclusive(att, name, &format!("removing snapshot {name}"), *force)?;
            let _held = crate::holds::guard();
            crate::holds::refuse_if_held(ctx.maps.dir(), name, &udid)?;
            origins
                .keep_for(pool, name)
                .map_err(|e| PoolError::Config(e.to_string()))?;
            AdminReply::Freed {
                name: name.clone(),
                clones: clones_of(pool, name),
                freed_blocks: pool.snapshot_remove(name)?,
            }
        }
        AdminRequest::Clone {
            src,
            name,
            activation,
        } => {
            let size = pool.lu_get(src)?.size;
            let what = format!("cloning {src} ({} MiB) as {name}", size >> 20);
            provision(ctx, size, &what)?;
            match activation {
                None => lus(vec![recorded(origins, pool.clone_create(src, name)?)]),
                Some(a) => {
                    let (clone, disk) = pool.clone_with_activation(src, name, a)?;
                    lus(vec![recorded(origins, clone), disk])
                }
            }
        }
        AdminRequest::ImageCapture { src, name, rate } => lus(vec![pool.image_capture_at(
            src,
            name,
            rate.unwrap_or(0),
            progress,
        )?]),
        AdminRequest::ImageList => lus(pool.image_list()),
        AdminRequest::ImageRemove { name, force } => {
            let _fence = exclusive(att, name, &format!("removing client image {name}"), *force)?;
            origins
                .keep_for(pool, name)
                .map_err(|e| PoolError::Config(e.to_string()))?;
            AdminReply::Freed {
                name: name.clone(),
                clones: clones_of(pool, name),
                freed_blocks: pool.image_remove(name)?,
            }
        }
        AdminRequest::FileStat { name } => {
            let mut st = pool.file_stat(name)?;
            origins.fill_stat(&mut st);
            AdminReply::Stat(st)
        }
        AdminRequest::FileLayout { name } => AdminReply::Layout {
            name: name.clone(),
            extents: pool.file_layout(name)?,
        },
        AdminRequest::FailgrpCreate { name, pvs, force } => {
            failgrp_create(ctx, name, pvs, *force)?;
            failgroups(pool)
        }
        AdminRequest::FailgrpList => failgroups(pool),
        AdminRequest::FailgrpRemove { name, confirm } => {
            if !confirm {
                return Err(PoolError::Invalid(format!(
                    "removing failure group {name} leaves a single copy of every block: add --yes to confirm"
                )));
            }
            let dir = ctx.maps.dir().to_owned();
            let paths: Vec<std::path::PathBuf> = pool
                .pv_list()
                .into_iter()
                .filter(|p| p.failure_group == *name)
                .map(|p| p.name.into())
                .collect();
            crate::pool::dir::config_remove_pvs(&dir, &paths)?;
            if let Err(e) = pool.failgrp_remove(name) {
                let _ = crate::pool::dir::config_add_pvs(&dir, &paths);
                return Err(e);
            }
            failgroups(pool)
        }
        AdminRequest::FailgrpModify { name, new_name } => {
            pool.failgrp_rename(name, new_name)?;
            failgroups(pool)
        }
        AdminRequest::PvList => AdminReply::Pvs {
            pvs: pool.pv_list(),
        },
        AdminRequest::PvAdd { fg, pvs, force } => {
            pv_add(ctx, fg, pvs, *force)?;
            AdminReply::Pvs {
                pvs: pool.pv_list(),
            }
        }
        AdminRequest::PvReplace { old, new, force } => {
            pv_replace(ctx, old, new, *force, progress)?;
            AdminReply::Pvs {
                pvs: pool.pv_list(),
            }
        }
        AdminRequest::Scrub { wait: false, rate } => {
            AdminReply::ScrubState(pool.scrub_start(*rate)?)
        }
        AdminRequest::Scrub { wait: true, rate } => {
            // Join a scrub already running rather than refuse.
            // Offline the scrub runs inside this call: it reports progress as it goes.
            let st = match pool.scrub_start_with(*rate, progress) {
                Ok(st) => st,
                Err(PoolError::InUse(_)) => pool.scrub_status(ctx.maps.dir()),
                Err(e) => return Err(e),
            };
            let st = if st.running() {
                pool.scrub_wait(progress)
            } else {
                st
            };
            match st.state.as_str() {
                "finished" => AdminReply::Scrubbed(st.report),
                "cancelled" => {
                    return Err(PoolError::Invalid(format!(
                        "the scrub was cancelled at {} {} ({} of {} MiB verified)",
                        st.phase,
                        st.position,
                        st.bytes_done >> 20,
                        st.bytes_total >> 20
                    )))
                }
                _ => return Err(PoolError::Internal(format!("scrub failed: {}", st.error))),
            }
        }
        AdminRequest::ScrubStatus => AdminReply::ScrubState(pool.scrub_status(ctx.maps.dir())),
        AdminRequest::ScrubCancel => AdminReply::ScrubState(pool.scrub_cancel(ctx.maps.dir())?),
        AdminRequest::CopyCancel => AdminReply::CopiesCancelled {
            running: pool.copy_cancel(),
        },
        AdminRequest::Send(_) | AdminRequest::Receive(_) => {
            return Err(PoolError::Invalid(
                "send and receive carry a byte stream: use sspctl send / sspctl receive".into(),
            ))
        }
        AdminRequest::ReceiveAbort { name } => AdminReply::ReceiveAborted {
            name: name.clone(),
            snapshot: crate::replication::receive_abort(pool, ctx.maps.dir(), name)
                .map_err(|e| PoolError::Invalid(e.to_string()))?,
        },
        AdminRequest::Resync => {
            let bytes_copied = pool.resync_wait(&mut |done, left| progress(done, done + left))?;
            AdminReply::Resynced {
                bytes_copied,
                mirror_state: pool.status().mirror_state,
            }
        }
        AdminRequest::Diff { from, to } => AdminReply::Diff {
            from: from.clone(),
            to: to.clone(),
            extents: pool.diff(from, to)?,
        },
    })
}

/// The clones made from snapshot or image `name`.
fn clones_of(pool: &Pool, name: &str) -> Vec<String> {
    pool.export_list()
        .into_iter()
        .filter(|v| v.kind == "clone" && v.parent == name)
        .map(|v| v.name)
        .collect()
}

fn failgroups(pool: &Pool) -> AdminReply {
    let st = pool.status();
    AdminReply::FailGroups {
        groups: st.failure_groups,
        mirror_state: st.mirror_state,
        resync_bytes_left: st.resync_bytes_left,
    }
}

/// Create the new PVs, list them in the pool directory, then add them as a failure group; on
/// refusal the configuration and any file made here are put back as they were.
fn failgrp_create(
    ctx: &AdminCtx,
    name: &str,
    specs: &[String],
    force: bool,
) -> Result<(), PoolError> {
    use crate::pool::dir::{config_add_pvs, config_remove_pvs};
    let specs = parse_specs(specs)?;
    let made: Vec<std::path::PathBuf> = specs
        .iter()
        .filter(|s| s.size.is_some())
        .map(|s| s.path.clone())
        .collect();
    let devs = crate::pool::dir::make_devs_with(&specs, force, &ctx.pool.io_config())?;
    let paths: Vec<std::path::PathBuf> = devs.iter().map(|(p, _)| p.clone()).collect();
    let dir = ctx.maps.dir().to_owned();
    let undo = |err: PoolError| {
        for p in &made {
            let _ = std::fs::remove_file(p);
        }
        err
    };
    config_add_pvs(&dir, &paths).map_err(undo)?;
    if let Err(e) = ctx
        .pool
        .failgrp_create(name, devs.into_iter().map(|(_, d)| d).collect())
    {
        let _ = config_remove_pvs(&dir, &paths);
        return Err(undo(e));
    }
    Ok(())
}

/// Parse PV specs of a request. Their paths must be absolute: whoever sent the request resolves
/// relative paths where the user typed them (sspctl does); resolved here they would name
/// something under sspd's working directory instead.
fn parse_specs(specs: &[String]) -> Result<Vec<crate::pool::dir::PvSpec>, PoolError> {
    specs
        .iter()
        .map(|s| {
            let spec: crate::pool::dir::PvSpec = s.parse().map_err(PoolError::Invalid)?;
            if spec.path.is_relative() {
                return Err(PoolError::Invalid(format!(
                    "PV path {} is relative: give an absolute path",
                    spec.path.display()
                )));
            }
            Ok(spec)
        })
        .collect()
}

fn pv_add(ctx: &AdminCtx, fg: &str, specs: &[String], force: bool) -> Result<(), PoolError> {
    use crate::pool::dir::{config_add_pvs, config_remove_pvs};
    let specs = parse_specs(specs)?;
    let devs = crate::pool::dir::make_devs_with(&specs, force, &ctx.pool.io_config())?;
    let paths: Vec<std::path::PathBuf> = devs.iter().map(|(p, _)| p.clone()).collect();
    let dir = ctx.maps.dir().to_owned();
    let undo = |e: PoolError| {
        for s in specs.iter().filter(|s| s.size.is_some()) {
            let _ = std::fs::remove_file(&s.path);
        }
        e
    };
    config_add_pvs(&dir, &paths).map_err(undo)?;
    if let Err(e) = ctx
        .pool
        .pv_add(fg, devs.into_iter().map(|(_, d)| d).collect())
    {
        let _ = config_remove_pvs(&dir, &paths);
        return Err(undo(e));
    }
    Ok(())
}

fn pv_replace(
    ctx: &AdminCtx,
    old: &str,
    new: &str,
    force: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), PoolError> {
    use crate::pool::dir::config_replace_pv;
    let specs = parse_specs(&[new.to_owned()])?;
    let mut devs = crate::pool::dir::make_devs_with(&specs, force, &ctx.pool.io_config())?;
    let (path, dev) = devs
        .pop()
        .ok_or_else(|| PoolError::Internal(format!("no PV made for {new}")))?;
    let dir = ctx.maps.dir().to_owned();
    let r = ctx.pool.pv_replace(old, dev, progress, &mut || {
        config_replace_pv(&dir, std::path::Path::new(old), &path)
    });
    if r.is_err() && specs.first().is_some_and(|s| s.size.is_some()) {
        let _ = std::fs::remove_file(&path);
    }
    r
}

/// Path of a pool directory's admin socket.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(ADMIN_SOCKET)
}

/// Decode one request line as the server does: JSON, the envelope's version, then the
/// request. The error is the message sent back to the client.
pub fn decode_request_line(line: &str) -> Result<AdminRequest, String> {
    let v = serde_json::from_str::<serde_json::Value>(line)
        .map_err(|e| format!("malformed admin request: {e}"))?;
    match v.get("version").and_then(|x| x.as_u64()) {
        Some(ver) if ver == u64::from(ADMIN_VERSION) => {
            serde_json::from_value::<Envelope<AdminRequest>>(v)
                .map(|env| env.body)
                .map_err(|e| format!("unknown admin request: {e}"))
        }
        other => Err(format!(
            "admin protocol version mismatch: this sspd speaks version {ADMIN_VERSION}, the client sent {other:?}; use matching sspctl and sspd"
        )),
    }
}

/// Encode a request as the client sends it (one JSON line, without the newline).
pub fn encode_request_line(req: &AdminRequest) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Envelope {
        version: ADMIN_VERSION,
        body: req.clone(),
    })
}

/// One request line from an admin client.
enum Line {
    Complete(Vec<u8>),
    /// Longer than [`MAX_ADMIN_LINE`].
    TooLong,
    Eof,
}

/// Reads newline-terminated lines of at most [`MAX_ADMIN_LINE`] bytes, each within
/// the reader's timeout.
struct LineReader {
    stream: UnixStream,
    timeout: std::time::Duration,
    pending: Vec<u8>,
    chunk: Vec<u8>,
}

impl LineReader {
    fn new(stream: UnixStream, timeout: std::time::Duration) -> Self {
        LineReader {
            stream,
            timeout,
            pending: Vec::new(),
            chunk: vec![0u8; 64 << 10],
        }
    }

    fn next(&mut self) -> std::io::Result<Line> {
        use std::io::Read;
        let deadline = std::time::Instant::now() + self.timeout;
        let timed_out = || {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete request line in time",
            )
        };
        let mut scanned = 0;
        loop {
            let fresh = self.pending.get(scanned..).unwrap_or_default();
            if let Some(i) = fresh.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(scanned + i + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                return Ok(if line.len() > MAX_ADMIN_LINE {
                    Line::TooLong
                } else {
                    Line::Complete(line)
                });
            }
            scanned = self.pending.len();
            if self.pending.len() > MAX_ADMIN_LINE {
                return Ok(Line::TooLong);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            self.stream.set_read_timeout(Some(left))?;
            let n = match self.stream.read(&mut self.chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out())
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                // A last line without its newline still counts.
                return Ok(if self.pending.is_empty() {
                    Line::Eof
                } else {
                    Line::Complete(std::mem::take(&mut self.pending))
                });
            }
            self.pending
                .extend_from_slice(self.chunk.get(..n).unwrap_or_default());
        }
    }
}

fn error_line(msg: String) -> std::io::Result<String> {
    let mut out = serde_json::to_string(&Envelope {
        version: ADMIN_VERSION,
        body: Outcome::Error(msg),
    })?;
    out.push('\n');
    Ok(out)
}

/// Answer a connection the server will not serve with one error line, then close it.
pub fn refuse_connection(mut stream: UnixStream, why: &str) {
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    if let Ok(l) = error_line(why.to_owned()) {
        let _ = stream.write_all(l.as_bytes());
    }
}

/// Serve one admin connection (blocking): read request lines (each at most
/// [`MAX_ADMIN_LINE`] bytes, each within `timeout`), write reply lines (a reply the client
/// does not take within `timeout` ends the connection).
pub fn handle_connection(
    stream: UnixStream,
    ctx: &AdminCtx,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    w.set_write_timeout(Some(timeout))?;
    let mut reader = LineReader::new(stream, timeout);
    loop {
        let line = match reader.next()? {
            Line::Eof => return Ok(()),
            Line::TooLong => {
                let msg = format!("admin request line longer than {MAX_ADMIN_LINE} bytes");
                w.write_all(error_line(msg.clone())?.as_bytes())?;
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, msg));
            }
            Line::Complete(l) => l,
        };
        let outcome = match std::str::from_utf8(&line)
            .map_err(|e| format!("malformed admin request: {e}"))
            .and_then(decode_request_line)
        {
            Err(e) => {
                crate::audit::record_refused(&ctx.who, &e);
                Outcome::Error(e)
            }
            Ok(req) if crate::replication::is_streaming(&req) => {
                let pending = std::mem::take(&mut reader.pending);
                let input = reader.stream.try_clone()?;
                return crate::replication::serve_stream(ctx, &req, pending, input, w, timeout);
            }
            Ok(req) => match execute_with_progress(ctx, &req, &mut |done, total| {
                // Progress is best effort: a client that went away loses nothing.
                if let Ok(mut l) = serde_json::to_string(&Envelope {
                    version: ADMIN_VERSION,
                    body: Outcome::Progress { done, total },
                }) {
                    l.push('\n');
                    let _ = w.write_all(l.as_bytes());
                }
            }) {
                Ok(r) => Outcome::Ok(r),
                Err(e) => Outcome::Error(e.to_string()),
            },
        };
        let mut out = serde_json::to_string(&Envelope {
            version: ADMIN_VERSION,
            body: outcome,
        })?;
        out.push('\n');
        w.write_all(out.as_bytes())?;
    }
}

/// One reply line as the server writes it (with its newline).
pub(crate) fn reply_line(r: Result<AdminReply, String>) -> std::io::Result<String> {
    let mut out = serde_json::to_string(&Envelope {
        version: ADMIN_VERSION,
        body: match r {
            Ok(r) => Outcome::Ok(r),
            Err(e) => Outcome::Error(e),
        },
    })?;
    out.push('\n');
    Ok(out)
}

/// Decode a final reply line (progress lines are not expected where this is used).
pub(crate) fn decode_reply_line(line: &str) -> Result<AdminReply, ClientError> {
    let env: Envelope<Outcome> =
        serde_json::from_str(line).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if env.version != ADMIN_VERSION {
        return Err(ClientError::Remote(format!(
            "admin protocol version mismatch: sspd answered {}, this sspctl speaks {ADMIN_VERSION}",
            env.version
        )));
    }
    match env.body {
        Outcome::Ok(r) => Ok(r),
        Outcome::Error(e) => Err(ClientError::Remote(e)),
        Outcome::Progress { .. } => Err(ClientError::Protocol("unexpected progress line".into())),
    }
}

/// Connect to the pool's sspd and send one request line; the socket carries what follows
/// (a streaming request's bytes). `NotRunning` when nobody listens.
pub(crate) fn connect_with(dir: &Path, req: &AdminRequest) -> Result<UnixStream, ClientError> {
    let mut stream = connect(dir)?;
    let mut line = encode_request_line(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(ClientError::Send)?;
    Ok(stream)
}

/// Connect to the admin socket of the pool in `dir`; `NotRunning` when nobody listens.
fn connect(dir: &Path) -> Result<UnixStream, ClientError> {
    match UnixStream::connect(socket_path(dir)) {
        Ok(s) => Ok(s),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(ClientError::NotRunning)
        }
        Err(e) => Err(e.into()),
    }
}

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no server is running for this pool")]
    NotRunning,
    #[error("admin socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("admin socket: sspd closed the connection while the request was sent: {0}")]
    Send(std::io::Error),
    #[error("{0}")]
    Remote(String),
    #[error("malformed reply from sspd: {0}")]
    Protocol(String),
}

/// Send a request to the server of the pool in `dir`. `NotRunning` when nobody listens.
pub fn call(dir: &Path, req: &AdminRequest) -> Result<AdminReply, ClientError> {
    call_with_progress(dir, req, &mut |_, _| {})
}

/// Like `call`, reporting the server's progress lines as they arrive.
pub fn call_with_progress(
    dir: &Path,
    req: &AdminRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AdminReply, ClientError> {
    let stream = connect(dir)?;
    let mut w = stream.try_clone()?;
    let mut line = encode_request_line(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push('\n');
    let sent = w.write_all(line.as_bytes());
    let mut reader = BufReader::new(stream);
    if let Err(e) = sent {
        // sspd may have refused the request and closed: its answer says why.
        let mut reply = String::new();
        if reader.read_line(&mut reply).is_ok() {
            if let Ok(env) = serde_json::from_str::<Envelope<Outcome>>(&reply) {
                if let Outcome::Error(msg) = env.body {
                    return Err(ClientError::Remote(msg));
                }
            }
        }
        return Err(ClientError::Send(e));
    }
    loop {
        let mut reply = String::new();
        if reader.read_line(&mut reply)? == 0 {
            return Err(ClientError::Protocol(
                "sspd closed the admin connection without a reply".into(),
            ));
        }
        let v: serde_json::Value =
            serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if v.get("version").and_then(|x| x.as_u64()) != Some(u64::from(ADMIN_VERSION)) {
            return Err(ClientError::Remote(format!(
                "admin protocol version mismatch: sspd answered {:?}, this sspctl speaks {ADMIN_VERSION}",
                v.get("version")
            )));
        }
        let env: Envelope<Outcome> =
            serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match env.body {
            Outcome::Ok(r) => return Ok(r),
            Outcome::Error(e) => return Err(ClientError::Remote(e)),
            Outcome::Progress { done, total } => progress(done, total),
        }
    }
}
