//! The session's CLUSTER mode: a command goes to the node that serves its keys' slot; a
//! command over keys of several slots is split (MGET, MSET, DEL, EXISTS, UNLINK, TOUCH) or
//! refused with Redis Cluster's CROSSSLOT error; whole-keyspace commands go to every primary
//! and their replies are combined.

use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::cluster::ClusterRouter;
use crate::cluster::merge::{Combine, Merge};
use crate::cluster::slot::key_slot;
use crate::command::keys::key_positions;
use crate::command::{CommandId, Special};
use crate::resp::request::{Spans, args, encode_command};
use crate::session::{Session, Step};
use crate::upstream::InFlight;

const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
const SELECT_IN_CLUSTER: &[u8] = b"-ERR SELECT is not allowed in cluster mode\r\n";

impl Session {
    fn router(&mut self) -> Rc<ClusterRouter> {
        if let Some(r) = &self.router {
            return r.clone();
        }
        let r = self.worker.cluster_router(&self.svc, self.limits.max_nesting_depth);
        self.router = Some(r.clone());
        r
    }

    fn not_yet(&mut self, cmd: CommandId, what: &str) -> Step {
        let reply = format!("-ERR respmesh: {what} is not supported in CLUSTER mode yet\r\n");
        self.reply_local(cmd, reply.as_bytes())
    }

    /// Handles a command in CLUSTER mode; `None` leaves it to the common path (AUTH, HELLO,
    /// QUIT, RESET, CLIENT SETNAME/GETNAME: answered by the proxy the same way in both modes).
    pub(crate) fn cluster_command(
        &mut self,
        frame: &[u8],
        argc: usize,
        spans: Spans,
        cmd: CommandId,
        special: Special,
    ) -> Option<Step> {
        let arg = |i: usize| spans.get(frame, i).unwrap_or_default();
        Some(match special {
            Special::Auth | Special::Hello | Special::Quit | Special::Reset => return None,
            Special::Select if argc == 2 && arg(1) == b"0" => return None,
            Special::Select => self.reply_local(cmd, SELECT_IN_CLUSTER),
            Special::Client => {
                let sub = arg(1).to_ascii_uppercase();
                match sub.as_slice() {
                    b"SETNAME" | b"GETNAME" => return None,
                    b"ID" | b"INFO" | b"TRACKING" | b"REPLY" | b"CACHING" | b"NO-EVICT" | b"NO-TOUCH" | b"GETREDIR"
                    | b"TRACKINGINFO" => self.not_yet(cmd, &format!("CLIENT {}", String::from_utf8_lossy(&sub))),
                    _ => self.keyless(frame, cmd),
                }
            }
            Special::MaybeBlocking
                if !args(frame)
                    .skip(1)
                    .take_while(|a| !a.eq_ignore_ascii_case(b"STREAMS"))
                    .any(|a| a.eq_ignore_ascii_case(b"BLOCK")) =>
            {
                self.keyed(frame, spans, argc, cmd)
            }
            Special::None => self.keyed(frame, spans, argc, cmd),
            _ => {
                let name = cmd.info().map_or("this command", |i| i.name);
                self.not_yet(cmd, name)
            }
        })
    }

    /// Makes sure the topology is known; `Err` is the step to take meanwhile.
    fn topology_ready(&mut self, cmd: CommandId) -> Result<Rc<ClusterRouter>, Step> {
        let router = self.router();
        if router.ready() {
            return Ok(router);
        }
        if let Some(why) = router.unavailable() {
            let reply = format!("-CLUSTERDOWN respmesh: cannot learn the topology of {}: {why}\r\n", self.svc.host)
                .replace(['\r', '\n'], " ");
            let reply = format!("{}\r\n", reply.trim_end());
            return Err(self.reply_local(cmd, reply.as_bytes()));
        }
        // The first refresh is under way: handle this command again when it is done.
        router.wait_ready(&self.client);
        Err(Step::Drain)
    }

    fn now(&mut self) -> Instant {
        *self.batch_start.get_or_insert_with(Instant::now)
    }

    fn keyed(&mut self, frame: &[u8], spans: Spans, argc: usize, cmd: CommandId) -> Step {
        let router = match self.topology_ready(cmd) {
            Ok(r) => r,
            Err(step) => return step,
        };
        // Most commands have exactly one key, the first argument: no need to look further.
        if let Some(info) = cmd.info()
            && info.first_key == 1
            && (info.last_key == 1 || (info.last_key == -1 && argc == 2))
            && info.flags & crate::command::flags::MOVABLEKEYS == 0
            && let Some(key) = spans.get(frame, 1)
        {
            self.send_to_slot(&router, key_slot(key), frame, cmd);
            return Step::Done;
        }
        let all: Vec<&[u8]> = args(frame).collect();
        let positions = match key_positions(cmd, &all) {
            Ok(p) => p,
            Err(why) => {
                let reply = format!("-ERR respmesh: {why}\r\n");
                return self.reply_local(cmd, reply.as_bytes());
            }
        };
        if positions.is_empty() {
            return self.keyless(frame, cmd);
        }
        let first = key_slot(all[positions[0]]);
        if positions.iter().all(|&i| key_slot(all[i]) == first) {
            self.send_to_slot(&router, first, frame, cmd);
            return Step::Done;
        }
        let name = cmd.info().map_or("", |i| i.name);
        let combine = match name {
            "MGET" => Combine::Mget { keys: positions.len(), positions: Vec::new() },
            "MSET" => Combine::Same,
            "DEL" | "EXISTS" | "UNLINK" | "TOUCH" => Combine::Sum,
            _ => return self.reply_local(cmd, CROSSSLOT),
        };
        // One sub-command per slot; they travel together, one write per node.
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        let mut by_slot: HashMap<u16, usize> = HashMap::new();
        for (j, &pos) in positions.iter().enumerate() {
            let slot = key_slot(all[pos]);
            let g = *by_slot.entry(slot).or_insert_with(|| {
                groups.push((slot, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(j);
        }
        let combine = match combine {
            Combine::Mget { keys, .. } => {
                Combine::Mget { keys, positions: groups.iter().map(|(_, js)| js.clone()).collect() }
            }
            other => other,
        };
        let seq = self.client.issue();
        let merge = Merge::new(self.client.clone(), seq, combine, groups.len());
        let now = self.now();
        for (part, (slot, js)) in groups.iter().enumerate() {
            let mut sub: Vec<&[u8]> = vec![all[0]];
            for &j in js {
                sub.push(all[positions[j]]);
                if name == "MSET" {
                    sub.push(all[positions[j] + 1]);
                }
            }
            let mut buf = BytesMut::new();
            encode_command(&mut buf, &sub);
            let sub_frame = buf.freeze();
            let mut req = InFlight::new(self.client.clone(), seq, cmd, now, true);
            req.merge = Some((merge.clone(), part));
            self.send_slot(&router, *slot, req, sub_frame);
        }
        Step::Done
    }

    fn send_to_slot(&mut self, router: &Rc<ClusterRouter>, slot: u16, frame: &[u8], cmd: CommandId) {
        let seq = self.client.issue();
        let req = InFlight::new(self.client.clone(), seq, cmd, self.now(), true);
        self.send_slot(router, slot, req, Bytes::copy_from_slice(frame));
    }

    fn send_slot(&mut self, router: &Rc<ClusterRouter>, slot: u16, mut req: InFlight, frame: Bytes) {
        let Some(node) = router.slot_node(slot, self.proto) else {
            router.request_refresh();
            req.answer(format!("-CLUSTERDOWN Hash slot not served (slot {slot})\r\n").as_bytes());
            self.worker.stats.record_local(req.cmd, true);
            return;
        };
        req.frame = Some(frame.clone());
        node.send_request(req, &frame, false);
    }

    /// Commands without keys: whole-keyspace ones go to every primary and their replies are
    /// combined; the rest go to any primary.
    fn keyless(&mut self, frame: &[u8], cmd: CommandId) -> Step {
        let router = match self.topology_ready(cmd) {
            Ok(r) => r,
            Err(step) => return step,
        };
        let name = cmd.info().map_or("", |i| i.name);
        let sub = args(frame).nth(1).map(<[u8]>::to_ascii_uppercase).unwrap_or_default();
        let combine = match (name, sub.as_slice()) {
            ("DBSIZE", _) => Some(Combine::Sum),
            ("KEYS", _) => Some(Combine::Concat),
            ("FLUSHDB" | "FLUSHALL", _) => Some(Combine::Same),
            ("SCRIPT", b"LOAD" | b"FLUSH") => Some(Combine::Same),
            ("SCAN", _) => return self.not_yet(cmd, "SCAN"),
            _ => None,
        };
        let primaries = router.primaries();
        if primaries.is_empty() {
            return self.reply_local(cmd, b"-CLUSTERDOWN The cluster is down\r\n");
        }
        let now = self.now();
        let seq = self.client.issue();
        match combine {
            None => {
                let addr = &primaries[fastrand::usize(..primaries.len())];
                let req = InFlight::new(self.client.clone(), seq, cmd, now, true);
                router.node(addr, self.proto).send_request(req, frame, false);
            }
            Some(combine) => {
                let merge = Merge::new(self.client.clone(), seq, combine, primaries.len());
                for (part, addr) in primaries.iter().enumerate() {
                    let mut req = InFlight::new(self.client.clone(), seq, cmd, now, true);
                    req.merge = Some((merge.clone(), part));
                    router.node(addr, self.proto).send_request(req, frame, false);
                }
            }
        }
        Step::Done
    }
}
