//! A real kill -9: `sspctl debug write-loop` writes and flushes in a loop and is killed at a
//! random moment; the pool must reopen, pass check, and hold every acknowledged write.

use ssp::cli::debug::{loop_lba, pattern_block};
use ssp::pool::dir::PoolDir;
use ssp::pool::Options;
use std::process::Command;
use std::time::Duration;

const BLOCKS: u64 = 3000;
const FLUSH_EVERY: u64 = 16;

fn sspctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sspctl"))
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pv = tmp.path().join("pv0.img");
    let st = sspctl()
        .args([
            "--pool",
            dir.to_str().unwrap(),
            "pool",
            "create",
            "--journal-mb",
            "2",
            "--pv",
        ])
        .arg(format!("{}:96M", pv.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let ack = tmp.path().join("ack");
    let mut last_ack = 0u64;
    for round in 0..3u64 {
        let seed = 1000 + round;
        let lu = format!("lu{round}");
        let mut child = sspctl()
            .args([
                "--pool",
                dir.to_str().unwrap(),
                "debug",
                "write-loop",
                "--lu",
                &lu,
            ])
            .args(["--blocks", &BLOCKS.to_string(), "--seed", &seed.to_string()])
            .args([
                "--flush-every",
                &FLUSH_EVERY.to_string(),
                "--ack-file",
                ack.to_str().unwrap(),
            ])
            .spawn()
            .unwrap();
        // Kill at a pseudo-random moment once some flushes were acknowledged.
        let wait_ms = 300 + (std::process::id() as u64 * 7919 + round * 104_729) % 900;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let acked: u64 = std::fs::read_to_string(&ack)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if acked > last_ack.max(64) || std::time::Instant::now() > deadline {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let i_ack: u64 = std::fs::read_to_string(&ack)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(i_ack > 0, "the child never acknowledged a flush");
        last_ack = i_ack;

        // Reopen: every block must hold its last acknowledged version or a later one.
        let pd = PoolDir::open(&dir, Options::default()).expect("reopen after kill -9");
        let rep = pd.pool.check().unwrap();
        assert!(rep.ok(), "{:#?}", rep.errors);
        let id = pd.pool.lu_id(&lu).unwrap();
        let mut last: Vec<u64> = vec![0; BLOCKS as usize];
        for i in 1..=i_ack {
            last[loop_lba(seed, i, BLOCKS) as usize] = i;
        }
        let mut later: Vec<Vec<u64>> = vec![Vec::new(); BLOCKS as usize];
        for i in i_ack + 1..=i_ack + FLUSH_EVERY * 4096 {
            later[loop_lba(seed, i, BLOCKS) as usize].push(i);
        }
        let mut buf = vec![0u8; 4096];
        for lba in 0..BLOCKS {
            pd.pool.read(id, lba * 4096, &mut buf).unwrap();
            let l = last[lba as usize];
            let ok = (l == 0 && buf.iter().all(|&b| b == 0))
                || (l != 0 && buf == pattern_block(lba, l))
                || later[lba as usize]
                    .iter()
                    .any(|&v| buf == pattern_block(lba, v));
            assert!(
                ok,
                "round {round}: block {lba} lost its acknowledged version {l}"
            );
        }
        pd.pool.close().unwrap();
        std::fs::remove_file(&ack).unwrap();
    }
}
