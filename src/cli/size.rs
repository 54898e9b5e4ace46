//! Exact size arguments: integers all the way, no floating point.
//!
//! A size is a number with an optional unit. `K`, `M`, `G`, `T`, `P`, `E` and `KiB`, `MiB`,
//! `GiB`, `TiB`, `PiB`, `EiB` are binary (powers of 1024); `KB`, `MB`, `GB`, `TB`, `PB`, `EB`
//! are decimal (powers of 1000); no unit or `B` is bytes. Units are case-insensitive. A
//! fraction (`1.5G`) is taken exactly and must come to a whole number of bytes.

use thiserror::Error;

/// Why a size argument was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SizeError {
    #[error("bad size {0:?}: expected a number with an optional unit (K/M/G/T/P/E or KiB/MiB/GiB/.. binary, KB/MB/GB/.. decimal, B or none: bytes)")]
    Syntax(String),
    #[error("bad size {input:?}: unknown unit {unit:?} (K/M/G/T/P/E or KiB/MiB/GiB/.. are binary, KB/MB/GB/.. decimal, B or none bytes)")]
    Unit { input: String, unit: String },
    #[error("bad size {0:?}: not a whole number of bytes")]
    Fraction(String),
    #[error("bad size {0:?}: too large (at most 16 EiB - 1 byte)")]
    Overflow(String),
    #[error("bad size {input:?}: {bytes} bytes is not a multiple of 512 (a number without a unit is bytes: did you mean {input}G?)")]
    NotSectorMultiple { input: String, bytes: u64 },
    #[error("bad size {0:?}: must be more than 0 bytes")]
    Zero(String),
}

/// Bytes the unit stands for; `None` for an unknown unit.
fn unit_bytes(unit: &str) -> Option<u64> {
    let u = unit.to_ascii_lowercase();
    let (prefix, kind) = match u.as_str() {
        "" | "b" => return Some(1),
        _ => match u.strip_suffix("ib") {
            Some(p) => (p, 1024),
            None => match u.strip_suffix('b') {
                Some(p) => (p, 1000),
                None => (u.as_str(), 1024),
            },
        },
    };
    let power = match prefix {
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        "e" => 6,
        _ => return None,
    };
    Some(kind_pow(kind, power))
}

fn kind_pow(base: u64, power: u32) -> u64 {
    // 1024^6 = 2^60 and 1000^6 = 10^18 both fit in u64.
    base.pow(power)
}

/// Parse a size exactly: `4096`, `10G` (= `10GiB`, binary), `10GB` (decimal), `1.5M`.
pub fn parse_bytes(input: &str) -> Result<u64, SizeError> {
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim_start();
    let mult = unit_bytes(unit).ok_or_else(|| SizeError::Unit {
        input: input.into(),
        unit: unit.into(),
    })?;
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(SizeError::Syntax(input.into()));
    }
    let overflow = || SizeError::Overflow(input.into());
    // value = (int + frac / 10^d) * mult, computed as (int * 10^d + frac) * mult / 10^d.
    let frac = frac.trim_end_matches('0');
    let digits = u32::try_from(frac.len()).map_err(|_| SizeError::Fraction(input.into()))?;
    let scale = 10u128.checked_pow(digits).ok_or_else(overflow)?;
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        // More than 39 digits cannot fit in u128, let alone u64.
        int.parse().map_err(|_| overflow())?
    };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse()
            .map_err(|_| SizeError::Fraction(input.into()))?
    };
    let scaled = int_v
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac_v))
        .and_then(|v| v.checked_mul(u128::from(mult)))
        .ok_or_else(overflow)?;
    if scaled % scale != 0 {
        return Err(SizeError::Fraction(input.into()));
    }
    u64::try_from(scaled / scale).map_err(|_| overflow())
}

/// A volume size: [`parse_bytes`], more than 0 and a multiple of 512 bytes.
pub fn parse_volume_size(input: &str) -> Result<u64, SizeError> {
    let bytes = parse_bytes(input)?;
    if bytes == 0 {
        return Err(SizeError::Zero(input.into()));
    }
    if bytes % 512 != 0 {
        return Err(SizeError::NotSectorMultiple {
            input: input.trim().into(),
            bytes,
        });
    }
    Ok(bytes)
}

/// clap value parser for byte counts and rates.
pub fn bytes_arg(s: &str) -> Result<u64, String> {
    parse_bytes(s).map_err(|e| e.to_string())
}

/// clap value parser for LU sizes.
pub fn volume_size_arg(s: &str) -> Result<u64, String> {
    parse_volume_size(s).map_err(|e| e.to_string())
}

/// clap value parser for `PATH[:SIZE]` PV arguments, the size parsed exactly.
pub fn pv_spec_arg(s: &str) -> Result<crate::pool::dir::PvSpec, String> {
    use crate::pool::dir::PvSpec;
    match s.rsplit_once(':') {
        Some((p, sz)) if !p.is_empty() => Ok(PvSpec {
            path: p.into(),
            size: Some(parse_volume_size(sz).map_err(|e| e.to_string())?),
        }),
        _ => Ok(PvSpec {
            path: s.into(),
            size: None,
        }),
    }
}

/// A byte count in the largest binary unit that keeps it readable: `512B`, `4KiB`, `1.5GiB`
/// (one decimal, rounded down; exact values print without one).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut unit = 0usize;
    let mut div = 1024u64;
    while unit + 1 < UNITS.len() && b / div >= 1024 {
        unit += 1;
        div *= 1024;
    }
    let name = UNITS.get(unit).copied().unwrap_or("EiB");
    let whole = b / div;
    let tenths = (u128::from(b % div) * 10 / u128::from(div)) as u64;
    if b % div == 0 {
        format!("{whole}{name}")
    } else {
        format!("{whole}.{tenths}{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4096B"), Ok(4096));
        assert_eq!(parse_bytes("10G"), Ok(10 << 30));
        assert_eq!(parse_bytes("10g"), Ok(10 << 30));
        assert_eq!(parse_bytes("10GiB"), Ok(10 << 30));
        assert_eq!(parse_bytes("10gib"), Ok(10 << 30));
        assert_eq!(parse_bytes("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_bytes("10 GB"), Ok(10_000_000_000));
        assert_eq!(parse_bytes("1K"), Ok(1024));
        assert_eq!(parse_bytes("1KB"), Ok(1000));
        assert_eq!(parse_bytes("3M"), Ok(3 << 20));
        assert_eq!(parse_bytes("3MB"), Ok(3_000_000));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert_eq!(parse_bytes("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_bytes("1P"), Ok(1 << 50));
        assert_eq!(parse_bytes("15E"), Ok(15 << 60));
        assert_eq!(parse_bytes(" 0 "), Ok(0));
    }

    #[test]
    fn exact_fractions() {
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("1.5K"), Ok(1536));
        assert_eq!(parse_bytes("0.5KiB"), Ok(512));
        assert_eq!(parse_bytes(".5K"), Ok(512));
        assert_eq!(parse_bytes("2.000G"), Ok(2 << 30));
        assert_eq!(parse_bytes("1.25KB"), Ok(1250));
        // 0.1 KiB = 102.4 bytes; 1.0001 KB = 1000.1 bytes: not whole.
        assert_eq!(parse_bytes("0.1K"), Err(SizeError::Fraction("0.1K".into())));
        assert_eq!(
            parse_bytes("1.0001KB"),
            Err(SizeError::Fraction("1.0001KB".into()))
        );
        assert_eq!(parse_bytes("1.5"), Err(SizeError::Fraction("1.5".into())));
        // No f64 rounding: 2^53 + 1 bytes survives.
        assert_eq!(parse_bytes("9007199254740993"), Ok(9_007_199_254_740_993));
    }

    #[test]
    fn refusals() {
        for bad in ["", "G", "-1G", "1.2.3G", "1e3", "x", "1 2G", "."] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(parse_bytes("10Q"), Err(SizeError::Unit { .. })));
        assert!(matches!(parse_bytes("10GiBs"), Err(SizeError::Unit { .. })));
        assert_eq!(parse_bytes("16E"), Err(SizeError::Overflow("16E".into())));
        assert_eq!(
            parse_bytes("18446744073709551616"),
            Err(SizeError::Overflow("18446744073709551616".into()))
        );
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
        assert!(matches!(
            parse_bytes("99999999999999999999999999999999999999999999G"),
            Err(SizeError::Overflow(_))
        ));
        assert!(parse_bytes("1.0000000000000000000000000000000000000000001G").is_err());
    }

    #[test]
    fn volume_sizes() {
        assert_eq!(parse_volume_size("512"), Ok(512));
        assert_eq!(parse_volume_size("10G"), Ok(10 << 30));
        assert_eq!(parse_volume_size("1GB"), Ok(1_000_000_000));
        assert_eq!(
            parse_volume_size("10"),
            Err(SizeError::NotSectorMultiple {
                input: "10".into(),
                bytes: 10
            })
        );
        assert!(matches!(
            parse_volume_size("1KB"),
            Err(SizeError::NotSectorMultiple { bytes: 1000, .. })
        ));
        assert_eq!(parse_volume_size("0G"), Err(SizeError::Zero("0G".into())));
        let msg = parse_volume_size("10").unwrap_err().to_string();
        assert!(
            msg.contains("multiple of 512") && msg.contains("10G"),
            "{msg}"
        );
    }

    #[test]
    fn pv_specs() {
        let s = pv_spec_arg("/tmp/a.img:1G").unwrap();
        assert_eq!(s.path, std::path::PathBuf::from("/tmp/a.img"));
        assert_eq!(s.size, Some(1 << 30));
        assert_eq!(pv_spec_arg("/dev/sdb").unwrap().size, None);
        assert!(pv_spec_arg("/tmp/a.img:1.1").is_err());
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(4096), "4KiB");
        assert_eq!(human_bytes(10 << 30), "10GiB");
        assert_eq!(human_bytes(3 << 29), "1.5GiB");
        assert_eq!(human_bytes(1_000_000_000), "953.6MiB");
        assert_eq!(human_bytes(u64::MAX), "15.9EiB");
    }
}
