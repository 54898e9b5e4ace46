//! Property tests over whole client byte streams: valid handshake + transmission transcripts,
//! mutated (bit flips, overwrites, insertions, deletions, duplications, truncation) or replaced
//! by arbitrary bytes, fed in arbitrary pieces through the handshake state machine, the request
//! decoder, `validate` and the reply encoders, the way `server::session` drives them.
//!
//! Whatever the input: nothing panics; every handshake step either fails (and the state
//! machine stays failed) or sends well-formed option replies; a finished handshake names an
//! export of the catalog and honours the TLS policy; every decoded request re-encodes to the
//! bytes it came from, passes `validate` only within the export's bounds, and gets a reply of
//! the negotiated kind echoing its cookie.

use super::codec::*;
use super::handshake::*;
use super::proto::*;
use super::validate::validate;
use super::wire::{put_u16, put_u32, put_u64, Reader};
use proptest::prelude::*;

struct Catalog {
    exports: Vec<ExportInfo>,
}

fn catalog() -> Catalog {
    let lu = |name: &str, size, read_only, min_block| ExportInfo {
        name: name.into(),
        size,
        read_only,
        description: format!("{name} export"),
        can_multi_conn: true,
        min_block,
    };
    Catalog {
        exports: vec![
            lu("lu0", 1 << 20, false, 1),
            lu("snap", 0x10_0000, true, 4096),
            lu("odd", 12345, false, 512),
        ],
    }
}

const EXTRA_CONTEXTS: [&str; 2] = ["ssp:sharing", "bogus"];

impl ExportCatalog for Catalog {
    fn list(&self) -> Vec<ExportEntry> {
        self.exports
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
        match self.exports.iter().find(|e| e.name == name) {
            Some(e) => Lookup::Found(e.clone()),
            None => Lookup::NotFound,
        }
    }
    fn meta_contexts(&self, _export: &str) -> Vec<String> {
        EXTRA_CONTEXTS.iter().map(|s| s.to_string()).collect()
    }
}

// ---- valid transcripts ----------------------------------------------------------------------

fn opt(code: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_u64(&mut v, IHAVEOPT);
    put_u32(&mut v, code);
    put_u32(&mut v, data.len() as u32);
    v.extend_from_slice(data);
    v
}

fn string(v: &mut Vec<u8>, s: &str) {
    put_u32(v, s.len() as u32);
    v.extend_from_slice(s.as_bytes());
}

fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, name);
    put_u16(&mut v, infos.len() as u16);
    for i in infos {
        put_u16(&mut v, *i);
    }
    v
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    string(&mut v, name);
    put_u32(&mut v, queries.len() as u32);
    for q in queries {
        string(&mut v, q);
    }
    v
}

fn export_name() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec![
        "lu0", "lu0", "lu0", "snap", "odd", "", "secret", "nope",
    ])
}

fn infos() -> impl Strategy<Value = Vec<u16>> {
    proptest::collection::vec(0..5u16, 0..4)
}

/// One option before the last, and whether it asks for extended headers.
fn middle_option() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let plain = |code| Just((opt(code, &[]), code == OPT_EXTENDED_HEADERS));
    prop_oneof![
        plain(OPT_STRUCTURED_REPLY),
        plain(OPT_EXTENDED_HEADERS),
        plain(OPT_LIST),
        plain(OPT_STARTTLS),
        (export_name(), infos()).prop_map(|(n, i)| (opt(OPT_INFO, &go_data(n, &i)), false)),
        (
            export_name(),
            proptest::sample::subsequence(
                vec![
                    "base:allocation",
                    "ssp:sharing",
                    "ssp:",
                    "base:",
                    "bogus",
                    "x"
                ],
                0..4
            ),
            any::<bool>()
        )
            .prop_map(|(n, q, set)| {
                let code = if set {
                    OPT_SET_META_CONTEXT
                } else {
                    OPT_LIST_META_CONTEXT
                };
                (opt(code, &meta_data(n, &q)), false)
            }),
        (0..16u32, proptest::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(c, d)| (opt(c, &d), false)),
    ]
}

/// The option that ends the handshake.
fn last_option() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (export_name(), infos()).prop_map(|(n, i)| opt(OPT_GO, &go_data(n, &i))),
        2 => export_name().prop_map(|n| opt(OPT_EXPORT_NAME, n.as_bytes())),
        1 => Just(opt(OPT_ABORT, &[])),
    ]
}

#[derive(Clone, Debug)]
struct Req {
    flags: u16,
    typ: u16,
    cookie: u64,
    offset: u64,
    length: u64,
}

fn request() -> impl Strategy<Value = Req> {
    let offset = prop_oneof![
        2 => Just(0u64),
        4 => (0..300u64).prop_map(|b| b * 4096),
        2 => 0..0x10_1000u64,
        1 => any::<u64>(),
    ];
    let length = prop_oneof![
        1 => Just(0u64),
        3 => Just(4096),
        3 => 0..9000u64,
        1 => any::<u64>()
    ];
    (
        proptest::sample::select(vec![0u16, 0, 1, 1, 3, 4, 5, 6, 7, 8, 9, 2]),
        prop_oneof![3 => Just(0u16), 1 => 0..64u16, 1 => any::<u16>()],
        any::<u64>(),
        offset,
        length,
    )
        .prop_map(|(typ, flags, cookie, offset, length)| Req {
            flags,
            typ,
            cookie,
            offset,
            length,
        })
}

/// A request header (in the header style the options asked for) and, for a small WRITE, its
/// payload.
fn encode_req(out: &mut Vec<u8>, r: &Req, extended: bool) {
    let length = if extended {
        r.length
    } else {
        r.length & 0xffff_ffff
    };
    let req = Request {
        flags: r.flags,
        typ: r.typ,
        cookie: r.cookie,
        offset: r.offset,
        length,
        payload_len: 0,
    };
    if encode_request(out, &req, extended).is_ok()
        && (r.typ == CMD_WRITE || (extended && r.flags & CMD_FLAG_PAYLOAD_LEN != 0))
        && length <= 9000
    {
        out.extend((0..length).map(|i| i as u8));
    }
}

/// A client's bytes, and the positions right after each `NBD_OPT_STARTTLS` (where the real
/// stream switches to TLS records, so the server reads no further before its TLS handshake).
fn transcript() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    (
        prop_oneof![
            4 => Just(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES),
            2 => Just(FLAG_C_FIXED_NEWSTYLE),
            1 => 0..4u32,
            1 => any::<u32>(),
        ],
        any::<bool>(),
        proptest::collection::vec(middle_option(), 0..6),
        last_option(),
        proptest::collection::vec(request(), 0..8),
    )
        .prop_map(|(flags, lead_tls, middle, last, reqs)| {
            let mut v = Vec::new();
            let mut tls_cuts = Vec::new();
            put_u32(&mut v, flags);
            let starttls = opt(OPT_STARTTLS, &[]);
            let mut extended = false;
            let lead = lead_tls.then(|| (starttls.clone(), false));
            for (o, e) in lead.into_iter().chain(middle) {
                // Negotiation state before STARTTLS is forgotten.
                extended = if o == starttls { false } else { extended || e };
                v.extend(&o);
                if o == starttls {
                    tls_cuts.push(v.len());
                }
            }
            v.extend(last);
            for r in &reqs {
                encode_req(&mut v, r, extended);
            }
            (v, tls_cuts)
        })
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0..8u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1..32usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<usize>(), 1..64usize).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut v: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let len = v.len();
        let at = |i: usize| if len == 0 { 0 } else { i % len };
        match m {
            Mutation::Flip(i, b) if len > 0 => v[at(*i)] ^= 1 << b,
            Mutation::Set(i, b) if len > 0 => v[at(*i)] = *b,
            Mutation::Insert(i, b) => {
                let i = if len == 0 { 0 } else { i % (len + 1) };
                v.splice(i..i, b.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let i = at(*i);
                v.drain(i..(i + n).min(len));
            }
            Mutation::Duplicate(i, n) if len > 0 => {
                let i = at(*i);
                let piece = v[i..(i + n).min(len)].to_vec();
                v.splice(i..i, piece);
            }
            Mutation::Truncate(i) => v.truncate(if len == 0 { 0 } else { i % len }),
            _ => {}
        }
    }
    v
}

// ---- the driver -------------------------------------------------------------------------------

fn config() -> impl Strategy<Value = ServerConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![6 => Just(64 * 1024u32), 1 => Just(20), 1 => 0..64u32],
        prop_oneof![Just(DEFAULT_MAX_PAYLOAD), Just(4096), 0..70_000u32],
        any::<bool>(),
    )
        .prop_map(
            |(tls_available, tls_required, max_option_len, max_payload, require_block_size)| {
                ServerConfig {
                    tls_available: tls_available || tls_required,
                    tls_required,
                    max_option_len,
                    max_payload,
                    require_block_size,
                    ..ServerConfig::default()
                }
            },
        )
}

/// Split `stream` at `cuts` (positions modulo its length, in any order) into pieces.
fn pieces<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|c| c % (stream.len() + 1))
        .chain([0, stream.len()])
        .collect();
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &stream[w[0]..w[1]]).collect()
}

/// Check that `out` is a run of well-formed option replies, followed (only after
/// `NBD_OPT_EXPORT_NAME` succeeded) by the export size, flags and optional zeroes.
fn check_output(out: &[u8], done: Option<&Negotiated>) -> Result<(), TestCaseError> {
    let mut r = Reader::new(out);
    loop {
        if r.is_empty() {
            return Ok(());
        }
        let rest = r;
        let magic = r.u64();
        if magic != Some(REPLY_MAGIC) {
            // Only an NBD_OPT_EXPORT_NAME success ends in something other than a reply.
            let Some(neg) = done else {
                return Err(TestCaseError::fail(format!(
                    "not an option reply: {rest:?}"
                )));
            };
            let mut tail = rest;
            prop_assert_eq!(tail.u64(), Some(neg.export_info.size));
            prop_assert_eq!(tail.u16(), Some(neg.transmission_flags));
            let zeroes = if neg.no_zeroes { 0 } else { EXPORT_NAME_ZEROES };
            prop_assert_eq!(
                tail.bytes(zeroes).map(|z| z.iter().all(|&b| b == 0)),
                Some(true)
            );
            prop_assert!(tail.is_empty(), "bytes after the export-name reply");
            return Ok(());
        }
        let (Some(_option), Some(typ), Some(len)) = (r.u32(), r.u32(), r.u32()) else {
            return Err(TestCaseError::fail("truncated option reply header"));
        };
        let Some(data) = r.bytes(len as usize) else {
            return Err(TestCaseError::fail("truncated option reply data"));
        };
        let mut d = Reader::new(data);
        match typ {
            REP_ACK => prop_assert!(data.is_empty()),
            REP_SERVER => {
                let n = d.u32().map(|n| n as usize);
                prop_assert!(n.is_some_and(|n| n <= data.len() - 4), "bad NBD_REP_SERVER");
            }
            REP_INFO => prop_assert!(d.u16().is_some_and(|i| i <= INFO_BLOCK_SIZE)),
            REP_META_CONTEXT => prop_assert!(d.u32().is_some() && !d.is_empty()),
            t => prop_assert!(t & REP_FLAG_ERROR != 0, "unknown reply type {:#x}", t),
        }
    }
}

/// Run `stream`, cut into `pieces`, through a server's handshake and transmission phase.
fn drive(cfg: &ServerConfig, stream: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let cat = catalog();
    let mut hs = Handshake::new(cfg.clone());
    prop_assert_eq!(hs.initial_output().len(), 18);
    let mut parts = pieces(stream, cuts).into_iter();
    let neg = loop {
        let Some(p) = parts.next() else {
            return Ok(()); // the client went away during the handshake
        };
        let step = match hs.input(p, &cat) {
            Ok(step) => step,
            Err(_) => {
                // A failed handshake stays failed.
                prop_assert!(hs.is_over());
                prop_assert_eq!(hs.input(b"x", &cat).err(), Some(HandshakeError::Finished));
                return Ok(());
            }
        };
        match step.event {
            None => check_output(&step.output, None)?,
            Some(Event::StartTls) => {
                prop_assert!(cfg.tls_available && hs.tls_active());
                check_output(&step.output, None)?;
            }
            Some(Event::Abort) => {
                check_output(&step.output, None)?;
                prop_assert!(hs.is_over());
                return Ok(());
            }
            Some(Event::Done(neg)) => {
                check_output(&step.output, Some(&neg))?;
                break neg;
            }
        }
    };
    // The handshake's result: an export the catalog offers this client, under the TLS policy.
    prop_assert!(hs.is_over());
    prop_assert!(cat.exports.contains(&neg.export_info));
    prop_assert_eq!(&neg.export, &neg.export_info.name);
    prop_assert_eq!(neg.tls, hs.tls_active());
    prop_assert!(
        neg.tls || !cfg.tls_required,
        "FORCEDTLS reached transmission in plain text"
    );
    prop_assert!(!neg.tls || cfg.tls_available);
    prop_assert!(neg.max_payload >= neg.export_info.effective_min_block());
    for (i, (id, name)) in neg.meta_contexts.iter().enumerate() {
        prop_assert!(neg.meta_contexts[..i].iter().all(|(o, _)| o != id));
        prop_assert!(name == CONTEXT_BASE_ALLOCATION || EXTRA_CONTEXTS.contains(&name.as_str()));
    }
    // Transmission: what the client sent after its last option, then the rest.
    let extended = neg.reply_mode.extended();
    let header_len = if extended { 32 } else { 28 };
    let mut buf = hs.take_leftover();
    for p in parts {
        buf.extend_from_slice(p);
    }
    let size = neg.export_info.size;
    let max = u64::from(neg.max_payload);
    let mut at = 0;
    loop {
        let req = match decode_request_with_limit(&buf[at..], extended, max) {
            Ok(Decoded::Complete { value, consumed }) => {
                prop_assert_eq!(consumed, header_len);
                let mut again = Vec::new();
                prop_assert!(encode_request(&mut again, &value, extended).is_ok());
                prop_assert_eq!(&again[..], &buf[at..at + consumed]);
                at += consumed;
                value
            }
            Ok(Decoded::Incomplete { need }) => {
                prop_assert!(need > 0 && buf.len() - at + need <= header_len);
                return Ok(());
            }
            Err(CodecError::BadMagic { .. }) => return Ok(()),
            Err(CodecError::PayloadTooLarge { request, .. }) => {
                prop_assert!(request.payload_len > max);
                return Ok(());
            }
        };
        let Some(payload_end) = usize::try_from(req.payload_len)
            .ok()
            .and_then(|n| at.checked_add(n))
            .filter(|&e| e <= buf.len())
        else {
            return Ok(()); // cut off in the middle of a payload
        };
        at = payload_end;
        if req.command() == Some(Command::Disc) {
            return Ok(());
        }
        let verdict = validate(&req, size, &neg);
        if verdict.is_ok() {
            let cmd = req.command();
            prop_assert!(cmd.is_some() && cmd != Some(Command::Resize));
            if cmd != Some(Command::Flush) {
                prop_assert!(req
                    .offset
                    .checked_add(req.length)
                    .is_some_and(|e| e <= size));
                let min = u64::from(neg.export_info.effective_min_block());
                prop_assert!(req.offset % min == 0 && req.length % min == 0);
            }
            if matches!(cmd, Some(Command::Read | Command::Write)) {
                prop_assert!(req.length <= max);
            }
            if matches!(
                cmd,
                Some(Command::Write | Command::Trim | Command::WriteZeroes)
            ) {
                prop_assert!(!neg.export_info.read_only);
            }
        }
        // Every request that is not a disconnect gets a reply of the negotiated kind.
        let target = ReplyTarget::new(neg.reply_mode, &req);
        let mut out = Vec::new();
        match verdict {
            Ok(()) => prop_assert!(encode_ok(&mut out, &target).is_ok()),
            Err(e) => {
                prop_assert!([EPERM, EINVAL, ENOSPC].contains(&e), "errno {}", e);
                prop_assert!(encode_error_reply(&mut out, &target, e, "refused").is_ok());
            }
        }
        let mut r = Reader::new(&out);
        let want = match neg.reply_mode {
            ReplyMode::Simple => SIMPLE_REPLY_MAGIC,
            ReplyMode::Structured => STRUCTURED_REPLY_MAGIC,
            ReplyMode::Extended => EXTENDED_REPLY_MAGIC,
        };
        prop_assert_eq!(r.u32(), Some(want));
        r.u32(); // error, or flags and type
        prop_assert_eq!(r.u64(), Some(req.cookie), "cookie not echoed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn valid_transcripts_in_any_pieces_never_panic(
        cfg in config(),
        (stream, tls_cuts) in transcript(),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        drive(&cfg, &stream, &[cuts, tls_cuts].concat())?;
    }

    #[test]
    fn mutated_transcripts_never_panic(
        cfg in config(),
        (stream, tls_cuts) in transcript(),
        mutations in proptest::collection::vec(mutation(), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        drive(&cfg, &mutate(stream, &mutations), &[cuts, tls_cuts].concat())?;
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_prefix_never_panic(
        cfg in config(),
        (stream, tls_cuts) in transcript(),
        keep in any::<usize>(),
        junk in proptest::collection::vec(any::<u8>(), 0..256),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut s = stream;
        s.truncate(keep % (s.len() + 1));
        s.extend(junk);
        drive(&cfg, &s, &[cuts, tls_cuts].concat())?;
    }
}
