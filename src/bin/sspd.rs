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
    let pd = PoolDir::open(&args.pool, Options::default())?;
    let (pool, _lock) = pd.into_shared();
    let _cleaner = pool.spawn_cleaner(std::time::Duration::from_millis(200));
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
    spawn_admin(pool.clone(), attach.clone(), maps.clone(), &admin)
        .with_context(|| format!("cannot listen on the admin socket {}", admin.display()))?;
    // Removed again when the server exits, whichever way `run` returns.
    let _admin_sock = SocketFile::bound(&admin)?;
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
    let shared = std::sync::Arc::new(Shared {
        pool: pool.clone(),
        attach,
        maps,
        tls: std::sync::Arc::new(tls),
        stopping: rx,
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
