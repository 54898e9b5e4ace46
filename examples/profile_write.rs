//! Profiling driver: random 4 KiB writes into a file-backed pool (not part of the product).
use ssp::dev::{BlockDev, FileDev};
use ssp::pool::{CreateOptions, Options, Pool};
use std::sync::Arc;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let dev: Arc<dyn BlockDev> = if std::env::var("MEMDEV").is_ok() {
        Arc::new(ssp::dev::MemDev::new("mem", 4 << 30))
    } else {
        let path = dir.path().join("pv");
        let d = FileDev::create(&path, 4 << 30).unwrap();
        if std::env::var("PREALLOC").is_ok() {
            let st = std::process::Command::new("fallocate")
                .args(["-l", "4G"])
                .arg(&path)
                .status()
                .unwrap();
            assert!(st.success());
        }
        if std::env::var("PREWRITE").is_ok() {
            let st = std::process::Command::new("dd")
                .args([
                    "if=/dev/zero",
                    "bs=1M",
                    "count=4096",
                    "conv=notrunc",
                    "status=none",
                ])
                .arg(format!("of={}", path.display()))
                .status()
                .unwrap();
            assert!(st.success());
        }
        Arc::new(d)
    };
    let pool = Pool::create(vec![dev], &CreateOptions::default(), Options::default()).unwrap();
    let id = pool.lu_create("a", 1 << 30).unwrap().id;
    let mode = std::env::args().nth(1).unwrap_or_else(|| "rand".into());
    let n: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let block = vec![0x5au8; 4096];
    let big = vec![0x5bu8; 1 << 20];
    let t = std::time::Instant::now();
    let mut x = 1u64;
    for i in 0..n {
        if mode == "seq" {
            pool.write(id, (i % 1024) << 20, &big, false).unwrap();
        } else {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            pool.write(id, ((x >> 33) % 262144) * 4096, &block, false)
                .unwrap();
        }
    }
    let el = t.elapsed();
    eprintln!(
        "{mode}: {n} writes in {el:?} = {:.2} us/write; {:?}",
        el.as_secs_f64() * 1e6 / n as f64,
        pool.status().counters
    );
}
