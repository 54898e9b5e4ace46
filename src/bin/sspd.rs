//! sspd: serve a pool's LUs over NBD. Thin main; the server lives in `ssp::server`.
use anyhow::Context;
use clap::{CommandFactory, Parser};
use ssp::logging::LogFormat;
use ssp::pool::dir::PoolDir;
use ssp::pool::Options;
use ssp::server::{claim_socket_path, serve, spawn_admin, AttachMap, Listener, Shared, SocketFile};
use ssp::systemd::Inherited;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "sspd", version, about = "Serve an ssp pool's LUs over NBD")]
struct Args {
    /// Pool directory
    #[arg(long, env = "SSP_POOL")]
    pool: PathBuf,
    /// TCP address to listen on (repeatable; default 127.0.0.1:10809 unless --unix is given or
    /// listening sockets are inherited through socket activation, LISTEN_FDS/LISTEN_PID)
    #[arg(long)]
    listen: Vec<String>,
    /// Unix socket to listen on
    #[arg(long)]
    unix: Option<PathBuf>,
    /// PEM certificate chain for STARTTLS
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for STARTTLS
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: ask TLS clients for a certificate (optional) and verify it against these
    /// CAs; a verified certificate's CN and DNS names are the identity `lu map --client tls:NAME`
    /// matches
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// TLS policy: off, on (offered when a certificate is given) or require (refuse plain sessions)
    #[arg(long, value_parser = ["off", "on", "require"], default_value = "on")]
    tls: String,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9100)
    #[arg(long)]
    metrics: Option<std::net::SocketAddr>,
    /// LUs whose requests get their own `lu` label in the metrics (the first ones clients
    /// attach to); requests to others are counted under lu="_other"
    #[arg(long, default_value_t = ssp::monitoring::DEFAULT_LU_LABEL_LIMIT)]
    metrics_lu_limit: usize,
    /// NBD clients served at once; more are refused during the handshake (lowered to fit the
    /// open file limit)
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Close clients that have not finished the handshake within this time (e.g. 10s, 500ms)
    #[arg(long, default_value = "10s", value_parser = duration_arg)]
    handshake_timeout: std::time::Duration,
    /// Close attached clients idle this long (no request and none outstanding); off by default
    #[arg(long, value_parser = duration_arg)]
    idle_timeout: Option<std::time::Duration>,
    /// Write sspd's man page and shell completions into DIR and exit (scripts/gen-docs.sh)
    #[arg(long, hide = true, exclusive = true, value_name = "DIR")]
    generate_docs: Option<PathBuf>,
    /// Bytes of replies and request data one client may hold in the server's memory; beyond
    /// it the client's requests are not read until its replies are sent
    #[arg(long, default_value = "64M", value_parser = size_arg)]
    max_inflight_bytes: u64,
    /// The same bound over all clients together
    #[arg(long, default_value = "1G", value_parser = size_arg)]
    max_total_inflight_bytes: u64,
    /// An admin-socket client (sspctl) must send each request line, and take each reply, within
    /// this time; a stuck or idle one is closed and frees its slot
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    admin_timeout: std::time::Duration,
    /// Threads that run the pool's reads, writes, flushes, trims and zeroing for all clients
    /// (none of it runs on the network threads); default twice the cores, at least 4
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    io_threads: Option<u32>,
    /// Default rate of a scrub in bytes per second (`sspctl scrub --rate` overrides it per
    /// run); 0 means unlimited
    #[arg(long, default_value = "64M", value_parser = size_arg)]
    scrub_rate: u64,
    /// Rate of background mirror resync in bytes per second; 0 means unlimited
    #[arg(long, default_value = "64M", value_parser = size_arg)]
    resync_rate: u64,
    /// Replay the last writer's journal only up to this seal, HOST:INCARNATION:EPOCH:SEQ
    /// (FORMAT.md §7.3; `sspctl debug seal` prints where the journal ends); default: to its end
    #[arg(long, value_name = "HOST:INCARNATION:EPOCH:SEQ")]
    replay_to_seal: Option<ssp::format::Seal>,
    /// Rate at which the space of removed LUs, snapshots and images is given back, in bytes of
    /// their data per second (the removal itself is immediate); 0 means unlimited
    #[arg(long, default_value = "4G", value_parser = size_arg)]
    reclaim_rate: u64,
    /// Log line format on stderr (the filter comes from SSP_LOG, else RUST_LOG; default info)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Write the server's process id to this file once it serves; removed when it exits
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,
    /// Shut down cleanly when the parent process exits (for tests and programs embedding sspd)
    #[arg(long)]
    exit_with_parent: bool,
    /// PV I/O engine: uring (io_uring), sync (pread/pwrite) or auto (uring for O_DIRECT PVs
    /// where the host allows it, else sync; the log says which and why). `pool status` shows it
    #[arg(long, value_enum, env = "SSP_IO_ENGINE", default_value_t = ssp::dev::EngineChoice::Auto)]
    io_engine: ssp::dev::EngineChoice,
    /// PV cache mode: writeback (the host's page cache), none (O_DIRECT: no page cache; the
    /// PVs' file system must support it) or auto (none for block devices, writeback for files)
    #[arg(long, value_enum, env = "SSP_CACHE", default_value_t = ssp::dev::CacheChoice::Auto)]
    cache: ssp::dev::CacheChoice,
}

fn size_arg(s: &str) -> Result<u64, String> {
    ssp::cli::size::bytes_arg(s)
}

/// `N` (seconds), `Ns`, `Nms` or `Nm`.
fn duration_arg(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 10s, 500ms or 2m"))?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("bad duration {s:?}: unit must be ms, s or m")),
    };
    if d.is_zero() {
        return Err(format!("bad duration {s:?}: must be more than zero"));
    }
    Ok(d)
}

/// Tell whoever started us where we listen; a closed stdout must not stop the server.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `sspd --generate-docs DIR` (hidden, alone): write the man page and completions, exit.
fn generate_docs_if_asked() {
    let Ok(m) = Args::command().try_get_matches() else {
        return;
    };
    let Some(dir) = m.get_one::<PathBuf>("generate_docs") else {
        return;
    };
    match ssp::cli::docs::generate(Args::command(), dir) {
        Ok(g) => {
            announce(&format!(
                "wrote {} man pages and {} completion files to {}",
                g.man_pages.len(),
                g.completions.len(),
                dir.display()
            ));
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("sspd: error: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    // SAFETY: getppid cannot fail. Read first: the parent may exit while we start.
    let parent = unsafe { libc::getppid() };
    generate_docs_if_asked();
    let args = Args::parse();
    ssp::logging::init(args.log_format, "info");
    // Before any thread exists: this changes the environment.
    let started = (|| {
        if args.exit_with_parent {
            ssp::daemon::exit_with_parent(parent, libc::SIGTERM).context("--exit-with-parent")?;
        }
        ssp::systemd::take_listen_fds().context("socket activation")
    })();
    if let Err(e) = started.and_then(|inherited| run(args, inherited)) {
        eprintln!("sspd: error: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run(args: Args, inherited: Vec<Inherited>) -> anyhow::Result<()> {
    // Handled from the start: a signal during startup must not kill the server half-way.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let tls = match (&args.tls_cert, &args.tls_key, args.tls.as_str()) {
        (_, _, "off") => ssp::server::tls::TlsPolicy::default(),
        (Some(c), Some(k), mode) => {
            let files = ssp::server::tls::TlsFiles {
                cert: c.clone(),
                key: k.clone(),
                ca: args.tls_ca.clone(),
            };
            ssp::server::tls::TlsPolicy::from_files(files, mode == "require")
                .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        }
        (_, _, "require") => anyhow::bail!("--tls require needs --tls-cert and --tls-key"),
        _ => ssp::server::tls::TlsPolicy::default(),
    };
    // Clients, PV files and sockets all need descriptors: use all we may.
    let nofile = ssp::server::raise_nofile_limit().context("open file limit")?;
    // Every listener is bound before the pool is opened: a start that fails on a busy port has
    // written nothing to the PVs (opening commits a checkpoint).
    if let Some(addr) = args.metrics {
        ssp::monitoring::install(addr)?;
        ssp::monitoring::set_lu_label_limit(args.metrics_lu_limit);
        ssp::monitoring::build_info(env!("CARGO_PKG_VERSION"), env!("SSP_GIT_COMMIT"));
    }
    let mut listeners = Vec::new();
    // What each listener is, as announced: an address, or unix:PATH.
    let mut names = Vec::new();
    let mut addrs = args.listen.clone();
    if addrs.is_empty() && args.unix.is_none() && inherited.is_empty() {
        addrs.push("127.0.0.1:10809".into());
    }
    // Sockets handed over by systemd (or systemd-socket-activate): they outlive this process,
    // so a restart keeps clients' connection attempts waiting instead of refused.
    let handover = !inherited.is_empty();
    for i in inherited {
        match i {
            Inherited::Tcp(l) => {
                l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(l)?;
                names.push(l.local_addr()?.to_string());
                listeners.push(Listener::Tcp(l));
            }
            Inherited::Unix(l, path) => {
                l.set_nonblocking(true)?;
                let p = path.map_or_else(|| "(unnamed)".into(), |p| p.display().to_string());
                names.push(format!("unix:{p}"));
                listeners.push(Listener::Unix(tokio::net::UnixListener::from_std(l)?));
            }
        }
    }
    for a in &addrs {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen on {a}"))?;
        names.push(l.local_addr()?.to_string());
        listeners.push(Listener::Tcp(l));
    }
    // Removed again when the server exits, whichever way `run` returns (a failed open too).
    let mut _unix_sock = None;
    if let Some(p) = &args.unix {
        // Never takes over a socket a live server answers, nor unlinks anything but a socket.
        claim_socket_path(p)?;
        let l = tokio::net::UnixListener::bind(p)
            .with_context(|| format!("cannot listen on {}", p.display()))?;
        _unix_sock = Some(SocketFile::bound(p)?);
        names.push(format!("unix:{}", p.display()));
        listeners.push(Listener::Unix(l));
    }
    let pd = PoolDir::open(
        &args.pool,
        Options {
            replay_to: args.replay_to_seal,
            io: ssp::dev::IoConfig::new(args.io_engine, args.cache),
            ..Options::default()
        },
    )?;
    let (pool, _lock) = pd.into_shared();
    let st = pool.status();
    tracing::info!(io_engine = %st.io_engine, cache = %st.cache, "PV I/O");
    pool.set_maintenance_rates(args.scrub_rate, args.resync_rate);
    pool.set_reclaim_rate(args.reclaim_rate);
    let _cleaner = pool.spawn_cleaner(std::time::Duration::from_millis(200));
    // Runs `sspctl scrub` in the background; resumes a scrub this pool's last run left.
    let _scrubber = pool.spawn_scrubber(&args.pool);
    // Capacity alerts (`sspctl alert`): evaluated every second and after admin verbs.
    // Keeps the copy of the pool directory on the PVs up to date (`sspctl pool import`).
    let _dircopy = ssp::pool::dircopy::spawn_sync(pool.clone(), args.pool.clone())
        .context("cannot start the directory copy")?;
    let _alerts = ssp::alerts::spawn_watcher(pool.clone(), args.pool.clone())
        .context("cannot start the alert watcher")?;
    if let Some(addr) = args.metrics {
        ssp::monitoring::spawn_refresh(pool.clone(), args.pool.clone())?;
        announce(&format!("sspd: metrics on http://{addr}/metrics"));
    }
    // The admin socket is ready before the listeners are announced.
    let attach = std::sync::Arc::new(AttachMap::default());
    let admin = ssp::admin::socket_path(&args.pool);
    let maps = std::sync::Arc::new(
        ssp::access::MapStore::load(&args.pool).map_err(|e| anyhow::anyhow!("LU maps: {e}"))?,
    );
    spawn_admin(
        pool.clone(),
        attach.clone(),
        maps.clone(),
        &admin,
        args.admin_timeout,
    )
    .with_context(|| format!("cannot listen on the admin socket {}", admin.display()))?;
    // Removed again when the server exits, whichever way `run` returns.
    let _admin_sock = SocketFile::bound(&admin)?;
    // Started before the listeners are announced: the server has all its threads by then.
    let io = std::sync::Arc::new(
        ssp::server::iopool::IoPool::new(
            args.io_threads
                .map_or_else(ssp::server::iopool::default_threads, |n| n as usize),
        )
        .context("cannot start the I/O threads")?,
    );
    for n in &names {
        announce(&format!("sspd: listening on {n}"));
    }
    // Removed again when the server exits.
    let _pidfile = match &args.pidfile {
        Some(p) => Some(
            ssp::daemon::PidFile::write(p)
                .with_context(|| format!("cannot write the pid file {}", p.display()))?,
        ),
        None => None,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let limits = ssp::server::Limits {
        max_connections: ssp::server::connections_for_fd_limit(
            args.max_connections as usize,
            nofile,
        ),
        handshake_timeout: args.handshake_timeout,
        idle_timeout: args.idle_timeout,
        max_inflight_bytes: args.max_inflight_bytes,
        max_total_inflight_bytes: args.max_total_inflight_bytes,
        // Only inherited sockets outlive this process: clients of our own sockets are told
        // with ESHUTDOWN that the server is going away.
        handover_on_stop: handover,
    };
    let shared = std::sync::Arc::new(Shared {
        pool: pool.clone(),
        attach,
        maps,
        tls: std::sync::Arc::new(tls),
        stopping: rx,
        inflight: ssp::server::InflightBudget::new(limits.max_total_inflight_bytes),
        limits,
        io,
    });
    let server = tokio::spawn(serve(shared.clone(), listeners));
    ssp::systemd::notify_or_log(&format!(
        "READY=1\nSTATUS=serving pool {} on {}",
        pool.name(),
        names.join(", ")
    ));
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reload(&shared),
        }
    }
    tracing::info!("shutting down");
    ssp::systemd::notify_or_log("STOPPING=1\nSTATUS=shutting down");
    let _ = tx.send(true);
    let _ = server.await;
    let p = pool.clone();
    tokio::task::spawn_blocking(move || p.flush().and_then(|_| p.checkpoint())).await??;
    tracing::info!("pool closed cleanly");
    Ok(())
}

/// SIGHUP: load the TLS certificate, key and CA bundle and the LU maps again from their files.
/// What fails to load is logged and the version in use kept.
fn reload(shared: &Shared) {
    tracing::info!("SIGHUP: reloading TLS certificates and LU maps");
    match shared.tls.reload() {
        Ok(true) => tracing::info!("TLS certificates reloaded"),
        Ok(false) => {}
        Err(e) => tracing::error!("TLS certificates not reloaded, keeping the old ones: {e}"),
    }
    match shared.maps.reload() {
        Ok(()) => tracing::info!("LU maps reloaded"),
        Err(e) => tracing::error!("LU maps not reloaded, keeping the old ones: {e}"),
    }
}
