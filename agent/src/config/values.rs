//! Parsers of the values options take as text: sizes, durations and CIDRs.

use std::time::Duration;

/// `ADDR/LEN` (a bare address is `/32` or `/128`), with no bits set past the prefix.
pub fn parse_cidr(text: &str) -> Result<(std::net::IpAddr, u8), String> {
    let text = text.trim();
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{text:?}: not an IP address or CIDR"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|&l| l <= max)
            .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        None => max,
    };
    let bits = match addr {
        std::net::IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        std::net::IpAddr::V6(a) => u128::from(a),
    };
    // IPv4 sits in the top 32 bits, so for both families the prefix is the top `len` bits.
    let host = if len >= 128 {
        0
    } else {
        bits & (u128::MAX >> len)
    };
    if host != 0 {
        return Err(format!(
            "{text:?}: bits are set past the /{len} prefix (did you mean the network address?)"
        ));
    }
    Ok((addr, len))
}

/// Parses a size: bytes, or a number with a unit: `Ki`/`KiB`, `Mi`/`MiB`, `Gi`/`GiB` (powers of
/// 1024), `k`/`K`/`KB`, `M`/`MB`, `G`/`GB` (powers of 1000, as Kubernetes quantities are).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 256MiB, 256Mi or 268435456"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "k" | "K" | "KB" | "kB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use Ki, Mi, Gi, KiB, MiB, GiB, k, M or G)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// Parses `500ms`, `15s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 500ms, 15s, 2m or 1h"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

/// `text` split after its leading digits.
fn number_and_unit(text: &str) -> (&str, &str) {
    text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    )
}
