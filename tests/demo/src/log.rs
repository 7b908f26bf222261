//! Logs on stdout, deliberately a mix of two shapes, as real fleets have:
//! plain lines (`2025-01-02T03:04:05.678Z INFO  [frontend] listening on 0.0.0.0:8080`) for life-cycle events and
//! business messages, and JSON lines (`{"ts":…,"level":"info","service":"frontend","msg":"request",…}`) for the
//! access log and errors. Each line is one `write` to stdout.

use std::fmt;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

static SERVICE: OnceLock<String> = OnceLock::new();

/// Sets the service name printed in every line (first call wins).
pub fn init(service: &str) {
    let _ = SERVICE.set(service.to_string());
}

fn service() -> &'static str {
    SERVICE.get().map(String::as_str).unwrap_or("demo-shop")
}

/// Severity of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Noise (log-spam uses it).
    Debug,
    /// Normal operation.
    Info,
    /// Something degraded.
    Warn,
    /// A request failed.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes a plain line.
pub fn plain(level: Level, args: fmt::Arguments<'_>) {
    let line = format!(
        "{} {:<5} [{}] {}\n",
        now_rfc3339(),
        level.as_str().to_ascii_uppercase(),
        service(),
        args
    );
    write_line(&line);
}

/// Writes a JSON line with `ts`, `level`, `service`, `msg` and the given fields.
pub fn json(level: Level, msg: &str, fields: Value) {
    // Built by hand so the common keys come first, in this order, whatever serde_json's map ordering.
    let mut line = format!(
        "{{\"ts\":\"{}\",\"level\":\"{}\",\"service\":{},\"msg\":{}",
        now_rfc3339(),
        level.as_str(),
        Value::from(service()),
        Value::from(msg)
    );
    if let Value::Object(extra) = fields {
        for (k, v) in extra {
            if !v.is_null() {
                let _ = write!(line, ",{}:{v}", Value::from(k));
            }
        }
    }
    line.push_str("}\n");
    write_line(&line);
}

fn write_line(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the service down.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// A plain info line.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::plain($crate::log::Level::Info, format_args!($($t)*)) };
}

/// A plain warning line.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::plain($crate::log::Level::Warn, format_args!($($t)*)) };
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
