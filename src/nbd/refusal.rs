//! Refusals among the option replies a handshake step sends (proto.md "Option reply types"),
//! so the server can log why a client was turned away. Pure: reads the bytes
//! [`super::Handshake::input`] produced.

use super::proto::*;
use super::wire::Reader;

/// An error reply that denies the client an export or the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The option refused (e.g. `NBD_OPT_GO`).
    pub option: u32,
    /// The error reply type (`NBD_REP_ERR_*`).
    pub reply: u32,
    /// The message sent with it.
    pub message: String,
}

impl Refusal {
    /// `NBD_REP_ERR_*` name of the reply type.
    pub fn reason(&self) -> &'static str {
        match self.reply {
            REP_ERR_POLICY => "policy",
            REP_ERR_UNKNOWN => "unknown export",
            REP_ERR_TLS_REQD => "TLS required",
            REP_ERR_SHUTDOWN => "server shutting down",
            REP_ERR_BLOCK_SIZE_REQD => "block size required",
            REP_ERR_EXT_HEADER_REQD => "extended headers required",
            _ => "refused",
        }
    }

    /// The option's name, or its number when it is not one this server knows.
    pub fn option_name(&self) -> String {
        match OptionCode::from_u32(self.option) {
            Some(o) => format!("{o:?}"),
            None => format!("option {}", self.option),
        }
    }
}

/// Error replies in `output` that refuse the client: policy, unknown export, TLS required,
/// shutdown, block size or extended headers required. Errors about a malformed or unsupported
/// option are not refusals (clients probe options). Stops at the first bytes that are not an
/// option reply (the `NBD_OPT_EXPORT_NAME` answer).
pub fn refusals(output: &[u8]) -> Vec<Refusal> {
    let mut found = Vec::new();
    let mut r = Reader::new(output);
    while let (Some(REPLY_MAGIC), Some(option), Some(reply), Some(len)) =
        (r.u64(), r.u32(), r.u32(), r.u32())
    {
        let Some(data) = r.bytes(len as usize) else {
            break;
        };
        if matches!(
            reply,
            REP_ERR_POLICY
                | REP_ERR_UNKNOWN
                | REP_ERR_TLS_REQD
                | REP_ERR_SHUTDOWN
                | REP_ERR_BLOCK_SIZE_REQD
                | REP_ERR_EXT_HEADER_REQD
        ) {
            found.push(Refusal {
                option,
                reply,
                message: String::from_utf8_lossy(data).into_owned(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::wire::{put_u32, put_u64};

    fn rep(out: &mut Vec<u8>, option: u32, typ: u32, msg: &str) {
        put_u64(out, REPLY_MAGIC);
        put_u32(out, option);
        put_u32(out, typ);
        put_u32(out, msg.len() as u32);
        out.extend_from_slice(msg.as_bytes());
    }

    #[test]
    fn finds_refusals_and_skips_other_replies() {
        let mut out = Vec::new();
        rep(&mut out, OPT_STRUCTURED_REPLY, REP_ACK, "");
        rep(
            &mut out,
            OPT_EXTENDED_HEADERS,
            REP_ERR_UNSUP,
            "unsupported option",
        );
        rep(&mut out, OPT_GO, REP_ERR_UNKNOWN, "unknown export");
        rep(&mut out, OPT_INFO, REP_ERR_TLS_REQD, "TLS required");
        let got = refusals(&out);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].option_name(), "Go");
        assert_eq!(got[0].reason(), "unknown export");
        assert_eq!(got[0].message, "unknown export");
        assert_eq!(got[1].reason(), "TLS required");
        // A truncated reply ends the scan without panicking.
        assert!(refusals(&out[..out.len() - 3]).len() == 1);
        assert!(refusals(b"").is_empty());
    }
}
