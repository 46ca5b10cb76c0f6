//! Commands from clients.
//!
//! A command is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline line
//! (`GET k\r\n`, as telnet and some tools send). [`RequestParser::parse`] finds where the next
//! command ends without copying it, records where its first few arguments lie, and resumes where
//! it stopped when a command arrives over several reads, so a 100 MiB value is scanned once.

use super::{Limits, ProtocolError, find_crlf, parse_int};

/// Arguments whose position is recorded while parsing; routing needs only the first few.
/// [`args`] walks all of them in a complete frame when more are needed.
pub const RECORDED_ARGS: usize = 8;

/// Redis refuses count lines (`*N`, `$N`) longer than this without a CRLF.
const MAX_COUNT_LINE: usize = 64 * 1024;
/// Before authentication Redis accepts at most this many arguments ...
const UNAUTH_MAX_ARGS: i64 = 10;
/// ... and bulk strings of at most this many bytes.
const UNAUTH_MAX_BULK: i64 = 16 * 1024;

/// Positions of a command's first [`RECORDED_ARGS`] arguments within its frame.
#[derive(Clone, Copy, Debug)]
pub struct Spans {
    ranges: [(usize, usize); RECORDED_ARGS],
    argc: usize,
}

impl Spans {
    /// Argument `i` of `frame`, if recorded (`i < RECORDED_ARGS` and `i < argc`).
    #[inline]
    pub fn get<'a>(&self, frame: &'a [u8], i: usize) -> Option<&'a [u8]> {
        if i >= self.argc {
            return None;
        }
        let &(start, end) = self.ranges.get(i)?;
        frame.get(start..end)
    }
}

/// What the parser found at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole command yet; `need` is a lower bound on the bytes the buffer must hold.
    Incomplete { need: usize },
    /// An array command of `len` bytes with `argc` arguments (the name counts as one).
    Multibulk { len: usize, argc: usize },
    /// An inline command of `len` bytes (newline included), split into arguments as Redis does.
    Inline { len: usize, args: Vec<Vec<u8>> },
    /// `len` bytes that Redis ignores without a reply: an empty line, `*0`, `*-1`.
    Empty { len: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing scanned of the current frame.
    Start,
    /// Inside an array: `left` arguments still to read, the next one starting at `pos`.
    Multibulk { argc: usize, left: usize, pos: usize },
    /// Inside an inline line: no newline in the first `scanned` bytes.
    Inline { scanned: usize },
}

/// Resumable command parser; one per client connection.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    state: State,
    ranges: [(usize, usize); RECORDED_ARGS],
    /// Arguments of the frame last parsed.
    argc: usize,
}

impl RequestParser {
    pub fn new(limits: Limits) -> Self {
        RequestParser { limits, state: State::Start, ranges: [(0, 0); RECORDED_ARGS], argc: 0 }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Parses the command at the start of `buf`. `authenticated` selects Redis's stricter
    /// bounds for clients that have yet to log in. After `Multibulk`, [`Self::arg`] gives the
    /// recorded arguments; the caller then drops `len` bytes before calling again.
    pub fn parse(&mut self, buf: &[u8], authenticated: bool) -> Result<Parsed, ProtocolError> {
        match self.state {
            State::Start => {
                let Some(&first) = buf.first() else {
                    return Ok(Parsed::Incomplete { need: 1 });
                };
                if first == b'*' { self.parse_header(buf, authenticated) } else { self.parse_inline(buf, 0) }
            }
            State::Multibulk { argc, left, pos } => self.parse_args(buf, argc, left, pos, authenticated),
            State::Inline { scanned } => self.parse_inline(buf, scanned),
        }
    }

    /// Argument `i` (0 = the command name) of the frame just parsed, if recorded.
    #[inline]
    pub fn arg<'a>(&self, frame: &'a [u8], i: usize) -> Option<&'a [u8]> {
        self.spans().get(frame, i)
    }

    /// Where the recorded arguments of the frame just parsed lie.
    #[inline]
    pub fn spans(&self) -> Spans {
        Spans { ranges: self.ranges, argc: self.argc }
    }

    fn parse_header(&mut self, buf: &[u8], authenticated: bool) -> Result<Parsed, ProtocolError> {
        let Some(cr) = find_crlf(buf, 1) else {
            if buf.len() > MAX_COUNT_LINE {
                return Err(ProtocolError::CountLineTooLong);
            }
            return Ok(Parsed::Incomplete { need: buf.len() + 1 });
        };
        let count = parse_int(&buf[1..cr]).ok_or(ProtocolError::InvalidArrayLength)?;
        if count > i64::from(i32::MAX) {
            return Err(ProtocolError::InvalidArrayLength);
        }
        if count <= 0 {
            return Ok(Parsed::Empty { len: cr + 2 });
        }
        if !authenticated && count > UNAUTH_MAX_ARGS {
            return Err(ProtocolError::UnauthenticatedArrayLength);
        }
        let count = count as u64;
        if count > self.limits.max_array_length {
            return Err(ProtocolError::ArrayTooLong { got: count, limit: self.limits.max_array_length });
        }
        let argc = count as usize;
        self.parse_args(buf, argc, argc, cr + 2, authenticated)
    }

    fn parse_args(
        &mut self,
        buf: &[u8],
        argc: usize,
        mut left: usize,
        mut pos: usize,
        authenticated: bool,
    ) -> Result<Parsed, ProtocolError> {
        while left > 0 {
            let Some(&marker) = buf.get(pos) else {
                self.state = State::Multibulk { argc, left, pos };
                return Ok(Parsed::Incomplete { need: pos + 1 });
            };
            if marker != b'$' {
                self.state = State::Start;
                return Err(ProtocolError::ExpectedBulk(marker));
            }
            let Some(cr) = find_crlf(buf, pos + 1) else {
                if buf.len() - pos > MAX_COUNT_LINE {
                    self.state = State::Start;
                    return Err(ProtocolError::BulkLineTooLong);
                }
                self.state = State::Multibulk { argc, left, pos };
                return Ok(Parsed::Incomplete { need: buf.len() + 1 });
            };
            let len = match parse_int(&buf[pos + 1..cr]) {
                Some(n) if n >= 0 => n,
                _ => {
                    self.state = State::Start;
                    return Err(ProtocolError::InvalidBulkLength);
                }
            };
            if len as u64 > self.limits.max_bulk_length {
                self.state = State::Start;
                return Err(ProtocolError::BulkTooLong { got: len as u64, limit: self.limits.max_bulk_length });
            }
            if !authenticated && len > UNAUTH_MAX_BULK {
                self.state = State::Start;
                return Err(ProtocolError::UnauthenticatedBulkLength);
            }
            let start = cr + 2;
            let end = start + len as usize;
            if buf.len() < end + 2 {
                self.state = State::Multibulk { argc, left, pos };
                return Ok(Parsed::Incomplete { need: end + 2 });
            }
            if &buf[end..end + 2] != b"\r\n" {
                self.state = State::Start;
                return Err(ProtocolError::MissingCrlf);
            }
            let index = argc - left;
            if index < RECORDED_ARGS {
                self.ranges[index] = (start, end);
            }
            pos = end + 2;
            left -= 1;
        }
        self.state = State::Start;
        self.argc = argc;
        Ok(Parsed::Multibulk { len: pos, argc })
    }

    fn parse_inline(&mut self, buf: &[u8], scanned: usize) -> Result<Parsed, ProtocolError> {
        let Some(nl) = memchr::memchr(b'\n', &buf[scanned..]).map(|i| i + scanned) else {
            if buf.len() as u64 > self.limits.max_inline_length {
                self.state = State::Start;
                return Err(ProtocolError::InlineTooLong);
            }
            self.state = State::Inline { scanned: buf.len() };
            return Ok(Parsed::Incomplete { need: buf.len() + 1 });
        };
        self.state = State::Start;
        if nl as u64 > self.limits.max_inline_length {
            return Err(ProtocolError::InlineTooLong);
        }
        let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
        let args = split_inline(line).ok_or(ProtocolError::UnbalancedQuotes)?;
        if args.is_empty() {
            return Ok(Parsed::Empty { len: nl + 1 });
        }
        Ok(Parsed::Inline { len: nl + 1, args })
    }
}

/// Splits an inline command line the way Redis does (`sdssplitargs`): arguments separated by
/// white space; `"..."` with C-style escapes (`\n`, `\xHH`, ...); `'...'` with only `\'`.
/// A closing quote must be followed by white space or the end. `None` means unbalanced quotes.
pub fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // Redis splits a C string: whatever follows a NUL byte is not seen.
    let line = match memchr::memchr(0, line) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && c_isspace(line[i]) {
            i += 1;
        }
        if i >= n {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 3 < n && line[i + 1] == b'x' && is_hex(line[i + 2]) && is_hex(line[i + 3]) {
                    cur.push(hex(line[i + 2]) * 16 + hex(line[i + 3]));
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < n && !c_isspace(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !c_isspace(line[i + 1]) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

/// C's `isspace`: space, \t, \n, \v, \f, \r.
fn c_isspace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn is_hex(c: u8) -> bool {
    c.is_ascii_hexdigit()
}

fn hex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Walks every argument of a complete array frame (as found by [`RequestParser::parse`]).
pub fn args(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = find_crlf(frame, 1).map_or(frame.len(), |cr| cr + 2);
    std::iter::from_fn(move || {
        let cr = find_crlf(frame, pos + 1)?;
        let len = parse_int(&frame[pos + 1..cr])? as usize;
        let start = cr + 2;
        pos = start + len + 2;
        frame.get(start..start + len)
    })
}

/// Appends `args` to `out` as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut bytes::BytesMut, args: &[A]) {
    use std::fmt::Write;
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let a = a.as_ref();
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> RequestParser {
        RequestParser::new(Limits::default())
    }

    #[test]
    fn a_whole_command_is_found_with_its_arguments() {
        let mut p = parser();
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let Parsed::Multibulk { len, argc } = p.parse(buf, true).unwrap() else { panic!() };
        assert_eq!((len, argc), (31, 3));
        assert_eq!(p.arg(buf, 0), Some(&b"SET"[..]));
        assert_eq!(p.arg(buf, 2), Some(&b"hello"[..]));
        assert_eq!(p.arg(buf, 3), None);
        assert_eq!(p.parse(&buf[len..], true).unwrap(), Parsed::Multibulk { len: 14, argc: 1 });
    }

    #[test]
    fn every_split_point_resumes_to_the_same_result() {
        let buf = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n";
        for cut in 0..buf.len() {
            let mut p = parser();
            let first = p.parse(&buf[..cut], true).unwrap();
            assert!(matches!(first, Parsed::Incomplete { .. }), "cut {cut}: {first:?}");
            let Parsed::Multibulk { len, argc } = p.parse(buf, true).unwrap() else { panic!("cut {cut}") };
            assert_eq!((len, argc), (buf.len(), 3));
            assert_eq!(p.arg(buf, 2), Some(&b"0123456789"[..]));
        }
    }

    #[test]
    fn empty_arrays_and_blank_lines_are_ignored_like_redis() {
        let mut p = parser();
        assert_eq!(p.parse(b"*0\r\n", true).unwrap(), Parsed::Empty { len: 4 });
        assert_eq!(p.parse(b"*-1\r\n", true).unwrap(), Parsed::Empty { len: 5 });
        assert_eq!(p.parse(b"\r\n", true).unwrap(), Parsed::Empty { len: 2 });
        assert_eq!(p.parse(b"   \n", true).unwrap(), Parsed::Empty { len: 4 });
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let mut p = parser();
        let got = p.parse(b"set k \"a b\\x41\\n\" 'it\\'s'\r\n", true).unwrap();
        let Parsed::Inline { args, len } = got else { panic!("{got:?}") };
        assert_eq!(len, 27);
        assert_eq!(args, vec![b"set".to_vec(), b"k".to_vec(), b"a bA\n".to_vec(), b"it's".to_vec()]);
        assert_eq!(split_inline(b"get \"open"), None);
        assert_eq!(split_inline(b"get \"a\"b"), None);
    }

    #[test]
    fn malformed_input_gets_redis_worded_errors() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::InvalidArrayLength),
            (b"*3000000000\r\n", ProtocolError::InvalidArrayLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$abc\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$3\r\nGETxx", ProtocolError::MissingCrlf),
        ];
        for (input, want) in cases {
            let got = parser().parse(input, true).unwrap_err();
            assert_eq!(&got, want, "{:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(ProtocolError::ExpectedBulk(b':').to_string(), "expected '$', got ':'");
    }

    #[test]
    fn limits_bound_every_dimension() {
        let limits = Limits { max_bulk_length: 4, max_array_length: 2, max_inline_length: 16, max_nesting_depth: 8 };
        let mut p = RequestParser::new(limits);
        assert!(matches!(p.parse(b"*3\r\n", true), Err(ProtocolError::ArrayTooLong { got: 3, limit: 2 })));
        assert!(matches!(p.parse(b"*1\r\n$5\r\n", true), Err(ProtocolError::BulkTooLong { got: 5, limit: 4 })));
        assert_eq!(p.parse(&[b'a'; 17], true), Err(ProtocolError::InlineTooLong));
        assert_eq!(parser().parse(&[b'*'; 70_000], true), Err(ProtocolError::CountLineTooLong));
        let long_bulk_line = [&b"*1\r\n$"[..], &[b'1'; 70_000]].concat();
        assert_eq!(parser().parse(&long_bulk_line, true), Err(ProtocolError::BulkLineTooLong));
    }

    #[test]
    fn unauthenticated_clients_get_redis_stricter_bounds() {
        assert_eq!(parser().parse(b"*11\r\n", false), Err(ProtocolError::UnauthenticatedArrayLength));
        assert_eq!(
            parser().parse(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n", false),
            Err(ProtocolError::UnauthenticatedBulkLength)
        );
        assert!(parser().parse(b"*11\r\n", true).is_ok());
    }

    #[test]
    fn inline_splitting_stops_at_nul_and_handles_c_whitespace() {
        assert_eq!(split_inline(b"get a\0 ignored"), Some(vec![b"get".to_vec(), b"a".to_vec()]));
        assert_eq!(split_inline(b"\x0bget\x0ca"), Some(vec![b"get\x0ca".to_vec()]));
        assert_eq!(split_inline(b"\0"), Some(vec![]));
    }

    proptest::proptest! {
        #[test]
        fn any_input_parses_or_errors_without_panicking(input in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut p = parser();
            let mut off = 0;
            // Every step consumes bytes or stops: no input loops forever.
            for _ in 0..input.len() + 1 {
                match p.parse(&input[off..], true) {
                    Ok(Parsed::Multibulk { len, .. }) | Ok(Parsed::Inline { len, .. }) | Ok(Parsed::Empty { len }) => {
                        proptest::prop_assert!(len > 0);
                        off += len;
                    }
                    Ok(Parsed::Incomplete { .. }) | Err(_) => break,
                }
                if off >= input.len() {
                    break;
                }
            }
        }

        #[test]
        fn split_reads_give_the_same_commands(
            cmds in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..6), 1..8),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut stream = bytes::BytesMut::new();
            for c in &cmds {
                encode_command(&mut stream, c);
            }
            // Feed the bytes in random-sized pieces, as reads would deliver them.
            let mut p = parser();
            let mut buf: Vec<u8> = Vec::new();
            let mut fed = 0;
            let mut got: Vec<Vec<Vec<u8>>> = Vec::new();
            let mut cut = cuts.iter().cycle();
            while got.len() < cmds.len() {
                match p.parse(&buf, true).unwrap() {
                    Parsed::Multibulk { len, argc } => {
                        let frame = &buf[..len];
                        got.push(args(frame).map(<[u8]>::to_vec).collect());
                        proptest::prop_assert_eq!(argc, got.last().unwrap().len());
                        buf.drain(..len);
                    }
                    Parsed::Incomplete { .. } => {
                        let n = (*cut.next().unwrap()).min(stream.len() - fed);
                        proptest::prop_assert!(n > 0, "incomplete with nothing left to feed");
                        buf.extend_from_slice(&stream[fed..fed + n]);
                        fed += n;
                    }
                    other => proptest::prop_assert!(false, "unexpected {:?}", other),
                }
            }
            proptest::prop_assert_eq!(got, cmds);
        }
    }

    #[test]
    fn args_walks_every_argument_of_a_frame() {
        let mut out = bytes::BytesMut::new();
        encode_command(&mut out, &["MGET", "a", "", "ccc"]);
        assert_eq!(&out[..], b"*4\r\n$4\r\nMGET\r\n$1\r\na\r\n$0\r\n\r\n$3\r\nccc\r\n");
        let all: Vec<&[u8]> = args(&out).collect();
        assert_eq!(all, vec![&b"MGET"[..], b"a", b"", b"ccc"]);
    }
}
