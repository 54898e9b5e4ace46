//! The I/O thread pool: pool calls never run on tokio workers, so a request stuck in a device
//! does not stop the server from serving other clients.

use ssp::dev::{BlockDev, FaultDev};
use ssp::pool::{CreateOptions, Options, Pool};
use ssp::server::iopool::IoPool;
use ssp::server::{serve, AttachMap, InflightBudget, Limits, Listener, Shared};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MB: u64 = 1 << 20;

/// A libnbd client (python3-libnbd) running `body` after connecting to `uri`; it prints
/// "connected" first.
fn client(uri: &str, body: &str) -> Child {
    let script = format!(
        "import nbd,sys\nh=nbd.NBD(); h.connect_uri(sys.argv[1]); print('connected', flush=True)\n{body}\n"
    );
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 with python3-libnbd is needed")
}

/// Wait (bounded) for a client to exit; its output, or `None` if it is still running.
fn wait_output(mut c: Child, within: Duration) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < within {
        if c.try_wait().unwrap().is_some() {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

/// One tokio worker, as on a busy host: client A's read stalls inside the device; client B
/// connects and reads meanwhile, and is served. Once the device answers, A gets its data.
#[test]
fn a_read_stalled_in_a_device_does_not_stop_another_client() {
    let (dev, ctl) = FaultDev::new("pv", 64 * MB);
    let devs: Vec<Arc<dyn BlockDev>> = vec![Arc::new(dev)];
    let copts = CreateOptions {
        name: "io".into(),
        journal_blocks: 256,
    };
    let pool = Arc::new(
        Pool::create(
            devs,
            &copts,
            Options {
                host_id: 1,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    pool.lu_create("lu", 8 * MB).unwrap();
    let vol = pool.lu_id("lu").unwrap();
    pool.write(vol, 0, &[0x5a; 4096], false).unwrap();
    pool.flush().unwrap();
    // Map nodes and table pages are cached now: only the data block read touches the device.
    let mut b = [0u8; 4096];
    pool.read(vol, 0, &mut b).unwrap();
    pool.read(vol, 100 * 4096, &mut b).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        pool: pool.clone(),
        attach: Arc::new(AttachMap::default()),
        maps: Arc::new(ssp::access::MapStore::load(dir.path()).unwrap()),
        tls: Arc::new(ssp::server::tls::TlsPolicy::default()),
        stopping,
        limits: Limits::default(),
        inflight: InflightBudget::new(1 << 30),
        io: Arc::new(IoPool::new(4).unwrap()),
    });
    rt.spawn(serve(shared, vec![Listener::Tcp(listener)]));
    let uri = format!("nbd://127.0.0.1:{port}/lu");

    ctl.hold_reads(true);
    let mut a = client(&uri, "print(h.pread(4096, 0)[:1].hex(), flush=True)");
    let mut line = String::new();
    BufReader::new(a.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "connected");
    // A's read reaches the device and stalls there.
    std::thread::sleep(Duration::from_millis(300));
    let b = client(
        &uri,
        "print('zeroes' if h.pread(4096, 100 * 4096) == bytes(4096) else 'data')",
    );
    let out = wait_output(b, Duration::from_secs(10));
    let served = out.is_some();
    ctl.hold_reads(false);
    assert!(
        served,
        "client B was not served while client A's read was stalled in the device"
    );
    assert!(out.unwrap().contains("zeroes"));
    let out = wait_output(a, Duration::from_secs(10)).expect("client A never got its data");
    assert!(out.contains("5a"), "{out}");
}
