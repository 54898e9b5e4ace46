//! Entry points of the coverage-guided fuzz targets in `tools/fuzz/` (`scripts/fuzz.sh`).
//!
//! Each function takes arbitrary bytes, drives one of sspd's decoders the way the server does,
//! and panics only when an invariant breaks (a panic is what the fuzzer reports). They are
//! ordinary library code, compiled and tested with the rest, so a fuzz target is a one-line
//! wrapper and every finding can be replayed as a unit test (`tests/fuzz_regressions.rs`).
//!
//! - [`nbd_stream`]: a client's bytes through the handshake state machine, the request decoder,
//!   `validate` and the reply encoders (`src/nbd`, as `server::session` drives them).
//! - [`pool_image`]: a PV made of arbitrary blocks opened as a pool (superblocks, checkpoint,
//!   journal replay), read-only first, then read-write with I/O, check, close and reopen.
//! - [`admin_lines`]: admin request lines decoded as `sspd` does, re-encoded, and run against
//!   a small in-memory pool.

use crate::access::MapStore;
use crate::admin::{self, AdminCtx, AdminRequest, NoAttachments};
use crate::dev::{BlockDev, MemDev};
use crate::format::BLOCK;
use crate::nbd::proto::*;
use crate::nbd::wire::Reader;
use crate::nbd::{
    decode_request_with_limit, encode_error_reply, encode_ok, encode_request, validate, CodecError,
    Command, Decoded, Event, ExportCatalog, ExportEntry, ExportInfo, Handshake, Lookup, ReplyMode,
    ReplyTarget, ServerConfig,
};
use crate::pool::{CreateOptions, Options, Pool};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

// ---- NBD ------------------------------------------------------------------------------------

struct Catalog(Vec<ExportInfo>);

fn catalog() -> Catalog {
    let lu = |name: &str, size, read_only, min_block| ExportInfo {
        name: name.into(),
        size,
        read_only,
        description: format!("{name} export"),
        can_multi_conn: true,
        min_block,
    };
    Catalog(vec![
        lu("lu0", 1 << 20, false, 1),
        lu("snap", 0x10_0000, true, 4096),
        lu("odd", 12345, false, 512),
        lu("big", 1 << 40, false, 1),
    ])
}

impl ExportCatalog for Catalog {
    fn list(&self) -> Vec<ExportEntry> {
        self.0
            .iter()
            .map(|e| ExportEntry {
                name: e.name.clone(),
                description: e.description.clone(),
            })
            .collect()
    }
    fn lookup(&self, name: &str) -> Lookup {
        if name == "secret" {
            return Lookup::Refused;
        }
        let name = if name.is_empty() { "lu0" } else { name };
        match self.0.iter().find(|e| e.name == name) {
            Some(e) => Lookup::Found(e.clone()),
            None => Lookup::NotFound,
        }
    }
    fn meta_contexts(&self, _export: &str) -> Vec<String> {
        vec!["ssp:sharing".into()]
    }
}

/// Split `data` into its parameters and the client's byte stream: byte 0 chooses the TLS
/// policy and `require_block_size`, byte 1 the option length limit, byte 2 the payload limit,
/// byte 3 how many 16-bit cut points follow (at most 8); the stream is cut there into the
/// pieces the server receives.
fn nbd_params(data: &[u8]) -> Option<(ServerConfig, Vec<usize>, &[u8])> {
    let (&[flags, opt_len, payload, ncuts], rest) = data.split_first_chunk::<4>()?;
    let ncuts = usize::from(ncuts % 9);
    let cut_bytes = rest.get(..ncuts * 2)?;
    let stream = rest.get(ncuts * 2..)?;
    let cuts = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    let tls_required = flags & 2 != 0;
    let cfg = ServerConfig {
        tls_available: flags & 1 != 0 || tls_required,
        tls_required,
        max_option_len: match opt_len % 4 {
            0 | 1 => 64 * 1024,
            2 => 20,
            _ => u32::from(opt_len),
        },
        max_payload: match payload % 4 {
            0 | 1 => DEFAULT_MAX_PAYLOAD,
            2 => 4096,
            _ => u32::from(payload) * 300,
        },
        require_block_size: flags & 4 != 0,
        // A low cap as well as the default, so the cut-off path is exercised.
        max_options: if flags & 8 != 0 { 3 } else { 64 },
        refusal: None,
    };
    Some((cfg, cuts, stream))
}

/// Option replies in `out` are well formed (an `NBD_OPT_EXPORT_NAME` success ends in the
/// export size and flags instead).
fn check_option_replies(out: &[u8], export_name_reply: bool) {
    let mut r = Reader::new(out);
    let mut at = 0;
    while at < out.len() {
        if r.u64() != Some(REPLY_MAGIC) {
            let tail = &out[at..];
            assert!(
                export_name_reply && (tail.len() == 10 || tail.len() == 10 + EXPORT_NAME_ZEROES),
                "not an option reply: {tail:?}"
            );
            return;
        }
        let (Some(_option), Some(_typ), Some(len)) = (r.u32(), r.u32(), r.u32()) else {
            panic!("truncated option reply header");
        };
        assert!(
            r.bytes(len as usize).is_some(),
            "truncated option reply data"
        );
        at += 20 + len as usize;
    }
}

/// Run a client's bytes through the handshake and transmission phase; panics on a broken
/// invariant (see the module doc).
pub fn nbd_stream(data: &[u8]) {
    let Some((cfg, cuts, stream)) = nbd_params(data) else {
        return;
    };
    let cat = catalog();
    let mut hs = Handshake::new(cfg.clone());
    assert_eq!(hs.initial_output().len(), 18);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| c % (stream.len() + 1))
        .chain([0, stream.len()])
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut parts = at.windows(2).map(|w| &stream[w[0]..w[1]]);
    let neg = loop {
        let Some(p) = parts.next() else {
            return;
        };
        let step = match hs.input(p, &cat) {
            Ok(step) => step,
            Err(_) => {
                assert!(hs.is_over(), "a failed handshake must stay failed");
                assert!(hs.input(b"x", &cat).is_err());
                return;
            }
        };
        match step.event {
            None | Some(Event::StartTls) => check_option_replies(&step.output, false),
            Some(Event::Abort) => {
                check_option_replies(&step.output, false);
                assert!(hs.is_over());
                return;
            }
            Some(Event::Done(neg)) => {
                check_option_replies(&step.output, true);
                break neg;
            }
        }
    };
    assert!(cat.0.contains(&neg.export_info));
    assert!(
        neg.tls || !cfg.tls_required,
        "FORCEDTLS reached transmission in plain text"
    );
    assert!(neg.max_payload >= neg.export_info.effective_min_block());
    let extended = neg.reply_mode.extended();
    let mut buf = hs.take_leftover();
    for p in parts {
        buf.extend_from_slice(p);
    }
    let size = neg.export_info.size;
    let max = u64::from(neg.max_payload);
    let mut at = 0usize;
    loop {
        let req = match decode_request_with_limit(&buf[at..], extended, max) {
            Ok(Decoded::Complete { value, consumed }) => {
                let mut again = Vec::new();
                assert!(encode_request(&mut again, &value, extended).is_ok());
                assert_eq!(
                    &again[..],
                    &buf[at..at + consumed],
                    "request does not re-encode"
                );
                at += consumed;
                value
            }
            Ok(Decoded::Incomplete { need }) => {
                assert!(need > 0);
                return;
            }
            Err(CodecError::BadMagic { .. }) => return,
            Err(CodecError::PayloadTooLarge { request, .. }) => {
                assert!(request.payload_len > max);
                return;
            }
        };
        let Some(end) = usize::try_from(req.payload_len)
            .ok()
            .and_then(|n| at.checked_add(n))
            .filter(|&e| e <= buf.len())
        else {
            return;
        };
        at = end;
        if req.command() == Some(Command::Disc) {
            return;
        }
        let verdict = validate(&req, size, &neg);
        if verdict.is_ok() {
            let cmd = req.command();
            assert!(cmd.is_some() && cmd != Some(Command::Resize));
            if cmd != Some(Command::Flush) {
                assert!(req
                    .offset
                    .checked_add(req.length)
                    .is_some_and(|e| e <= size));
            }
            if matches!(cmd, Some(Command::Read | Command::Write)) {
                assert!(
                    req.length <= max,
                    "a READ/WRITE longer than the payload limit"
                );
            }
            if matches!(
                cmd,
                Some(Command::Write | Command::Trim | Command::WriteZeroes)
            ) {
                assert!(!neg.export_info.read_only);
            }
        }
        let target = ReplyTarget::new(neg.reply_mode, &req);
        let mut out = Vec::new();
        match verdict {
            Ok(()) => assert!(encode_ok(&mut out, &target).is_ok()),
            Err(e) => assert!(encode_error_reply(&mut out, &target, e, "refused").is_ok()),
        }
        let want = match neg.reply_mode {
            ReplyMode::Simple => SIMPLE_REPLY_MAGIC,
            ReplyMode::Structured => STRUCTURED_REPLY_MAGIC,
            ReplyMode::Extended => EXTENDED_REPLY_MAGIC,
        };
        let mut r = Reader::new(&out);
        assert_eq!(r.u32(), Some(want));
        r.u32(); // error, or flags and type
        assert_eq!(r.u64(), Some(req.cookie), "cookie not echoed");
    }
}

// ---- pool images ------------------------------------------------------------------------------

/// Size of the fuzzed PV: a small pool (1 MiB of superblocks and a 64-block journal, then
/// 9 segments of 1 MiB).
pub const PV_SIZE: u64 = 10 << 20;
const PV_BLOCKS: usize = (PV_SIZE as usize) / BLOCK;
/// One record of a [`pool_image`] input: a little-endian block index (modulo the PV's blocks)
/// and the block's bytes.
pub const RECORD: usize = 2 + BLOCK;

fn small_opts(read_only: bool) -> Options {
    Options {
        map_cache_nodes: 64,
        vba_cache_pages: 64,
        dirty_limit: 64,
        checkpoint_writes: 1 << 20,
        read_only,
        host_id: 1,
        replay_to: None,
        io: crate::dev::IoConfig::default(),
    }
}

fn dev_bytes(dev: &dyn BlockDev) -> Vec<u8> {
    let mut v = vec![0u8; dev.len() as usize];
    dev.read_at(&mut v, 0)
        .expect("MemDev reads within its size");
    v
}

/// CRC-32C of a device's bytes, read in pieces.
fn dev_crc(dev: &dyn BlockDev) -> u32 {
    let mut buf = vec![0u8; 64 * BLOCK];
    let mut crc = 0;
    let mut off = 0;
    while off < dev.len() {
        let n = buf.len().min((dev.len() - off) as usize);
        dev.read_at(&mut buf[..n], off)
            .expect("MemDev reads within its size");
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        off += n as u64;
    }
    crc
}

/// The PV that `data` describes: zeroes, then each record's block (a short last record is
/// padded with zeroes).
pub fn image_from_records(data: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; PV_SIZE as usize];
    for rec in data.chunks(RECORD) {
        let Some((idx, bytes)) = rec.split_first_chunk::<2>() else {
            continue;
        };
        let block = usize::from(u16::from_le_bytes(*idx)) % PV_BLOCKS;
        img[block * BLOCK..block * BLOCK + bytes.len()].copy_from_slice(bytes);
    }
    img
}

/// The non-zero blocks of `img` as records (the inverse of [`image_from_records`]).
pub fn records_from_image(img: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in img.chunks(BLOCK).enumerate() {
        if b.iter().any(|&x| x != 0) {
            out.extend_from_slice(&(i as u16).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
    out
}

/// Seed inputs for [`pool_image`], as records: a real pool with LUs, a snapshot and a clone,
/// (0) closed cleanly, (1) left with journal records to replay (no final checkpoint), and (2)
/// just created.
pub fn pool_seeds() -> Vec<Vec<u8>> {
    let copts = CreateOptions {
        name: "fuzz".into(),
        journal_blocks: 64,
    };
    let make = |close: bool, writes: bool| {
        let dev = Arc::new(MemDev::new("fuzz0", PV_SIZE));
        let pool = Pool::create(vec![dev.clone()], &copts, small_opts(false)).expect("create");
        if writes {
            let a = pool.lu_create("a", 1 << 20).expect("lu a").id;
            let pat = |i: u8| vec![i.wrapping_mul(37) | 1; BLOCK];
            for i in 0..6u8 {
                pool.write(a, u64::from(i) * 3 * BLOCK as u64, &pat(i), false)
                    .expect("write");
            }
            pool.snapshot_create(&["a@s1"]).expect("snapshot");
            pool.clone_create("a@s1", "c").expect("clone");
            if close {
                pool.checkpoint().expect("checkpoint");
            }
            let c = pool.lu_id("c").expect("clone id");
            pool.write(c, 0, &pat(9), false).expect("write clone");
            pool.write(a, BLOCK as u64, &pat(7), true)
                .expect("write fua");
            pool.write_zeroes(a, 16 * BLOCK as u64, 4 * BLOCK as u64, false)
                .expect("zeroes");
            pool.trim(a, 3 * BLOCK as u64, BLOCK as u64).expect("trim");
            pool.lu_create("b", 1 << 20).expect("lu b");
            pool.flush().expect("flush");
        }
        if close {
            pool.close().expect("close");
        } // else: dropped as after a crash; open replays the journal
        records_from_image(&dev_bytes(dev.as_ref()))
    };
    vec![make(true, true), make(false, true), make(true, false)]
}

/// Open the PV that `data` describes (see [`image_from_records`]) as a pool; panics on a
/// broken invariant: a read-only open changed the PV, or a pool that opened, passed its check
/// and was closed cleanly does not open again.
pub fn pool_image(data: &[u8]) {
    let img = image_from_records(data);
    let crc = crc32c::crc32c(&img);
    let dev = Arc::new(MemDev::from_bytes("fuzz0", img));
    if let Ok(pool) = Pool::open(vec![dev.clone()], small_opts(true)) {
        for lu in pool.lu_list().into_iter().take(8) {
            let mut buf = vec![0u8; BLOCK];
            if lu.size >= BLOCK as u64 {
                let _ = pool.read(lu.id, 0, &mut buf);
                let _ = pool.read(lu.id, (lu.size - BLOCK as u64) & !4095, &mut buf);
            }
        }
        let _ = pool.check();
        let _ = pool.close();
        assert_eq!(
            dev_crc(dev.as_ref()),
            crc,
            "a read-only open wrote to the PV"
        );
    }
    let Ok(pool) = Pool::open(vec![dev.clone()], small_opts(false)) else {
        return;
    };
    let lus = pool.lu_list();
    for lu in lus.iter().take(8) {
        let mut buf = vec![0u8; BLOCK];
        if lu.size >= BLOCK as u64 {
            let _ = pool.read(lu.id, 0, &mut buf);
        }
    }
    let healthy = pool.check().is_ok_and(|r| r.ok());
    if let Some(lu) = lus.iter().find(|l| l.size >= 2 * BLOCK as u64) {
        let _ = pool.write(lu.id, BLOCK as u64, &[0x5a; BLOCK], false);
        let _ = pool.write_zeroes(lu.id, 0, BLOCK as u64, false);
    }
    let closed = pool.close().is_ok();
    if healthy && closed {
        let again = Pool::open(vec![dev.clone()], small_opts(false));
        assert!(
            again.is_ok(),
            "a pool that passed check and closed cleanly does not reopen: {:?}",
            again.err()
        );
    }
}

// ---- admin requests ---------------------------------------------------------------------------

fn admin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ssp-fuzz-admin-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create the fuzz admin directory");
        d
    })
}

/// Decode each line of `data` as sspd's admin socket does; a request that decodes must
/// re-encode to itself, and (unless it names host files: PV paths) runs against a small
/// in-memory pool without panicking. At most 16 lines.
pub fn admin_lines(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut reqs = Vec::new();
    for line in text.lines().take(16) {
        if let Ok(req) = admin::decode_request_line(line) {
            let again = admin::encode_request_line(&req).expect("a decoded request encodes");
            assert_eq!(
                admin::decode_request_line(&again).ok().as_ref(),
                Some(&req),
                "re-encoded request decodes differently"
            );
            reqs.push(req);
        }
    }
    if reqs.is_empty() {
        return;
    }
    let dev: Arc<dyn BlockDev> = Arc::new(MemDev::new("fuzz0", PV_SIZE));
    let copts = CreateOptions {
        name: "fuzz".into(),
        journal_blocks: 64,
    };
    let Ok(pool) = Pool::create(vec![dev], &copts, small_opts(false)) else {
        return;
    };
    let dir = admin_dir();
    // Fresh maps for each input.
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::create_dir_all(dir);
    let Ok(maps) = MapStore::load(dir) else {
        return;
    };
    let ctx = AdminCtx {
        pool: &pool,
        attach: &NoAttachments,
        maps: &maps,
        who: crate::audit::Requester::this_process(),
    };
    for req in &reqs {
        if matches!(
            req,
            AdminRequest::FailgrpCreate { .. }
                | AdminRequest::PvAdd { .. }
                | AdminRequest::PvReplace { .. }
        ) {
            continue;
        }
        let _ = admin::execute(&ctx, req);
    }
    let _ = pool.close();
}
