//! A decoded reply, for the few replies the proxy reads itself (CLUSTER SLOTS during topology
//! discovery, the parts of a split multi-key command). Client traffic is never decoded.

use super::{ProtocolError, find_crlf, parse_int};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Value>),
    /// Any other RESP3 scalar, as its text.
    Other(Vec<u8>),
}

impl Value {
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) | Value::Simple(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Decodes one complete reply (as delimited by the reply scanner). Maps and sets decode as
/// arrays of their elements (keys and values alternating).
pub fn decode(buf: &[u8], max_depth: u32) -> Result<Value, ProtocolError> {
    let (v, _) = decode_at(buf, 0, max_depth)?;
    Ok(v)
}

fn decode_at(buf: &[u8], pos: usize, depth: u32) -> Result<(Value, usize), ProtocolError> {
    let bad = ProtocolError::InvalidReply("value");
    let kind = *buf.get(pos).ok_or(bad.clone())?;
    let cr = find_crlf(buf, pos + 1).ok_or(bad.clone())?;
    let line = &buf[pos + 1..cr];
    let next = cr + 2;
    Ok(match kind {
        b'+' => (Value::Simple(line.to_vec()), next),
        b'-' => (Value::Error(line.to_vec()), next),
        b':' => (Value::Int(parse_int(line).ok_or(bad)?), next),
        b'_' => (Value::Null, next),
        b',' | b'#' | b'(' => (Value::Other(line.to_vec()), next),
        b'$' | b'=' | b'!' => {
            let n = parse_int(line).ok_or(bad.clone())?;
            if n < 0 {
                return Ok((Value::Null, next));
            }
            let end = next + n as usize;
            let data = buf.get(next..end).ok_or(bad)?.to_vec();
            let v = if kind == b'!' { Value::Error(data) } else { Value::Bulk(data) };
            (v, end + 2)
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = parse_int(line).ok_or(bad)?;
            if n < 0 {
                return Ok((Value::Null, next));
            }
            if depth == 0 {
                return Err(ProtocolError::TooDeep(0));
            }
            let count = if kind == b'%' { n * 2 } else { n } as usize;
            let mut items = Vec::with_capacity(count.min(1024));
            let mut p = next;
            for _ in 0..count {
                let (v, q) = decode_at(buf, p, depth - 1)?;
                items.push(v);
                p = q;
            }
            (Value::Array(items), p)
        }
        other => return Err(ProtocolError::UnknownType(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_replies_decode() {
        let v = decode(b"*2\r\n*3\r\n:0\r\n:5460\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n$-1\r\n", 8).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a[0].as_array().unwrap()[1].as_int(), Some(5460));
        assert_eq!(a[0].as_array().unwrap()[2].as_array().unwrap()[0].as_bytes(), Some(&b"127.0.0.1"[..]));
        assert_eq!(a[1], Value::Null);
    }

    #[test]
    fn truncated_or_deep_input_is_an_error() {
        assert!(decode(b"*2\r\n:1\r\n", 8).is_err());
        assert!(decode(b"*1\r\n*1\r\n*1\r\n:1\r\n", 2).is_err());
    }
}
