//! One reply from many: a command split across slots (MGET, MSET, DEL...) or sent to every
//! primary (DBSIZE, KEYS, FLUSHALL...) is answered once every part has replied, with the reply
//! one Redis holding all the keys would give.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;

use bytes::Bytes;

use crate::client::{Client, Seq};
use crate::resp::find_crlf;
use crate::resp::parse_int;
use crate::resp::reply::{ReplyScanner, Scan, is_error};

/// How the parts' replies combine.
#[derive(Debug)]
pub enum Combine {
    /// MGET: part `i` asked for the keys at `positions[i]` of the original command.
    Mget { keys: usize, positions: Vec<Vec<usize>> },
    /// MSET, FLUSHALL, SCRIPT FLUSH...: every part says the same (OK); that is the reply.
    Same,
    /// DEL, EXISTS, UNLINK, TOUCH, DBSIZE: integers added up.
    Sum,
    /// KEYS: arrays concatenated.
    Concat,
    /// RANDOMKEY: one of the primaries' answers, at random, unless it is null.
    AnyNonNull,
    /// INFO: one primary's sections, with the per-database key counts of every primary added
    /// up and the server shown as standalone.
    Info,
    /// SCAN on primary `node` of `nodes`: the node's cursor becomes a cluster-wide one.
    Scan { node: u64, nodes: u64 },
    /// WAIT (an integer) and WAITAOF (an array of integers): the smallest count, element by
    /// element: what holds for every primary the client wrote to.
    Min,
    /// CLIENT TRACKING ON sent to every primary: as `Same`, and whether the nodes accepted it
    /// is kept in the cell for the session.
    Tracking(Rc<Cell<Option<bool>>>),
    /// PUBSUB SHARDNUMSUB: channel names and counts in turn (an array, or a map in RESP3); each
    /// channel's counts added up over the parts.
    ChannelCounts,
    /// HELLO answered by a cluster node: what one Redis would say (`mode` standalone, `id` the
    /// client's connection to the proxy).
    Hello { id: u64 },
}

/// Bits of a cluster SCAN cursor that name the primary; the node's own cursor is above them.
pub const SCAN_NODE_BITS: u32 = 10;

pub struct Merge {
    client: Rc<Client>,
    seq: Seq,
    combine: Combine,
    parts: RefCell<Vec<Option<Bytes>>>,
    left: Cell<usize>,
}

impl Merge {
    pub fn new(client: Rc<Client>, seq: Seq, combine: Combine, parts: usize) -> Rc<Merge> {
        Rc::new(Merge { client, seq, combine, parts: RefCell::new(vec![None; parts]), left: Cell::new(parts) })
    }

    /// The reply of one part; the client gets the merged reply after the last one.
    pub fn put(&self, part: usize, reply: &[u8]) {
        let mut parts = self.parts.borrow_mut();
        if parts[part].is_some() {
            return;
        }
        parts[part] = Some(Bytes::copy_from_slice(reply));
        self.left.set(self.left.get() - 1);
        if self.left.get() == 0 {
            let merged = combine(&self.combine, &parts);
            drop(parts);
            if let Combine::Tracking(accepted) = &self.combine {
                accepted.set(Some(!is_error(&merged)));
            }
            self.client.deliver(self.seq, &merged);
        }
    }
}

/// The reply one Redis would give, from the parts' replies in part order (an error in any
/// part is the reply).
pub fn combine(how: &Combine, parts: &[Option<Bytes>]) -> Vec<u8> {
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_deref().unwrap_or_default()).collect();
    if let Some(err) = parts.iter().find(|p| is_error(p)) {
        return err.to_vec();
    }
    let unexpected =
        |what: &str| format!("-ERR respmesh: unexpected reply from a cluster node to {what}\r\n").into_bytes();
    match how {
        Combine::Same | Combine::Tracking(_) => parts.first().map(|p| p.to_vec()).unwrap_or_default(),
        Combine::Sum => {
            let mut total: i64 = 0;
            for p in &parts {
                match p.strip_prefix(b":").and_then(|rest| parse_int(rest.strip_suffix(b"\r\n")?)) {
                    Some(n) => total += n,
                    None => return unexpected("a counting command"),
                }
            }
            format!(":{total}\r\n").into_bytes()
        }
        Combine::Concat => {
            let mut count = 0;
            let mut body = Vec::new();
            for p in &parts {
                let Some((n, elements)) = array_elements(p) else { return unexpected("a listing command") };
                count += n;
                body.extend_from_slice(elements);
            }
            let mut out = format!("*{count}\r\n").into_bytes();
            out.extend_from_slice(&body);
            out
        }
        Combine::ChannelCounts => {
            let Some(mut each) = parts.iter().map(|p| channel_counts(p)).collect::<Option<Vec<_>>>() else {
                return unexpected("PUBSUB SHARDNUMSUB");
            };
            let (map, mut total) = each.remove(0);
            for (_, pairs) in &each {
                if pairs.len() != total.len() {
                    return unexpected("PUBSUB SHARDNUMSUB");
                }
                for (sum, (_, n)) in total.iter_mut().zip(pairs) {
                    sum.1 += n;
                }
            }
            let mut out =
                if map { format!("%{}\r\n", total.len()) } else { format!("*{}\r\n", 2 * total.len()) }.into_bytes();
            for (name, count) in total {
                out.extend_from_slice(name);
                out.extend_from_slice(format!(":{count}\r\n").as_bytes());
            }
            out
        }
        Combine::AnyNonNull => {
            let found: Vec<&&[u8]> = parts.iter().filter(|p| !matches!(&p[..], b"$-1\r\n" | b"_\r\n")).collect();
            match found.len() {
                0 => parts[0].to_vec(),
                n => found[fastrand::usize(..n)].to_vec(),
            }
        }
        Combine::Info => {
            let mut texts = Vec::with_capacity(parts.len());
            for p in &parts {
                let Some(text) = bulk_text(p) else { return unexpected("INFO") };
                texts.push(text);
            }
            let text = info_as_one_redis(&texts);
            if parts[0].first() == Some(&b'=') {
                format!("={}\r\ntxt:{text}\r\n", text.len() + 4).into_bytes()
            } else {
                format!("${}\r\n{text}\r\n", text.len()).into_bytes()
            }
        }
        Combine::Hello { id } => {
            let mut out = replace(parts[0], b"$4\r\nmode\r\n$7\r\ncluster\r\n", b"$4\r\nmode\r\n$10\r\nstandalone\r\n");
            if let Some(at) = find(&out, b"$2\r\nid\r\n:") {
                let start = at + b"$2\r\nid\r\n:".len();
                if let Some(end) = find_crlf(&out, start) {
                    out.splice(start..end, id.to_string().into_bytes());
                }
            }
            out
        }
        Combine::Min => {
            let int = |e: &[u8]| e.strip_prefix(b":").and_then(|rest| parse_int(rest.strip_suffix(b"\r\n")?));
            if parts.iter().all(|p| p.first() == Some(&b':')) {
                return match parts.iter().map(|p| int(p)).collect::<Option<Vec<i64>>>() {
                    Some(ns) => format!(":{}\r\n", ns.into_iter().min().unwrap_or(0)).into_bytes(),
                    None => unexpected("WAIT"),
                };
            }
            let mut mins: Option<Vec<i64>> = None;
            for p in &parts {
                let Some(ns) = split_array(p).and_then(|es| es.into_iter().map(int).collect::<Option<Vec<i64>>>())
                else {
                    return unexpected("WAITAOF");
                };
                mins = Some(match mins {
                    None => ns,
                    Some(m) if m.len() == ns.len() => m.into_iter().zip(ns).map(|(a, b)| a.min(b)).collect(),
                    Some(_) => return unexpected("WAITAOF"),
                });
            }
            let mins = mins.unwrap_or_default();
            let mut out = format!("*{}\r\n", mins.len());
            for n in mins {
                let _ = write!(out, ":{n}\r\n");
            }
            out.into_bytes()
        }
        Combine::Scan { node, nodes } => {
            let Some(elements) = split_array(parts[0]) else { return unexpected("SCAN") };
            let cursor = match elements.first().and_then(|c| c.strip_prefix(b"$")) {
                Some(rest) => {
                    let Some(cr) = find_crlf(rest, 0) else { return unexpected("SCAN") };
                    std::str::from_utf8(&rest[cr + 2..rest.len() - 2]).ok().and_then(|c| c.parse::<u64>().ok())
                }
                None => None,
            };
            let (Some(cursor), 2) = (cursor, elements.len()) else { return unexpected("SCAN") };
            let next = if cursor != 0 {
                (cursor << SCAN_NODE_BITS) | node
            } else if node + 1 < *nodes {
                node + 1
            } else {
                0
            };
            let text = next.to_string();
            let mut out = format!("*2\r\n${}\r\n{text}\r\n", text.len()).into_bytes();
            out.extend_from_slice(elements[1]);
            out
        }
        Combine::Mget { keys, positions } => {
            let mut slots: Vec<&[u8]> = vec![b"$-1\r\n"; *keys];
            for (p, pos) in parts.iter().zip(positions) {
                let Some(elements) = split_array(p) else { return unexpected("MGET") };
                if elements.len() != pos.len() {
                    return unexpected("MGET");
                }
                for (e, &i) in elements.into_iter().zip(pos) {
                    slots[i] = e;
                }
            }
            let mut out = String::new();
            let _ = write!(out, "*{keys}\r\n");
            let mut out = out.into_bytes();
            for s in slots {
                out.extend_from_slice(s);
            }
            out
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `bytes` with the first `from` replaced by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match find(bytes, from) {
        Some(at) => [&bytes[..at], to, &bytes[at + from.len()..]].concat(),
        None => bytes.to_vec(),
    }
}

/// INFO over a cluster, as one Redis holding every key would answer: the first primary's
/// sections, with the Keyspace section summed over all primaries and the server reporting
/// itself as standalone.
fn info_as_one_redis(texts: &[String]) -> String {
    // db -> (keys, expires, avg_ttl weighted by expires)
    let mut dbs: std::collections::BTreeMap<u32, (u64, u64, u128)> = std::collections::BTreeMap::new();
    for text in texts {
        for line in text.lines() {
            let Some((db, fields)) = line.split_once(':') else { continue };
            let Some(n) = db.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else { continue };
            let field = |name: &str| -> u64 {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.trim().parse().ok())
                    .unwrap_or(0)
            };
            let e = dbs.entry(n).or_default();
            e.0 += field("keys");
            e.1 += field("expires");
            e.2 += u128::from(field("avg_ttl")) * u128::from(field("expires"));
        }
    }
    let mut out = String::with_capacity(texts[0].len());
    let mut in_keyspace = false;
    for line in texts[0].split_inclusive("\r\n") {
        if line.starts_with('#') {
            in_keyspace = line.trim_end() == "# Keyspace";
            out.push_str(line);
            if in_keyspace {
                for (db, (keys, expires, ttl)) in &dbs {
                    let avg = if *expires > 0 { ttl / u128::from(*expires) } else { 0 };
                    let _ = write!(out, "db{db}:keys={keys},expires={expires},avg_ttl={avg}\r\n");
                }
            }
            continue;
        }
        if in_keyspace && line.starts_with("db") {
            continue;
        }
        match line.trim_end() {
            "redis_mode:cluster" => out.push_str("redis_mode:standalone\r\n"),
            "cluster_enabled:1" => out.push_str("cluster_enabled:0\r\n"),
            _ => out.push_str(line),
        }
    }
    out
}

/// The text of a bulk string or RESP3 verbatim string reply.
fn bulk_text(reply: &[u8]) -> Option<String> {
    let cr = find_crlf(reply, 1)?;
    let n = parse_int(&reply[1..cr])?;
    let body = reply.get(cr + 2..cr + 2 + n as usize)?;
    let body = match reply.first()? {
        b'$' => body,
        b'=' => body.get(4..)?,
        _ => return None,
    };
    Some(String::from_utf8_lossy(body).into_owned())
}

/// The element count and the bytes of the elements of an array reply.
fn array_elements(reply: &[u8]) -> Option<(usize, &[u8])> {
    if reply.first() != Some(&b'*') && reply.first() != Some(&b'~') {
        return None;
    }
    let cr = find_crlf(reply, 1)?;
    let n = parse_int(&reply[1..cr])?;
    Some((n.max(0) as usize, &reply[cr + 2..]))
}

/// A channel's name (as a reply element) and its subscriber count.
type ChannelCount<'a> = (&'a [u8], i64);

/// Each channel's name and count from one SHARDNUMSUB reply, and whether it was a map.
fn channel_counts(reply: &[u8]) -> Option<(bool, Vec<ChannelCount<'_>>)> {
    let map = reply.first() == Some(&b'%');
    let (n, body) = if map {
        let cr = find_crlf(reply, 1)?;
        (2 * usize::try_from(parse_int(&reply[1..cr])?).ok()?, &reply[cr + 2..])
    } else {
        array_elements(reply)?
    };
    let elements = scan_elements(n, body)?;
    if n % 2 != 0 {
        return None;
    }
    let pairs = elements
        .chunks(2)
        .map(|pair| {
            Some((pair[0], pair[1].strip_prefix(b":").and_then(|rest| parse_int(rest.strip_suffix(b"\r\n")?))?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((map, pairs))
}

/// Each element of an array reply, as bytes.
fn split_array(reply: &[u8]) -> Option<Vec<&[u8]>> {
    let (n, body) = array_elements(reply)?;
    scan_elements(n, body)
}

/// The first `n` complete replies in `body`, as bytes.
fn scan_elements(n: usize, mut body: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match ReplyScanner::new(64).scan(body) {
            Ok(Scan::Complete { len }) => {
                out.push(&body[..len]);
                body = &body[len..];
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(how: Combine, parts: &[&[u8]]) -> String {
        let parts: Vec<Option<Bytes>> = parts.iter().map(|p| Some(Bytes::copy_from_slice(p))).collect();
        String::from_utf8(combine(&how, &parts)).unwrap()
    }

    #[test]
    fn wait_counts_what_holds_on_every_primary() {
        assert_eq!(run(Combine::Min, &[b":2\r\n", b":1\r\n", b":2\r\n"]), ":1\r\n");
        assert_eq!(run(Combine::Min, &[b"*2\r\n:1\r\n:0\r\n", b"*2\r\n:0\r\n:1\r\n"]), "*2\r\n:0\r\n:0\r\n");
        assert_eq!(run(Combine::Min, &[b":1\r\n", b"-NOREPLICAS no\r\n"]), "-NOREPLICAS no\r\n");
        assert!(run(Combine::Min, &[b":1\r\n", b"+OK\r\n"]).starts_with("-ERR respmesh: unexpected reply"));
    }

    #[test]
    fn hello_from_a_node_says_one_redis() {
        let node = "%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:4711\r\n$4\r\nmode\r\n$7\r\ncluster\r\n";
        assert_eq!(
            run(Combine::Hello { id: 9 }, &[node.as_bytes()]),
            "%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$2\r\nid\r\n:9\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n"
        );
    }

    #[test]
    fn mget_parts_are_put_back_in_key_order() {
        let how = Combine::Mget { keys: 3, positions: vec![vec![0, 2], vec![1]] };
        assert_eq!(
            run(how, &[b"*2\r\n$1\r\na\r\n$-1\r\n", b"*1\r\n$1\r\nb\r\n"]),
            "*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n"
        );
    }

    #[test]
    fn counts_add_up_and_lists_concatenate() {
        assert_eq!(run(Combine::Sum, &[b":2\r\n", b":0\r\n", b":5\r\n"]), ":7\r\n");
        assert_eq!(
            run(Combine::Concat, &[b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*1\r\n$1\r\nb\r\n"]),
            "*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        );
        assert_eq!(run(Combine::Same, &[b"+OK\r\n", b"+OK\r\n"]), "+OK\r\n");
    }

    #[test]
    fn scan_cursors_carry_the_node() {
        let keys = b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n";
        assert_eq!(
            run(Combine::Scan { node: 1, nodes: 3 }, &[keys]),
            format!("*2\r\n$5\r\n{}\r\n*1\r\n$1\r\nk\r\n", (17 << 10) | 1)
        );
        let done = b"*2\r\n$1\r\n0\r\n*0\r\n";
        assert_eq!(run(Combine::Scan { node: 1, nodes: 3 }, &[done]), "*2\r\n$1\r\n2\r\n*0\r\n", "next node");
        assert_eq!(run(Combine::Scan { node: 2, nodes: 3 }, &[done]), "*2\r\n$1\r\n0\r\n*0\r\n", "all done");
    }

    #[test]
    fn shard_subscriber_counts_add_up_per_channel() {
        let a = b"*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:0\r\n";
        let b = b"*4\r\n$1\r\na\r\n:0\r\n$1\r\nb\r\n:3\r\n";
        assert_eq!(run(Combine::ChannelCounts, &[a, b]), "*4\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:3\r\n");
        let a = b"%1\r\n$1\r\na\r\n:2\r\n";
        let b = b"%1\r\n$1\r\na\r\n:1\r\n";
        assert_eq!(run(Combine::ChannelCounts, &[a, b]), "%1\r\n$1\r\na\r\n:3\r\n", "RESP3 map");
        assert_eq!(run(Combine::ChannelCounts, &[b"*0\r\n", b"*0\r\n"]), "*0\r\n");
        let two = b"%2\r\n$1\r\na\r\n:2\r\n$1\r\nb\r\n:0\r\n";
        assert!(run(Combine::ChannelCounts, &[a, two]).starts_with("-ERR respmesh: unexpected reply"));
    }

    #[test]
    fn randomkey_is_null_only_when_every_node_is_empty() {
        assert_eq!(run(Combine::AnyNonNull, &[b"$-1\r\n", b"$1\r\nk\r\n", b"$-1\r\n"]), "$1\r\nk\r\n");
        assert_eq!(run(Combine::AnyNonNull, &[b"$-1\r\n", b"$-1\r\n"]), "$-1\r\n");
    }

    #[test]
    fn info_keyspace_adds_up() {
        let a = "# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=1000\r\n";
        let b = "# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=3000\r\n";
        let pa = format!("${}\r\n{a}\r\n", a.len());
        let pb = format!("${}\r\n{b}\r\n", b.len());
        let want = "# Keyspace\r\ndb0:keys=5,expires=2,avg_ttl=2000\r\n";
        assert_eq!(run(Combine::Info, &[pa.as_bytes(), pb.as_bytes()]), format!("${}\r\n{want}\r\n", want.len()));
        // Whole INFO: the first primary's sections, keyspace summed, one standalone server.
        let a = "# Server\r\nredis_mode:cluster\r\ntcp_port:7001\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n";
        let b = "# Server\r\nredis_mode:cluster\r\ntcp_port:7002\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n\r\n# Keyspace\r\ndb0:keys=4,expires=0,avg_ttl=0\r\n";
        let pa = format!("${}\r\n{a}\r\n", a.len());
        let pb = format!("${}\r\n{b}\r\n", b.len());
        let want = "# Server\r\nredis_mode:standalone\r\ntcp_port:7001\r\n\r\n# Cluster\r\ncluster_enabled:0\r\n\r\n# Keyspace\r\ndb0:keys=7,expires=0,avg_ttl=0\r\n";
        assert_eq!(run(Combine::Info, &[pa.as_bytes(), pb.as_bytes()]), format!("${}\r\n{want}\r\n", want.len()));
    }

    #[test]
    fn the_first_error_wins() {
        assert_eq!(run(Combine::Sum, &[b":1\r\n", b"-CLUSTERDOWN down\r\n"]), "-CLUSTERDOWN down\r\n");
        assert!(run(Combine::Sum, &[b"+OK\r\n"]).starts_with("-ERR respmesh: unexpected reply"));
    }
}
