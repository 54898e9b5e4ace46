//! LU maps (like SSP's `lu -map`): which clients may see an LU. An LU without maps is served to
//! every client; an LU with maps is listed for and opened by matching clients only.
//!
//! Maps are access policy, not data: they live in the pool directory (`DIR/lu-maps.json`,
//! written atomically), beside the configuration and the admin socket.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const MAPS_FILE: &str = "lu-maps.json";

/// A client specification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientSpec {
    /// A TCP client address within `addr/prefix`.
    Net { addr: IpAddr, prefix: u8 },
    /// A unix-socket client running as this uid.
    Uid(u32),
    /// A TLS client whose verified certificate names this (subject CN or a DNS SAN).
    Tls(String),
}

impl std::str::FromStr for ClientSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(u) = s.strip_prefix("uid:") {
            return u
                .parse()
                .map(ClientSpec::Uid)
                .map_err(|_| format!("bad uid in client spec {s:?}"));
        }
        if let Some(t) = s.strip_prefix("tls:") {
            if t.is_empty() {
                return Err("empty TLS identity in client spec".into());
            }
            return Ok(ClientSpec::Tls(t.to_owned()));
        }
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            format!("bad client spec {s:?}: use an IP address or CIDR, uid:N or tls:NAME")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("bad prefix length in {s:?}"))?,
            None => max,
        };
        Ok(ClientSpec::Net { addr, prefix })
    }
}

impl std::fmt::Display for ClientSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientSpec::Net { addr, prefix } => write!(f, "{addr}/{prefix}"),
            ClientSpec::Uid(u) => write!(f, "uid:{u}"),
            ClientSpec::Tls(n) => write!(f, "tls:{n}"),
        }
    }
}

/// Where a client connects from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAddr {
    Tcp(IpAddr),
    Unix { uid: Option<u32> },
}

/// The names of a verified TLS client certificate: its subject common names and DNS
/// subject-alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsIdentity {
    pub common_names: Vec<String>,
    pub dns_names: Vec<String>,
}

impl TlsIdentity {
    /// Whether the certificate names `name`: a common name exactly, or a DNS name (DNS names
    /// compare case-insensitively).
    pub fn is(&self, name: &str) -> bool {
        self.common_names.iter().any(|n| n == name)
            || self.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Who is connecting: the socket's peer, and once a TLS session with a verified client
/// certificate is up, that certificate's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: PeerAddr,
    pub tls: Option<TlsIdentity>,
}

impl Peer {
    pub fn tcp(ip: IpAddr) -> Peer {
        Peer {
            addr: PeerAddr::Tcp(ip),
            tls: None,
        }
    }

    pub fn unix(uid: Option<u32>) -> Peer {
        Peer {
            addr: PeerAddr::Unix { uid },
            tls: None,
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    // Compare IPv4-mapped IPv6 peers as IPv4.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

impl ClientSpec {
    pub fn matches(&self, peer: &Peer) -> bool {
        match (self, &peer.addr) {
            (ClientSpec::Net { addr, prefix }, PeerAddr::Tcp(ip)) => in_net(*ip, *addr, *prefix),
            (ClientSpec::Uid(u), PeerAddr::Unix { uid: Some(p) }) => u == p,
            // Only a certificate the server verified gives a TLS session an identity.
            (ClientSpec::Tls(name), _) => peer.tls.as_ref().is_some_and(|t| t.is(name)),
            _ => false,
        }
    }
}

/// The maps of every LU, persisted in the pool directory.
pub struct MapStore {
    path: PathBuf,
    maps: Mutex<BTreeMap<String, Vec<String>>>,
}

impl MapStore {
    /// Load the maps of the pool in `dir` (none if the file does not exist).
    /// The pool directory this store lives in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    pub fn load(dir: &Path) -> Result<MapStore, String> {
        let path = dir.join(MAPS_FILE);
        let maps = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(MapStore {
            path,
            maps: Mutex::new(maps),
        })
    }

    /// Read the maps file again (edited out of band, e.g. restored from a backup): the new
    /// maps apply to new sessions. On error the maps in use are kept.
    pub fn reload(&self) -> Result<(), String> {
        let dir = self.dir().to_owned();
        let fresh = MapStore::load(&dir)?;
        let maps = fresh.maps.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.lock() = maps;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, maps: &BTreeMap<String, Vec<String>>) -> Result<(), String> {
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_string_pretty(maps).map_err(|e| e.to_string())?;
        std::fs::write(&tmp, body + "\n")
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    /// The maps of one LU, as given.
    pub fn of(&self, lu: &str) -> Vec<String> {
        self.lock().get(lu).cloned().unwrap_or_default()
    }

    /// Whether `peer` may use `lu`.
    pub fn allows(&self, lu: &str, peer: &Peer) -> bool {
        match self.lock().get(lu) {
            None => true,
            Some(specs) => specs
                .iter()
                .filter_map(|s| s.parse::<ClientSpec>().ok())
                .any(|s| s.matches(peer)),
        }
    }

    /// Add a map (idempotent).
    pub fn map(&self, lu: &str, spec: &ClientSpec) -> Result<(), String> {
        let mut m = self.lock();
        let e = m.entry(lu.to_owned()).or_default();
        let s = spec.to_string();
        if !e.contains(&s) {
            e.push(s);
        }
        self.save(&m)
    }

    /// Remove a map; `Err` if it was not there.
    pub fn unmap(&self, lu: &str, spec: &ClientSpec) -> Result<(), String> {
        let mut m = self.lock();
        let s = spec.to_string();
        let Some(e) = m.get_mut(lu).filter(|e| e.contains(&s)) else {
            return Err(format!("LU {lu} is not mapped to {s}"));
        };
        e.retain(|x| x != &s);
        if e.is_empty() {
            m.remove(lu);
        }
        self.save(&m)
    }

    /// Forget every map of a removed LU.
    pub fn forget(&self, lu: &str) -> Result<(), String> {
        let mut m = self.lock();
        if m.remove(lu).is_some() {
            self.save(&m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_match() {
        let net: ClientSpec = "10.1.0.0/16".parse().unwrap();
        assert!(net.matches(&Peer::tcp("10.1.2.3".parse().unwrap())));
        assert!(!net.matches(&Peer::tcp("10.2.0.1".parse().unwrap())));
        assert!(net.matches(&Peer::tcp("::ffff:10.1.9.9".parse().unwrap())));
        let host: ClientSpec = "127.0.0.1".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.matches(&Peer::tcp("127.0.0.1".parse().unwrap())));
        let v6: ClientSpec = "fd00::/8".parse().unwrap();
        assert!(v6.matches(&Peer::tcp("fd12::1".parse().unwrap())));
        let uid: ClientSpec = "uid:1000".parse().unwrap();
        assert!(uid.matches(&Peer::unix(Some(1000))));
        assert!(!uid.matches(&Peer::unix(Some(0))));
        assert!(!uid.matches(&Peer::tcp("127.0.0.1".parse().unwrap())));
        let tls: ClientSpec = "tls:host1".parse().unwrap();
        assert!(!tls.matches(&Peer::tcp("127.0.0.1".parse().unwrap())));
        let mut p = Peer::tcp("127.0.0.1".parse().unwrap());
        p.tls = Some(TlsIdentity::default());
        assert!(!tls.matches(&p));
        p.tls = Some(TlsIdentity {
            common_names: vec!["host2".into()],
            dns_names: vec!["HOST1".into()],
        });
        assert!(tls.matches(&p));
        assert!(
            host.matches(&p),
            "address specs still match inside TLS sessions"
        );
        assert!(!"tls:Host2".parse::<ClientSpec>().unwrap().matches(&p));
        let mut u = Peer::unix(Some(1000));
        u.tls = Some(TlsIdentity {
            common_names: vec!["host1".into()],
            dns_names: vec![],
        });
        assert!(tls.matches(&u) && uid.matches(&u));
        for bad in ["", "10.0.0.0/33", "uid:x", "tls:", "hostname", "1.2.3.4/"] {
            assert!(bad.parse::<ClientSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn store_persists_and_filters() {
        let d = tempfile::tempdir().unwrap();
        let s = MapStore::load(d.path()).unwrap();
        assert!(s.allows("a", &Peer::tcp("1.2.3.4".parse().unwrap())));
        s.map("a", &"10.0.0.0/8".parse().unwrap()).unwrap();
        s.map("a", &"10.0.0.0/8".parse().unwrap()).unwrap();
        assert_eq!(s.of("a"), vec!["10.0.0.0/8"]);
        assert!(!s.allows("a", &Peer::tcp("1.2.3.4".parse().unwrap())));
        assert!(s.allows("a", &Peer::tcp("10.9.9.9".parse().unwrap())));
        let again = MapStore::load(d.path()).unwrap();
        assert_eq!(again.of("a"), vec!["10.0.0.0/8"]);
        assert!(again.unmap("a", &"1.1.1.1".parse().unwrap()).is_err());
        again.unmap("a", &"10.0.0.0/8".parse().unwrap()).unwrap();
        assert!(again.allows("a", &Peer::tcp("1.2.3.4".parse().unwrap())));
    }
}
