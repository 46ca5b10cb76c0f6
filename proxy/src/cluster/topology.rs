//! The cluster's shape: which node serves which slot, and its replicas, from `CLUSTER SLOTS`.

use super::slot::SLOTS;
use crate::resp::value::Value;

/// One primary and its replicas (indexes into [`Topology::nodes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub primary: usize,
    pub replicas: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// `host:port` of every node.
    pub nodes: Vec<String>,
    pub shards: Vec<Shard>,
    /// Shard index per slot; [`UNASSIGNED`] for a slot no node serves.
    pub slots: SlotMap,
}

pub const UNASSIGNED: u16 = u16::MAX;

/// Lookups use runs while the slots form at most this many.
const MAX_RUNS: usize = 16;

/// Which shard serves each slot. A lookup reads the slots' runs (consecutive slots of one
/// shard) while there are at most [`MAX_RUNS`] of them, as in most clusters: the 32 KiB table
/// is a cache miss on most requests (keys hash all over it), the runs are a few bytes that
/// stay in cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotMap {
    table: Box<[u16]>,
    /// Last slot and shard of each run, in slot order; empty when there are too many runs.
    runs: Vec<(u16, u16)>,
}

impl SlotMap {
    /// `table`: the shard of each of the [`SLOTS`] slots.
    pub fn new(table: Box<[u16]>) -> SlotMap {
        assert_eq!(table.len(), SLOTS, "one entry per slot");
        let mut map = SlotMap { table, runs: Vec::with_capacity(MAX_RUNS) };
        map.find_runs();
        map
    }

    fn find_runs(&mut self) {
        self.runs.clear();
        for (slot, &shard) in self.table.iter().enumerate() {
            let runs = self.runs.len();
            match self.runs.last_mut() {
                Some(run) if run.1 == shard => run.0 = slot as u16,
                _ if runs == MAX_RUNS => {
                    self.runs.clear();
                    return;
                }
                _ => self.runs.push((slot as u16, shard)),
            }
        }
    }

    /// The shard serving `slot` ([`UNASSIGNED`] if none); `None` for no such slot.
    #[inline]
    pub fn get(&self, slot: u16) -> Option<u16> {
        if usize::from(slot) >= SLOTS {
            return None;
        }
        if self.runs.is_empty() {
            return Some(self.table[usize::from(slot)]);
        }
        // Without branches: the runs that end before `slot` are the ones to skip.
        let i: usize = self.runs.iter().map(|&(last, _)| usize::from(last < slot)).sum();
        Some(self.runs[i].1)
    }

    pub fn set(&mut self, slot: u16, shard: u16) {
        if let Some(s) = self.table.get_mut(usize::from(slot))
            && *s != shard
        {
            *s = shard;
            self.find_runs();
        }
    }
}

impl Topology {
    /// Parses a `CLUSTER SLOTS` reply. `asked` is the node that answered: Redis reports its
    /// own address as an empty string or `?` when it does not know it.
    pub fn from_cluster_slots(reply: &Value, asked: &str) -> Result<Topology, String> {
        let ranges = reply.as_array().ok_or("CLUSTER SLOTS did not return an array")?;
        let mut table = vec![UNASSIGNED; SLOTS].into_boxed_slice();
        let (mut nodes, mut shards) = (Vec::new(), Vec::new());
        for range in ranges {
            let r = range.as_array().ok_or("a slot range is not an array")?;
            if r.len() < 3 {
                return Err("a slot range has no primary".into());
            }
            let start = r[0].as_int().ok_or("bad slot range start")?;
            let end = r[1].as_int().ok_or("bad slot range end")?;
            if !(0..SLOTS as i64).contains(&start) || !(start..SLOTS as i64).contains(&end) {
                return Err(format!("slot range {start}-{end} is out of bounds"));
            }
            let mut members = Vec::new();
            for node in &r[2..] {
                let n = node.as_array().ok_or("a node entry is not an array")?;
                let host = n.first().and_then(Value::as_bytes).ok_or("a node has no host")?;
                let port = n.get(1).and_then(Value::as_int).ok_or("a node has no port")?;
                let host = String::from_utf8_lossy(host);
                let addr = if host.is_empty() || host == "?" {
                    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
                    format!("{asked_host}:{port}")
                } else if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                members.push(node_index(&mut nodes, &addr));
            }
            let primary = members[0];
            let shard = match shards.iter().position(|s: &Shard| s.primary == primary) {
                Some(i) => i,
                None => {
                    shards.push(Shard { primary, replicas: members[1..].to_vec() });
                    shards.len() - 1
                }
            };
            table[start as usize..=end as usize].fill(shard as u16);
        }
        if shards.is_empty() {
            return Err("the cluster serves no slots".into());
        }
        Ok(Topology { nodes, shards, slots: SlotMap::new(table) })
    }

    /// The primary serving `slot`, if any.
    pub fn primary(&self, slot: u16) -> Option<&str> {
        let s = self.shards.get(self.slots.get(slot)? as usize)?;
        Some(&self.nodes[s.primary])
    }

    /// Every primary, once.
    pub fn primaries(&self) -> impl Iterator<Item = &str> {
        self.shards.iter().map(|s| self.nodes[s.primary].as_str())
    }

    /// Records a MOVED: `slot` is now served by the primary at `addr`.
    pub fn moved(&mut self, slot: u16, addr: &str) {
        let node = node_index(&mut self.nodes, addr);
        let shard = match self.shards.iter().position(|s| s.primary == node) {
            Some(i) => i,
            None => {
                self.shards.push(Shard { primary: node, replicas: Vec::new() });
                self.shards.len() - 1
            }
        };
        self.slots.set(slot, shard as u16);
    }
}

/// The index of `addr` in `nodes`, added if new.
fn node_index(nodes: &mut Vec<String>, addr: &str) -> usize {
    match nodes.iter().position(|n| n == addr) {
        Some(i) => i,
        None => {
            nodes.push(addr.to_owned());
            nodes.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::value::decode;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![Value::Bulk(host.into()), Value::Int(port), Value::Bulk(b"id".to_vec())])
    }

    fn range(a: i64, b: i64, nodes: Vec<Value>) -> Value {
        let mut v = vec![Value::Int(a), Value::Int(b)];
        v.extend(nodes);
        Value::Array(v)
    }

    #[test]
    fn three_shards_with_replicas() {
        let reply = Value::Array(vec![
            range(0, 5460, vec![node("10.0.0.1", 6379), node("10.0.0.4", 6379)]),
            range(5461, 10922, vec![node("10.0.0.2", 6379), node("10.0.0.5", 6379)]),
            range(10923, 16383, vec![node("10.0.0.3", 6379), node("10.0.0.6", 6379)]),
        ]);
        let t = Topology::from_cluster_slots(&reply, "10.0.0.1:6379").unwrap();
        assert_eq!(t.primary(0), Some("10.0.0.1:6379"));
        assert_eq!(t.primary(5461), Some("10.0.0.2:6379"));
        assert_eq!(t.primary(16383), Some("10.0.0.3:6379"));
        assert_eq!(t.shards[0].replicas, vec![1]);
        assert_eq!(t.primaries().count(), 3);
    }

    #[test]
    fn several_ranges_of_one_primary_make_one_shard_and_gaps_stay_unassigned() {
        let reply = Value::Array(vec![range(0, 100, vec![node("a", 1)]), range(200, 300, vec![node("a", 1)])]);
        let t = Topology::from_cluster_slots(&reply, "a:1").unwrap();
        assert_eq!(t.shards.len(), 1);
        assert_eq!(t.primary(150), None);
        assert_eq!(t.primary(250), Some("a:1"));
    }

    #[test]
    fn an_unknown_own_address_is_the_asked_host() {
        let reply = Value::Array(vec![range(0, 16383, vec![node("", 7000)])]);
        let t = Topology::from_cluster_slots(&reply, "127.0.0.1:7000").unwrap();
        assert_eq!(t.primary(42), Some("127.0.0.1:7000"));
    }

    #[test]
    fn moved_reassigns_one_slot() {
        let reply = decode(b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$1\r\na\r\n:1\r\n", 8).unwrap();
        let mut t = Topology::from_cluster_slots(&reply, "a:1").unwrap();
        t.moved(7, "b:2");
        assert_eq!(t.primary(7), Some("b:2"));
        assert_eq!(t.primary(8), Some("a:1"));
    }

    #[test]
    fn runs_and_table_agree_on_every_slot() {
        // Few runs (looked up by run), then more than MAX_RUNS (looked up in the table), then
        // back to few as a MOVED joins two runs.
        let mut table = vec![0u16; SLOTS];
        table[100..200].fill(1);
        table[16000..].fill(UNASSIGNED);
        let mut map = SlotMap::new(table.clone().into_boxed_slice());
        assert_eq!(map.runs.len(), 4);
        let check = |map: &SlotMap, table: &[u16]| {
            for slot in 0..SLOTS as u16 {
                assert_eq!(map.get(slot), Some(table[usize::from(slot)]), "slot {slot}");
            }
            assert_eq!(map.get(SLOTS as u16), None);
        };
        check(&map, &table);
        for slot in (1000..1000 + 2 * MAX_RUNS as u16).step_by(2) {
            map.set(slot, 2);
            table[usize::from(slot)] = 2;
        }
        assert!(map.runs.is_empty(), "too many runs: the table answers");
        check(&map, &table);
        for slot in (1000..1000 + 2 * MAX_RUNS as u16).step_by(2) {
            map.set(slot, 0);
            table[usize::from(slot)] = 0;
        }
        assert_eq!(map.runs.len(), 4);
        check(&map, &table);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(Topology::from_cluster_slots(&Value::Int(1), "a:1").is_err());
        assert!(Topology::from_cluster_slots(&Value::Array(vec![]), "a:1").is_err());
        let bad = Value::Array(vec![range(0, 99999, vec![node("a", 1)])]);
        assert!(Topology::from_cluster_slots(&bad, "a:1").is_err());
    }
}
