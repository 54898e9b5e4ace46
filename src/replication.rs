//! `sspctl send` and `sspctl receive`: a snapshot (or the changes between two snapshots of one
//! family) as a stream (`ondisk-format/STREAM.md`, [`crate::stream`]), and applying such a
//! stream to a pool.
//!
//! Receive stages into a hidden volume `.recv-NAME` (a new LU for a full stream, a linked clone
//! of the base snapshot for an incremental one) and makes the result visible in one journal
//! batch at the end ([`Pool::staging_publish`]): a corrupt or cut-short stream leaves NAME and
//! NAME@* exactly as they were. Progress is kept in `POOL/receive/NAME.json` after each flush of
//! the staged data, so an interrupted receive resumes from its [`ResumeToken`].
//!
//! Online both run inside sspd, the stream's bytes riding on the admin connection after the
//! request line (see [`serve_stream`]); offline sspctl runs them on the pool it opened.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use crate::admin::Attachments;
use crate::pool::receive::{Publish, VolIdent};
use crate::pool::{MapKind, Pool, PoolError};
use crate::stream::{
    end, extent, header, End, Extent, ExtentKind, Header, ResumeToken, StreamError, MAX_DATA,
};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Volume bytes the sender examines per step (changed runs, then their allocation).
const WINDOW: u64 = 64 << 20;
/// A receiver makes its progress durable (a pool flush beside the applying, then the state
/// file) once at least this many stream bytes and [`CHECKPOINT_EVERY`] have passed since the
/// last time, or [`CHECKPOINT_MAX_BYTES`] have (and no flush is running): syncs do not
/// throttle it.
const CHECKPOINT_BYTES: u64 = 8 << 20;
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const CHECKPOINT_MAX_BYTES: u64 = 1 << 30;
/// Prefix of staging volumes (hidden: the name starts with '.').
pub const STAGING_PREFIX: &str = ".recv-";
/// Version of the receive state file (`POOL/receive/NAME.json`).
const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error("receive into {name} interrupted: {cause}. Nothing of it is visible; its progress is kept (resume token {token}). Resume: sspctl send -t {token} | sspctl receive --resume {name}; discard: sspctl receive --abort {name}")]
    Interrupted {
        name: String,
        cause: String,
        token: String,
    },
}

fn refused(s: impl Into<String>) -> ReplError {
    ReplError::Refused(s.into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What to send.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendSpec {
    /// The snapshot, `LU@SNAP` (or `IMAGE@SNAP`); empty with a token.
    #[serde(default)]
    pub snap: String,
    /// Base snapshot of an incremental stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Resume where a receiver stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What a send wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SendSummary {
    pub snapshot: String,
    pub base: String,
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub hole_bytes: u64,
    pub stream_bytes: u64,
}

impl SendSummary {
    /// The summary of the stream with header `h` and end record `e`, `stream_bytes` long.
    pub fn of(h: &Header, e: &End, stream_bytes: u64) -> SendSummary {
        SendSummary {
            snapshot: h.snap_name.clone(),
            base: h.base_name.clone(),
            records: e.records,
            data_bytes: e.data_bytes,
            zero_bytes: e.zero_bytes,
            hole_bytes: e.hole_bytes,
            stream_bytes,
        }
    }
}

/// A resolved send: the header to write and the volumes to read.
pub struct SendPlan {
    pub header: Header,
    snap: VolIdent,
    base: Option<VolIdent>,
}

impl SendPlan {
    pub fn header(&self) -> &Header {
        &self.header
    }
}

/// Resolve what to send (names or a resume token) into a header; nothing is written yet.
pub fn plan_send(pool: &Pool, spec: &SendSpec) -> Result<SendPlan, ReplError> {
    let (snap, base, offset) = if let Some(t) = &spec.token {
        let t = ResumeToken::from_text(t)?;
        let find = |udid: &[u8; 16], what: &str| {
            pool.snapshots_by_udid(udid)
                .into_iter()
                .next()
                .ok_or_else(|| {
                    refused(format!(
                        "the {what} snapshot this resume token names (UDID {}) is not in this pool",
                        hex(udid)
                    ))
                })
        };
        let snap = find(&t.snap_udid, "sent")?;
        let base = if t.base_udid == [0; 16] {
            None
        } else {
            Some(find(&t.base_udid, "base")?)
        };
        (snap, base, t.offset)
    } else {
        let snap = pool.vol_ident(&spec.snap)?;
        let base = match &spec.from {
            Some(f) => Some(pool.vol_ident(f)?),
            None => None,
        };
        (snap, base, 0)
    };
    if !snap.snapshot {
        return Err(refused(format!(
            "{} is not a snapshot: send sends a snapshot LU@SNAP (take one with sspctl snapshot create {}@NAME)",
            snap.name, snap.name
        )));
    }
    if let Some(b) = &base {
        if !b.snapshot {
            return Err(refused(format!(
                "--from {} is not a snapshot: an incremental stream starts from a snapshot LU@SNAP or IMAGE@SNAP",
                b.name
            )));
        }
        if b.family != snap.family {
            return Err(refused(format!(
                "{} and {} share no history: --from must be an older snapshot of the same LU, or the snapshot a clone was made from",
                b.name, snap.name
            )));
        }
        if b.id == snap.id {
            return Err(refused(format!("--from {} is the snapshot sent", b.name)));
        }
    }
    if offset > snap.size {
        return Err(refused(format!(
            "the resume token's offset {offset} is past the end of {} ({} bytes)",
            snap.name, snap.size
        )));
    }
    let mut flags = 0;
    if base.is_some() {
        flags |= header::FLAG_INCREMENTAL;
    }
    if spec.token.is_some() {
        flags |= header::FLAG_RESUMED;
    }
    let header = Header {
        flags,
        volume_size: snap.size,
        pool_id: pool.pool_uuid(),
        volume_id: snap.id,
        snap_udid: snap.udid,
        base_udid: base.as_ref().map_or([0; 16], |b| b.udid),
        base_size: base.as_ref().map_or(0, |b| b.size),
        resume_offset: offset,
        created: now_secs(),
        snap_name: snap.name.clone(),
        base_name: base.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
    };
    Ok(SendPlan { header, snap, base })
}

/// Counts and the running crc of what was written or read.
struct Tally {
    end: End,
    crc: u32,
    bytes: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            end: End::default(),
            crc: 0,
            bytes: 0,
        }
    }
    fn add_bytes(&mut self, b: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.bytes += b.len() as u64;
    }
    fn add_extent(&mut self, kind: ExtentKind, length: u64) {
        self.end.records += 1;
        match kind {
            ExtentKind::Data => self.end.data_bytes += length,
            ExtentKind::Zero => self.end.zero_bytes += length,
            ExtentKind::Hole => self.end.hole_bytes += length,
        }
    }
}

/// Write the planned stream to `out`. `progress(done, total)` counts volume bytes examined.
pub fn write_stream(
    pool: &Pool,
    plan: &SendPlan,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SendSummary, ReplError> {
    let h = &plan.header;
    let mut t = Tally::new();
    let hb = h.encode();
    t.add_bytes(&hb);
    out.write_all(&hb)?;
    let size = plan.snap.size;
    let start = h.resume_offset;
    // A reader thread reads the snapshot and encodes records while this one writes them out,
    // so pool reads overlap the stream's writes (a few MiB in flight).
    std::thread::scope(|sc| -> Result<(), ReplError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Record, ReplError>>(4);
        sc.spawn(move || {
            let r = read_records(pool, plan, &tx);
            if let Err(e) = r {
                let _ = tx.send(Err(e));
            }
        });
        for rec in rx {
            let rec = rec?;
            t.add_bytes(&rec.bytes);
            t.add_extent(rec.kind, rec.length);
            out.write_all(&rec.bytes)?;
            progress(rec.offset + rec.length - start, size - start);
        }
        Ok(())
    })?;
    progress(size - start, size - start);
    let mut e = t.end.clone();
    e.stream_crc = t.crc;
    let eb = e.encode();
    out.write_all(&eb)?;
    out.flush()?;
    Ok(SendSummary::of(h, &e, t.bytes + eb.len() as u64))
}

/// An encoded extent record, on its way from the reader thread to the stream.
struct Record {
    kind: ExtentKind,
    offset: u64,
    length: u64,
    bytes: Vec<u8>,
}

/// The sender's reader: every record of the plan, in offset order, into `tx` (stops early when
/// the receiving side is gone).
fn read_records(
    pool: &Pool,
    plan: &SendPlan,
    tx: &std::sync::mpsc::SyncSender<Result<Record, ReplError>>,
) -> Result<(), ReplError> {
    let size = plan.snap.size;
    let mut buf = vec![0u8; MAX_DATA as usize];
    let emit = |kind: ExtentKind, offset: u64, length: u64, data: &[u8]| {
        let mut bytes = Vec::with_capacity(extent::HEAD + data.len() + 4);
        Extent::encode_parts(kind, offset, length, data, &mut bytes);
        tx.send(Ok(Record {
            kind,
            offset,
            length,
            bytes,
        }))
        .is_ok()
    };
    let mut pos = plan.header.resume_offset;
    while pos < size {
        let n = WINDOW.min(size - pos);
        let runs: Vec<(u64, u64)> = match &plan.base {
            Some(b) => pool
                .changed_extents(plan.snap.id, b.id, pos, n)?
                .into_iter()
                .filter(|r| r.2)
                .map(|r| (r.0, r.1))
                .collect(),
            None => vec![(pos, n)],
        };
        for (s, l) in runs {
            for (a, len, kind) in pool.allocation(plan.snap.id, s, l)? {
                let sent = match kind {
                    MapKind::Data => {
                        let mut o = a;
                        let mut ok = true;
                        while ok && o < a + len {
                            let k = (a + len - o).min(MAX_DATA);
                            let b = buf.get_mut(..k as usize).unwrap_or_default();
                            pool.read(plan.snap.id, o, b)?;
                            ok = emit(ExtentKind::Data, o, k, b);
                            o += k;
                        }
                        ok
                    }
                    MapKind::Zero => emit(ExtentKind::Zero, a, len, &[]),
                    MapKind::Hole if plan.base.is_some() => emit(ExtentKind::Hole, a, len, &[]),
                    MapKind::Hole => true,
                };
                if !sent {
                    return Ok(());
                }
            }
        }
        pos += n;
    }
    Ok(())
}

/// One item read from a stream.
pub enum Item<'a> {
    Extent {
        kind: ExtentKind,
        offset: u64,
        length: u64,
        data: &'a [u8],
    },
    End(End),
}

/// Reads and checks a stream record by record: each record's crc, ascending offsets inside
/// the volume, and at the end the totals and the crc over the whole stream. Every byte read
/// is also copied to `tee` when given (sspctl forwarding sspd's stream).
pub struct StreamReader<'a> {
    input: &'a mut dyn Read,
    tee: Option<&'a mut dyn Write>,
    tally: Tally,
    buf: Vec<u8>,
    header: Option<Header>,
    next_offset: u64,
    done: bool,
}

impl<'a> StreamReader<'a> {
    pub fn new(input: &'a mut dyn Read, tee: Option<&'a mut dyn Write>) -> Self {
        StreamReader {
            input,
            tee,
            tally: Tally::new(),
            buf: Vec::new(),
            header: None,
            next_offset: 0,
            done: false,
        }
    }

    /// Read `n` more bytes onto `buf`.
    fn fill(&mut self, n: usize, what: &str) -> Result<(), ReplError> {
        let at = self.buf.len();
        self.buf.resize(at + n, 0);
        let dst = self.buf.get_mut(at..).unwrap_or_default();
        let mut got = 0;
        while got < n {
            match self.input.read(dst.get_mut(got..).unwrap_or_default()) {
                Ok(0) => {
                    return Err(ReplError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                        "the stream ends early, inside {what} (after {} bytes): it is truncated",
                        self.tally.bytes + (at + got) as u64
                    ),
                    )))
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(t) = self.tee.as_mut() {
            t.write_all(dst)?;
        }
        Ok(())
    }

    pub fn header(&mut self) -> Result<Header, ReplError> {
        self.buf.clear();
        self.fill(header::FIXED, "the header")?;
        let len = Header::peek_len(&self.buf)?;
        self.fill(len - header::FIXED, "the header")?;
        let h = Header::decode(&self.buf)?;
        self.tally.crc = crc32c::crc32c_append(self.tally.crc, &self.buf);
        self.tally.bytes += self.buf.len() as u64;
        self.next_offset = h.resume_offset;
        self.header = Some(h.clone());
        Ok(h)
    }

    /// The next record; after `Item::End` the stream is complete and verified.
    pub fn next_item(&mut self) -> Result<Item<'_>, ReplError> {
        let Some(h) = self.header.clone() else {
            return Err(refused("stream read before its header"));
        };
        if self.done {
            return Err(refused("stream read past its end record"));
        }
        self.buf.clear();
        self.fill(extent::HEAD, "a record")?;
        if self.buf.first() == Some(&end::TYPE_END) {
            self.fill(end::LEN - extent::HEAD, "the end record")?;
            let e = End::decode(&self.buf)?;
            let mut seen = self.tally.end.clone();
            seen.stream_crc = self.tally.crc;
            e.check_totals(&seen)?;
            self.done = true;
            return Ok(Item::End(e));
        }
        let (kind, offset, length) = Extent::decode_head(&self.buf)?;
        if offset < self.next_offset || offset + length > h.volume_size {
            return Err(StreamError::Invalid {
                what: "extent record",
                why: format!(
                    "range {offset}+{length} is out of order or outside the volume ({} bytes, next offset {})",
                    h.volume_size, self.next_offset
                ),
            }
            .into());
        }
        if kind == ExtentKind::Hole && !h.incremental() {
            return Err(StreamError::Invalid {
                what: "extent record",
                why: "a hole record in a full stream".into(),
            }
            .into());
        }
        let n = Extent::payload_len(kind, length);
        self.fill(n + 4, "a record")?;
        let covered = self.buf.len() - 4;
        let (c, s) = self.buf.split_at(covered);
        let stored = u32::from_le_bytes([
            *s.first().unwrap_or(&0),
            *s.get(1).unwrap_or(&0),
            *s.get(2).unwrap_or(&0),
            *s.get(3).unwrap_or(&0),
        ]);
        Extent::verify(c, stored)?;
        self.tally.add_bytes(&self.buf);
        self.tally.add_extent(kind, length);
        self.next_offset = offset + length;
        Ok(Item::Extent {
            kind,
            offset,
            length,
            data: self.buf.get(extent::HEAD..covered).unwrap_or_default(),
        })
    }

    /// Stream bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.tally.bytes
    }
}

/// What to receive into.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiveSpec {
    pub name: String,
    /// Continue a partial receive of `name`.
    #[serde(default)]
    pub resume: bool,
    /// Apply an incremental stream even though `name` was written since its base (what it
    /// held is kept as snapshot `name@recv-old-TIME`), and disconnect its clients.
    #[serde(default)]
    pub force: bool,
}

/// What a receive did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiveSummary {
    pub lu: String,
    pub snapshot: String,
    /// The base snapshot the changes were applied to (empty for a full stream).
    pub base: String,
    pub resumed_from: u64,
    pub records: u64,
    pub data_bytes: u64,
    pub zero_bytes: u64,
    pub hole_bytes: u64,
    pub stream_bytes: u64,
    /// What the LU held before, kept because of --force (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kept_old: String,
}

/// A partial receive, kept durably in `POOL/receive/NAME.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceiveState {
    pub version: u32,
    pub name: String,
    /// The hidden staging volume.
    pub staging: String,
    pub staging_id: u64,
    /// Stream identity (hex UDIDs) and the volume's size.
    pub snap_udid: String,
    pub base_udid: String,
    pub volume_size: u64,
    /// The snapshot it becomes, `NAME@SNAP`.
    pub snapshot: String,
    /// Local base snapshot (incremental), empty for a full stream.
    pub base: String,
    /// Whether the staged result goes onto the existing LU `name` (else it becomes LU `name`).
    pub onto_existing: bool,
    /// Every extent below this volume offset is applied and durable.
    pub offset: u64,
    /// The sender's names, for messages.
    pub sent_snapshot: String,
}

impl ReceiveState {
    pub fn token(&self) -> Result<ResumeToken, ReplError> {
        Ok(ResumeToken {
            offset: self.offset,
            snap_udid: parse_udid(&self.snap_udid)?,
            base_udid: parse_udid(&self.base_udid)?,
        })
    }
}

fn parse_udid(s: &str) -> Result<[u8; 16], ReplError> {
    let mut u = [0u8; 16];
    if s.len() != 32 {
        return Err(refused(format!("bad UDID {s:?} in a receive state file")));
    }
    for (i, b) in u.iter_mut().enumerate() {
        *b = s
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| refused(format!("bad UDID {s:?} in a receive state file")))?;
    }
    Ok(u)
}

/// `POOL/receive/NAME.json`.
pub fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("receive").join(format!("{name}.json"))
}

pub fn load_state(dir: &Path, name: &str) -> Result<Option<ReceiveState>, ReplError> {
    let p = state_path(dir, name);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let s: ReceiveState =
        serde_json::from_str(&text).map_err(|e| refused(format!("{}: {e}", p.display())))?;
    if s.version != STATE_VERSION {
        return Err(refused(format!(
            "{}: receive state version {} (this ssp writes {STATE_VERSION})",
            p.display(),
            s.version
        )));
    }
    Ok(Some(s))
}

/// Write the state durably: a temporary file, fsync, rename, fsync of the directory.
fn save_state(dir: &Path, s: &ReceiveState) -> Result<(), ReplError> {
    let p = state_path(dir, &s.name);
    let d = dir.join("receive");
    std::fs::create_dir_all(&d)?;
    let tmp = d.join(format!(".{}.json.tmp", s.name));
    let text = serde_json::to_vec_pretty(s).map_err(|e| refused(e.to_string()))?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &p)?;
    std::fs::File::open(&d)?.sync_all()?;
    Ok(())
}

fn remove_state(dir: &Path, name: &str) -> Result<(), ReplError> {
    match std::fs::remove_file(state_path(dir, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// The resume token of the partial receive into `name`.
pub fn receive_token(dir: &Path, name: &str) -> Result<String, ReplError> {
    match load_state(dir, name)? {
        Some(s) => Ok(s.token()?.to_text()),
        None => Err(refused(format!("no partial receive into {name}"))),
    }
}

/// Discard the partial receive into `name`: its staging volume and its state.
pub fn receive_abort(pool: &Pool, dir: &Path, name: &str) -> Result<String, ReplError> {
    let Some(s) = load_state(dir, name)? else {
        return Err(refused(format!("no partial receive into {name}")));
    };
    if let Ok(v) = pool.vol_ident(&s.staging) {
        if v.id == s.staging_id {
            pool.staging_discard(v.id)?;
        }
    }
    remove_state(dir, name)?;
    Ok(s.snapshot)
}

/// The part after '@' of `LU@SNAP`.
fn snap_part(name: &str) -> Result<&str, ReplError> {
    name.split_once('@')
        .map(|(_, s)| s)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            refused(format!(
                "the stream's snapshot name {name:?} is not LU@SNAP"
            ))
        })
}

/// Set up a fresh receive: check the target and the base, make the staging volume, save the
/// state at offset 0.
fn begin(pool: &Pool, dir: &Path, name: &str, h: &Header) -> Result<ReceiveState, ReplError> {
    crate::pool::validate_name(name)?;
    let snapshot = format!("{name}@{}", snap_part(&h.snap_name)?);
    if pool.vol_ident(&snapshot).is_ok() {
        return Err(refused(format!("{snapshot} already exists")));
    }
    let existing = pool.vol_ident(name).ok();
    let staging = format!("{STAGING_PREFIX}{name}");
    if let Ok(old) = pool.vol_ident(&staging) {
        // Left by a receive that died before it saved its state: never visible, no progress.
        pool.staging_discard(old.id)?;
    }
    let (base, onto_existing) = if !h.incremental() {
        if existing.is_some() {
            return Err(refused(format!(
                "{name} already exists: a full stream creates a new LU (receive it under another name, or send an incremental stream with --from)"
            )));
        }
        (None, false)
    } else if let Some(lu) = &existing {
        if lu.snapshot {
            return Err(refused(format!("{name} is a snapshot, not an LU")));
        }
        // The base must be one of NAME's snapshots with the stream's base identity.
        let want = format!("{name}@{}", snap_part(&h.base_name)?);
        let by_id = pool
            .snapshots_by_udid(&h.base_udid)
            .into_iter()
            .find(|s| s.name.starts_with(&format!("{name}@")));
        let Some(b) = by_id else {
            let found = match pool.vol_ident(&want) {
                Ok(v) => format!(
                    "{want} exists but is a different snapshot (UDID {})",
                    hex(&v.udid)
                ),
                Err(_) => format!("{want} does not exist"),
            };
            return Err(refused(format!(
                "base mismatch: the stream holds the changes from {} (UDID {}) to {}, and {name} has no snapshot with that identity ({found}); send a full stream or one --from a snapshot {name} has",
                h.base_name,
                hex(&h.base_udid),
                h.snap_name
            )));
        };
        if b.size != h.base_size {
            return Err(refused(format!(
                "base mismatch: {} has {} bytes, the stream's base {} had {}",
                b.name, b.size, h.base_name, h.base_size
            )));
        }
        (Some(b), true)
    } else {
        // A new LU from a base anywhere in the pool (a clone of its image's snapshot).
        let Some(b) = pool.snapshots_by_udid(&h.base_udid).into_iter().next() else {
            return Err(refused(format!(
                "base mismatch: the stream holds the changes from {} (UDID {}) to {}, and no snapshot in this pool has that identity; receive {} first",
                h.base_name,
                hex(&h.base_udid),
                h.snap_name,
                h.base_name
            )));
        };
        (Some(b), false)
    };
    let st = match &base {
        None => pool.staging_create(&staging, h.volume_size)?,
        Some(b) => pool.staging_clone(b.id, &staging, h.volume_size)?,
    };
    let s = ReceiveState {
        version: STATE_VERSION,
        name: name.to_owned(),
        staging,
        staging_id: st.id,
        snap_udid: hex(&h.snap_udid),
        base_udid: hex(&h.base_udid),
        volume_size: h.volume_size,
        snapshot,
        base: base.map(|b| b.name).unwrap_or_default(),
        onto_existing,
        offset: 0,
        sent_snapshot: h.snap_name.clone(),
    };
    if let Err(e) = save_state(dir, &s) {
        let _ = pool.staging_discard(st.id);
        return Err(e);
    }
    Ok(s)
}

/// Receive a stream from `input` into `spec.name`. `att` keeps clients away from an LU while
/// a finished incremental replaces its blocks (offline: nobody is attached).
pub fn receive(
    pool: &Pool,
    dir: &Path,
    att: &dyn Attachments,
    spec: &ReceiveSpec,
    input: &mut dyn Read,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ReceiveSummary, ReplError> {
    let name = spec.name.as_str();
    let mut r = StreamReader::new(input, None);
    let h = r.header()?;
    let prior = load_state(dir, name)?;
    let mut st = match prior {
        Some(s) => {
            if !spec.resume && !h.resumed() {
                return Err(refused(format!(
                    "a partial receive into {name} exists (of {}, resume token {}): resume it with sspctl send -t TOKEN | sspctl receive --resume {name}, or discard it with sspctl receive --abort {name}",
                    s.sent_snapshot,
                    s.token()?.to_text()
                )));
            }
            if s.snap_udid != hex(&h.snap_udid)
                || s.base_udid != hex(&h.base_udid)
                || s.volume_size != h.volume_size
            {
                return Err(refused(format!(
                    "this stream ({} from {:?}) is not the one the partial receive into {name} was receiving ({}): use the stream of sspctl send -t {}",
                    h.snap_name,
                    h.base_name,
                    s.sent_snapshot,
                    s.token()?.to_text()
                )));
            }
            if h.resume_offset > s.offset {
                return Err(refused(format!(
                    "the stream resumes at byte {} but the partial receive into {name} has only {} bytes: use the token {}",
                    h.resume_offset,
                    s.offset,
                    s.token()?.to_text()
                )));
            }
            match pool.vol_ident(&s.staging) {
                Ok(v) if v.id == s.staging_id => {}
                _ => {
                    return Err(refused(format!(
                        "the staging volume {} of the partial receive into {name} is gone: discard it with sspctl receive --abort {name} and send again",
                        s.staging
                    )))
                }
            }
            s
        }
        None => {
            if spec.resume || h.resumed() {
                return Err(refused(format!(
                    "there is no partial receive into {name} to resume: send the whole stream (without -t) and receive it without --resume"
                )));
            }
            begin(pool, dir, name, &h)?
        }
    };
    let resumed_from = h.resume_offset;
    let staging = st.staging_id;
    let total = h.volume_size.saturating_sub(resumed_from);
    let mut applied_to = h.resume_offset;
    let mut since_ckpt = 0u64;
    let mut last_ckpt = std::time::Instant::now();
    // Progress is made durable by a flush on another thread while the stream goes on being
    // applied (a flush in the loop would stop it until the disk caught up): the flush covers
    // what was applied when it started, which the state file records once it succeeded.
    let outcome: Result<End, ReplError> = std::thread::scope(|scope| {
        let mut pending: Option<(std::thread::ScopedJoinHandle<'_, bool>, u64)> = None;
        let record = |st: &mut ReceiveState,
                      done: (std::thread::ScopedJoinHandle<'_, bool>, u64)| {
            let (flusher, upto) = done;
            if flusher.join().unwrap_or(false) && upto > st.offset {
                st.offset = upto;
                save_state(dir, st)?;
            }
            Ok::<(), ReplError>(())
        };
        let applied: Result<End, ReplError> = (|| loop {
            let before = r.bytes();
            match r.next_item()? {
                Item::End(e) => return Ok(e),
                Item::Extent {
                    kind,
                    offset,
                    length,
                    data,
                } => {
                    match kind {
                        ExtentKind::Data => pool.write(staging, offset, data, false)?,
                        ExtentKind::Zero => pool.write_zeroes(staging, offset, length, false)?,
                        ExtentKind::Hole => pool.trim(staging, offset, length)?,
                    }
                    applied_to = offset + length;
                    progress(applied_to - resumed_from, total);
                }
            }
            since_ckpt += r.bytes() - before;
            if pending.as_ref().is_some_and(|(f, _)| f.is_finished()) {
                if let Some(done) = pending.take() {
                    record(&mut st, done)?;
                }
            }
            if pending.is_none()
                && ((since_ckpt >= CHECKPOINT_BYTES && last_ckpt.elapsed() >= CHECKPOINT_EVERY)
                    || since_ckpt >= CHECKPOINT_MAX_BYTES)
            {
                since_ckpt = 0;
                last_ckpt = std::time::Instant::now();
                pending = Some((scope.spawn(|| pool.flush().is_ok()), applied_to));
            }
        })();
        if let Some(done) = pending.take() {
            let r = record(&mut st, done);
            if applied.is_ok() {
                r?;
            }
        }
        applied
    });
    let end = match outcome {
        Ok(e) => e,
        Err(e) => {
            // Keep what was applied: it is durable after this flush, then say so.
            if pool.flush().is_ok() && applied_to > st.offset {
                st.offset = applied_to;
                let _ = save_state(dir, &st);
            }
            let token = st.token()?.to_text();
            return Err(ReplError::Interrupted {
                name: name.to_owned(),
                cause: e.to_string(),
                token,
            });
        }
    };
    pool.flush()?;
    st.offset = h.volume_size;
    save_state(dir, &st)?;
    progress(total, total);
    // Publish: the staged volume becomes NAME (or NAME's content) and NAME@SNAP, at once.
    let mut kept_old = String::new();
    let publish = if st.onto_existing {
        let changed = !pool.diff(name, &st.base)?.is_empty();
        let keep_old = if changed {
            if !spec.force {
                return Err(ReplError::Interrupted {
                    name: name.to_owned(),
                    cause: format!(
                        "{name} was written since {}, and applying the stream would discard that (receive again with --force to keep it as a snapshot {name}@recv-old-TIME and apply)",
                        st.base
                    ),
                    token: st.token()?.to_text(),
                });
            }
            let k = format!("{name}@recv-old-{}", now_secs());
            kept_old = k.clone();
            Some(k)
        } else {
            None
        };
        Publish::OntoLu {
            name: name.to_owned(),
            keep_old,
        }
    } else {
        Publish::NewLu {
            name: name.to_owned(),
        }
    };
    // Refused here (clients attached, NAME taken meanwhile), the staged result is kept whole
    // for a later `--resume` with the token's (empty) rest of the stream.
    let published = (|| {
        let _fence = if st.onto_existing {
            Some(crate::admin::exclusive(
                att,
                name,
                &format!("receiving {} into {name}", st.snapshot),
                spec.force,
            )?)
        } else {
            None
        };
        pool.staging_publish(staging, &publish, &st.snapshot, h.snap_udid)
    })();
    if let Err(e) = published {
        return Err(ReplError::Interrupted {
            name: name.to_owned(),
            cause: e.to_string(),
            token: st.token()?.to_text(),
        });
    }
    remove_state(dir, name)?;
    Ok(ReceiveSummary {
        lu: name.to_owned(),
        snapshot: st.snapshot,
        base: st.base,
        resumed_from,
        records: end.records,
        data_bytes: end.data_bytes,
        zero_bytes: end.zero_bytes,
        hole_bytes: end.hole_bytes,
        stream_bytes: r.bytes() + end::LEN as u64,
        kept_old,
    })
}

/// Requests whose bytes ride on the admin connection after the request line.
pub fn is_streaming(req: &crate::admin::AdminRequest) -> bool {
    use crate::admin::AdminRequest;
    matches!(req, AdminRequest::Send(_) | AdminRequest::Receive(_))
}

/// Serve a streaming request on an admin connection (in sspd), then end the connection.
///
/// - `Send`: one reply line (`Sending`, or the error), then the stream's bytes. A send that
///   fails midway closes the connection without an end record, which the client reports.
/// - `Receive`: the stream's bytes follow the request line (`pending` holds those already
///   read with it); one reply line once the stream is applied or refused.
///
/// Each read and write of the stream must make progress within `timeout`.
pub fn serve_stream(
    ctx: &crate::admin::AdminCtx,
    req: &crate::admin::AdminRequest,
    pending: Vec<u8>,
    input: std::os::unix::net::UnixStream,
    mut w: std::os::unix::net::UnixStream,
    timeout: std::time::Duration,
) -> std::io::Result<()> {
    use crate::admin::{reply_line, AdminReply, AdminRequest};
    w.set_write_timeout(Some(timeout))?;
    input.set_read_timeout(Some(timeout))?;
    let outcome: Result<(), String> = match req {
        AdminRequest::Send(spec) => match plan_send(ctx.pool, spec) {
            Err(e) => {
                let msg = e.to_string();
                w.write_all(reply_line(Err(msg.clone()))?.as_bytes())?;
                Err(msg)
            }
            Ok(plan) => {
                let h = plan.header();
                let first = AdminReply::Sending {
                    snapshot: h.snap_name.clone(),
                    base: h.base_name.clone(),
                    volume_size: h.volume_size,
                    resume_offset: h.resume_offset,
                };
                w.write_all(reply_line(Ok(first))?.as_bytes())?;
                let mut bw = std::io::BufWriter::with_capacity(1 << 20, &mut w);
                let r = write_stream(ctx.pool, &plan, &mut bw, &mut |_, _| {});
                r.map(|_| ()).map_err(|e| e.to_string())
            }
        },
        AdminRequest::Receive(spec) => {
            // Buffered: a record's header and data would otherwise be a read call each.
            let mut rd = std::io::BufReader::with_capacity(
                1 << 20,
                std::io::Cursor::new(pending).chain(input),
            );
            let r = receive(
                ctx.pool,
                ctx.maps.dir(),
                ctx.attach,
                spec,
                &mut rd,
                &mut |_, _| {},
            )
            .map_err(|e| e.to_string());
            let line = reply_line(r.clone().map(AdminReply::Received))?;
            // The client may be gone (killed mid-stream): its partial state is kept anyway.
            let _ = w.write_all(line.as_bytes());
            r.map(|_| ())
        }
        _ => Err("not a streaming request".into()),
    };
    if let Err(e) = &outcome {
        tracing::warn!("{e}");
    }
    crate::audit::record(
        &ctx.who,
        req,
        outcome.as_ref().map(|_| ()).map_err(|e| e.as_str()),
    );
    Ok(())
}
