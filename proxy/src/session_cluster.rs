//! The session's CLUSTER mode: a command goes to the node that serves its keys' slot; a
//! command over keys of several slots is split (MGET, MSET, DEL, EXISTS, UNLINK, TOUCH) or
//! refused with Redis Cluster's CROSSSLOT error; whole-keyspace commands go to every primary
//! and their replies are combined.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::client::Seq;
use crate::cluster::ClusterRouter;
use crate::cluster::merge::{Combine, Merge, SCAN_NODE_BITS};
use crate::cluster::tracked::Tracked;
use crate::command::keys::key_positions;
use crate::command::{CommandId, Special};
use crate::resp::request::{Spans, args, encode_command};
use crate::session::{Session, Step, answered_by_proxy};
use crate::upstream::{InFlight, Upstream};

/// CLIENT TRACKING in CLUSTER mode: the client's commands on keys run on connections of its
/// own, one per primary, each tracking for it; their invalidation pushes go to the client.
pub(crate) struct Tracking {
    set: Rc<Tracked>,
    /// OPTIN or OPTOUT: CLIENT CACHING applies to the next command.
    optin_out: bool,
    /// Whether the nodes accepted the options (unknown until they answered).
    accepted: Rc<Cell<Option<bool>>>,
    /// CLIENT CACHING, to send ahead of the next command on its node's connection.
    caching: Option<Bytes>,
}

/// Classic pub/sub goes to the primary of this slot: PUBLISH counts the receivers on its own
/// node only, so every proxy puts its subscribers and publishers on the same one.
const PUBSUB_SLOT: u16 = 0;
const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
const QUEUED: &[u8] = b"+QUEUED\r\n";
const DISCARD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";
const MULTI: &[u8] = b"*1\r\n$5\r\nMULTI\r\n";
const BLOCKING_WHILE_WATCHING: &[u8] = b"-ERR respmesh: in CLUSTER mode a blocking command on another node's keys than the WATCHed ones must wait for EXEC, DISCARD or UNWATCH\r\n";
const SELECT_IN_CLUSTER: &[u8] = b"-ERR SELECT is not allowed in cluster mode\r\n";

/// CLUSTER subcommands that a standalone Redis refuses with [`CLUSTER_DISABLED_REPLY`] and the
/// proxy does too; KEYSLOT, COUNTKEYSINSLOT and GETKEYSINSLOT are answered, unknown ones get a
/// node's error.
const CLUSTER_DISABLED: &[&[u8]] = &[
    b"ADDSLOTS",
    b"ADDSLOTSRANGE",
    b"BUMPEPOCH",
    b"COUNT-FAILURE-REPORTS",
    b"DELSLOTS",
    b"DELSLOTSRANGE",
    b"FAILOVER",
    b"FLUSHSLOTS",
    b"FORGET",
    b"HELP",
    b"INFO",
    b"LINKS",
    b"MEET",
    b"MYID",
    b"MYSHARDID",
    b"NODES",
    b"REPLICAS",
    b"REPLICATE",
    b"RESET",
    b"SAVECONFIG",
    b"SET-CONFIG-EPOCH",
    b"SETSLOT",
    b"SHARDS",
    b"SLAVES",
    b"SLOTS",
];
const CLUSTER_DISABLED_REPLY: &[u8] = b"-ERR This instance has cluster support disabled\r\n";

/// A transaction's commands without keys, queued before its first key on the first primary
/// (MULTI; PING; ... SET k v): kept so that the transaction can move to the node of its first
/// key. Bounded: past these, the transaction stays where it began.
const KEYLESS_MAX_BYTES: usize = 1 << 20;
const KEYLESS_MAX_COMMANDS: usize = 1024;

/// See [`KEYLESS_MAX_BYTES`].
#[derive(Default)]
pub(crate) struct Keyless {
    frames: Vec<Box<[u8]>>,
    bytes: usize,
    /// Too many to keep: the transaction can no longer move.
    overflow: bool,
}

impl Keyless {
    fn hold(&mut self, frame: &[u8]) {
        if self.overflow {
            return;
        }
        self.bytes += frame.len();
        if self.bytes > KEYLESS_MAX_BYTES || self.frames.len() >= KEYLESS_MAX_COMMANDS {
            *self = Keyless { overflow: true, ..Default::default() };
            return;
        }
        self.frames.push(frame.into());
    }
}

impl Session {
    #[inline]
    fn router(&mut self) -> Rc<ClusterRouter> {
        if let Some(r) = &self.router
            && !self.routing
        {
            return r.clone();
        }
        if self.routing {
            return self.worker.cluster_router(&self.svc, self.limits.max_nesting_depth);
        }
        let r = self.worker.cluster_router(&self.svc, self.limits.max_nesting_depth);
        self.router = Some(r.clone());
        r
    }

    fn not_yet(&mut self, cmd: CommandId, what: &str) -> Step {
        let reply = format!("-ERR respmesh: {what} is not supported in CLUSTER mode yet\r\n");
        self.reply_local(cmd, reply.as_bytes())
    }

    /// Commands that need one node connection of the client's own, which a cluster does not
    /// give it: CLIENT TRACKING and NO-TOUCH, SYNC and PSYNC.
    fn not_in_cluster(&mut self, cmd: CommandId, what: &str) -> Step {
        let reply = format!(
            "-ERR respmesh: {what} is not supported in CLUSTER mode (it needs a connection to one Redis node of the client's own)\r\n"
        );
        self.reply_local(cmd, reply.as_bytes())
    }

    /// CLIENT subcommands about the client's own connection, answered for the connection to
    /// the proxy: in CLUSTER mode that is the one connection the client has.
    fn cluster_client(&mut self, frame: &[u8], argc: usize, spans: Spans, cmd: CommandId, sub: &[u8]) -> Step {
        let arg = |i: usize| spans.get(frame, i).unwrap_or_default().to_ascii_uppercase();
        let arity = match sub {
            b"CACHING" | b"NO-EVICT" | b"REPLY" => 3,
            _ => 2,
        };
        if argc != arity {
            let mut r = BytesMut::new();
            crate::replies::wrong_arity(&mut r, &format!("client|{}", String::from_utf8_lossy(sub).to_lowercase()));
            return self.reply_local(cmd, &r);
        }
        match sub {
            b"ID" => {
                let reply = format!(":{}\r\n", self.client.id);
                self.reply_local(cmd, reply.as_bytes())
            }
            b"INFO" => {
                let line = self.client_info_line("client|info");
                let reply = if self.proto >= 3 {
                    format!("={}\r\ntxt:{line}\r\n", line.len() + 4)
                } else {
                    format!("${}\r\n{line}\r\n", line.len())
                };
                self.reply_local(cmd, reply.as_bytes())
            }
            // Tracking is off (CLIENT TRACKING is not available here): Redis's answers for that.
            b"GETREDIR" => self.reply_local(cmd, b":-1\r\n"),
            b"TRACKINGINFO" => {
                let reply: &[u8] = if self.proto >= 3 {
                    b"%3\r\n$5\r\nflags\r\n~1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
                } else {
                    b"*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n"
                };
                self.reply_local(cmd, reply)
            }
            b"CACHING" => self.reply_local(
                cmd,
                b"-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n",
            ),
            // The proxy never evicts its clients; the flag shows in CLIENT INFO.
            b"NO-EVICT" => match arg(2).as_slice() {
                b"ON" | b"OFF" => {
                    self.no_evict = arg(2) == b"ON";
                    self.reply_local(cmd, crate::replies::OK)
                }
                _ => self.reply_local(cmd, crate::replies::SYNTAX_ERROR),
            },
            _ => match arg(2).as_slice() {
                b"ON" => {
                    self.reply_off = false;
                    self.skip_next = false;
                    self.client.set_silencing(false);
                    self.reply_local(cmd, crate::replies::OK)
                }
                b"OFF" => {
                    self.reply_off = true;
                    Step::Done
                }
                b"SKIP" => {
                    self.skip_next = true;
                    Step::Done
                }
                _ => self.reply_local(cmd, crate::replies::SYNTAX_ERROR),
            },
        }
    }

    /// CLIENT INFO's line, in Redis's format, for the client's connection to the proxy.
    fn client_info_line(&self, command: &str) -> String {
        let mut flags = String::new();
        if self.in_multi || self.multi_pending {
            flags.push('x');
        }
        if self.no_evict {
            flags.push('e');
        }
        let multi = if self.in_multi || self.multi_pending { 0 } else { -1 };
        match self.client.entry.get() {
            Some(e) => info_line(e, &flags, multi, command),
            None => String::new(),
        }
    }

    /// CLIENT TRACKING ON|OFF [options] in CLUSTER mode (RESP3, without REDIRECT).
    fn cluster_tracking(&mut self, frame: &[u8], argc: usize, spans: Spans, cmd: CommandId) -> Step {
        let arg = |i: usize| spans.get(frame, i).unwrap_or_default().to_ascii_uppercase();
        if argc < 3 {
            let mut r = BytesMut::new();
            crate::replies::wrong_arity(&mut r, "client|tracking");
            return self.reply_local(cmd, &r);
        }
        match arg(2).as_slice() {
            b"OFF" => {
                if self.client.outstanding() > 0 {
                    return self.drain();
                }
                self.stop_tracking();
                return self.reply_local(cmd, crate::replies::OK);
            }
            b"ON" => {}
            _ => return self.reply_local(cmd, crate::replies::SYNTAX_ERROR),
        }
        if (3..argc).any(|i| arg(i) == b"REDIRECT") {
            return self.not_in_cluster(cmd, "CLIENT TRACKING with REDIRECT");
        }
        if self.proto < 3 {
            return self.reply_local(
                cmd,
                b"-ERR respmesh: CLIENT TRACKING in CLUSTER mode needs RESP3 (HELLO 3): invalidations come as pushes on the client's own connection\r\n",
            );
        }
        let router = match self.topology_ready(cmd) {
            Ok(r) => r,
            Err(step) => return step,
        };
        if self.client.outstanding() > 0 {
            return self.drain();
        }
        self.stop_tracking();
        let primaries = router.primaries();
        if primaries.is_empty() {
            return self.reply_local(cmd, b"-CLUSTERDOWN The cluster is down\r\n");
        }
        let accepted = Rc::new(Cell::new(None));
        let now = self.now();
        let seq = self.client.issue();
        let merge = Merge::new(self.client.clone(), seq, Combine::Tracking(accepted.clone()), primaries.len());
        let set = Tracked::new(
            Bytes::copy_from_slice(frame),
            self.client.clone(),
            self.svc.clone(),
            self.name.clone(),
            self.worker.ctx.clone(),
            self.limits.max_nesting_depth,
            &router,
        );
        for (part, addr) in primaries.iter().enumerate() {
            let mut req = InFlight::new(self.client.clone(), seq, cmd, now, true);
            req.merge = Some((merge.clone(), part));
            set.open(addr, false).send_request(req, frame, false);
        }
        let optin_out = (3..argc).any(|i| matches!(arg(i).as_slice(), b"OPTIN" | b"OPTOUT"));
        self.tracking = Some(Tracking { set, optin_out, accepted, caching: None });
        Step::Done
    }

    /// CLIENT CACHING, GETREDIR and TRACKINGINFO while tracking.
    fn tracking_client_command(&mut self, frame: &[u8], argc: usize, spans: Spans, cmd: CommandId, sub: &[u8]) -> Step {
        let t = self.tracking.as_mut().expect("tracking");
        match sub {
            b"GETREDIR" => self.reply_local(cmd, b":0\r\n"),
            b"CACHING" => {
                if !t.optin_out {
                    return self.reply_local(
                        cmd,
                        b"-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n",
                    );
                }
                let yes = spans.get(frame, 2).unwrap_or_default().to_ascii_uppercase();
                if argc != 3 || !matches!(yes.as_slice(), b"YES" | b"NO") {
                    return self.reply_local(cmd, crate::replies::SYNTAX_ERROR);
                }
                // It applies to the next command, on whichever node that runs.
                t.caching = Some(Bytes::copy_from_slice(frame));
                self.reply_local(cmd, crate::replies::OK)
            }
            _ => {
                // Every node tracks with the same options: any one describes them.
                match t.set.first() {
                    Some(up) => {
                        self.send(&up, frame, cmd, true);
                        Step::Done
                    }
                    None => self.reply_local(cmd, b"-CLUSTERDOWN The cluster is down\r\n"),
                }
            }
        }
    }

    /// The tracking client's connection to `addr`.
    fn tracked_conn(&self, addr: &str) -> Rc<Upstream> {
        self.tracking.as_ref().expect("tracking").set.conn(addr)
    }

    fn send_tracked(&mut self, router: &Rc<ClusterRouter>, slot: u16, req: InFlight, frame: &[u8]) {
        let Some(addr) = router.primary(slot) else {
            router.request_refresh();
            req.answer(format!("-CLUSTERDOWN Hash slot not served (slot {slot})\r\n").as_bytes());
            self.worker.stats.record_local(req.cmd, true);
            return;
        };
        let up = self.tracked_conn(&addr);
        if let Some(caching) = self.tracking.as_mut().and_then(|t| t.caching.take()) {
            up.send_internal(&self.client, &caching, req.start);
        }
        self.note_write(req.cmd, &up);
        up.send_request(req, frame, false);
    }

    /// Before a command of a tracking client: options the nodes refused end tracking; a lost
    /// node connection lost what it tracked, so the client goes (its cache can no longer be
    /// trusted), as it would if its one Redis went away.
    fn settle_tracking(&mut self) -> Option<Step> {
        let t = self.tracking.as_ref()?;
        if t.accepted.get() == Some(false) {
            self.stop_tracking();
            return None;
        }
        if t.set.lost() {
            self.client.close_after_flush();
            return Some(Step::Close);
        }
        None
    }

    /// Ends CLIENT TRACKING: the client's node connections close.
    pub(crate) fn stop_tracking(&mut self) {
        if let Some(t) = self.tracking.take() {
            if self.pinned.as_ref().is_some_and(|p| p.is_private()) {
                // A transaction or WATCH held there ends with the connection (EXEC then
                // answers as Redis does without MULTI).
                self.pinned = None;
                self.forget_pinned_state();
            }
            t.set.close();
        }
    }

    /// CLIENT LIST in CLUSTER mode: the clients of this service, the proxy being the one Redis.
    fn cluster_client_list(&mut self, frame: &[u8], argc: usize, spans: Spans, cmd: CommandId) -> Step {
        let arg = |i: usize| spans.get(frame, i).unwrap_or_default().to_ascii_uppercase();
        let mut ids: Option<Vec<u64>> = None;
        let mut only_normal = true;
        let mut i = 2;
        while i < argc {
            match arg(i).as_slice() {
                b"TYPE" if i + 1 < argc => {
                    match arg(i + 1).as_slice() {
                        b"NORMAL" => {}
                        b"MASTER" | b"REPLICA" | b"SLAVE" | b"PUBSUB" => only_normal = false,
                        other => {
                            let reply = format!(
                                "-ERR Unknown client type '{}'\r\n",
                                String::from_utf8_lossy(other).to_lowercase()
                            );
                            return self.reply_local(cmd, reply.as_bytes());
                        }
                    }
                    i += 2;
                }
                b"ID" if i + 1 < argc => {
                    let mut list = Vec::new();
                    for j in i + 1..argc {
                        match std::str::from_utf8(&arg(j)).ok().and_then(|v| v.parse::<u64>().ok()) {
                            Some(id) if id > 0 => list.push(id),
                            _ => return self.reply_local(cmd, b"-ERR Invalid client ID\r\n"),
                        }
                    }
                    ids = Some(list);
                    i = argc;
                }
                _ => return self.reply_local(cmd, crate::replies::SYNTAX_ERROR),
            }
        }
        let mut text = String::new();
        if only_normal {
            for e in crate::registry::of_service(&self.host) {
                if ids.as_ref().is_some_and(|ids| !ids.contains(&e.id)) {
                    continue;
                }
                if e.id == self.client.id {
                    text.push_str(&self.client_info_line("client|list"));
                } else {
                    text.push_str(&info_line(&e, "", -1, "NULL"));
                }
            }
        }
        let reply = if self.proto >= 3 {
            format!("={}\r\ntxt:{text}\r\n", text.len() + 4)
        } else {
            format!("${}\r\n{text}\r\n", text.len())
        };
        self.reply_local(cmd, reply.as_bytes())
    }

    /// CLIENT KILL in CLUSTER mode: closes clients of this service (the node connections are
    /// the proxy's own and are never the target).
    fn cluster_client_kill(&mut self, frame: &[u8], argc: usize, spans: Spans, cmd: CommandId) -> Step {
        let arg = |i: usize| String::from_utf8_lossy(spans.get(frame, i).unwrap_or_default()).into_owned();
        let clients = crate::registry::of_service(&self.host);
        if argc == 3 {
            // The old form: CLIENT KILL addr:port.
            let addr = arg(2);
            return match clients.iter().find(|e| e.peer == addr) {
                Some(e) => {
                    e.kill();
                    self.reply_local(cmd, crate::replies::OK)
                }
                None => self.reply_local(cmd, b"-ERR No such client\r\n"),
            };
        }
        if argc < 4 || !argc.is_multiple_of(2) {
            return self.reply_local(cmd, crate::replies::SYNTAX_ERROR);
        }
        let (mut id, mut addr, mut laddr, mut skipme) = (None, None, None, true);
        for i in (2..argc).step_by(2) {
            let value = arg(i + 1);
            match arg(i).to_ascii_uppercase().as_str() {
                "ID" => match value.parse::<u64>() {
                    Ok(v) if v > 0 => id = Some(v),
                    _ => return self.reply_local(cmd, b"-ERR client-id should be greater than 0\r\n"),
                },
                "ADDR" => addr = Some(value),
                "LADDR" => laddr = Some(value),
                "SKIPME" => match value.to_ascii_lowercase().as_str() {
                    "yes" => skipme = true,
                    "no" => skipme = false,
                    _ => return self.reply_local(cmd, crate::replies::SYNTAX_ERROR),
                },
                "TYPE" if value.eq_ignore_ascii_case("normal") => {}
                "USER" if value == "default" => {}
                _ => return self.reply_local(cmd, crate::replies::SYNTAX_ERROR),
            }
        }
        let mut killed = 0;
        for e in &clients {
            if id.is_some_and(|id| id != e.id)
                || addr.as_ref().is_some_and(|a| *a != e.peer)
                || laddr.as_ref().is_some_and(|a| *a != e.local)
                || (skipme && e.id == self.client.id)
            {
                continue;
            }
            e.kill();
            killed += 1;
        }
        let reply = format!(":{killed}\r\n");
        self.reply_local(cmd, reply.as_bytes())
    }

    /// HELLO (already stripped of the login and name, which stay with the proxy), answered by
    /// a primary and made the reply of one Redis: `mode` standalone, `id` the client's own.
    pub(crate) fn cluster_hello(&mut self, router: &Rc<ClusterRouter>, frame: &[u8], cmd: CommandId) {
        let primaries = router.primaries();
        let Some(addr) = primaries.get(fastrand::usize(..primaries.len().max(1))) else {
            self.reply_local(cmd, b"-CLUSTERDOWN The cluster is down\r\n");
            return;
        };
        let now = self.now();
        let seq = self.client.issue();
        let merge = Merge::new(self.client.clone(), seq, Combine::Hello { id: self.client.id }, 1);
        let mut req = InFlight::new(self.client.clone(), seq, cmd, now, true);
        req.merge = Some((merge, 0));
        router.node(addr, self.proto).send_request(req, frame, false);
    }

    /// Remembers that this client wrote to `node` (for WAIT).
    ///
    /// Runs for every write, so a node already noted is recognised by its connection: a `Weak`
    /// keeps the connection's allocation, so no other connection can have that address. A new
    /// connection to a noted node (after a reconnect) replaces the old one's entry.
    pub(crate) fn note_write(&mut self, cmd: CommandId, node: &Rc<Upstream>) {
        if cmd.has_flag(crate::command::flags::WRITE) {
            self.note_written(node);
        }
    }

    /// See [`Session::note_write`]: `node` took a write.
    #[inline]
    fn note_written(&mut self, node: &Rc<Upstream>) {
        if self.written.iter().any(|(_, up)| std::ptr::eq(up.as_ptr(), Rc::as_ptr(node))) {
            return;
        }
        let up = Rc::downgrade(node);
        match self.written.iter_mut().find(|(addr, _)| addr == node.endpoint()) {
            Some(entry) => entry.1 = up,
            None => self.written.push((node.endpoint().to_owned(), up)),
        }
    }

    /// WAIT and WAITAOF over a cluster: on each primary this client wrote to, a connection of
    /// its own makes a write that replicates (so that its offset covers the client's earlier
    /// writes there) and then waits; the reply is the smallest count, which holds for every
    /// one of those primaries.
    fn cluster_wait(&mut self, frame: &[u8], cmd: CommandId) -> Step {
        let router = match self.topology_ready(cmd) {
            Ok(r) => r,
            Err(step) => return step,
        };
        if self.client.outstanding() > 0 {
            // The writes before WAIT must have been answered: their offsets are then known.
            return self.drain();
        }
        let primaries = router.primaries();
        let mut targets: Vec<(String, bool)> =
            self.written.iter().filter(|(a, _)| primaries.contains(a)).map(|(a, _)| (a.clone(), true)).collect();
        if targets.is_empty() {
            // Nothing written: any primary gives the answer (its replicas in sync with nothing).
            match primaries.first() {
                Some(p) => targets.push((p.clone(), false)),
                None => return self.reply_local(cmd, b"-CLUSTERDOWN The cluster is down\r\n"),
            }
        }
        // The last WAIT was answered (nothing is outstanding): its connections are free.
        self.release_waits();
        let now = self.now();
        let seq = self.client.issue();
        let merge = Merge::new(self.client.clone(), seq, Combine::Min, targets.len());
        for (part, (addr, wrote)) in targets.iter().enumerate() {
            let up = self.worker.take_dedicated(&self.svc, Some(addr), self.proto, self.limits.max_nesting_depth);
            if *wrote && let Some(key) = router.key_on(addr) {
                let mut marker = BytesMut::new();
                encode_command(&mut marker, &[&b"MULTI"[..]]);
                up.send_internal(&self.client, &marker, now);
                for part in [&[&b"SET"[..], &key, b"1"][..], &[&b"DEL"[..], &key][..], &[&b"EXEC"[..]][..]] {
                    marker.clear();
                    encode_command(&mut marker, part);
                    up.send_internal(&self.client, &marker, now);
                }
            }
            let mut req = InFlight::new(self.client.clone(), seq, cmd, now, false);
            req.merge = Some((merge.clone(), part));
            up.send_request(req, frame, false);
            self.waits.push(up);
        }
        Step::Done
    }

    /// Gives WAIT's connections back to the worker's pool, or closes those still waiting (the
    /// client left before its WAIT was answered).
    pub(crate) fn release_waits(&mut self) {
        for w in self.waits.drain(..) {
            if w.is_idle() {
                self.worker.give_back(w);
            } else {
                w.retire();
            }
        }
    }

    /// MONITOR over a cluster: one MONITOR connection per node, their lines merged as they
    /// come. A replica's lines for what its primary replicates are left out (the primary shows
    /// those commands already).
    fn cluster_monitor(&mut self, cmd: CommandId) -> Step {
        let router = match self.topology_ready(cmd) {
            Ok(r) => r,
            Err(step) => return step,
        };
        if self.client.outstanding() > 0 {
            return self.drain();
        }
        let nodes = router.nodes_with_primary();
        if nodes.is_empty() {
            return self.reply_local(cmd, b"-CLUSTERDOWN The cluster is down\r\n");
        }
        if !self.monitors.is_empty() {
            return self.reply_local(cmd, crate::replies::OK);
        }
        let step = self.reply_local(cmd, crate::replies::OK);
        for (addr, primary) in nodes {
            let up = self.worker.new_dedicated(
                &self.svc,
                Some(&addr),
                self.proto,
                self.name.clone(),
                self.limits.max_nesting_depth,
            );
            up.start_monitor(self.client.clone(), primary.map(|p| format!(" {p}] ").into_bytes()));
            self.monitors.push(up);
        }
        step
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
        if self.permanent
            && self.proto < 3
            && self.pinned.as_ref().is_some_and(|p| p.is_raw())
            && !matches!(special, Special::Auth | Special::Quit | Special::Reset | Special::Subscribe)
        {
            // A RESP2 subscriber: whatever it sends is answered on its connection, in order
            // with what Redis sends there (Redis refuses all but pub/sub commands and PING).
            return Some(self.subscriber_command(frame, spans, cmd));
        }
        let in_tx = self.in_multi || self.multi_pending;
        if special == Special::Select && answered_by_proxy(frame, argc, spans, special) {
            // SELECT 0 changes nothing here; in a transaction it is queued like any command, and
            // EXEC answers it (Redis Cluster's way).
            return Some(if in_tx {
                self.in_transaction(frame, spans, argc, cmd)
            } else {
                self.reply_local(cmd, crate::replies::OK)
            });
        }
        if answered_by_proxy(frame, argc, spans, special) {
            return None;
        }
        if let Some(step) = self.settle_pin() {
            return Some(step);
        }
        if self.tracking.is_some()
            && let Some(step) = self.settle_tracking()
        {
            return Some(step);
        }
        // Between WATCH and MULTI, commands run as usual (WATCH's connection waits for MULTI),
        // except a blocking one: see `blocking_while_watching`.
        let blocks_while_watching = self.watching
            && !in_tx
            && (special == Special::Blocking || (special == Special::MaybeBlocking && crate::command::blocks(frame)));
        Some(match special {
            Special::Select => self.reply_local(cmd, SELECT_IN_CLUSTER),
            Special::Client => {
                let sub = spans.get(frame, 1).unwrap_or_default().to_ascii_uppercase();
                match sub.as_slice() {
                    b"TRACKING" => self.cluster_tracking(frame, argc, spans, cmd),
                    b"CACHING" | b"GETREDIR" | b"TRACKINGINFO" if self.tracking.is_some() => {
                        self.tracking_client_command(frame, argc, spans, cmd, &sub)
                    }
                    b"ID" | b"INFO" | b"REPLY" | b"CACHING" | b"NO-EVICT" | b"GETREDIR" | b"TRACKINGINFO" => {
                        self.cluster_client(frame, argc, spans, cmd, &sub)
                    }
                    b"LIST" => self.cluster_client_list(frame, argc, spans, cmd),
                    b"KILL" => self.cluster_client_kill(frame, argc, spans, cmd),
                    // A per-connection mode of a node: the client's commands share node
                    // connections with other clients' and cannot carry it.
                    b"NO-TOUCH" => self.not_in_cluster(cmd, &format!("CLIENT {}", String::from_utf8_lossy(&sub))),
                    _ => self.keyless(frame, cmd),
                }
            }
            Special::Multi => self.cluster_multi(frame, cmd),
            Special::Exec | Special::Discard => self.cluster_exec(frame, cmd, special),
            Special::Watch => self.cluster_watch(frame, spans, argc, cmd),
            Special::Unwatch => match self.pinned.clone() {
                Some(p) => {
                    self.send(&p, frame, cmd, true);
                    if !self.in_multi {
                        self.watching = false;
                        self.tx_refused = None;
                    }
                    Step::Done
                }
                None => self.reply_local(cmd, crate::replies::OK),
            },
            // Classic pub/sub: on the node where PUBLISH counts its receivers.
            Special::Subscribe if cmd.info().is_none_or(|i| i.name != "SSUBSCRIBE") => match self.pinned.clone() {
                Some(p) if self.permanent => self.send_to_subscriber(&p, frame, cmd),
                _ => self.send_dedicated_node(frame, cmd, Some(PUBSUB_SLOT), true, true),
            },
            // Sharded pub/sub lives on the node of the channel's slot.
            Special::Subscribe => match self.command_slot(frame, spans, argc, cmd) {
                Ok(slot) => match self.pinned.clone() {
                    Some(p) if self.permanent => self.send_to_subscriber(&p, frame, cmd),
                    _ => self.send_dedicated_node(frame, cmd, slot, true, true),
                },
                Err(step) => step,
            },
            _ if in_tx => self.in_transaction(frame, spans, argc, cmd),
            _ if blocks_while_watching => self.blocking_while_watching(frame, spans, argc, cmd),
            Special::Wait => self.cluster_wait(frame, cmd),
            Special::Stream if cmd.info().is_some_and(|i| i.name == "MONITOR") => self.cluster_monitor(cmd),
            Special::Stream => self.not_in_cluster(cmd, cmd.info().map_or("this command", |i| i.name)),
            // Where reads go is the service's readPolicy; a client's own choice changes nothing.
            Special::ReadMode => self.reply_local(cmd, crate::replies::OK),
            Special::Blocking => self.cluster_blocking(frame, spans, argc, cmd),
            Special::MaybeBlocking => {
                let blocks = crate::command::blocks(frame);
                if blocks {
                    self.cluster_blocking(frame, spans, argc, cmd)
                } else {
                    self.keyed(frame, spans, argc, cmd)
                }
            }
            // A subscriber in RESP3 runs commands as any client does (its messages are pushes,
            // apart from the replies), but its subscriptions are on its connection.
            Special::None if self.permanent && self.pinned_raw() && crate::session::unsubscribe_kind(cmd).is_some() => {
                let p = self.pinned.clone().expect("a subscriber's connection");
                self.send_to_subscriber(&p, frame, cmd)
            }
            Special::None => self.keyed(frame, spans, argc, cmd),
            _ => {
                let name = cmd.info().map_or("this command", |i| i.name);
                self.not_yet(cmd, name)
            }
        })
    }

    /// Lets go of a dedicated connection whose work is done (a blocking command answered);
    /// makes the next command wait while one is still at work.
    fn settle_pin(&mut self) -> Option<Step> {
        let p = self.pinned.clone()?;
        if !p.is_usable() {
            if p.lost_state() {
                self.client.close_after_flush();
                return Some(Step::Close);
            }
            self.unpin();
            return None;
        }
        if self.permanent || self.in_multi || self.watching {
            return None;
        }
        if self.client.outstanding() > 0 {
            // A blocking command is in flight: what follows it runs after it, as on Redis.
            return Some(self.drain());
        }
        // Its state has ended: the connection can serve another client's.
        if let Some(p) = self.pinned.take() {
            self.worker.give_back(p);
        }
        self.unpin();
        None
    }

    /// The one slot of a command's keys: `Ok(None)` for a command without keys, `Err` (the
    /// step taken) for keys of several slots or keys that cannot be found.
    fn command_slot(&mut self, frame: &[u8], spans: Spans, argc: usize, cmd: CommandId) -> Result<Option<u16>, Step> {
        let router = self.router();
        let key_slot = |k: &[u8]| router.slot_of(k);
        if let Some(info) = cmd.info()
            && info.first_key == 1
            && info.last_key == 1
            && let Some(key) = spans.get(frame, 1)
        {
            return Ok(Some(key_slot(key)));
        }
        let _ = argc;
        let all: Vec<&[u8]> = args(frame).collect();
        let positions = match key_positions(cmd, &all) {
            Ok(p) => p,
            Err(why) => {
                let reply = format!("-ERR respmesh: {why}\r\n");
                return Err(self.reply_local(cmd, reply.as_bytes()));
            }
        };
        let Some(&first) = positions.first() else { return Ok(None) };
        let slot = key_slot(all[first]);
        if positions.iter().any(|&i| key_slot(all[i]) != slot) {
            return Err(self.reply_local(cmd, CROSSSLOT));
        }
        Ok(Some(slot))
    }

    /// Opens a connection of the client's own to the node of `slot` (any primary for `None`)
    /// and sends the command there.
    fn send_dedicated_node(
        &mut self,
        frame: &[u8],
        cmd: CommandId,
        slot: Option<u16>,
        permanent: bool,
        raw: bool,
    ) -> Step {
        let router = match self.topology_ready(cmd) {
            Ok(r) => r,
            Err(step) => return step,
        };
        if self.client.outstanding() > 0 {
            return self.drain();
        }
        let addr = match slot {
            Some(slot) => router.primary(slot),
            None => router.primaries().into_iter().next(),
        };
        let Some(addr) = addr else {
            return self.reply_local(cmd, b"-CLUSTERDOWN Hash slot not served\r\n");
        };
        let up = self.open_dedicated(&addr, permanent);
        self.note_write(cmd, &up);
        if raw {
            up.set_raw(self.client.clone());
        }
        self.subscriber |= raw;
        self.send(&up, frame, cmd, !raw && permanent);
        if cmd.special() == Special::Subscribe {
            self.worker.note_subscribing(&up);
        }
        Step::Done
    }

    fn open_dedicated(&mut self, addr: &str, permanent: bool) -> Rc<Upstream> {
        if let Some(old) = self.pinned.take() {
            old.retire();
        }
        if self.tracking.is_some() && !permanent {
            // A transaction or a blocking command: on the client's own node connection, where
            // what it reads is tracked too.
            let up = self.tracked_conn(addr);
            self.pinned = Some(up.clone());
            self.permanent = permanent;
            return up;
        }
        let up = if permanent {
            self.worker.new_dedicated(
                &self.svc,
                Some(addr),
                self.proto,
                self.name.clone(),
                self.limits.max_nesting_depth,
            )
        } else {
            // A transaction or a blocking command: a pooled connection, given back after.
            self.worker.take_dedicated(&self.svc, Some(addr), self.proto, self.limits.max_nesting_depth)
        };
        self.pinned = Some(up.clone());
        self.permanent = permanent;
        up
    }

    /// A blocking command runs on a connection of its own to its keys' node, so that it
    /// blocks nobody else.
    fn cluster_blocking(&mut self, frame: &[u8], spans: Spans, argc: usize, cmd: CommandId) -> Step {
        match self.command_slot(frame, spans, argc, cmd) {
            Ok(Some(slot)) => self.send_dedicated_node(frame, cmd, Some(slot), false, false),
            Ok(None) => self.not_yet(cmd, cmd.info().map_or("this command", |i| i.name)),
            Err(step) => step,
        }
    }

    /// MULTI is answered at once; the transaction goes to the node of the first command that
    /// follows it (all its keys must live there, as in any Redis Cluster).
    fn cluster_multi(&mut self, frame: &[u8], cmd: CommandId) -> Step {
        if self.in_multi {
            let p = self.pinned.clone().expect("in a transaction");
            self.send(&p, frame, cmd, true);
            return Step::Done;
        }
        if self.multi_pending {
            return self.reply_local(cmd, b"-ERR MULTI calls can not be nested\r\n");
        }
        if self.client.outstanding() > 0 {
            // What came before runs first, wherever it went: after WATCH, a write to a watched
            // key on another connection must reach Redis before the transaction does.
            return self.drain();
        }
        if let Some(p) = self.pinned.clone()
            && self.watching
        {
            self.send(&p, frame, cmd, true);
            self.in_multi = true;
            return Step::Done;
        }
        self.multi_pending = true;
        self.reply_local(cmd, crate::replies::OK)
    }

    fn cluster_exec(&mut self, frame: &[u8], cmd: CommandId, special: Special) -> Step {
        let exec = special == Special::Exec;
        let refused = self.tx_refused.take();
        self.tx_slot = None;
        self.tx_keyless = Keyless::default();
        if self.multi_pending {
            // Nothing was queued: the answer of an empty transaction, or of a refused one.
            self.multi_pending = false;
            self.watching = false;
            if let Some(p) = self.pinned.take() {
                p.retire();
            }
            let reply = match refused {
                Some(refused) if exec => refused,
                _ if exec => b"*0\r\n",
                _ => crate::replies::OK,
            };
            return self.reply_local(cmd, reply);
        }
        match self.pinned.clone() {
            Some(p) if self.in_multi || self.watching => {
                match refused {
                    // As Redis does when a transaction's keys are in more than one slot: the
                    // node never runs it.
                    Some(refused) if exec => {
                        if self.in_multi {
                            let now = self.now();
                            p.send_internal(&self.client, DISCARD, now);
                        }
                        self.reply_local(cmd, refused);
                    }
                    _ => self.send(&p, frame, cmd, true),
                }
                self.in_multi = false;
                self.watching = false;
                Step::Done
            }
            _ => self.reply_local(
                cmd,
                if exec { b"-ERR EXEC without MULTI\r\n" } else { b"-ERR DISCARD without MULTI\r\n" },
            ),
        }
    }

    fn cluster_watch(&mut self, frame: &[u8], spans: Spans, argc: usize, cmd: CommandId) -> Step {
        if self.in_multi || self.multi_pending {
            return self.reply_local(cmd, b"-ERR WATCH inside MULTI is not allowed\r\n");
        }
        let slot = match self.command_slot(frame, spans, argc, cmd) {
            Ok(slot) => slot,
            Err(step) => return step,
        };
        if let Some(p) = self.pinned.clone()
            && self.watching
        {
            if let Some(slot) = slot
                && self.router().primary(slot).is_none_or(|addr| addr != p.endpoint())
            {
                // Keys on two nodes cannot be watched together; the transaction will not run
                // unprotected either.
                self.tx_refused = Some(CROSSSLOT);
                return self.reply_local(cmd, CROSSSLOT);
            }
            self.send(&p, frame, cmd, true);
            return Step::Done;
        }
        let step = self.send_dedicated_node(frame, cmd, slot, false, false);
        if matches!(step, Step::Done) && self.pinned.is_some() {
            self.watching = true;
        }
        step
    }

    /// Sends a command to the subscriber's own connection, whose replies reach the client as
    /// they come: after every reply due from elsewhere.
    fn send_to_subscriber(&mut self, p: &Rc<Upstream>, frame: &[u8], cmd: CommandId) -> Step {
        if self.client.outstanding() > 0 {
            return self.drain();
        }
        self.subscriber = true;
        self.send(p, frame, cmd, false);
        Step::Done
    }

    /// A command from a RESP2 subscriber, which Redis refuses unless it is about pub/sub: its
    /// connection's node refuses it, except that a node redirects a key of another node first.
    fn subscriber_command(&mut self, frame: &[u8], spans: Spans, cmd: CommandId) -> Step {
        let p = self.pinned.clone().expect("a subscriber's connection");
        let router = self.router();
        let mut all: Vec<&[u8]> = args(frame).collect();
        // Keys the command's node would redirect. Where the proxy cannot tell which arguments
        // are keys (a key count that is not a number), a node may still read some: every
        // argument counts.
        let positions = key_positions(cmd, &all).unwrap_or_else(|_| (1..all.len()).collect());
        let subscription = cmd.info().is_some_and(|i| i.name.ends_with("SUBSCRIBE"));
        let elsewhere = !subscription
            && positions
                .iter()
                .any(|&i| router.primary(router.slot_of(all[i])).is_none_or(|addr| addr != p.endpoint()));
        if !elsewhere {
            return self.send_to_subscriber(&p, frame, cmd);
        }
        // The same command with its keys on this node: refused there, in Redis's words and in
        // its place among the subscription's replies (which reach the client as they come).
        if let Some(here) = router.key_on(p.endpoint()) {
            for i in positions {
                all[i] = &here;
            }
            let mut moved = BytesMut::new();
            encode_command(&mut moved, &all);
            return self.send_to_subscriber(&p, &moved, cmd);
        }
        let mut name = cmd.info().map_or("", |i| i.name).to_ascii_lowercase();
        if matches!(name.as_str(), "object" | "memory" | "xinfo" | "xgroup")
            && let Some(sub) = spans.get(frame, 1)
        {
            name = format!("{name}|{}", String::from_utf8_lossy(sub).to_ascii_lowercase());
        }
        let reply = format!(
            "-ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n"
        );
        self.reply_local(cmd, reply.as_bytes())
    }

    /// A blocking command between WATCH and MULTI runs on WATCH's connection when its keys are
    /// on that node (it blocks there as it would on Redis). On another node it would need a
    /// second connection of the client's own while the first holds the WATCH: refused.
    fn blocking_while_watching(&mut self, frame: &[u8], spans: Spans, argc: usize, cmd: CommandId) -> Step {
        let slot = match self.command_slot(frame, spans, argc, cmd) {
            Ok(slot) => slot,
            Err(step) => return step,
        };
        let Some(p) = self.pinned.clone() else {
            self.watching = false;
            return self.cluster_blocking(frame, spans, argc, cmd);
        };
        if slot.is_some_and(|slot| self.router().primary(slot).is_none_or(|addr| addr != p.endpoint())) {
            return self.reply_local(cmd, BLOCKING_WHILE_WATCHING);
        }
        self.send(&p, frame, cmd, false);
        Step::Done
    }

    /// A command between MULTI and EXEC: the first one with a key chooses the node (unless
    /// WATCH did); a command whose keys are in another slot is answered QUEUED and makes EXEC
    /// answer CROSSSLOT, as Redis does when the slots share a node.
    fn in_transaction(&mut self, frame: &[u8], spans: Spans, argc: usize, cmd: CommandId) -> Step {
        let slot = match self.command_slot(frame, spans, argc, cmd) {
            Ok(slot) => slot,
            Err(step) => {
                // Refused now, so EXEC refuses the transaction (as Redis does).
                self.tx_refused = Some(EXECABORT);
                return step;
            }
        };
        if self.pinned.is_none() {
            let router = match self.topology_ready(cmd) {
                Ok(r) => r,
                Err(step) => return step,
            };
            let addr = match slot {
                Some(slot) => router.primary(slot),
                None => router.primaries().into_iter().next(),
            };
            let Some(addr) = addr else {
                return self.reply_local(cmd, b"-CLUSTERDOWN Hash slot not served\r\n");
            };
            self.open_dedicated(&addr, false);
            self.tx_slot = slot;
        }
        let mut p = self.pinned.clone().expect("opened");
        if let Some(slot) = slot
            && self.tx_slot.is_none()
            && !self.watching
            && !self.tx_keyless.overflow
            && let Some(addr) = self.router().primary(slot)
            && addr != p.endpoint()
        {
            // The first key, on another node than the commands without keys before it: the
            // transaction moves there, once their replies are in.
            if self.client.outstanding() > 0 {
                return self.drain();
            }
            p = self.move_transaction(&p, &addr);
        }
        if self.multi_pending {
            let now = self.now();
            p.send_internal(&self.client, MULTI, now);
            self.multi_pending = false;
            self.in_multi = true;
        }
        if let Some(slot) = slot
            && !self.transaction_takes(&p, slot)
        {
            self.tx_refused.get_or_insert(CROSSSLOT);
            return self.reply_local(cmd, QUEUED);
        }
        if self.tx_slot.is_none() && !self.watching {
            self.tx_keyless.hold(frame);
        } else if !self.tx_keyless.frames.is_empty() {
            self.tx_keyless = Keyless::default();
        }
        self.note_write(cmd, &p);
        self.send(&p, frame, cmd, true);
        Step::Done
    }

    /// Moves a transaction that so far has only commands without keys to `addr`: the old
    /// node's transaction is dropped (DISCARD on a connection the client keeps, else the
    /// connection closes), and MULTI and those commands are queued again on the new node,
    /// their replies dropped (the client has had the old node's).
    fn move_transaction(&mut self, old: &Rc<Upstream>, addr: &str) -> Rc<Upstream> {
        let now = self.now();
        if old.is_private() && self.in_multi {
            old.send_internal(&self.client, DISCARD, now);
        }
        let held = std::mem::take(&mut self.tx_keyless);
        let up = self.open_dedicated(addr, false);
        if self.in_multi {
            up.send_internal(&self.client, MULTI, now);
            for frame in &held.frames {
                up.send_internal(&self.client, frame, now);
            }
        }
        up
    }

    /// Whether a command on `slot` can join the transaction on `p`: the slot of its first key
    /// (which must be served by `p`'s node) or the same.
    fn transaction_takes(&mut self, p: &Rc<Upstream>, slot: u16) -> bool {
        match self.tx_slot {
            Some(s) => s == slot,
            None => {
                let here = self.router().primary(slot).is_some_and(|addr| addr == p.endpoint());
                if here {
                    self.tx_slot = Some(slot);
                }
                here
            }
        }
    }

    /// Makes sure the topology is known; `Err` is the step to take meanwhile.
    #[inline]
    pub(crate) fn topology_ready(&mut self, cmd: CommandId) -> Result<Rc<ClusterRouter>, Step> {
        let router = self.router();
        if router.ready() {
            return Ok(router);
        }
        Err(self.topology_unknown(&router, cmd))
    }

    /// No topology yet: the error of the first refresh, or a wait for it.
    #[cold]
    fn topology_unknown(&mut self, router: &Rc<ClusterRouter>, cmd: CommandId) -> Step {
        if let Some(why) = router.unavailable() {
            let reply = format!("-CLUSTERDOWN respmesh: cannot learn the topology of {}: {why}\r\n", self.svc.host)
                .replace(['\r', '\n'], " ");
            let reply = format!("{}\r\n", reply.trim_end());
            return self.reply_local(cmd, reply.as_bytes());
        }
        // The first refresh is under way: handle this command again when it is done.
        router.wait_ready(&self.client);
        Step::Drain
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
            self.send_to_slot(&router, router.slot_of(key), frame, cmd);
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
        let key_slot = |k: &[u8]| router.slot_of(k);
        let first = key_slot(all[positions[0]]);
        if positions.iter().all(|&i| key_slot(all[i]) == first) {
            self.send_to_slot(&router, first, frame, cmd);
            return Step::Done;
        }
        let name = cmd.info().map_or("", |i| i.name);
        if name == "MSET" && all.len().is_multiple_of(2) {
            // Keys without values: Redis's arity error, before any split.
            let mut r = BytesMut::new();
            crate::replies::wrong_arity(&mut r, "mset");
            return self.reply_local(cmd, &r);
        }
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
            req.hold = self.fault_delay;
            self.send_slot(&router, *slot, req, &sub_frame);
        }
        Step::Done
    }

    #[inline]
    fn send_to_slot(&mut self, router: &Rc<ClusterRouter>, slot: u16, frame: &[u8], cmd: CommandId) {
        let seq = self.client.issue();
        let mut req = InFlight::new(self.client.clone(), seq, cmd, self.now(), true);
        req.hold = self.fault_delay;
        self.send_slot(router, slot, req, frame);
    }

    fn send_slot(&mut self, router: &Rc<ClusterRouter>, slot: u16, req: InFlight, frame: &[u8]) {
        if self.tracking.is_some() {
            return self.send_tracked(router, slot, req, frame);
        }
        use crate::command::flags::{READONLY, WRITE};
        let flags = req.cmd.info().map_or(0, |i| i.flags);
        let read = flags & (READONLY | WRITE) == READONLY;
        let node = match read.then(|| router.read_node(slot, self.proto)).flatten() {
            Some(replica) => Some(replica),
            None => router.slot_node(slot, self.proto),
        };
        let Some(node) = node else {
            router.request_refresh();
            req.answer(format!("-CLUSTERDOWN Hash slot not served (slot {slot})\r\n").as_bytes());
            self.worker.stats.record_local(req.cmd, true);
            return;
        };
        if flags & WRITE != 0 {
            self.note_written(&node);
        }
        node.send_request(req, frame, false);
    }

    /// SCAN over the whole cluster: the cursor names a primary (low bits) and that node's own
    /// cursor; when a node is done, the cursor moves on to the next primary.
    fn cluster_scan(&mut self, router: &Rc<ClusterRouter>, frame: &[u8], cmd: CommandId) -> Step {
        let all: Vec<&[u8]> = args(frame).collect();
        let Some(cursor) = all.get(1).and_then(|c| std::str::from_utf8(c).ok()).and_then(|c| c.parse::<u64>().ok())
        else {
            return self.reply_local(cmd, b"-ERR invalid cursor\r\n");
        };
        let mut primaries = router.primaries();
        primaries.sort();
        let node = cursor & ((1 << SCAN_NODE_BITS) - 1);
        let Some(addr) = primaries.get(node as usize) else {
            return self.reply_local(cmd, b"-ERR invalid cursor\r\n");
        };
        let node_cursor = (cursor >> SCAN_NODE_BITS).to_string();
        let mut sub: Vec<&[u8]> = all.clone();
        sub[1] = node_cursor.as_bytes();
        let mut buf = BytesMut::new();
        encode_command(&mut buf, &sub);
        let seq = self.client.issue();
        let merge = Merge::new(self.client.clone(), seq, Combine::Scan { node, nodes: primaries.len() as u64 }, 1);
        let mut req = InFlight::new(self.client.clone(), seq, cmd, self.now(), true);
        req.merge = Some((merge, 0));
        router.node(addr, self.proto).send_request(req, &buf, false);
        Step::Done
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
            ("RANDOMKEY", _) => Some(Combine::AnyNonNull),
            ("INFO", _) => Some(Combine::Info),
            ("KEYS", _) => Some(Combine::Concat),
            ("FLUSHDB" | "FLUSHALL", _) => Some(Combine::Same),
            ("SCRIPT", b"LOAD" | b"FLUSH") => Some(Combine::Same),
            // Functions, like scripts, must exist on every node that may run them.
            ("FUNCTION", b"LOAD" | b"DELETE" | b"FLUSH" | b"RESTORE") => Some(Combine::Same),
            ("SCAN", _) => return self.cluster_scan(&router, frame, cmd),
            // The client sees one standalone Redis (HELLO and INFO say so): the cluster's
            // topology and its administration stay out of its reach, as a standalone Redis
            // refuses them. Otherwise a cluster-aware client would learn the nodes' addresses
            // and go around the proxy, and CLUSTER RESET or FAILOVER would hit a random node.
            // What is about keys and slots is answered as the cluster would.
            ("CLUSTER", b"COUNTKEYSINSLOT" | b"GETKEYSINSLOT") => {
                let slot = args(frame).nth(2).and_then(|s| std::str::from_utf8(s).ok()?.parse::<u16>().ok());
                if let Some(slot) = slot.filter(|&s| usize::from(s) < crate::cluster::slot::SLOTS) {
                    self.send_to_slot(&router, slot, frame, cmd);
                    return Step::Done;
                }
                // Not a slot: any node gives Redis's error.
                None
            }
            ("CLUSTER", sub) if CLUSTER_DISABLED.contains(&sub) => {
                return self.reply_local(cmd, CLUSTER_DISABLED_REPLY);
            }
            // Classic pub/sub: a node counts only its own subscribers, so subscribers and
            // publishers meet on one node, the same for every proxy.
            ("PUBLISH", _) | ("PUBSUB", b"CHANNELS" | b"NUMSUB" | b"NUMPAT") => {
                let Some(addr) = router.primary(PUBSUB_SLOT) else {
                    return self.reply_local(cmd, b"-CLUSTERDOWN Hash slot not served\r\n");
                };
                let mut req = InFlight::new(self.client.clone(), self.client.issue(), cmd, self.now(), true);
                req.hold = self.fault_delay;
                router.node(&addr, self.proto).send_request(req, frame, false);
                return Step::Done;
            }
            // Sharded channels live on the primary of their slot.
            ("PUBSUB", b"SHARDCHANNELS") => Some(Combine::Concat),
            ("PUBSUB", b"SHARDNUMSUB") => Some(Combine::ChannelCounts),
            // The server's settings, users and pauses: one Redis has one set of them, so
            // every node (replicas too) gets the change.
            ("CONFIG", b"SET" | b"RESETSTAT" | b"REWRITE")
            | ("ACL", b"SETUSER" | b"DELUSER" | b"LOAD")
            | ("CLIENT", b"PAUSE" | b"UNPAUSE")
            | ("SLOWLOG", b"RESET")
            | ("LATENCY", b"RESET") => return self.send_to_every_node(&router, frame, cmd, Combine::Same),
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
                let mut req = InFlight::new(self.client.clone(), seq, cmd, now, true);
                req.hold = self.fault_delay;
                router.node(addr, self.proto).send_request(req, frame, false);
            }
            Some(combine) => self.fan_out(&router, &primaries, seq, frame, cmd, combine),
        }
        Step::Done
    }

    /// Sends a command to every node, primaries and replicas; the replies combine as `how`.
    fn send_to_every_node(&mut self, router: &Rc<ClusterRouter>, frame: &[u8], cmd: CommandId, how: Combine) -> Step {
        let nodes: Vec<String> = router.nodes_with_primary().into_iter().map(|(addr, _)| addr).collect();
        if nodes.is_empty() {
            return self.reply_local(cmd, b"-CLUSTERDOWN The cluster is down\r\n");
        }
        let seq = self.client.issue();
        self.fan_out(router, &nodes, seq, frame, cmd, how);
        Step::Done
    }

    /// Sends request `seq` to each of `addrs`; the client gets their replies combined.
    fn fan_out(
        &mut self,
        router: &Rc<ClusterRouter>,
        addrs: &[String],
        seq: Seq,
        frame: &[u8],
        cmd: CommandId,
        how: Combine,
    ) {
        let now = self.now();
        let merge = Merge::new(self.client.clone(), seq, how, addrs.len());
        for (part, addr) in addrs.iter().enumerate() {
            let mut req = InFlight::new(self.client.clone(), seq, cmd, now, true);
            req.merge = Some((merge.clone(), part));
            req.hold = self.fault_delay;
            router.node(addr, self.proto).send_request(req, frame, false);
        }
    }
}

/// One line of CLIENT INFO / CLIENT LIST, in Redis's format, for a connection to the proxy.
fn info_line(e: &crate::registry::Entry, flags: &str, multi: i32, command: &str) -> String {
    format!(
        "id={} addr={} laddr={} fd={} name={} age={} idle=0 flags={} db=0 sub=0 psub=0 ssub=0 multi={multi} \
         qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r \
         cmd={command} user=default redir=-1 resp={}\n",
        e.id,
        e.peer,
        e.local,
        e.fd,
        e.name(),
        e.since.elapsed().as_secs(),
        if flags.is_empty() { "N" } else { flags },
        e.proto(),
    )
}
