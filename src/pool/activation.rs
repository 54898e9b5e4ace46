//! Activation config disks for linked clones (`sspctl clone SRC NEW --activation ...`).
//!
//! A captured image's activation engine personalises a new machine on its first boot from a
//! small read-only disk beside its root disk (PowerVC copies an ISO with an `ovf-env.xml` to
//! the VIOS and loads it as a virtual optical device). Here that disk is a client image named
//! `NEW-config` ([`config_disk_name`]): served read-only like every image, it holds an
//! ISO 9660 filesystem (Rock Ridge names, volume label `cidata`) with
//!
//! - `meta-data`: cloud-init NoCloud (`instance-id`, `local-hostname`);
//! - `user-data`: `#cloud-config` with the hostname (and fqdn with a domain);
//! - `network-config`: cloud-init network config version 2, only with a static address;
//! - `ovf-env.xml`: an OVF environment with the `com.ibm.ovf.vmcontrol.*` properties of the
//!   PowerVM activation engine (hostname, domain name, default gateway, DNS servers, and the
//!   adapter's DHCP flag, address and netmask).
//!
//! The disk names its clone in the primary volume descriptor's application-use field
//! ([`MARKER`]), so removing the clone also removes its config disk, and nothing else.

#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use super::error::{PoolError, Result};
use super::{validate_name, LuInfo, Pool, CAPTURE_PREFIX};
use crate::format::journal::Record;
use crate::format::node::VOL_IMAGE;
use crate::format::BLOCK;
use rand::RngCore;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Volume label of the ISO 9660 filesystem (what cloud-init's NoCloud looks for).
pub const VOLUME_LABEL: &str = "cidata";
/// Start of the application-use field's text naming the clone a config disk belongs to.
pub const MARKER: &str = "SSP-ACTIVATION-DISK clone=";
/// Config disks are at least this large (a whole number of CD sectors and pool blocks).
pub const MIN_DISK_SIZE: u64 = 1 << 20;

const SECTOR: usize = 2048;
/// The primary volume descriptor's sector, and its application-use field.
const PVD_SECTOR: usize = 16;
const PVD_APP_USE: usize = 883;
const APP_USE_LEN: usize = 512;

/// The config disk of clone `clone`.
pub fn config_disk_name(clone: &str) -> String {
    format!("{clone}-config")
}

/// What the activation engine gets: `hostname=NAME[,ip=A.B.C.D[/PREFIX]][,netmask=M]
/// [,gateway=G][,dns=D]...[,domain=DOMAIN][,adapter=N]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Activation {
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netmask: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The adapter number in the OVF property keys (`...ipv4addresses.N`); 1 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<u32>,
}

const KEYS: &str = "hostname, ip, netmask, gateway, dns, domain, adapter";

/// A hostname the activation engine accepts: letters, digits, '-' and '.', not starting with
/// '-' or '.', at most 63 bytes.
fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn prefix_len(mask: Ipv4Addr) -> Option<u32> {
    let m = u32::from(mask);
    let n = m.leading_ones();
    (m.checked_shl(n).unwrap_or(0) == 0).then_some(n)
}

impl Activation {
    /// Check every field (requests from the admin socket are checked again here).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !valid_hostname(&self.hostname) {
            return Err(format!(
                "invalid hostname {:?}: letters, digits, '-' and '.', at most 63 bytes, not starting with '-' or '.'",
                self.hostname
            ));
        }
        if let Some(d) = &self.domain {
            if !valid_hostname(d) {
                return Err(format!("invalid domain {d:?}"));
            }
        }
        if let Some(m) = self.netmask {
            if self.ip.is_none() {
                return Err("netmask= needs ip=".into());
            }
            if prefix_len(m).is_none() {
                return Err(format!("netmask {m} is not a contiguous mask"));
            }
        }
        if self.adapter == Some(0) {
            return Err("adapter numbers start at 1".into());
        }
        Ok(())
    }

    fn adapter(&self) -> u32 {
        self.adapter.unwrap_or(1)
    }

    /// The netmask, from netmask= or ip=A/PREFIX; /24 if neither said.
    fn mask(&self) -> Ipv4Addr {
        self.netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0))
    }

    /// The files of the config disk for clone `clone`, by name.
    pub fn files(&self, clone: &str, instance_id: &str) -> Vec<(String, Vec<u8>)> {
        let h = &self.hostname;
        let mut files = Vec::new();
        files.push((
            "meta-data".to_owned(),
            format!("instance-id: {instance_id}\nlocal-hostname: {h}\n").into_bytes(),
        ));
        let mut ud = format!(
            "#cloud-config\n# Written by sspctl clone --activation for the linked clone {clone}.\n\
             preserve_hostname: false\nhostname: {h}\n"
        );
        if let Some(d) = &self.domain {
            ud.push_str(&format!("fqdn: {h}.{d}\n"));
        }
        files.push(("user-data".to_owned(), ud.into_bytes()));
        if let Some(ip) = self.ip {
            let prefix = prefix_len(self.mask()).unwrap_or(24);
            let mut nc = format!(
                "version: 2\nethernets:\n  adapter{}:\n    match:\n      name: \"e*\"\n    \
                 dhcp4: false\n    addresses: [{ip}/{prefix}]\n",
                self.adapter()
            );
            if let Some(g) = self.gateway {
                nc.push_str(&format!(
                    "    routes:\n      - to: default\n        via: {g}\n"
                ));
            }
            if !self.dns.is_empty() || self.domain.is_some() {
                nc.push_str("    nameservers:\n");
                if !self.dns.is_empty() {
                    let d: Vec<String> = self.dns.iter().map(|d| d.to_string()).collect();
                    nc.push_str(&format!("      addresses: [{}]\n", d.join(", ")));
                }
                if let Some(d) = &self.domain {
                    nc.push_str(&format!("      search: [{d}]\n"));
                }
            }
            files.push(("network-config".to_owned(), nc.into_bytes()));
        }
        files.push(("ovf-env.xml".to_owned(), self.ovf_env().into_bytes()));
        files
    }

    /// The OVF environment, with the property keys PowerVC / VMControl write.
    pub fn ovf_env(&self) -> String {
        let n = self.adapter();
        let opt = |a: Option<Ipv4Addr>| a.map(|a| a.to_string()).unwrap_or_default();
        let dns: Vec<String> = self.dns.iter().map(|d| d.to_string()).collect();
        let props: Vec<(String, String)> = vec![
            (
                "com.ibm.ovf.vmcontrol.system.networking.hostname".into(),
                self.hostname.clone(),
            ),
            (
                "com.ibm.ovf.vmcontrol.system.networking.domainname".into(),
                self.domain.clone().unwrap_or_default(),
            ),
            (
                "com.ibm.ovf.vmcontrol.system.networking.ipv4defaultgateway".into(),
                opt(self.gateway),
            ),
            (
                "com.ibm.ovf.vmcontrol.system.networking.dnsIPaddresses".into(),
                dns.join(","),
            ),
            (
                format!("com.ibm.ovf.vmcontrol.adapter.networking.usedhcpv4.{n}"),
                if self.ip.is_some() { "false" } else { "true" }.into(),
            ),
            (
                format!("com.ibm.ovf.vmcontrol.adapter.networking.ipv4addresses.{n}"),
                opt(self.ip),
            ),
            (
                format!("com.ibm.ovf.vmcontrol.adapter.networking.ipv4netmasks.{n}"),
                self.ip.map(|_| self.mask().to_string()).unwrap_or_default(),
            ),
        ];
        let mut x = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\"\n    \
             xmlns:oe=\"http://schemas.dmtf.org/ovf/environment/1\"\n    \
             xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\" oe:id=\"vs0\">\n  \
             <PropertySection>\n",
        );
        for (k, v) in props {
            x.push_str(&format!(
                "    <Property oe:key=\"{}\" oe:value=\"{}\"/>\n",
                xml_escape(&k),
                xml_escape(&v)
            ));
        }
        x.push_str("  </PropertySection>\n</Environment>\n");
        x
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

impl FromStr for Activation {
    type Err = String;

    /// `hostname=NAME,ip=10.0.0.5/24,gateway=10.0.0.1,dns=10.0.0.2,dns=10.0.0.3`
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut a = Activation {
            hostname: String::new(),
            ip: None,
            netmask: None,
            gateway: None,
            dns: Vec::new(),
            domain: None,
            adapter: None,
        };
        let mut seen: Vec<&str> = Vec::new();
        let addr = |k: &str, v: &str| {
            v.parse::<Ipv4Addr>()
                .map_err(|_| format!("{k}={v}: not an IPv4 address"))
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("{part:?} is not KEY=VALUE (keys: {KEYS})"));
            };
            if k != "dns" && seen.contains(&k) {
                return Err(format!("{k}= given twice"));
            }
            seen.push(k);
            match k {
                "hostname" => a.hostname = v.to_owned(),
                "ip" => {
                    let (ip, prefix) = match v.split_once('/') {
                        Some((ip, p)) => (ip, Some(p)),
                        None => (v, None),
                    };
                    a.ip = Some(addr(k, ip)?);
                    if let Some(p) = prefix {
                        let p: u32 = p
                            .parse()
                            .ok()
                            .filter(|p| (1..=32).contains(p))
                            .ok_or_else(|| format!("ip={v}: the prefix must be 1 to 32"))?;
                        let m = Ipv4Addr::from(u32::MAX << (32 - p));
                        if a.netmask.is_some_and(|n| n != m) {
                            return Err(format!("ip={v} and netmask= disagree"));
                        }
                        a.netmask = Some(m);
                    }
                }
                "netmask" => {
                    let m = addr(k, v)?;
                    if a.netmask.is_some_and(|n| n != m) {
                        return Err(format!("netmask={v} and the prefix of ip= disagree"));
                    }
                    a.netmask = Some(m);
                }
                "gateway" => a.gateway = Some(addr(k, v)?),
                "dns" => a.dns.push(addr(k, v)?),
                "domain" => a.domain = Some(v.to_owned()),
                "adapter" => {
                    a.adapter = Some(
                        v.parse()
                            .map_err(|_| format!("adapter={v}: not a number"))?,
                    )
                }
                _ => return Err(format!("unknown key {k:?} (keys: {KEYS})")),
            }
        }
        if a.hostname.is_empty() {
            return Err("hostname=NAME is required".into());
        }
        a.validate()?;
        Ok(a)
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hostname={}", self.hostname)?;
        if let Some(ip) = self.ip {
            write!(f, ",ip={ip}/{}", prefix_len(self.mask()).unwrap_or(24))?;
        }
        if let Some(g) = self.gateway {
            write!(f, ",gateway={g}")?;
        }
        for d in &self.dns {
            write!(f, ",dns={d}")?;
        }
        if let Some(d) = &self.domain {
            write!(f, ",domain={d}")?;
        }
        if let Some(n) = self.adapter {
            write!(f, ",adapter={n}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// ISO 9660 (ECMA-119) with Rock Ridge (RRIP 1.09 via SUSP) names: one root directory of small
// files, as `xorriso -as mkisofs -V cidata -r` lays it out, without Joliet.

fn both16(v: u16) -> [u8; 4] {
    let le = v.to_le_bytes();
    [le[0], le[1], le[1], le[0]]
}

fn both32(v: u32) -> [u8; 8] {
    let le = v.to_le_bytes();
    [le[0], le[1], le[2], le[3], le[3], le[2], le[1], le[0]]
}

fn be32(v: u32) -> [u8; 4] {
    let le = v.to_le_bytes();
    [le[3], le[2], le[1], le[0]]
}

/// A UTC time, broken down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Civil {
    /// From seconds since the Unix epoch (days to a proleptic Gregorian date, H. Hinnant).
    pub fn from_unix(secs: u64) -> Civil {
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    fn now() -> Civil {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Civil::from_unix(secs)
    }

    /// Directory-record form: years since 1900, month, day, hour, minute, second, UTC.
    fn record(&self) -> [u8; 7] {
        [
            self.year.saturating_sub(1900).min(255) as u8,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        ]
    }

    /// Volume-descriptor form: "YYYYMMDDHHMMSScc" and the UTC offset.
    fn descriptor(&self) -> [u8; 17] {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year.min(9999),
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second
        );
        let mut d = [0u8; 17];
        for (d, c) in d.iter_mut().zip(s.bytes().take(16)) {
            *d = c;
        }
        d
    }
}

/// The ISO 9660 level-1 identifier for a file name: upper case, 8.3, `;1`.
fn iso_ident(name: &str) -> String {
    let clean = |s: &str, n: usize| -> String {
        s.chars()
            .map(|c| {
                let c = c.to_ascii_uppercase();
                if c.is_ascii_alphanumeric() {
                    c
                } else {
                    '_'
                }
            })
            .take(n)
            .collect()
    };
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    format!("{}.{};1", clean(base, 8), clean(ext, 3))
}

/// A directory record (ECMA-119 9.1) with a system-use field.
fn dir_record(ident: &[u8], extent: u32, len: u32, dir: bool, t: &[u8; 7], su: &[u8]) -> Vec<u8> {
    // Record length (set last) and extended attribute record length.
    let mut r = vec![0u8, 0];
    r.extend_from_slice(&both32(extent));
    r.extend_from_slice(&both32(len));
    r.extend_from_slice(t);
    r.push(if dir { 2 } else { 0 });
    // File unit size and interleave gap.
    r.extend_from_slice(&[0, 0]);
    r.extend_from_slice(&both16(1));
    r.push(ident.len() as u8);
    r.extend_from_slice(ident);
    if ident.len() % 2 == 0 {
        r.push(0);
    }
    r.extend_from_slice(su);
    if r.len() % 2 == 1 {
        r.push(0);
    }
    let n = r.len() as u8;
    if let Some(l) = r.first_mut() {
        *l = n;
    }
    r
}

/// Rock Ridge POSIX attributes (PX, RRIP 1.09: 36 bytes).
fn rr_px(mode: u32, links: u32) -> Vec<u8> {
    let mut e = vec![b'P', b'X', 36, 1];
    for v in [mode, links, 0, 0] {
        e.extend_from_slice(&both32(v));
    }
    e
}

/// Rock Ridge alternate name (NM).
fn rr_nm(name: &str) -> Vec<u8> {
    let mut e = vec![b'N', b'M', (5 + name.len()) as u8, 1, 0];
    e.extend_from_slice(name.as_bytes());
    e
}

/// SUSP indicator (SP) and the extensions reference (ER) naming RRIP 1991A.
fn susp_root() -> Vec<u8> {
    let mut e = vec![b'S', b'P', 7, 1, 0xBE, 0xEF, 0];
    let id = b"RRIP_1991A";
    let des: &[u8] =
        b"THE ROCK RIDGE INTERCHANGE PROTOCOL PROVIDES SUPPORT FOR POSIX FILE SYSTEM SEMANTICS";
    let src: &[u8] = b"SSP";
    e.extend_from_slice(&[
        b'E',
        b'R',
        (8 + id.len() + des.len() + src.len()) as u8,
        1,
        id.len() as u8,
        des.len() as u8,
        src.len() as u8,
        1,
    ]);
    e.extend_from_slice(id);
    e.extend_from_slice(des);
    e.extend_from_slice(src);
    e
}

fn put_str(buf: &mut [u8], s: &str) {
    buf.fill(b' ');
    for (d, c) in buf.iter_mut().zip(s.bytes()) {
        *d = c;
    }
}

/// `len` bytes of `buf` at `at`. The image layout is fixed, so a miss is an engine bug.
fn region(buf: &mut [u8], at: usize, len: usize) -> Result<&mut [u8]> {
    let total = buf.len();
    buf.get_mut(at..at + len)
        .ok_or_else(|| PoolError::Internal(format!("config disk: {len} bytes at {at} of {total}")))
}

/// Copy `src` into `buf` at `at` (see [`region`]).
fn put(buf: &mut [u8], at: usize, src: &[u8]) -> Result<()> {
    region(buf, at, src.len())?.copy_from_slice(src);
    Ok(())
}

/// An ISO 9660 image of one root directory holding `files` (name, content), with Rock Ridge
/// names, volume label `label`, `app_use` in the primary volume descriptor's application-use
/// field, and its size padded to a multiple of `pad_to` bytes (a multiple of 2048).
pub fn iso9660(
    label: &str,
    files: &[(String, Vec<u8>)],
    app_use: &[u8],
    when: Civil,
    pad_to: usize,
) -> Result<Vec<u8>> {
    const ROOT: usize = 20;
    let t = when.record();
    let mut sorted: Vec<(String, &str, &[u8])> = files
        .iter()
        .map(|(n, d)| (iso_ident(n), n.as_str(), d.as_slice()))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    // The root directory: ".", "..", then the files in identifier order.
    let mut next = ROOT + 1;
    let mut extents = Vec::new();
    for (_, _, d) in &sorted {
        extents.push(next);
        next += d.len().div_ceil(SECTOR);
    }
    let total = next * SECTOR;
    let pad_to = pad_to.max(SECTOR);
    let size = total.div_ceil(pad_to) * pad_to;
    let sectors = (size / SECTOR) as u32;

    let mut root = Vec::new();
    let mut dot_su = susp_root();
    dot_su.splice(7..7, rr_px(0o040_555, 2));
    root.extend(dir_record(
        &[0],
        ROOT as u32,
        SECTOR as u32,
        true,
        &t,
        &dot_su,
    ));
    root.extend(dir_record(
        &[1],
        ROOT as u32,
        SECTOR as u32,
        true,
        &t,
        &rr_px(0o040_555, 2),
    ));
    for ((ident, name, data), &ext) in sorted.iter().zip(&extents) {
        let mut su = rr_px(0o100_444, 1);
        su.extend(rr_nm(name));
        root.extend(dir_record(
            ident.as_bytes(),
            ext as u32,
            data.len() as u32,
            false,
            &t,
            &su,
        ));
    }
    if root.len() > SECTOR {
        return Err(PoolError::Invalid(format!(
            "the config disk's directory needs {} bytes, more than one sector",
            root.len()
        )));
    }

    let mut img = vec![0u8; size];
    // Primary volume descriptor (ECMA-119 8.4).
    {
        let p = region(&mut img, PVD_SECTOR * SECTOR, SECTOR)?;
        put(p, 0, b"\x01CD001\x01")?;
        put_str(region(p, 8, 32)?, "LINUX");
        put_str(region(p, 40, 32)?, label);
        put(p, 80, &both32(sectors))?;
        put(p, 120, &both16(1))?;
        put(p, 124, &both16(1))?;
        put(p, 128, &both16(SECTOR as u16))?;
        put(p, 132, &both32(10))?;
        put(p, 140, &18u32.to_le_bytes())?;
        put(p, 148, &be32(19))?;
        let rr = dir_record(&[0], ROOT as u32, SECTOR as u32, true, &t, &[]);
        put(p, 156, &rr)?;
        put_str(region(p, 190, 128)?, "");
        put_str(region(p, 318, 128)?, "SSP");
        put_str(region(p, 446, 128)?, "SSPCTL CLONE --ACTIVATION");
        put_str(
            region(p, 574, 128)?,
            "SSP ACTIVATION CONFIG DISK (CLOUD-INIT NOCLOUD, OVF)",
        );
        put_str(region(p, 702, 111)?, "");
        let d = when.descriptor();
        put(p, 813, &d)?;
        put(p, 830, &d)?;
        region(p, 847, 16)?.fill(b'0');
        region(p, 864, 16)?.fill(b'0');
        put(p, 881, &[1])?;
        let n = app_use.len().min(APP_USE_LEN);
        put(p, PVD_APP_USE, app_use.get(..n).unwrap_or_default())?;
    }
    // Volume descriptor set terminator.
    put(&mut img, 17 * SECTOR, b"\xffCD001\x01")?;
    // Path tables (the root only): L (little-endian) at 18, M (big-endian) at 19.
    let mut l = vec![1u8, 0];
    l.extend_from_slice(&(ROOT as u32).to_le_bytes());
    l.extend_from_slice(&1u16.to_le_bytes());
    l.extend_from_slice(&[0, 0]);
    put(&mut img, 18 * SECTOR, &l)?;
    let mut m = vec![1u8, 0];
    m.extend_from_slice(&be32(ROOT as u32));
    m.extend_from_slice(&[0, 1, 0, 0]);
    put(&mut img, 19 * SECTOR, &m)?;
    put(&mut img, ROOT * SECTOR, &root)?;
    for ((_, _, data), &ext) in sorted.iter().zip(&extents) {
        put(&mut img, ext * SECTOR, data)?;
    }
    Ok(img)
}

/// The clone an ISO image's primary volume descriptor says it is the config disk of.
pub fn marked_clone(pvd: &[u8]) -> Option<&str> {
    let f = pvd.get(PVD_APP_USE..PVD_APP_USE + APP_USE_LEN)?;
    if pvd.get(1..6) != Some(b"CD001".as_slice()) {
        return None;
    }
    let f = f.strip_prefix(MARKER.as_bytes())?;
    let end = f
        .iter()
        .position(|&b| b == 0 || b == b'\n')
        .unwrap_or(f.len());
    std::str::from_utf8(f.get(..end)?).ok()
}

/// The whole config disk for clone `clone`: ISO image bytes, padded to [`MIN_DISK_SIZE`].
pub fn config_disk(clone: &str, a: &Activation) -> Result<Vec<u8>> {
    let mut r = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut r);
    let iid = format!(
        "ssp-{clone}-{}",
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let marker = format!("{MARKER}{clone}\n");
    iso9660(
        VOLUME_LABEL,
        &a.files(clone, &iid),
        marker.as_bytes(),
        Civil::now(),
        MIN_DISK_SIZE as usize,
    )
}

impl Pool {
    /// A new client image `name` holding `data` (read-only to clients from the moment it has
    /// its name): filled under a hidden name first, so a crash leaves nothing behind. Blocks of
    /// zeroes stay thin.
    pub fn image_create_from(&self, name: &str, data: &[u8]) -> Result<LuInfo> {
        validate_name(name)?;
        if data.is_empty() {
            return Err(PoolError::Invalid("an image needs some data".into()));
        }
        let tmp = format!("{CAPTURE_PREFIX}{name}");
        let mut g = self.lock();
        if !g.sharing_enabled() {
            return Err(PoolError::Config(
                "this pool was created by an older ssp without client-image support".into(),
            ));
        }
        if g.names.contains_key(name) {
            return Err(PoolError::Exists(format!("{name} already exists")));
        }
        if let Some(&stale) = g.names.get(&tmp) {
            g.begin_remove(stale)?;
        }
        let id = g.next_volume_id;
        let mut udid = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut udid);
        g.log_and_apply(Record::VolCreate {
            id,
            kind: VOL_IMAGE,
            size: data.len() as u64,
            udid,
            name: tmp,
        })?;
        let mut fill = || -> Result<()> {
            for (i, b) in data.chunks(BLOCK).enumerate() {
                if b.iter().any(|&x| x != 0) {
                    g.write_any(id, (i * BLOCK) as u64, b)?;
                }
            }
            g.flush()?;
            g.log_and_apply(Record::VolRename {
                id,
                name: name.to_owned(),
            })?;
            g.flush()
        };
        if let Err(e) = fill() {
            let _ = g.begin_remove(id);
            return Err(e);
        }
        g.trim_caches();
        let v = g
            .vols
            .get(&id)
            .ok_or_else(|| PoolError::NotFound(name.into()))?;
        Ok(Self::vol_info(&g, v))
    }

    /// `clone_create` plus the clone's activation config disk (a client image, see the module
    /// comment). Returns the clone and the config disk. The disk is made first: if the clone is
    /// refused, it is removed again. A config disk left by an earlier attempt whose clone was
    /// never made is replaced.
    pub fn clone_with_activation(
        &self,
        src: &str,
        name: &str,
        a: &Activation,
    ) -> Result<(LuInfo, LuInfo)> {
        validate_name(name)?;
        a.validate().map_err(PoolError::Invalid)?;
        let disk = config_disk_name(name);
        validate_name(&disk).map_err(|_| {
            PoolError::Invalid(format!(
                "the clone's name is too long for its config disk {disk:?} (128 bytes at most)"
            ))
        })?;
        self.lu_get(src)?;
        if self.lu_get(name).is_ok() {
            return Err(PoolError::Exists(format!(
                "an LU named {name} already exists"
            )));
        }
        if self.lu_get(&disk).is_ok() {
            if self.activation_disk_of(name).as_deref() == Some(disk.as_str()) {
                // Left by an attempt cut short before its clone was made.
                self.image_remove(&disk)?;
            } else {
                return Err(PoolError::Exists(format!(
                    "{disk} already exists: the config disk of clone {name} would take that name"
                )));
            }
        }
        let image = config_disk(name, a)?;
        let info = self.image_create_from(&disk, &image)?;
        match self.clone_create(src, name) {
            Ok(clone) => Ok((clone, info)),
            Err(e) => {
                let _ = self.image_remove(&disk);
                Err(e)
            }
        }
    }

    /// The config disk made for clone `clone` by [`Pool::clone_with_activation`], if it still
    /// exists: a client image named `CLONE-config` whose volume descriptor names `clone`.
    pub fn activation_disk_of(&self, clone: &str) -> Option<String> {
        let disk = config_disk_name(clone);
        let info = self.lu_get(&disk).ok()?;
        if info.kind != "image" || info.size < ((PVD_SECTOR + 1) * SECTOR) as u64 {
            return None;
        }
        let vol = self.lu_id(&disk).ok()?;
        let mut pvd = vec![0u8; SECTOR];
        self.read(vol, (PVD_SECTOR * SECTOR) as u64, &mut pvd)
            .ok()?;
        (marked_clone(&pvd)? == clone).then_some(disk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_spec() {
        let a: Activation =
            "hostname=vm1,ip=10.0.0.5/24,gateway=10.0.0.1,dns=10.0.0.2,dns=10.0.0.3,domain=example.com"
                .parse()
                .unwrap();
        assert_eq!(a.hostname, "vm1");
        assert_eq!(a.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(a.dns.len(), 2);
        assert_eq!(a.to_string().parse::<Activation>().unwrap(), a);
        let b: Activation = "hostname=vm2,ip=192.168.1.9,netmask=255.255.0.0"
            .parse()
            .unwrap();
        assert_eq!(b.to_string(), "hostname=vm2,ip=192.168.1.9/16");
        for bad in [
            "",
            "ip=10.0.0.1",
            "hostname=-x",
            "hostname=a b",
            "hostname=vm,ip=300.0.0.1",
            "hostname=vm,netmask=255.0.0.0",
            "hostname=vm,ip=10.0.0.1/33",
            "hostname=vm,ip=10.0.0.1/8,netmask=255.255.0.0",
            "hostname=vm,ip=10.0.0.1,netmask=255.0.255.0",
            "hostname=vm,colour=blue",
            "hostname=vm,hostname=vm2",
            "hostname=vm,adapter=0",
        ] {
            assert!(bad.parse::<Activation>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ovf_env_has_the_vmcontrol_keys() {
        let a: Activation = "hostname=vm1,ip=10.0.0.5/24,gateway=10.0.0.1,dns=10.0.0.2,adapter=5"
            .parse()
            .unwrap();
        let x = a.ovf_env();
        for kv in [
            r#"oe:key="com.ibm.ovf.vmcontrol.system.networking.hostname" oe:value="vm1""#,
            r#"oe:key="com.ibm.ovf.vmcontrol.system.networking.ipv4defaultgateway" oe:value="10.0.0.1""#,
            r#"oe:key="com.ibm.ovf.vmcontrol.system.networking.dnsIPaddresses" oe:value="10.0.0.2""#,
            r#"oe:key="com.ibm.ovf.vmcontrol.adapter.networking.usedhcpv4.5" oe:value="false""#,
            r#"oe:key="com.ibm.ovf.vmcontrol.adapter.networking.ipv4addresses.5" oe:value="10.0.0.5""#,
            r#"oe:key="com.ibm.ovf.vmcontrol.adapter.networking.ipv4netmasks.5" oe:value="255.255.255.0""#,
        ] {
            assert!(x.contains(kv), "{kv} missing in {x}");
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(
            Civil::from_unix(0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        let c = Civil::from_unix(1_709_210_096); // 2024-02-29 12:34:56 UTC
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second),
            (2024, 2, 29, 12, 34, 56)
        );
    }

    #[test]
    fn iso_layout_and_marker() {
        let a: Activation = "hostname=vm1".parse().unwrap();
        let img = config_disk("vm1-rootvg", &a).unwrap();
        assert_eq!(img.len(), MIN_DISK_SIZE as usize);
        let pvd = &img[PVD_SECTOR * SECTOR..(PVD_SECTOR + 1) * SECTOR];
        assert_eq!(&pvd[..7], b"\x01CD001\x01");
        assert_eq!(&pvd[40..46], b"cidata");
        assert_eq!(marked_clone(pvd), Some("vm1-rootvg"));
        assert_eq!(&img[17 * SECTOR..17 * SECTOR + 7], b"\xffCD001\x01");
        assert_eq!(iso_ident("meta-data"), "META_DAT.;1");
        assert_eq!(iso_ident("ovf-env.xml"), "OVF_ENV.XML;1");
        let root = &img[20 * SECTOR..21 * SECTOR];
        // ".": SP first in its system-use field; then "..", then the three files.
        assert_eq!(&root[34..37], b"SP\x07");
        let mut off = 0;
        let mut n = 0;
        while root[off] != 0 {
            off += usize::from(root[off]);
            n += 1;
        }
        assert_eq!(n, 2 + 3, "., .., meta-data, ovf-env.xml, user-data");
    }
}
