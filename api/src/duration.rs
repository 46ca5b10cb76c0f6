//! Durations written as Go/Kubernetes-style strings: `250ms`, `5s`, `1m30s`, `1.5h`.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration parsed from (and printed as) a string such as `5s` or `1m30s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (write it like 250ms, 5s or 1m30s)")]
pub struct ParseDurationError {
    input: String,
    reason: &'static str,
}

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Duration(StdDuration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Duration(StdDuration::from_secs(s))
    }

    pub fn get(self) -> StdDuration {
        self.0
    }

    /// Parses a sequence of `<decimal number><unit>` terms; units are `ns`, `us` (or `µs`),
    /// `ms`, `s`, `m` and `h`. A bare `0` is accepted as zero.
    pub fn parse(input: &str) -> Result<Self, ParseDurationError> {
        let err = |reason| ParseDurationError { input: input.to_owned(), reason };
        let s = input.trim();
        if s == "0" {
            return Ok(Duration(StdDuration::ZERO));
        }
        if s.is_empty() {
            return Err(err("empty"));
        }
        let mut rest = s;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| err("missing unit"))?;
            if num_len == 0 {
                return Err(err("expected a number"));
            }
            let (num, after) = rest.split_at(num_len);
            let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(err("unknown unit")),
            };
            let (int_part, frac_part) = match num.split_once('.') {
                Some((i, f)) => (i, f),
                None => (num, ""),
            };
            if frac_part.contains('.') || (int_part.is_empty() && frac_part.is_empty()) {
                return Err(err("malformed number"));
            }
            let int: u128 =
                if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| err("number too large"))? };
            let mut nanos = int.checked_mul(unit_nanos).ok_or_else(|| err("too large"))?;
            let mut scale = unit_nanos;
            for digit in frac_part.bytes() {
                scale /= 10;
                nanos += u128::from(digit - b'0') * scale;
            }
            total_nanos = total_nanos.checked_add(nanos).ok_or_else(|| err("too large"))?;
            rest = next;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
        Ok(Duration(StdDuration::new(secs, (total_nanos % 1_000_000_000) as u32)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let nanos = d.as_nanos();
        if nanos.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", d.as_secs())
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", nanos / 1_000)
        } else {
            write!(f, "{nanos}ns")
        }
    }
}

impl std::str::FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Duration::parse(s)
    }
}

/// What the CRD schema accepts as a duration: the same grammar as [`Duration::parse`].
pub const DURATION_PATTERN: &str = r"^(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h))+)$";

impl schemars::JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 250ms, 5s or 1m30s (units ns, us, ms, s, m, h)."
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Duration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_terms() {
        assert_eq!(Duration::parse("5s").unwrap().get(), StdDuration::from_secs(5));
        assert_eq!(Duration::parse("250ms").unwrap().get(), StdDuration::from_millis(250));
        assert_eq!(Duration::parse("1m30s").unwrap().get(), StdDuration::from_secs(90));
        assert_eq!(Duration::parse("1.5h").unwrap().get(), StdDuration::from_secs(5400));
        assert_eq!(Duration::parse("0").unwrap().get(), StdDuration::ZERO);
        assert_eq!(Duration::parse("10us").unwrap().get(), StdDuration::from_micros(10));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        for bad in ["", "5", "5 s", "5d", "ms", "1..5s", "s5"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn prints_in_the_largest_exact_unit() {
        assert_eq!(Duration::from_secs(5).to_string(), "5s");
        assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(Duration::parse("1.5h").unwrap().to_string(), "5400s");
    }
}
