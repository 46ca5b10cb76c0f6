//! RESP framing, written for a proxy: find where frames end, read only what routing needs, and
//! leave the bytes as they are so they can be forwarded without re-encoding.
//!
//! - [`request`]: commands from clients (arrays of bulk strings, or inline commands), with the
//!   limits of [`Limits`] and errors worded like Redis's own.
//! - [`reply`]: replies from Redis (every RESP2 and RESP3 type), found by a resumable scanner.
//!
//! Both parsers are resumable: bytes that arrive over many reads are scanned once.

pub mod reply;
pub mod request;
pub mod value;

use std::fmt;

/// Bounds on client input (see `limits` in docs/config.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bulk_length: u64,
    pub max_array_length: u64,
    pub max_inline_length: u64,
    pub max_nesting_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        let l = respmesh_api::proxy::Limits::default();
        Limits::from(&l)
    }
}

impl From<&respmesh_api::proxy::Limits> for Limits {
    fn from(l: &respmesh_api::proxy::Limits) -> Self {
        Limits {
            max_bulk_length: l.max_bulk_length,
            max_array_length: l.max_array_length,
            max_inline_length: l.max_inline_length,
            max_nesting_depth: l.max_nesting_depth,
        }
    }
}

/// A framing error. The client gets `-ERR Protocol error: <this>` and its connection is closed,
/// as Redis does; the wording matches Redis's where Redis has one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("too big inline request")]
    InlineTooLong,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("too big mbulk count string")]
    CountLineTooLong,
    #[error("invalid multibulk length")]
    InvalidArrayLength,
    #[error("command has {got} elements, over this proxy's limit of {limit} (limits.maxArrayLength)")]
    ArrayTooLong { got: u64, limit: u64 },
    #[error("unauthenticated multibulk length")]
    UnauthenticatedArrayLength,
    #[error("too big bulk count string")]
    BulkLineTooLong,
    #[error("expected '$', got '{}'", *.0 as char)]
    ExpectedBulk(u8),
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("bulk string of {got} bytes is over this proxy's limit of {limit} (limits.maxBulkLength)")]
    BulkTooLong { got: u64, limit: u64 },
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("expected CRLF after bulk string")]
    MissingCrlf,
    // Errors below come from upstream replies; clients never cause them.
    #[error("unknown reply type byte '{}'", Escaped(*.0))]
    UnknownType(u8),
    #[error("invalid {0} in reply")]
    InvalidReply(&'static str),
    #[error("reply nested deeper than {0} levels (limits.maxNestingDepth)")]
    TooDeep(u32),
}

struct Escaped(u8);

impl fmt::Display for Escaped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::ascii::escape_default(self.0))
    }
}

/// Finds `\r\n` at or after `from`; returns the index of `\r`.
#[inline]
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let nl = i + memchr::memchr(b'\n', &buf[i..])?;
        if nl > from && buf[nl - 1] == b'\r' {
            return Some(nl - 1);
        }
        i = nl + 1;
    }
    None
}

/// Parses a decimal integer as RESP writes lengths: optional `-`, digits, nothing else.
#[inline]
pub(crate) fn parse_int(digits: &[u8]) -> Option<i64> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_int_accepts_only_plain_decimal() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-1"), Some(-1));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"-", b"+1", b"1 ", b"12a", b"99999999999999999999"] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn find_crlf_skips_bare_newlines() {
        assert_eq!(find_crlf(b"ab\ncd\r\n", 0), Some(5));
        assert_eq!(find_crlf(b"\r\n", 0), Some(0));
        assert_eq!(find_crlf(b"abc\r", 0), None);
        assert_eq!(find_crlf(b"a\r\nb\r\n", 3), Some(4));
    }
}
