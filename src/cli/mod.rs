//! `sspctl`: the admin CLI. Verbs run offline on a stopped pool (the pool directory's lock
//! keeps them away from a running server).

mod alert;
pub mod debug;
pub mod docs;
mod mirror;
pub mod output;
pub mod progress;
mod replicate;
mod share;
pub mod size;

use crate::admin::{AdminReply, AdminRequest};
use crate::pool::dir::{PoolDir, PvSpec};
use crate::pool::{CreateOptions, LuInfo, Options, PoolStatus};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "sspctl",
    version,
    about = "Administer an ssp shared storage pool",
    long_about = "Administer an ssp shared storage pool: LUs, snapshots, client images, linked \
clones, failure groups and PVs, scrub and check. With sspd serving the pool, verbs go through \
its admin socket (POOL/admin.sock); otherwise they open the stopped pool directly."
)]
pub struct Cli {
    /// Pool directory (holds the pool's configuration and lock; PVs may live anywhere)
    #[arg(long, global = true, env = "SSP_POOL")]
    pub pool: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables (errors too: {"error": "..."} on stdout)
    #[arg(long, global = true)]
    pub json: bool,
    /// Log line format on stderr (the filter comes from SSP_LOG, else RUST_LOG; default error)
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::LogFormat::Text)]
    pub log_format: crate::logging::LogFormat,
    /// Listings: print only these fields, in this order (the JSON field names, comma-separated,
    /// e.g. -o name,size); with --json, only these keys
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_delimiter = ',',
        value_name = "FIELD,..."
    )]
    pub output: Option<Vec<String>>,
    /// Listings: no header line; fields separated by a tab, sizes in exact bytes (for scripts)
    #[arg(short = 'H', long = "no-headers", global = true)]
    pub no_headers: bool,
    /// Offline: PV I/O engine, uring (io_uring), sync (pread/pwrite) or auto (uring for O_DIRECT
    /// PVs where the host allows it, else sync)
    #[arg(long, global = true, value_enum, env = "SSP_IO_ENGINE", default_value_t = crate::dev::EngineChoice::Auto)]
    pub io_engine: crate::dev::EngineChoice,
    /// Offline: PV cache mode, writeback (page cache), none (O_DIRECT) or auto (none for block
    /// devices, writeback for files)
    #[arg(long, global = true, value_enum, env = "SSP_CACHE", default_value_t = crate::dev::CacheChoice::Auto)]
    pub cache: crate::dev::CacheChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a pool or show its state
    #[command(subcommand, after_help = POOL_EXAMPLES)]
    Pool(PoolCmd),
    /// Logical units: create, list, resize, remove, map, import, export
    #[command(subcommand, after_help = LU_EXAMPLES)]
    Lu(LuCmd),
    /// Snapshots LU@SNAP: create (several at once), list, rollback, remove
    #[command(subcommand, after_help = share::SNAPSHOT_EXAMPLES)]
    Snapshot(share::SnapshotCmd),
    /// Client images: capture an LU into the image area, list, remove
    #[command(subcommand, after_help = share::IMAGE_EXAMPLES)]
    Image(share::ImageCmd),
    /// Create a linked clone: a writable LU sharing every block of IMAGE@SNAP, LU@SNAP or IMAGE
    #[command(after_help = CLONE_EXAMPLES)]
    Clone {
        /// What to clone: IMAGE@SNAP, LU@SNAP or a client image
        src: String,
        /// Name of the new LU
        name: String,
        /// Also make an activation config disk NAME-config, a read-only client image (ISO 9660
        /// "cidata": cloud-init NoCloud meta-data/user-data/network-config and an OVF
        /// ovf-env.xml) the clone's first boot personalises itself from. Keys: hostname
        /// (required), ip (A.B.C.D or A.B.C.D/PREFIX), netmask, gateway, dns (repeatable),
        /// domain, adapter (the OVF adapter number, default 1)
        #[arg(long, value_name = "hostname=NAME[,ip=..,gateway=..,dns=..]")]
        activation: Option<crate::pool::activation::Activation>,
    },
    /// Accounting: file stat (owned/shared blocks, block debt), file layout (per extent)
    #[command(subcommand)]
    File(share::FileCmd),
    /// Changed extents between two volumes of one family (snapshots, clones and their LUs)
    Diff {
        /// The older volume (LU, LU@SNAP, clone or image)
        from: String,
        /// The newer volume of the same family
        to: String,
    },
    /// Write snapshot LU@SNAP as a stream (to stdout or -f FILE): all of it, or with --from
    /// only its changes since an older snapshot; -t TOKEN resumes an interrupted stream
    #[command(after_help = replicate::SEND_EXAMPLES)]
    Send(replicate::SendArgs),
    /// Apply a stream of `sspctl send` (from stdin or -i FILE): creates LU NAME and NAME@SNAP,
    /// or brings NAME from NAME@BASE to NAME@SNAP; nothing shows until it is complete.
    /// --resume, --token and --abort handle an interrupted receive
    #[command(after_help = replicate::RECEIVE_EXAMPLES)]
    Receive(replicate::ReceiveArgs),
    /// Failure groups: list, create (starts mirroring), modify, resync
    #[command(subcommand, after_help = mirror::FAILGRP_EXAMPLES)]
    Failgrp(mirror::FailgrpCmd),
    /// Physical volumes: list with their state, add, replace
    #[command(subcommand, after_help = mirror::PV_EXAMPLES)]
    Pv(mirror::PvCmd),
    /// Read every live block on every copy, verify it, repair bad copies: started in the
    /// background (sspd running; `--wait` waits for the report), or run to the end (offline);
    /// `scrub status`, `scrub cancel`
    #[command(after_help = mirror::SCRUB_EXAMPLES)]
    Scrub(mirror::ScrubArgs),
    /// Capacity alerts: set (threshold or overcommit percent, hook, hard limit), list, unset
    #[command(subcommand, after_help = alert::ALERT_EXAMPLES)]
    Alert(alert::AlertCmd),
    /// Full consistency check (every checksum, map entry and counter); waits for the report
    Check,
    /// Reclaim space from overwritten and trimmed blocks now
    Gc(GcArgs),
    /// Test helpers
    #[command(subcommand, hide = true)]
    Debug(DebugCmd),
    /// Write sspctl's man pages and shell completions into DIR (scripts/gen-docs.sh)
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (man8/, completions/{bash,zsh,fish}/)
        dir: PathBuf,
    },
}

const POOL_EXAMPLES: &str = "Examples:
  sspctl --pool /var/lib/ssp/pool1 pool create --name pool1 --pv /dev/sdb --pv /dev/sdc
  sspctl --pool /tmp/p pool create --pv /tmp/pv0.img:20G
  sspctl --pool /var/lib/ssp/pool1 pool status";

const LU_EXAMPLES: &str = "Examples:
  sspctl lu create vm1 --size 20G
  sspctl lu create db1 --size 100G --thick
  sspctl lu modify vm1 --thick
  sspctl lu ls
  sspctl lu resize vm1 --size 40G
  sspctl lu map vm1 --client 192.168.10.0/24
  sspctl lu map vm1 --client uid:1000
  sspctl lu rm vm1 --force";

const CLONE_EXAMPLES: &str = "Examples:
  sspctl clone golden@v1 web1
  sspctl clone base-image web2 --activation hostname=web2,ip=10.0.0.12/24,gateway=10.0.0.1,dns=10.0.0.2";

#[derive(Subcommand, Debug)]
pub enum DebugCmd {
    /// Write a deterministic sequence of blocks with periodic flushes until killed
    WriteLoop {
        #[arg(long)]
        lu: String,
        #[arg(long)]
        blocks: u64,
        #[arg(long)]
        seed: u64,
        #[arg(long, default_value_t = 16)]
        flush_every: u64,
        #[arg(long)]
        ack_file: PathBuf,
        #[arg(long, default_value_t = 10_000_000)]
        max_writes: u64,
    },
    /// Time a full mirror resync and the resync after a small change made while degraded
    ResyncBench {
        /// Directory for the PV files pv0.img and pv1.img (overwritten)
        #[arg(long)]
        dir: PathBuf,
        /// Size of each PV file (sparse)
        #[arg(long, value_parser = size::bytes_arg, default_value = "4G")]
        pv_size: u64,
        /// LU size, written in full before the second failure group is added
        #[arg(long, value_parser = size::bytes_arg, default_value = "3G")]
        fill: u64,
        /// Data changed while degraded, in percent of the PV size
        #[arg(long, default_value_t = 1.0)]
        change_pct: f64,
        /// Keep the PV files' pages in the page cache before the timed resyncs
        #[arg(long)]
        warm: bool,
        /// Scrub both copies at the end
        #[arg(long)]
        verify: bool,
    },
    /// Print where the last writer's journal ends, as a seal HOST:INCARNATION:EPOCH:SEQ
    /// (opens read-only); with --to SEAL, open the pool for writing with the journal replayed
    /// only up to SEAL, commit, and print the seal the pool recorded
    Seal {
        #[arg(long, value_name = "HOST:INCARNATION:EPOCH:SEQ")]
        to: Option<crate::format::Seal>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create a new pool on one or more PVs
    #[command(after_help = POOL_EXAMPLES)]
    Create(PoolCreate),
    /// Show size, free space, provisioning, active alerts and PVs
    Status,
    /// Rebuild a lost or moved pool directory (--pool DIR, new) from the pool's PVs alone:
    /// LUs, snapshots, images and clones are on the PVs, and LU maps, clone origins and alerts
    /// come from the copy of the directory kept there. Refused if the pool was not exported
    /// (it may be in use on another host) unless --force
    #[command(after_help = POOL_IMPORT_EXAMPLES)]
    Import {
        /// Every PV of the pool (file or block device), in any order; repeatable
        #[arg(long = "pv", required = true, value_name = "PATH")]
        pvs: Vec<PathBuf>,
        /// Import a pool that was not exported cleanly (its host crashed or is gone). Never
        /// while another host still uses it
        #[arg(long)]
        force: bool,
    },
    /// Close a stopped pool cleanly for another host or directory to import: its directory's
    /// configuration is copied to the PVs and marked exported, and the directory no longer
    /// opens it (refused while sspd serves the pool: stop sspd first)
    #[command(after_help = POOL_IMPORT_EXAMPLES)]
    Export,
}

const POOL_IMPORT_EXAMPLES: &str = "Examples:
  sspctl --pool /var/lib/ssp/tank pool export
  sspctl --pool /var/lib/ssp/tank pool import --pv /dev/sdb --pv /dev/sdc
  sspctl --pool /srv/ssp/tank pool import --pv /srv/pv0.img --force   # the old host is gone";

#[derive(Args, Debug)]
pub struct PoolCreate {
    /// PV as PATH (existing file or block device) or PATH:SIZE (new sparse file), repeatable
    #[arg(long = "pv", required = true, value_parser = size::pv_spec_arg)]
    pub pvs: Vec<PvSpec>,
    /// Pool name
    #[arg(long, default_value = "ssp")]
    pub name: String,
    /// Journal size per PV in MiB
    #[arg(long, default_value_t = 16)]
    pub journal_mb: u64,
    /// Overwrite PVs that hold a superblock of another pool (that pool is destroyed)
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum LuCmd {
    /// Create an LU: thin (space is used when written) or, with --thick, with its full size
    /// reserved
    #[command(after_help = LU_EXAMPLES)]
    Create {
        /// Name of the new LU (the NBD export name)
        name: String,
        /// Size: 10G or 10GiB (binary: 1024^3 bytes), 10GB (decimal: 1000^3), K/M/G/T/P alike;
        /// a bare number is bytes. A multiple of 512 bytes; fractions like 1.5G are exact
        #[arg(long, value_parser = size::volume_size_arg)]
        size: u64,
        /// Reserve the LU's full size now, so its writes never fail for want of space however
        /// full thin LUs make the pool (refused, with the numbers, if the pool cannot reserve it)
        #[arg(long)]
        thick: bool,
    },
    /// Change how an LU is provisioned: --thick reserves its full size (less what it already
    /// owns), --thin gives the reservation back
    #[command(after_help = LU_EXAMPLES)]
    Modify {
        /// The LU (or clone) to change
        name: String,
        /// Reserve the LU's full size
        #[arg(long, conflicts_with = "thin", required_unless_present = "thin")]
        thick: bool,
        /// Give the reservation back: space is used when written
        #[arg(long)]
        thin: bool,
    },
    /// List LUs (name, size, unused space, UDID)
    #[command(visible_alias = "ls")]
    List,
    /// Change an LU's size. Shrinking discards the tail: it needs --allow-shrink, and is
    /// refused while clients are attached unless --force
    Resize {
        /// The LU to resize
        name: String,
        /// New size: 20G or 20GiB (binary), 20GB (decimal), bytes without a unit; a multiple
        /// of 512 bytes
        #[arg(long, value_parser = size::volume_size_arg)]
        size: u64,
        /// Allow a size smaller than the LU's (its tail is discarded)
        #[arg(long)]
        allow_shrink: bool,
        /// Shrink even with clients attached: they are disconnected first (their requests in
        /// flight finish)
        #[arg(long)]
        force: bool,
    },
    /// Remove an LU and return its space (refused while clients are attached, unless --force)
    #[command(visible_alias = "rm")]
    Remove {
        /// The LU to remove
        name: String,
        /// Remove it even with clients attached: they are disconnected first
        #[arg(long)]
        force: bool,
    },
    /// Restrict an LU to a client (IP or CIDR, uid:N for unix sockets, tls:NAME); repeatable
    #[command(after_help = LU_EXAMPLES)]
    Map {
        /// The LU to restrict
        name: String,
        /// Client allowed to open it: an IP address, a CIDR (10.0.0.0/24), uid:N (a unix-socket
        /// peer's user id) or tls:NAME (a verified TLS client certificate's CN or DNS name)
        #[arg(long)]
        client: String,
    },
    /// Remove a client restriction (an LU without maps is served to every client)
    Unmap {
        /// The LU
        name: String,
        /// The restriction to remove, as given to `lu map --client`
        #[arg(long)]
        client: String,
    },
    /// Copy a file into an LU (all-zero blocks stay unallocated)
    Import {
        /// The LU to write into (it must be large enough)
        name: String,
        /// The file to copy from (raw image)
        file: PathBuf,
        /// Byte offset in the LU where the file's first byte goes
        #[arg(long, value_parser = size::bytes_arg, default_value = "0")]
        offset: u64,
    },
    /// Copy an LU's contents to a file
    Export {
        /// The LU to read
        name: String,
        /// The file to write (created or overwritten; sparse where the LU is unallocated)
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Segments to clean at most
    #[arg(long, default_value_t = 1024)]
    pub max_segments: usize,
}

/// The output options of listings, from the global flags.
fn output_opts(cli: &Cli) -> output::OutputOpts {
    output::OutputOpts {
        json: cli.json,
        fields: cli.output.as_ref().map(|v| {
            v.iter()
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .collect()
        }),
        no_headers: cli.no_headers,
    }
}

fn pool_dir(cli: &Cli) -> Result<PathBuf> {
    cli.pool
        .clone()
        .context("no pool given: use --pool DIR (or set SSP_POOL)")
}

/// Open the pool offline; `read_only` replays the journal in memory and writes nothing to the
/// PVs (no checkpoint at open or close, no incarnation bump).
fn open_mode(cli: &Cli, read_only: bool) -> Result<PoolDir> {
    let dir = pool_dir(cli)?;
    let opts = Options {
        read_only,
        io: crate::dev::IoConfig::new(cli.io_engine, cli.cache),
        ..Options::default()
    };
    Ok(PoolDir::open(&dir, opts)?)
}

/// Requests run offline on a read-only pool, so listing and monitoring never write to the PVs:
/// those that only look ([`crate::audit::looks_only`]), and cancels (offline, nothing runs).
fn read_only_request(req: &AdminRequest) -> bool {
    crate::audit::looks_only(req)
        || matches!(req, AdminRequest::ScrubCancel | AdminRequest::CopyCancel)
}

/// Run one command, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    match &cli.command {
        Command::Pool(PoolCmd::Create(c)) => {
            let dir = pool_dir(cli)?;
            let copts = CreateOptions {
                name: c.name.clone(),
                journal_blocks: c.journal_mb * 256,
            };
            let opts = Options {
                io: crate::dev::IoConfig::new(cli.io_engine, cli.cache),
                ..Options::default()
            };
            let made = PoolDir::create_with(&dir, &c.pvs, &copts, opts, c.force);
            let err = made.as_ref().err().map(|e| e.to_string());
            let pvs: Vec<String> = c.pvs.iter().map(|p| p.path.display().to_string()).collect();
            crate::audit::record_op(
                &crate::audit::Requester::this_process(),
                "pool_create",
                &serde_json::json!({"dir": dir, "name": c.name, "pvs": pvs, "force": c.force}),
                err.as_deref().map_or(Ok(()), Err),
            );
            let pd = made?;
            let st = pd.pool.status();
            pd.pool.close()?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?;
            } else {
                writeln!(
                    out,
                    "created pool {} ({} MiB on {} PVs) in {}",
                    st.name,
                    st.total_bytes >> 20,
                    st.pvs.len(),
                    dir.display()
                )?;
            }
        }
        Command::Pool(PoolCmd::Status) => {
            if let AdminReply::Status(st) = admin(cli, AdminRequest::PoolStatus)? {
                let active = alert::active(cli);
                print_status(&output_opts(cli), &st, &active, out)?;
            }
        }
        Command::Pool(PoolCmd::Import { pvs, force }) => pool_import(cli, pvs, *force, out)?,
        Command::Pool(PoolCmd::Export) => pool_export(cli, out)?,
        Command::Lu(cmd) => lu(cli, cmd, out)?,
        Command::Snapshot(cmd) => share::snapshot(cli, cmd, out)?,
        Command::Image(cmd) => share::image(cli, cmd, out)?,
        Command::Clone {
            src,
            name,
            activation,
        } => share::clone(cli, src, name, activation.as_ref(), out)?,
        Command::File(cmd) => share::file(cli, cmd, out)?,
        Command::Diff { from, to } => share::diff(cli, from, to, out)?,
        Command::Send(a) => replicate::send(cli, a, out)?,
        Command::Receive(a) => replicate::receive(cli, a, out)?,
        Command::Failgrp(cmd) => mirror::failgrp(cli, cmd, out)?,
        Command::Pv(cmd) => mirror::pv(cli, cmd, out)?,
        Command::Scrub(a) => mirror::scrub(cli, a, out)?,
        Command::Alert(cmd) => alert::alert(cli, cmd, out)?,
        Command::Check => {
            let AdminReply::Check(rep) = admin(cli, AdminRequest::Check)? else {
                bail!("unexpected reply to check");
            };
            if cli.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&rep)?)?;
            } else {
                for e in &rep.errors {
                    writeln!(out, "ERROR: {e}")?;
                }
                writeln!(
                    out,
                    "checked {} LUs, {} map nodes, {} data blocks, {} table pages, {} segments: {}",
                    rep.volumes,
                    rep.map_nodes,
                    rep.data_blocks,
                    rep.table_pages,
                    rep.segments,
                    if rep.ok() {
                        "OK".to_string()
                    } else {
                        format!("{} errors", rep.errors.len())
                    }
                )?;
            }
            if !rep.ok() {
                bail!("the pool is inconsistent: {} errors", rep.errors.len());
            }
        }
        Command::Debug(DebugCmd::WriteLoop {
            lu,
            blocks,
            seed,
            flush_every,
            ack_file,
            max_writes,
        }) => {
            debug::write_loop(
                &pool_dir(cli)?,
                lu,
                *blocks,
                *seed,
                *flush_every,
                ack_file,
                *max_writes,
            )?;
        }
        Command::Debug(DebugCmd::ResyncBench {
            dir,
            pv_size,
            fill,
            change_pct,
            warm,
            verify,
        }) => {
            let a = debug::ResyncBench {
                dir: dir.clone(),
                pv_size: *pv_size,
                fill: *fill,
                change_pct: *change_pct,
                cold: !*warm,
                verify: *verify,
            };
            debug::resync_bench(&a, out)?;
        }
        Command::Debug(DebugCmd::Seal { to }) => {
            debug::seal(&pool_dir(cli)?, *to, cli.json, out)?;
        }
        Command::GenerateDocs { dir } => {
            let g = docs::generate(<Cli as clap::CommandFactory>::command(), dir)?;
            writeln!(
                out,
                "wrote {} man pages and {} completion files to {}",
                g.man_pages.len(),
                g.completions.len(),
                dir.display()
            )?;
        }
        Command::Gc(a) => {
            if let AdminReply::Gc(st) = admin(
                cli,
                AdminRequest::Gc {
                    max_segments: a.max_segments,
                },
            )? {
                if cli.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&st)?)?;
                } else {
                    writeln!(
                        out,
                        "cleaned {} segments, moved {} blocks",
                        st.segments_cleaned, st.blocks_moved
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// `pool import`: rebuild the directory from the PVs, then report what came back.
fn pool_import(cli: &Cli, pvs: &[PathBuf], force: bool, out: &mut dyn Write) -> Result<()> {
    let dir = pool_dir(cli)?;
    let r = PoolDir::import(&dir, pvs, force, Options::default());
    let err = r.as_ref().err().map(|e| e.to_string());
    crate::audit::record_op(
        &crate::audit::Requester::this_process(),
        "pool_import",
        &serde_json::json!({"dir": dir, "pvs": pvs, "force": force}),
        err.as_deref().map_or(Ok(()), Err),
    );
    let (pd, rep) = r?;
    let st = pd.pool.status();
    pd.pool.close()?;
    if cli.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rep)?)?;
    } else {
        writeln!(
            out,
            "imported pool {} ({} MiB on {} PVs, {} LUs, {} snapshots, {} client images) into {}{}",
            rep.name,
            st.total_bytes >> 20,
            rep.pvs.len(),
            st.lus,
            st.snapshots,
            st.images,
            dir.display(),
            if rep.exported {
                ""
            } else {
                " (forced: it had not been exported)"
            }
        )?;
        if !rep.restored_files.is_empty() {
            writeln!(out, "restored {}", rep.restored_files.join(", "))?;
        }
    }
    Ok(())
}

/// `pool export`: offline only (sspd must not serve the pool).
fn pool_export(cli: &Cli, out: &mut dyn Write) -> Result<()> {
    let dir = pool_dir(cli)?;
    if crate::admin::call(&dir, &AdminRequest::PoolStatus).is_ok() {
        bail!(
            "sspd serves the pool in {}: stop it first (a pool is exported closed)",
            dir.display()
        );
    }
    let r = open_mode(cli, false).and_then(|pd| {
        let name = pd.pool.name();
        pd.export()?;
        Ok(name)
    });
    let err = r.as_ref().err().map(|e| e.to_string());
    crate::audit::record_op(
        &crate::audit::Requester::this_process(),
        "pool_export",
        &serde_json::json!({"dir": dir}),
        err.as_deref().map_or(Ok(()), Err),
    );
    let name = r?;
    if cli.json {
        writeln!(out, "{}", serde_json::json!({"exported": name, "dir": dir}))?;
    } else {
        writeln!(
            out,
            "exported pool {name}: import it with `sspctl --pool DIR pool import --pv PATH...`"
        )?;
    }
    Ok(())
}

/// Run an admin request: through the running sspd if there is one, else on the pool directly.
fn admin(cli: &Cli, req: AdminRequest) -> Result<AdminReply> {
    admin_with_progress(cli, req, &mut |_, _| {})
}

/// `admin`, reporting progress of long requests.
fn admin_with_progress(
    cli: &Cli,
    req: AdminRequest,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AdminReply> {
    let dir = pool_dir(cli)?;
    match crate::admin::call_with_progress(&dir, &req, progress) {
        Ok(r) => Ok(r),
        Err(crate::admin::ClientError::NotRunning) => {
            // Offline there is no background: a scrub runs to the end here.
            let req = match req {
                AdminRequest::Scrub { rate, .. } => AdminRequest::Scrub { wait: true, rate },
                r => r,
            };
            let pd = open_mode(cli, read_only_request(&req))?;
            let maps = crate::access::MapStore::load(&dir).map_err(anyhow::Error::msg)?;
            let ctx = crate::admin::AdminCtx {
                pool: &pd.pool,
                attach: &crate::admin::NoAttachments,
                maps: &maps,
                who: crate::audit::Requester::this_process(),
            };
            let r = crate::admin::execute_with_progress(&ctx, &req, progress)?;
            if !read_only_request(&req) {
                // No background thread either: the space of removed volumes comes back here.
                pd.pool.reclaim_all()?;
                // ... and the PVs' copy of the directory is brought up to date here.
                if let Err(e) = crate::pool::dircopy::sync_dir(&pd.pool, &dir, false) {
                    tracing::warn!("cannot copy the pool directory to the PVs: {e}");
                }
            }
            pd.pool.close()?;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

fn lu(cli: &Cli, cmd: &LuCmd, out: &mut dyn Write) -> Result<()> {
    let req = match cmd {
        LuCmd::Create { name, size, thick } => Some(AdminRequest::LuCreate {
            name: name.clone(),
            size: *size,
            thick: *thick,
        }),
        LuCmd::Modify { name, thick, .. } => Some(AdminRequest::LuModify {
            name: name.clone(),
            thick: *thick,
        }),
        LuCmd::List => Some(AdminRequest::LuList),
        LuCmd::Resize {
            name,
            size,
            allow_shrink,
            force,
        } => Some(AdminRequest::LuResize {
            name: name.clone(),
            size: *size,
            allow_shrink: *allow_shrink,
            force: *force,
        }),
        LuCmd::Remove { name, force } => Some(AdminRequest::LuRemove {
            name: name.clone(),
            force: *force,
        }),
        LuCmd::Map { name, client } => Some(AdminRequest::LuMap {
            name: name.clone(),
            client: client.clone(),
        }),
        LuCmd::Unmap { name, client } => Some(AdminRequest::LuUnmap {
            name: name.clone(),
            client: client.clone(),
        }),
        _ => None,
    };
    if let Some(req) = req {
        match admin(cli, req)? {
            AdminReply::Lus { pool, lus } => {
                print_lus(&output_opts(cli), "lu list", &pool, &lus, out)?
            }
            AdminReply::Removed { name, also_removed } => {
                if cli.json {
                    let mut v = serde_json::json!({ "removed": name });
                    if !also_removed.is_empty() {
                        v["also_removed"] = serde_json::json!(also_removed);
                    }
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "removed LU {name}")?;
                    for c in &also_removed {
                        writeln!(out, "removed its activation config disk {c}")?;
                    }
                }
            }
            other => bail!("unexpected reply {other:?}"),
        }
        return Ok(());
    }
    // Bulk data copies run offline (online, copy through NBD, e.g. qemu-img convert).
    let dir = pool_dir(cli)?;
    let opts = Options {
        read_only: matches!(cmd, LuCmd::Export { .. }),
        io: crate::dev::IoConfig::new(cli.io_engine, cli.cache),
        ..Options::default()
    };
    let pd = match PoolDir::open(&dir, opts) {
        Err(crate::pool::PoolError::Locked(_)) if crate::admin::socket_path(&dir).exists() => bail!(
            "sspd is serving this pool: copy through NBD instead (e.g. qemu-img convert -n FILE nbd://HOST:PORT/LU), or stop sspd"
        ),
        r => r?,
    };
    let p = &pd.pool;
    match cmd {
        LuCmd::Import { name, file, offset } => {
            let id = p.lu_id(name)?;
            let mut f = std::fs::File::open(file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            // Nothing is written unless the whole file fits.
            let lu_size = p.lu_get(name)?.size;
            let len = std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))?;
            std::io::Seek::rewind(&mut f)?;
            if offset.checked_add(len).is_none_or(|end| end > lu_size) {
                bail!(
                    "{} holds {len} bytes, which at offset {offset} do not fit in LU {name} of {lu_size} bytes; nothing was written (grow it first: sspctl lu resize {name} --size {})",
                    file.display(),
                    offset.saturating_add(len)
                );
            }
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = *offset;
            let mut written = 0u64;
            let mut bar = progress::Progress::new("import", cli.json, 1);
            loop {
                bar.tick(out, pos - offset, len);
                let n = read_full(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                // Keep the LU thin: all-zero 4 KiB blocks become unmapped zero ranges.
                for (i, chunk) in buf[..n].chunks(4096).enumerate() {
                    let at = pos + (i * 4096) as u64;
                    if chunk.len() == 4096 && chunk.iter().all(|&b| b == 0) {
                        p.write_zeroes(id, at, 4096, false)?;
                    } else {
                        p.write(id, at, chunk, false)?;
                        written += chunk.len() as u64;
                    }
                }
                pos += n as u64;
            }
            drop(bar);
            p.flush()?;
            writeln!(
                out,
                "imported {} bytes into {name} ({} bytes of data)",
                pos - offset,
                written
            )?;
        }
        LuCmd::Export { name, file } => {
            let id = p.lu_id(name)?;
            let size = p.lu_get(name)?.size;
            let f = std::fs::File::create(file)
                .with_context(|| format!("cannot create {}", file.display()))?;
            // Sparse output: only mapped extents are read and written; holes stay holes.
            f.set_len(size)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut data = 0u64;
            let extents = p.extents(id, 0, size)?;
            let total: u64 = extents.iter().filter(|e| e.2).map(|e| e.1).sum();
            let mut bar = progress::Progress::new("export", cli.json, 1);
            for (start, len, mapped) in extents {
                if !mapped {
                    continue;
                }
                let mut pos = start;
                while pos < start + len {
                    bar.tick(out, data + (pos - start), total);
                    let n = (start + len - pos).min(buf.len() as u64) as usize;
                    p.read(id, pos, &mut buf[..n])?;
                    std::os::unix::fs::FileExt::write_all_at(&f, &buf[..n], pos)?;
                    pos += n as u64;
                }
                data += len;
            }
            drop(bar);
            f.sync_all()?;
            writeln!(
                out,
                "exported {size} bytes of {name} to {} ({data} bytes of data)",
                file.display()
            )?;
        }
        LuCmd::Create { .. }
        | LuCmd::List
        | LuCmd::Resize { .. }
        | LuCmd::Remove { .. }
        | LuCmd::Map { .. }
        | LuCmd::Unmap { .. }
        | LuCmd::Modify { .. } => {
            unreachable!("admin verbs are handled above")
        }
    }
    pd.pool.close()?;
    Ok(())
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// Volumes as a table (SSP's `lu -list` heading, then one row each) or JSON (an array).
pub(crate) fn print_lus(
    opts: &output::OutputOpts,
    what: &'static str,
    pool_name: &str,
    lus: &[LuInfo],
    out: &mut dyn Write,
) -> Result<()> {
    let l = output::volumes(what, output::LU_FIELDS, lus);
    if !opts.json && !opts.scripted() {
        writeln!(out, "POOL_NAME: {pool_name}")?;
        writeln!(out, "TIER_NAME: SYSTEM")?;
    }
    l.print(opts, out)?;
    Ok(())
}

/// `pool status`: the pool's status and its active capacity alerts.
#[derive(serde::Serialize)]
struct StatusReport<'a> {
    #[serde(flatten)]
    st: &'a PoolStatus,
    alerts_active: &'a [crate::alerts::AlertInfo],
}

fn print_status(
    opts: &output::OutputOpts,
    st: &PoolStatus,
    active: &[crate::alerts::AlertInfo],
    out: &mut dyn Write,
) -> Result<()> {
    let rep = StatusReport {
        st,
        alerts_active: active,
    };
    if output::report("pool status", &rep, opts, out)?.is_some() {
        return Ok(());
    }
    let mb = |b: u64| b >> 20;
    writeln!(out, "Pool Name:         {}", st.name)?;
    writeln!(out, "Pool Id:           {}", st.pool_id)?;
    writeln!(out, "Mirror State:      {}", st.mirror_state)?;
    if !st.mirror_reason.is_empty() {
        writeln!(out, "Degraded Because:  {}", st.mirror_reason)?;
    }
    if st.resync_bytes_left > 0 {
        writeln!(
            out,
            "Resync Left(MB):   {}",
            st.resync_bytes_left.div_ceil(1 << 20)
        )?;
    }
    if st.removing_volumes > 0 {
        writeln!(
            out,
            "Reclaiming(MB):    {} ({} removed volume(s))",
            st.removing_bytes.div_ceil(1 << 20),
            st.removing_volumes
        )?;
    }
    if st.failure_groups.len() > 1 {
        let sizes: Vec<String> = st
            .failure_groups
            .iter()
            .map(|g| format!("{} {} MiB", g.name, g.size_bytes >> 20))
            .collect();
        writeln!(
            out,
            "Failure Groups:    {} (usable: the smaller group)",
            sizes.join(", ")
        )?;
    }
    writeln!(
        out,
        "Scrub Errors:      {} found, {} repaired",
        st.scrub_errors_found, st.scrub_errors_repaired
    )?;
    writeln!(out, "Pool Size(MB):     {}", mb(st.total_bytes))?;
    writeln!(out, "Free Space(MB):    {}", mb(st.free_bytes))?;
    writeln!(out, "Used(MB):          {}", mb(st.used_bytes))?;
    writeln!(out, "Provisioned(MB):   {}", mb(st.provisioned_bytes))?;
    writeln!(out, "Overcommit(MB):    {}", mb(st.overcommit_bytes))?;
    writeln!(out, "Reserved(MB):      {}", mb(st.reserved_bytes))?;
    for a in active {
        writeln!(
            out,
            "Alert:             {} {:.2} % >= {} %",
            a.kind, a.current, a.value
        )?;
    }
    writeln!(out, "LUs:               {}", st.lus)?;
    writeln!(out, "Snapshots:         {}", st.snapshots)?;
    writeln!(out, "Client Images:     {}", st.images)?;
    writeln!(out, "Block Size:        {}", st.block_size)?;
    writeln!(out, "I/O Engine:        {}", st.io_engine)?;
    writeln!(out, "Cache Mode:        {}", st.cache)?;
    let w = &st.writer;
    writeln!(
        out,
        "Writer:            host {}, incarnation {}, epoch {}, next journal seq {}",
        w.host_id, w.incarnation, w.epoch, w.journal_seq
    )?;
    if let Some(s) = &st.seal {
        writeln!(
            out,
            "Opened At Seal:    {}{}",
            s.seal,
            if s.requested {
                " (replay stopped at the requested seal)"
            } else {
                ""
            }
        )?;
    }
    if let Some(s) = &st.log_end {
        writeln!(out, "Journal Ends At:   {}", s.seal)?;
    }
    writeln!(out)?;
    output::listing_of("pool status", output::STATUS_PV_FIELDS, &st.pvs)
        .print_table(&output::OutputOpts::default(), out)?;
    Ok(())
}
