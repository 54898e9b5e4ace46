//! sspd: serve a pool's LUs over NBD. Thin main; the server lives in `ssp::server`.
use anyhow::Context;
use clap::Parser;
use ssp::pool::dir::PoolDir;
use ssp::pool::Options;
use ssp::server::{claim_socket_path, serve, spawn_admin, AttachMap, Listener, Shared, SocketFile};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "sspd", version, about = "Serve an ssp pool's LUs over NBD")]
struct Args {
    /// Pool directory
    #[arg(long, env = "SSP_POOL")]
    pool: PathBuf,
    /// TCP address to listen on (repeatable; default 127.0.0.1:10809 unless --unix is given)
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

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(args) {
        eprintln!("sspd: error: {e:#}");
        std::process::exit(1);
    }
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
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
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        ssp::metrics::describe();
    }
    let mut listeners = Vec::new();
    let mut addrs = args.listen.clone();
    if addrs.is_empty() && args.unix.is_none() {
        addrs.push("127.0.0.1:10809".into());
    }
    for a in &addrs {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .with_context(|| format!("cannot listen on {a}"))?;
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
        listeners.push(Listener::Unix(l));
    }
    let pd = PoolDir::open(
        &args.pool,
        Options {
            replay_to: args.replay_to_seal,
            ..Options::default()
        },
    )?;
    let (pool, _lock) = pd.into_shared();
    pool.set_maintenance_rates(args.scrub_rate, args.resync_rate);
    pool.set_reclaim_rate(args.reclaim_rate);
    let _cleaner = pool.spawn_cleaner(std::time::Duration::from_millis(200));
    // Runs `sspctl scrub` in the background; resumes a scrub this pool's last run left.
    let _scrubber = pool.spawn_scrubber(&args.pool);
    if let Some(addr) = args.metrics {
        let p = pool.clone();
        tokio::spawn(async move {
            loop {
                let st = p.status();
                ssp::metrics::pool_space(st.total_bytes, st.free_bytes, st.used_bytes);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
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
    for l in &listeners {
        match l {
            Listener::Tcp(t) => announce(&format!("sspd: listening on {}", t.local_addr()?)),
            Listener::Unix(_) => {
                let p = args.unix.as_deref().unwrap_or(std::path::Path::new(""));
                announce(&format!("sspd: listening on unix:{}", p.display()));
            }
        }
    }
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
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reload(&shared),
        }
    }
    tracing::info!("shutting down");
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
