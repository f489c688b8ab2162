//! Prometheus-syntax durations (`90s`, `5m`, `1h30m`, `1d`, `250ms`).
//!
//! One grammar for `for:`, `interval:`, config timeouts and CLI flags, the same one Prometheus
//! uses: an ordered sequence of `<integer><unit>` with units `y w d h m s ms`, each at most once
//! and largest first. `0` alone is allowed. Years are 365 days, as in Prometheus.
//! We do not use `humantime` (it reads `5M` as five months) nor `promql_parser`'s helper
//! (it panics on some inputs).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A non-negative duration written in Prometheus syntax. Millisecond precision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PromDuration(pub Duration);

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; use Prometheus syntax such as 30s, 5m or 1h30m")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

const UNITS: [(&str, u64); 7] = [
    ("y", 365 * 24 * 3600 * 1000),
    ("w", 7 * 24 * 3600 * 1000),
    ("d", 24 * 3600 * 1000),
    ("h", 3600 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

impl PromDuration {
    /// Whole seconds (rounded down).
    pub fn as_secs(&self) -> u64 {
        self.0.as_secs()
    }
    /// Milliseconds.
    pub fn as_millis(&self) -> u64 {
        self.0.as_millis() as u64
    }
    /// Builds one from seconds.
    pub fn from_secs(s: u64) -> Self {
        PromDuration(Duration::from_secs(s))
    }
}

impl FromStr for PromDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| DurationError { input: s.to_string(), reason };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s == "0" {
            return Ok(PromDuration(Duration::ZERO));
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut total: u64 = 0;
        // Index into UNITS of the last unit seen: units must strictly decrease.
        let mut last_unit: Option<usize> = None;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                return Err(err("expected a number"));
            }
            let n: u64 = s[start..i].parse().map_err(|_| err("number too large"))?;
            let ustart = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &s[ustart..i];
            if unit.is_empty() {
                return Err(err("missing unit"));
            }
            let idx = UNITS
                .iter()
                .position(|(u, _)| *u == unit)
                .ok_or_else(|| err("unknown unit (units: y, w, d, h, m, s, ms)"))?;
            if last_unit.is_some_and(|l| idx <= l) {
                return Err(err("units must appear once each, largest first"));
            }
            last_unit = Some(idx);
            let ms = n.checked_mul(UNITS[idx].1).ok_or_else(|| err("too large"))?;
            total = total.checked_add(ms).ok_or_else(|| err("too large"))?;
        }
        Ok(PromDuration(Duration::from_millis(total)))
    }
}

impl fmt::Display for PromDuration {
    /// Formats the way Prometheus does: `1h30m`, `90s` becomes `1m30s`, zero is `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis() as u64;
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in UNITS {
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<u64, DurationError> {
        s.parse::<PromDuration>().map(|d| d.as_millis())
    }

    #[test]
    fn parses_prometheus_syntax() {
        assert_eq!(p("90s").unwrap(), 90_000);
        assert_eq!(p("5m").unwrap(), 300_000);
        assert_eq!(p("1h30m").unwrap(), 5_400_000);
        assert_eq!(p("1d").unwrap(), 86_400_000);
        assert_eq!(p("1y").unwrap(), 365 * 86_400_000);
        assert_eq!(p("250ms").unwrap(), 250);
        assert_eq!(p("1m30s500ms").unwrap(), 90_500);
        assert_eq!(p("0").unwrap(), 0);
        assert_eq!(p("0s").unwrap(), 0);
    }

    #[test]
    fn rejects_what_prometheus_rejects() {
        for bad in ["", "5", "5M", "1h 30m", "-5m", "1.5h", "30m1h", "5m5m", "nan", "inf", "1e400s", "m", "99999999999999999999s"] {
            assert!(p(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = p("5M").unwrap_err().to_string();
        assert!(msg.contains("\"5M\"") && msg.contains("unknown unit"), "{msg}");
    }

    proptest! {
        #[test]
        fn display_round_trips(ms in 0u64..10_000_000_000_000) {
            let d = PromDuration(Duration::from_millis(ms));
            let back: PromDuration = d.to_string().parse().unwrap();
            prop_assert_eq!(back, d);
        }
    }
}
