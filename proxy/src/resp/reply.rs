//! Replies from Redis.
//!
//! The proxy does not decode replies; it only needs to know where each one ends, to hand the
//! bytes to the right client. [`ReplyScanner`] finds that boundary for every RESP2 and RESP3
//! type (attributes and pushes included), resuming where it stopped when a reply spans reads,
//! with an explicit stack bounded by the nesting limit instead of recursion.

use super::{ProtocolError, find_crlf, parse_int};

/// Outcome of one scan.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// The first reply in the buffer is `len` bytes long.
    Complete { len: usize },
    /// More bytes are needed; at least `need` in all.
    Incomplete { need: usize },
}

/// Resumable reply-boundary finder; one per upstream connection.
#[derive(Debug)]
pub struct ReplyScanner {
    max_depth: u32,
    /// Where scanning resumes, relative to the start of the reply.
    pos: usize,
    /// Elements still expected by each open aggregate, innermost last.
    open: Vec<u64>,
}

impl ReplyScanner {
    pub fn new(max_depth: u32) -> Self {
        ReplyScanner { max_depth, pos: 0, open: Vec::new() }
    }

    /// Scans the reply at the start of `buf`. After `Complete`, the caller removes `len` bytes
    /// from the front before scanning again; after `Incomplete`, it calls again with the same
    /// bytes plus more.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, ProtocolError> {
        let result = self.scan_inner(buf);
        if !matches!(result, Ok(Scan::Incomplete { .. })) {
            self.pos = 0;
            self.open.clear();
        }
        result
    }

    fn scan_inner(&mut self, buf: &[u8]) -> Result<Scan, ProtocolError> {
        loop {
            let pos = self.pos;
            let Some(&kind) = buf.get(pos) else {
                return Ok(Scan::Incomplete { need: pos + 1 });
            };
            let Some(cr) = find_crlf(buf, pos + 1) else {
                return Ok(Scan::Incomplete { need: buf.len() + 1 });
            };
            let line = &buf[pos + 1..cr];
            let next = cr + 2;
            // Elements this header opens (0: the element is complete once `next` is reached).
            let children: u64 = match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    if kind == b':' && parse_int(line).is_none() {
                        return Err(ProtocolError::InvalidReply("integer"));
                    }
                    self.pos = next;
                    0
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_int(line).ok_or(ProtocolError::InvalidReply("length"))?;
                    if len < -1 || (len == -1 && kind != b'$') {
                        return Err(ProtocolError::InvalidReply("length"));
                    }
                    let end = if len == -1 { next } else { next + len as usize + 2 };
                    if buf.len() < end {
                        return Ok(Scan::Incomplete { need: end });
                    }
                    if len >= 0 && &buf[end - 2..end] != b"\r\n" {
                        return Err(ProtocolError::InvalidReply("bulk string terminator"));
                    }
                    self.pos = end;
                    0
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line).ok_or(ProtocolError::InvalidReply("length"))?;
                    if n < -1 || (n == -1 && kind != b'*') {
                        return Err(ProtocolError::InvalidReply("length"));
                    }
                    self.pos = next;
                    let n = n.max(0) as u64;
                    match kind {
                        b'%' => n * 2,
                        // An attribute map, then the value it annotates, in the parent's place.
                        b'|' => n * 2 + 1,
                        _ => n,
                    }
                }
                other => return Err(ProtocolError::UnknownType(other)),
            };
            if children > 0 {
                if self.open.len() as u32 >= self.max_depth {
                    return Err(ProtocolError::TooDeep(self.max_depth));
                }
                self.open.push(children);
                continue;
            }
            // One element is complete: close every aggregate it completes.
            loop {
                let Some(top) = self.open.last_mut() else {
                    return Ok(Scan::Complete { len: self.pos });
                };
                *top -= 1;
                if *top > 0 {
                    break;
                }
                self.open.pop();
            }
        }
    }
}

/// True when the complete reply is an error (`-ERR ...` or a RESP3 blob error).
#[inline]
pub fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

/// The text of a simple error or simple string reply, without type byte and CRLF.
pub fn simple_text(reply: &[u8]) -> &[u8] {
    let end = reply.len().saturating_sub(2);
    reply.get(1..end).unwrap_or(b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> usize {
        match ReplyScanner::new(64).scan(input).unwrap() {
            Scan::Complete { len } => len,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn every_resp2_and_resp3_type_is_delimited() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":-42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(123456789012345678901234567890\r\n",
            b"!3\r\nerr\r\n",
            b"=7\r\ntxt:abc\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",
            b"~2\r\n+a\r\n+b\r\n",
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
            b"|1\r\n+key\r\n+val\r\n$2\r\nok\r\n",
        ];
        for case in cases {
            let mut with_tail = case.to_vec();
            with_tail.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(complete(&with_tail), case.len(), "{:?}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn a_reply_split_anywhere_resumes_correctly() {
        let reply = b"*3\r\n$3\r\nabc\r\n%1\r\n+k\r\n*2\r\n:1\r\n:2\r\n$-1\r\n";
        for cut in 0..reply.len() {
            let mut s = ReplyScanner::new(64);
            assert!(matches!(s.scan(&reply[..cut]).unwrap(), Scan::Incomplete { .. }), "cut {cut}");
            assert_eq!(s.scan(reply).unwrap(), Scan::Complete { len: reply.len() }, "cut {cut}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let deep = "*1\r\n".repeat(100_000);
        assert_eq!(ReplyScanner::new(128).scan(deep.as_bytes()), Err(ProtocolError::TooDeep(128)));
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(ReplyScanner::new(8).scan(b"?x\r\n"), Err(ProtocolError::UnknownType(b'?')));
        assert!(ReplyScanner::new(8).scan(b"$x\r\n").is_err());
        assert!(ReplyScanner::new(8).scan(b"$1\r\nab\r\n").is_err());
        assert!(ReplyScanner::new(8).scan(b"%-1\r\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_or_overrun(input in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(Scan::Complete { len }) = ReplyScanner::new(16).scan(&input) {
                proptest::prop_assert!(len <= input.len());
            }
        }

        #[test]
        fn a_reply_stream_split_anywhere_is_delimited_identically(cuts in proptest::collection::vec(1usize..50, 1..30)) {
            let replies: &[&[u8]] = &[
                b"+OK\r\n", b"$5\r\nhello\r\n", b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", b"%1\r\n+k\r\n~1\r\n_\r\n",
                b"$-1\r\n", b">2\r\n+a\r\n+b\r\n", b"|1\r\n+a\r\n+b\r\n:7\r\n", b"-ERR x\r\n",
            ];
            let stream: Vec<u8> = replies.concat();
            let mut s = ReplyScanner::new(16);
            let mut buf = Vec::new();
            let (mut fed, mut found) = (0, Vec::new());
            let mut cut = cuts.iter().cycle();
            while found.len() < replies.len() {
                match s.scan(&buf).unwrap() {
                    Scan::Complete { len } => found.push(buf.drain(..len).collect::<Vec<u8>>()),
                    Scan::Incomplete { .. } => {
                        let n = (*cut.next().unwrap()).min(stream.len() - fed);
                        buf.extend_from_slice(&stream[fed..fed + n]);
                        fed += n;
                    }
                }
            }
            let want: Vec<Vec<u8>> = replies.iter().map(|r| r.to_vec()).collect();
            proptest::prop_assert_eq!(found, want);
        }
    }

    #[test]
    fn error_detection_and_text() {
        assert!(is_error(b"-ERR x\r\n"));
        assert!(is_error(b"!1\r\nx\r\n"));
        assert!(!is_error(b"+OK\r\n"));
        assert_eq!(simple_text(b"-WRONGPASS bad\r\n"), b"WRONGPASS bad");
    }
}
