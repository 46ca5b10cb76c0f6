//! Every reply that the proxy itself produces, in one place (listed for users in
//! docs/errors.md). Replies that copy Redis's own wording say so; the rest start with
//! `respmesh:` so that a user can tell the proxy's errors from Redis's.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

pub const OK: &[u8] = b"+OK\r\n";
/// An ERROR fault (the wording clients of Aeraki/Envoy know).
pub const FAULT_ERROR: &[u8] = b"-Fault Injected: Error\r\n";
pub const RESET: &[u8] = b"+RESET\r\n";

/// Redis's own reply to a command from a client that has not authenticated.
pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
/// Redis's reply to `HELLO` without `AUTH` from a client that has not authenticated.
pub const NOAUTH_HELLO: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
/// `AUTH <password>` with a wrong client password (the wording clients of Aeraki/Envoy know).
pub const INVALID_PASSWORD: &[u8] = b"-ERR invalid password\r\n";
/// `AUTH <user> <password>` (or `HELLO ... AUTH`) with wrong credentials: Redis's wording.
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
/// Redis's reply to AUTH with too many arguments.
pub const SYNTAX_ERROR: &[u8] = b"-ERR syntax error\r\n";
/// Redis's reply to an invalid client name.
pub const BAD_CLIENT_NAME: &[u8] = b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n";
/// Redis's reply to `HELLO` with a protocol version that is not a number.
pub const HELLO_BAD_PROTOVER: &[u8] = b"-ERR Protocol version is not an integer or out of range\r\n";
/// Redis's reply to `HELLO` with an unsupported protocol version.
pub const NOPROTO: &[u8] = b"-NOPROTO unsupported protocol version\r\n";

/// Redis's arity error, for commands the proxy answers itself.
pub fn wrong_arity(out: &mut BytesMut, command: &str) {
    let _ = write!(out, "-ERR wrong number of arguments for '{command}' command\r\n");
}

/// Redis's reply to UNSUBSCRIBE, PUNSUBSCRIBE or SUNSUBSCRIBE (`kind`, lower case) from a
/// connection subscribed to nothing: one message per channel named, or one with a null
/// channel when none is, each counting 0 subscriptions; pushes in RESP3.
pub fn unsubscribed<'a>(out: &mut BytesMut, kind: &str, channels: impl Iterator<Item = &'a [u8]>, proto: u8) {
    let head = if proto >= 3 { '>' } else { '*' };
    let mut one = |channel: Option<&[u8]>| {
        let _ = write!(out, "{head}3\r\n${}\r\n{kind}\r\n", kind.len());
        match channel {
            Some(c) => {
                let _ = write!(out, "${}\r\n", c.len());
                out.put_slice(c);
                out.put_slice(b"\r\n");
            }
            None if proto >= 3 => out.put_slice(b"_\r\n"),
            None => out.put_slice(b"$-1\r\n"),
        }
        out.put_slice(b":0\r\n");
    };
    let mut any = false;
    for c in channels {
        one(Some(c));
        any = true;
    }
    if !any {
        one(None);
    }
}

/// Redis's reply to an unknown HELLO option.
pub fn hello_bad_option(out: &mut BytesMut, option: &[u8]) {
    out.put_slice(b"-ERR Syntax error in HELLO option '");
    put_sanitized(out, option);
    out.put_slice(b"'\r\n");
}

/// Framing error from a client; its connection is closed after this reply.
pub fn protocol_error(err: &crate::resp::ProtocolError) -> Bytes {
    Bytes::from(format!("-ERR Protocol error: {err}\r\n"))
}

/// The upstream could not be reached (or was lost); the request was not executed, or, for
/// requests in flight when a connection dropped, may have been.
pub fn upstream_unavailable(service: &str, endpoint: &str, why: &str) -> Bytes {
    error_line(format_args!("respmesh: upstream {service} ({endpoint}) unavailable: {why}"))
}

/// The proxy's own credentials were refused by Redis.
pub fn upstream_auth_failed(service: &str, endpoint: &str, redis_said: &str) -> Bytes {
    error_line(format_args!(
        "respmesh: could not authenticate to upstream {service} ({endpoint}): {redis_said}; check the service's auth credentials"
    ))
}

/// No reply within the service's opTimeout.
pub fn upstream_timeout(service: &str, endpoint: &str, timeout: respmesh_api::Duration) -> Bytes {
    error_line(format_args!("respmesh: upstream {service} ({endpoint}) did not reply within opTimeout {timeout}"))
}

/// The client's service was removed from the configuration while it was connected.
pub fn service_gone(service: &str) -> Bytes {
    error_line(format_args!("respmesh: service {service} is no longer configured"))
}

pub fn service_refused(service: &str, why: &str) -> Bytes {
    error_line(format_args!("respmesh: service {service} refuses clients: {why}"))
}

/// A null in the client's protocol.
pub fn null(proto: u8) -> &'static [u8] {
    if proto >= 3 { b"_\r\n" } else { b"$-1\r\n" }
}

/// A bulk string reply.
pub fn bulk(out: &mut BytesMut, value: &[u8]) {
    let _ = write!(out, "${}\r\n", value.len());
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn error_line(msg: std::fmt::Arguments<'_>) -> Bytes {
    let mut text = format!("-ERR {msg}");
    // An error line may not contain CR or LF.
    text.retain(|c| c != '\r' && c != '\n');
    text.push_str("\r\n");
    Bytes::from(text)
}

fn put_sanitized(out: &mut BytesMut, s: &[u8]) {
    for &c in s {
        out.put_u8(if c == b'\r' || c == b'\n' { b' ' } else { c });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_are_single_resp_error_lines() {
        let e = upstream_unavailable("svc", "127.0.0.1:1", "refused\r\nagain");
        assert_eq!(&e[..], b"-ERR respmesh: upstream svc (127.0.0.1:1) unavailable: refusedagain\r\n");
        let e = upstream_auth_failed("svc", "h:1", "WRONGPASS x");
        assert!(e.starts_with(b"-ERR respmesh: could not authenticate to upstream svc"));
    }
}
