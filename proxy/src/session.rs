//! One client connection: reads commands, answers the ones that are the proxy's to answer
//! (client AUTH, HELLO's login, QUIT, RESET, CLIENT SETNAME/GETNAME), and hands the rest to an
//! upstream.
//!
//! Most clients share their worker's connection to Redis. A command that would leave state on
//! the connection, or block it, moves the client to a dedicated connection ("pinning"):
//! transactions, WATCH and blocking commands only until they end (then the connection goes back
//! to a small pool), subscriptions, MONITOR, SELECT of another database, CLIENT ID and the like
//! for the rest of the client's life. Whenever a client's requests move from one connection to
//! another, the proxy first waits for the replies still due on the old one, so that commands
//! run in the order the client sent them.

use std::rc::{Rc, Weak};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::client::Client;
use crate::cluster::ClusterRouter;
use crate::command::{CommandId, Special, lookup};
use crate::config::{Creds, ServiceRt};
use crate::net::{Read, read_some};
use crate::replies;
use crate::resp::request::{Parsed, RequestParser, Spans, args, encode_command};
use crate::resp::{Limits, ProtocolError};
use crate::upstream::Upstream;
use crate::worker::Worker;

const READ_SPARE: usize = 4 * 1024;
/// The write that brings a dedicated connection's replication offset up to date before WAIT.
const WAIT_MARKER: &[u8] = b"*3\r\n$7\r\nPUBLISH\r\n$22\r\n__respmesh__:wait:sync\r\n$0\r\n\r\n";
/// A client read buffer larger than this is released once empty.
const KEEP_READ_CAPACITY: usize = 64 * 1024;
/// A read buffer that held more than this (a large value, not a usual pipeline) is given back
/// once drained.
const RELEASE_READ_ABOVE: usize = 256 * 1024;
/// Stop reading a client's commands while this much of its output is unsent.
const MAX_UNSENT_OUTPUT: usize = 256 * 1024 * 1024;
/// How much a session reads ahead while its next command waits for earlier replies.
const READ_AHEAD_WHILE_WAITING: usize = 64 * 1024;

/// What the session does with one command.
pub(crate) enum Step {
    /// Handled; go on with the next command.
    Done,
    /// Wait until every outstanding reply has arrived, then handle this command again.
    Drain,
    /// Stop reading commands; close once output is written.
    Close,
}

/// Where a command should run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Wherever this client's commands run now (its dedicated connection, or the shared one).
    Current,
    /// On a dedicated connection: only until the state ends (`permanent: false`), or for the
    /// rest of the connection.
    Dedicated { permanent: bool, raw: bool },
}

pub struct Session {
    pub(crate) client: Rc<Client>,
    pub(crate) worker: Rc<Worker>,
    pub(crate) host: String,
    pub(crate) svc: Arc<ServiceRt>,
    /// The service was removed from the configuration.
    service_gone: bool,
    generation: u64,
    pub(crate) limits: Limits,
    pub(crate) parser: RequestParser,
    rbuf: BytesMut,
    eof: bool,
    authenticated: bool,
    pub(crate) proto: u8,
    pub(crate) name: Option<Bytes>,
    /// The shared upstream for `proto`, cached.
    shared: Option<Rc<Upstream>>,
    pub(crate) pinned: Option<Rc<Upstream>>,
    pub(crate) permanent: bool,
    pub(crate) in_multi: bool,
    pub(crate) watching: bool,
    /// CLUSTER mode: MULTI was answered but not sent yet; it goes to the node of the first
    /// command that follows.
    pub(crate) multi_pending: bool,
    /// RESET went to the client's raw connection; the rest waits for Redis's answer.
    resetting: bool,
    /// The pinned raw connection is a subscriber's (not MONITOR's or a replica's stream).
    pub(crate) subscriber: bool,
    /// Replies may still be due on the subscriber's connection, which relays them as they
    /// come; a reply from anywhere else waits for them (see `sync_subscriber`).
    raw_unsynced: bool,
    /// `sync_subscriber` is waiting for the subscriber's connection.
    syncing: bool,
    /// Numbers the proxy's markers on the subscriber's connection.
    syncs: u64,
    /// CLUSTER mode: the slot of the transaction's keys, once a queued command had one.
    pub(crate) tx_slot: Option<u16>,
    /// CLUSTER mode: what EXEC answers instead of running the transaction (a command was
    /// refused, or its keys belong to another slot).
    pub(crate) tx_refused: Option<&'static [u8]>,
    /// CLUSTER mode: the commands without keys a transaction queued before its first key.
    pub(crate) tx_keyless: crate::session_cluster::Keyless,
    /// The upstream holding this client's outstanding requests.
    last: Option<Rc<Upstream>>,
    /// CLUSTER mode: the worker's router for this service, cached.
    pub(crate) router: Option<Rc<ClusterRouter>>,
    scratch: BytesMut,
    /// When the batch of commands being handled was read.
    pub(crate) batch_start: Option<Instant>,
    /// A DELAY fault hit the command being handled: hold its reply this long.
    pub(crate) fault_delay: Option<std::time::Duration>,
    /// A command is running on a route's service (caches of the session's own do not apply).
    pub(crate) routing: bool,
    /// The parts of a command split across routes are being sent: they go to different
    /// services, so the wait for earlier replies before switching upstreams does not apply.
    pub(crate) splitting: bool,
    /// CLUSTER mode, CLIENT REPLY: OFF (no replies), SKIP (none for the next command).
    pub(crate) reply_off: bool,
    pub(crate) skip_next: bool,
    /// CLUSTER mode: the primaries this client sent writes to (WAIT waits for them), each with
    /// the connection it was last noted for (to recognise it without comparing addresses).
    pub(crate) written: Vec<(String, Weak<Upstream>)>,
    /// CLUSTER mode: one MONITOR connection per node while the client monitors.
    pub(crate) monitors: Vec<Rc<Upstream>>,
    /// CLUSTER mode: the connections of a WAIT (one per primary), closed if the client goes.
    pub(crate) waits: Vec<Rc<Upstream>>,
    /// CLUSTER mode: CLIENT NO-EVICT (shown by CLIENT INFO).
    pub(crate) no_evict: bool,
    /// CLUSTER mode: CLIENT TRACKING is on (the client's node connections of its own).
    pub(crate) tracking: Option<crate::session_cluster::Tracking>,
}

impl Session {
    pub fn new(client: Rc<Client>, worker: Rc<Worker>, host: String) -> Option<Session> {
        let rt = worker.config.load();
        let svc = rt.services.get(&host)?.clone();
        let addr = |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let entry = crate::registry::Entry::register(
            client.id,
            host.clone(),
            addr(client.stream.peer_addr()),
            addr(client.stream.local_addr()),
            std::os::fd::AsRawFd::as_raw_fd(&client.stream),
            std::time::Instant::now(),
            worker.kills.clone(),
        );
        let _ = client.entry.set(entry);
        Some(Session {
            client,
            worker,
            host,
            service_gone: false,
            authenticated: svc.client_auth.is_none(),
            svc,
            generation: rt.generation,
            limits: rt.limits,
            parser: RequestParser::new(rt.limits),
            rbuf: BytesMut::new(),
            eof: false,
            proto: 2,
            name: None,
            shared: None,
            pinned: None,
            permanent: false,
            in_multi: false,
            watching: false,
            multi_pending: false,
            tx_slot: None,
            tx_refused: None,
            tx_keyless: Default::default(),
            resetting: false,
            subscriber: false,
            raw_unsynced: false,
            syncing: false,
            syncs: 0,
            last: None,
            router: None,
            scratch: BytesMut::new(),
            batch_start: None,
            fault_delay: None,
            routing: false,
            splitting: false,
            reply_off: false,
            skip_next: false,
            written: Vec::new(),
            monitors: Vec::new(),
            waits: Vec::new(),
            no_evict: false,
            tracking: None,
        })
    }

    pub async fn run(mut self) {
        let mut draining = false;
        loop {
            if !draining && self.worker.draining.get() {
                // Shutting down: answer what was sent, then close.
                draining = true;
                self.eof = true;
                self.client.close_after_flush();
            }
            let waiting = self.process();
            if self.client.flush().is_err() {
                break;
            }
            let outstanding = self.client.outstanding();
            let done_reading = self.eof || self.client.closing();
            // A stream (subscriber, MONITOR) has no replies to wait for: it ends when the
            // client leaves, or once what it was sent before QUIT is out.
            let streaming = self.pinned_raw();
            if self.client.is_gone()
                || (done_reading && outstanding == 0 && !self.client.has_output() && !streaming)
                || (self.eof && streaming)
                || (done_reading && streaming && !self.client.has_output())
                || (self.eof && self.blocked())
            {
                break;
            }
            // While commands wait (behind a blocking one, say), reading goes on a little: enough
            // to see the client leave, not enough to buffer without bound.
            let want_read = !done_reading
                && (!waiting || self.rbuf.len() < READ_AHEAD_WHILE_WAITING)
                && self.client.buffered() < MAX_UNSENT_OUTPUT;
            let want_write = self.client.write_blocked();
            tokio::select! {
                r = self.client.stream.readable(), if want_read => {
                    if r.is_err() { break; }
                    match read_some(&self.client.stream, &mut self.rbuf, READ_SPARE) {
                        Ok(Read::Data(_)) | Ok(Read::WouldBlock) => {}
                        Ok(Read::Eof) => {
                            // Answer what was sent, then close (as Redis does).
                            self.eof = true;
                            self.client.close_after_flush();
                        }
                        Err(_) => break,
                    }
                }
                r = self.client.stream.writable(), if want_write => {
                    if r.is_err() { break; }
                }
                _ = self.client.wake.wait() => {}
            }
        }
        self.client.set_gone();
        self.unpin();
        self.release_waits();
        self.stop_tracking();
        if let Some(e) = self.client.entry.get() {
            e.unregister();
        }
        debug!(service = %self.host, "client connection closed");
    }

    /// A blocking command (BLPOP, WAIT, ...) waits for its reply: a client that has left gets
    /// none, and as with Redis its connection goes (which unblocks Redis's side).
    fn blocked(&self) -> bool {
        self.pinned.as_ref().is_some_and(|p| p.is_blocked()) || self.waits.iter().any(|w| w.is_blocked())
    }

    pub(crate) fn pinned_raw(&self) -> bool {
        self.pinned.as_ref().is_some_and(|p| p.is_raw() && p.is_usable())
    }

    /// Handles every complete command in the read buffer. Returns true when waiting for
    /// outstanding replies before the next command can go.
    fn process(&mut self) -> bool {
        if self.rbuf.is_empty() {
            return false;
        }
        self.refresh_config();
        self.batch_start = None;
        let buf = std::mem::take(&mut self.rbuf);
        let mut off = 0;
        let mut waiting = false;
        while off < buf.len() && !self.client.closing() {
            let parsed = match self.parser.parse(&buf[off..], self.authenticated) {
                Ok(p) => p,
                Err(e) => {
                    self.protocol_error(&e);
                    break;
                }
            };
            match parsed {
                Parsed::Incomplete { need } => {
                    if need > buf.len() - off {
                        self.rbuf.reserve(need);
                    }
                    break;
                }
                Parsed::Empty { len } => off += len,
                Parsed::Multibulk { len, argc } => {
                    let frame = &buf[off..off + len];
                    let spans = self.parser.spans();
                    let step = self.command(frame, argc, spans);
                    match step {
                        Step::Done => off += len,
                        Step::Drain => {
                            waiting = true;
                            break;
                        }
                        Step::Close => {
                            off += len;
                            break;
                        }
                    }
                }
                Parsed::Inline { len, args } => {
                    self.scratch.clear();
                    encode_command(&mut self.scratch, &args);
                    let frame = std::mem::take(&mut self.scratch);
                    let mut p = RequestParser::new(self.limits);
                    let argc = match p.parse(&frame, true) {
                        Ok(Parsed::Multibulk { argc, .. }) => argc,
                        _ => unreachable!("an encoded command parses"),
                    };
                    let step = self.command(&frame, argc, p.spans());
                    self.scratch = frame;
                    match step {
                        Step::Done | Step::Close => off += len,
                        Step::Drain => {
                            waiting = true;
                            break;
                        }
                    }
                }
            }
        }
        self.client.end_batch();
        // Keep the unparsed tail (and any capacity reserved for it). A buffer that a large
        // request made large is dropped once drained: its capacity, seen after `advance`, is
        // only what is left past the data, not the memory it holds.
        let mut buf = buf;
        let large = buf.len() > RELEASE_READ_ABOVE;
        buf.advance(off);
        if self.rbuf.capacity() > 0 {
            self.rbuf.extend_from_slice(&buf);
        } else if buf.is_empty() && (large || buf.capacity() > KEEP_READ_CAPACITY) {
            self.rbuf = BytesMut::new();
        } else {
            self.rbuf = buf;
        }
        waiting
    }

    fn protocol_error(&mut self, e: &ProtocolError) {
        self.worker.metrics.protocol_errors.inc();
        info!(service = %self.host, error = %e, "closing a client connection after a protocol error");
        self.client.local(&replies::protocol_error(e));
        self.client.close_after_flush();
    }

    fn refresh_config(&mut self) {
        let generation = self.worker.config.generation();
        if generation == self.generation {
            return;
        }
        let rt = self.worker.config.load();
        self.generation = rt.generation;
        self.limits = rt.limits;
        self.parser.set_limits(rt.limits);
        self.shared = None;
        self.router = None;
        match rt.services.get(&self.host) {
            Some(svc) => {
                self.svc = svc.clone();
                self.service_gone = false;
            }
            None => self.service_gone = true,
        }
    }

    /// Handles one complete command, whose replies the client gets unless CLIENT REPLY (in
    /// CLUSTER mode, where the proxy implements it) turned them off.
    fn command(&mut self, frame: &[u8], argc: usize, spans: Spans) -> Step {
        if !self.reply_off && !self.skip_next {
            return self.run_command(frame, argc, spans);
        }
        let skip = std::mem::take(&mut self.skip_next);
        self.client.set_silencing(true);
        let step = self.run_command(frame, argc, spans);
        self.client.set_silencing(false);
        if matches!(step, Step::Drain) {
            // Handled again later: it is still the command to skip.
            self.skip_next |= skip;
        }
        step
    }

    fn run_command(&mut self, frame: &[u8], argc: usize, spans: Spans) -> Step {
        let arg = |i: usize| spans.get(frame, i).unwrap_or_default();
        let cmd = lookup(arg(0));
        if self.service_gone {
            return self.reply_local(cmd, &replies::service_gone(&self.host));
        }
        if let Some(why) = self.svc.refused.clone() {
            return self.reply_local(cmd, &replies::service_refused(&self.host, &why));
        }
        let special = cmd.special();
        if self.raw_unsynced
            && !self.answered_on_subscriber_conn(special, cmd)
            && let Some(step) = self.sync_subscriber()
        {
            return step;
        }
        if !self.authenticated && !matches!(special, Special::Auth | Special::Hello | Special::Quit) {
            return self.reply_local(cmd, replies::NOAUTH);
        }
        self.fault_delay = None;
        if !self.svc.faults.is_empty()
            && !matches!(special, Special::Auth | Special::Hello | Special::Quit | Special::Reset)
            && let Some(step) = self.inject_fault(cmd)
        {
            return step;
        }
        if !self.svc.routes.is_empty()
            && let Some(step) = self.routed(frame, argc, spans, cmd, special)
        {
            return step;
        }
        self.dispatch(frame, argc, spans, cmd, special)
    }

    /// Runs a command on the session's current service (or, during routing, the route's).
    pub(crate) fn dispatch(
        &mut self,
        frame: &[u8],
        argc: usize,
        spans: Spans,
        cmd: CommandId,
        special: Special,
    ) -> Step {
        let arg = |i: usize| spans.get(frame, i).unwrap_or_default();
        if special == Special::None
            && cmd.has_flag(crate::command::flags::PUBSUB)
            && let Some(kind) = unsubscribe_kind(cmd)
            && !self.in_multi
            && !self.multi_pending
            && !self.pinned.as_ref().is_some_and(|p| p.is_raw())
        {
            // Not subscribed (a subscriber's commands go to its own connection): Redis would
            // answer once per channel, which a shared connection cannot carry; the answer is
            // known anyway.
            let mut reply = BytesMut::new();
            replies::unsubscribed(&mut reply, kind, (1..argc).map(arg), self.proto);
            return self.reply_local(cmd, &reply);
        }
        if special == Special::None
            && cmd.has_flag(crate::command::flags::PUBSUB)
            && let Some(up) = self.worker.subscribing()
        {
            // PUBLISH after a SUBSCRIBE whose new connection Redis has not answered yet: after it.
            up.wake_on_first_reply(&self.client);
            return Step::Drain;
        }
        if matches!(special, Special::Blocking | Special::Wait) {
            // What came before a command that may block is written without waiting for it.
            self.client.end_batch();
        }
        if self.svc.distributed()
            && let Some(step) = self.cluster_command(frame, argc, spans, cmd, special)
        {
            return step;
        }
        match special {
            Special::None | Special::ReadMode => self.forward(frame, cmd, Want::Current, true),
            Special::Auth => self.auth(frame, cmd, argc, arg(1), arg(2)),
            Special::Hello => self.hello(frame, cmd, argc, spans),
            Special::Select => {
                if self.pinned.is_none() && argc == 2 && arg(1) == b"0" {
                    self.reply_local(cmd, replies::OK)
                } else {
                    self.forward(frame, cmd, Want::Dedicated { permanent: true, raw: false }, true)
                }
            }
            Special::Quit => {
                self.client.local(replies::OK);
                self.worker.stats.record_local(cmd, false);
                self.client.close_after_flush();
                Step::Close
            }
            Special::Reset => self.reset(cmd),
            Special::Client => self.client_command(frame, cmd, argc, arg(1), arg(2)),
            Special::Multi => {
                let step = self.forward(frame, cmd, Want::Dedicated { permanent: false, raw: false }, true);
                if matches!(step, Step::Done) && self.pinned.is_some() {
                    self.in_multi = true;
                }
                step
            }
            Special::Exec | Special::Discard => {
                let step = self.forward(frame, cmd, Want::Current, true);
                if matches!(step, Step::Done) {
                    self.in_multi = false;
                    self.watching = false;
                }
                step
            }
            Special::Watch => {
                let step = self.forward(frame, cmd, Want::Dedicated { permanent: false, raw: false }, true);
                if matches!(step, Step::Done) && self.pinned.is_some() && !self.in_multi {
                    self.watching = true;
                }
                step
            }
            Special::Unwatch => {
                let step = self.forward(frame, cmd, Want::Current, true);
                if matches!(step, Step::Done) && !self.in_multi {
                    self.watching = false;
                }
                step
            }
            Special::Subscribe | Special::Stream => {
                self.subscriber |= special == Special::Subscribe;
                let step = self.forward(frame, cmd, Want::Dedicated { permanent: true, raw: true }, false);
                if special == Special::Subscribe
                    && let Some(p) = &self.pinned
                {
                    self.worker.note_subscribing(p);
                }
                step
            }
            Special::Blocking => self.forward(frame, cmd, Want::Dedicated { permanent: false, raw: false }, false),
            Special::Wait => self.wait(frame, cmd),
            Special::MaybeBlocking => {
                let blocks = crate::command::blocks(frame);
                if blocks {
                    self.forward(frame, cmd, Want::Dedicated { permanent: false, raw: false }, false)
                } else {
                    self.forward(frame, cmd, Want::Current, true)
                }
            }
        }
    }

    /// Rolls the service's faults for a command, in configuration order: each DELAY that hits
    /// adds its delay; the first ERROR that hits answers `-Fault Injected: Error` (after the
    /// delays that hit before it) and ends the roll. `Some` when the command is answered.
    fn inject_fault(&mut self, cmd: CommandId) -> Option<Step> {
        let name = cmd.info().map_or("", |i| i.name);
        let mut delay = std::time::Duration::ZERO;
        let svc = self.svc.clone();
        for f in &svc.faults {
            if !f.applies_to(name) || fastrand::f64() >= f.chance {
                continue;
            }
            match f.delay {
                Some(d) => {
                    self.worker.metrics.fault(&svc.host, "delay");
                    delay += d;
                }
                None => {
                    self.worker.metrics.fault(&svc.host, "error");
                    self.worker.stats.record_local(cmd, true);
                    let seq = self.client.issue();
                    let client = self.client.clone();
                    if delay.is_zero() {
                        client.deliver(seq, replies::FAULT_ERROR);
                    } else {
                        tokio::task::spawn_local(async move {
                            tokio::time::sleep(delay).await;
                            client.deliver(seq, replies::FAULT_ERROR);
                            client.flush_from_upstream();
                        });
                    }
                    return Some(Step::Done);
                }
            }
        }
        if !delay.is_zero() {
            self.fault_delay = Some(delay);
        }
        None
    }

    pub(crate) fn reply_local(&mut self, cmd: CommandId, reply: &[u8]) -> Step {
        self.client.local(reply);
        self.worker.stats.record_local(cmd, crate::resp::reply::is_error(reply));
        Step::Done
    }

    /// Picks the upstream for a command, pinning or releasing a dedicated connection as needed.
    /// `Err(step)` when the command must wait (or the client must go).
    fn route(&mut self, want: Want, proto: u8) -> Result<Rc<Upstream>, Step> {
        if let Some(p) = &self.pinned
            && !p.is_usable()
        {
            if p.lost_state() {
                // The client's transaction, subscriptions or database choice died with
                // its connection; closing is the honest answer, as Redis going away would.
                self.client.close_after_flush();
                return Err(Step::Close);
            }
            self.unpin();
        }
        // A transient pin whose state has ended goes back to the pool.
        if want == Want::Current
            && self.pinned.is_some()
            && !self.permanent
            && !self.in_multi
            && !self.watching
            && self.client.outstanding() == 0
            && let Some(p) = self.pinned.take()
        {
            self.worker.give_back(p);
        }
        // A clean transient pin makes way for a permanent one, which is set up with the
        // client's name; inside a transaction or WATCH it is kept and upgraded in place.
        if let (Want::Dedicated { permanent: true, .. }, Some(_)) = (want, &self.pinned)
            && !self.permanent
            && !self.in_multi
            && !self.watching
        {
            if self.client.outstanding() > 0 {
                return Err(self.drain());
            }
            if let Some(p) = self.pinned.take() {
                self.worker.give_back(p);
            }
        }
        let target = match (want, &self.pinned) {
            (_, Some(p)) => {
                if let Want::Dedicated { permanent: true, .. } = want {
                    self.permanent = true;
                }
                p.clone()
            }
            (Want::Current, None) => match &self.shared {
                Some(s) if s.proto() == proto && !self.routing => s.clone(),
                _ => {
                    let s = self.worker.shared_upstream(&self.svc, proto, self.limits.max_nesting_depth);
                    if !self.routing {
                        self.shared = Some(s.clone());
                    }
                    s
                }
            },
            (Want::Dedicated { permanent, .. }, None) => {
                if self.client.outstanding() > 0 {
                    return Err(self.drain());
                }
                let up = if permanent {
                    self.worker.new_dedicated(&self.svc, None, proto, self.name.clone(), self.limits.max_nesting_depth)
                } else {
                    self.worker.take_dedicated(&self.svc, None, proto, self.limits.max_nesting_depth)
                };
                self.permanent = permanent;
                self.pinned = Some(up.clone());
                up
            }
        };
        if self.client.outstanding() > 0
            && !self.splitting
            && !self.last.as_ref().is_some_and(|l| Rc::ptr_eq(l, &target))
        {
            return Err(self.drain());
        }
        if let Want::Dedicated { raw: true, .. } = want
            && !target.is_raw()
        {
            if self.client.outstanding() > 0 {
                return Err(self.drain());
            }
            target.set_raw(self.client.clone());
        }
        Ok(target)
    }

    /// Whether the reply to this command comes on the subscriber's connection (see
    /// `sync_subscriber`).
    fn answered_on_subscriber_conn(&self, special: Special, cmd: CommandId) -> bool {
        match special {
            Special::Subscribe | Special::Reset => true,
            Special::Auth | Special::Hello | Special::Quit => false,
            // One Redis: the rest of a subscriber's commands go to its connection.
            _ if !self.svc.distributed() => true,
            _ if unsubscribe_kind(cmd).is_some() => true,
            // A RESP2 subscriber's commands go there too (see `subscriber_command`); a RESP3
            // subscriber's go to their keys' nodes.
            _ => self.proto < 3 && self.permanent && self.pinned_raw(),
        }
    }

    /// A subscriber's connection relays its replies as they come, uncounted. Before a reply
    /// from anywhere else (another node, the proxy itself), those still due must reach the
    /// client: the proxy sends a `PING` marker there and waits for its answer.
    fn sync_subscriber(&mut self) -> Option<Step> {
        let p = self.pinned.clone().filter(|p| p.is_raw() && p.is_usable());
        let Some(p) = p else {
            self.raw_unsynced = false;
            self.syncing = false;
            return None;
        };
        if !self.syncing {
            self.syncs += 1;
            if !p.sync_through(&self.client, Bytes::from(format!("respmesh-sync-{}", self.syncs))) {
                self.raw_unsynced = false;
                return None;
            }
            self.syncing = true;
            return Some(Step::Drain);
        }
        if p.syncing() {
            // Woken by an earlier reply: wait on.
            p.wake_on_first_reply(&self.client);
            return Some(Step::Drain);
        }
        self.syncing = false;
        self.raw_unsynced = false;
        None
    }

    pub(crate) fn drain(&self) -> Step {
        self.client.waiting_drain.set(true);
        Step::Drain
    }

    pub(crate) fn unpin(&mut self) {
        if let Some(p) = self.pinned.take() {
            p.retire();
        }
        for m in self.monitors.drain(..) {
            m.retire();
        }
        self.forget_pinned_state();
        self.last = None;
    }

    /// What a pinned connection carried (a transaction, WATCH, a permanent pin) is gone.
    pub(crate) fn forget_pinned_state(&mut self) {
        self.subscriber = false;
        self.raw_unsynced = false;
        self.syncing = false;
        self.permanent = false;
        self.in_multi = false;
        self.watching = false;
        self.multi_pending = false;
        self.tx_slot = None;
        self.tx_refused = None;
        self.tx_keyless = Default::default();
    }

    fn forward(&mut self, frame: &[u8], cmd: CommandId, want: Want, timed: bool) -> Step {
        let target = match self.route(want, self.proto) {
            Ok(t) => t,
            Err(step) => return step,
        };
        self.send(&target, frame, cmd, timed);
        Step::Done
    }

    pub(crate) fn send(&mut self, target: &Rc<Upstream>, frame: &[u8], cmd: CommandId, timed: bool) {
        // One clock read per batch of commands: latency is measured from when it was read.
        let now = *self.batch_start.get_or_insert_with(Instant::now);
        if self.subscriber && target.is_raw() {
            self.raw_unsynced = true;
        }
        match target.send(&self.client, frame, cmd, timed, now, self.fault_delay) {
            Ok(()) => self.last = Some(target.clone()),
            Err(reply) => {
                self.client.local(&reply);
                self.worker.stats.record_local(cmd, true);
            }
        }
    }

    /// WAIT counts replicas that acknowledged the client's last write *on this connection*.
    /// The client's writes went through another (shared) connection, so the proxy first makes
    /// one write on the dedicated connection: a PUBLISH to a channel nobody listens to, which
    /// Redis replicates, so that WAIT covers everything the client wrote before it.
    fn wait(&mut self, frame: &[u8], cmd: CommandId) -> Step {
        let target = match self.route(Want::Dedicated { permanent: false, raw: false }, self.proto) {
            Ok(t) => t,
            Err(step) => return step,
        };
        let now = *self.batch_start.get_or_insert_with(Instant::now);
        target.send_internal(&self.client, WAIT_MARKER, now);
        self.send(&target, frame, cmd, false);
        Step::Done
    }

    fn auth(&mut self, frame: &[u8], cmd: CommandId, argc: usize, a1: &[u8], a2: &[u8]) -> Step {
        if argc < 2 {
            let mut r = BytesMut::new();
            replies::wrong_arity(&mut r, "auth");
            return self.reply_local(cmd, &r);
        }
        if argc > 3 {
            return self.reply_local(cmd, replies::SYNTAX_ERROR);
        }
        let (user, pass) = if argc == 2 { (None, a1) } else { (Some(a1), a2) };
        if let Some(expected) = &self.svc.client_auth {
            if creds_match(expected, user, pass) {
                self.authenticated = true;
                return self.reply_local(cmd, replies::OK);
            }
            let reply = if argc == 2 { replies::INVALID_PASSWORD } else { replies::WRONGPASS };
            return self.reply_local(cmd, reply);
        }
        if self.svc.auth.as_ref().is_some_and(|up| creds_match(up, user, pass)) {
            // The client logs in as the proxy already does: nothing changes upstream.
            return self.reply_local(cmd, replies::OK);
        }
        if self.svc.distributed() {
            // Every node connection is the proxy's own: a login of the client's cannot be
            // carried to them.
            return self.reply_local(cmd, replies::WRONGPASS);
        }
        // Not the proxy's to judge: let Redis decide, on the client's own connection.
        self.forward(frame, cmd, Want::Dedicated { permanent: true, raw: false }, true)
    }

    fn hello(&mut self, frame: &[u8], cmd: CommandId, argc: usize, spans: Spans) -> Step {
        let all: Vec<&[u8]> = if argc <= crate::resp::request::RECORDED_ARGS {
            (0..argc).map(|i| spans.get(frame, i).unwrap_or_default()).collect()
        } else {
            args(frame).collect()
        };
        let mut version = None;
        let mut next = 1;
        if argc >= 2 {
            match std::str::from_utf8(all[1]).ok().and_then(parse_redis_int) {
                None => return self.reply_local(cmd, replies::HELLO_BAD_PROTOVER),
                Some(v) if !(2..=3).contains(&v) => return self.reply_local(cmd, replies::NOPROTO),
                Some(v) => version = Some(v as u8),
            }
            next = 2;
        }
        let mut login = None;
        let mut setname = None;
        let mut j = next;
        while j < argc {
            let more = argc - 1 - j;
            let opt = all[j];
            if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                login = Some((all[j + 1], all[j + 2]));
                j += 3;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                if !valid_client_name(all[j + 1]) {
                    return self.reply_local(cmd, replies::BAD_CLIENT_NAME);
                }
                setname = Some(all[j + 1]);
                j += 2;
            } else {
                let mut r = BytesMut::new();
                replies::hello_bad_option(&mut r, opt);
                return self.reply_local(cmd, &r);
            }
        }
        if let Some((user, pass)) = login {
            if let Some(expected) = &self.svc.client_auth {
                if !creds_match(expected, Some(user), pass) {
                    return self.reply_local(cmd, replies::WRONGPASS);
                }
            } else if !self.svc.auth.as_ref().is_some_and(|up| creds_match(up, Some(user), pass)) {
                // Credentials for Redis itself: send the whole HELLO on the client's own
                // connection and let Redis answer.
                let step = self.forward(frame, cmd, Want::Dedicated { permanent: true, raw: false }, true);
                if matches!(step, Step::Done) {
                    self.set_proto(version.unwrap_or(self.proto));
                    let name = setname.map(Bytes::copy_from_slice).or(self.name.take());
                    self.set_name(name);
                }
                return step;
            }
        } else if !self.authenticated {
            return self.reply_local(cmd, replies::NOAUTH_HELLO);
        }
        let proto = version.unwrap_or(self.proto);
        if proto < 3 && self.tracking.is_some() && self.client.outstanding() > 0 {
            // Tracking ends with RESP2, and its node connections close: not before the replies
            // still due on them are in.
            return self.drain();
        }
        // CLUSTER mode: any primary answers for the server, through the cluster's own
        // connections (the seed endpoint may be down), as one Redis would. A connection the
        // client holds to one node (a transaction's, WATCH's, a subscriber's) keeps its
        // protocol: it is not the client's connection to the whole cluster.
        let router = if self.svc.distributed() {
            match self.topology_ready(cmd) {
                Ok(r) => Some(r),
                Err(step) => return step,
            }
        } else {
            None
        };
        let target = match &router {
            Some(_) => None,
            None => match self.route(Want::Current, proto) {
                Ok(t) => Some(t),
                Err(step) => return step,
            },
        };
        if login.is_some() {
            self.authenticated = true;
        }
        if self.pinned.is_some() && !self.svc.distributed() {
            // The dedicated connection now carries a protocol choice: keep it to the end.
            self.permanent = true;
        }
        self.set_proto(proto);
        if proto < 3 {
            // Invalidations can only reach a RESP3 client (CLUSTER mode tracking is RESP3).
            self.stop_tracking();
        }
        if let Some(name) = setname {
            self.set_name(if name.is_empty() { None } else { Some(Bytes::copy_from_slice(name)) });
        }
        // Redis fills in the server's details; the login and name stay here.
        self.scratch.clear();
        match version {
            Some(v) => encode_command(&mut self.scratch, &[&b"HELLO"[..], if v == 3 { b"3" } else { b"2" }]),
            None => encode_command(&mut self.scratch, &[&b"HELLO"[..]]),
        }
        let stripped = std::mem::take(&mut self.scratch);
        match (target, router) {
            (Some(target), _) => self.send(&target, &stripped, cmd, true),
            (None, Some(router)) => self.cluster_hello(&router, &stripped, cmd),
            (None, None) => unreachable!("one of them is set"),
        }
        self.scratch = stripped;
        Step::Done
    }

    /// The client's name, also as the process's client registry shows it.
    fn set_name(&mut self, name: Option<Bytes>) {
        if let Some(e) = self.client.entry.get() {
            e.set_name(name.as_deref());
        }
        self.name = name;
    }

    fn set_proto(&mut self, proto: u8) {
        if let Some(e) = self.client.entry.get() {
            e.set_proto(proto);
        }
        self.proto = proto;
    }

    fn reset(&mut self, cmd: CommandId) -> Step {
        if self.client.outstanding() > 0 {
            return self.drain();
        }
        if let Some(p) = self.pinned.clone()
            && (p.is_raw() || self.resetting)
        {
            // A subscriber's (or CLIENT TRACKING's, ...) connection relays replies as they
            // come, uncounted: some may still be due. RESET goes there too, and Redis answers
            // it after them; the rest of the reset waits for that answer.
            if !self.resetting {
                self.send(&p, b"*1\r\n$5\r\nRESET\r\n", cmd, false);
                p.reset_through(&self.client);
                self.resetting = true;
                return Step::Drain;
            }
            if p.resetting() {
                // Woken by an earlier reply: wait on.
                p.wake_on_first_reply(&self.client);
                return Step::Drain;
            }
            self.resetting = false;
            self.reset_state();
            // Redis's +RESET went to the client, unless the connection failed first.
            return if p.reset_answered() { Step::Done } else { self.reply_local(cmd, replies::RESET) };
        }
        self.reset_state();
        self.reply_local(cmd, replies::RESET)
    }

    /// What RESET resets, on the proxy's side.
    fn reset_state(&mut self) {
        self.unpin();
        self.set_name(None);
        self.set_proto(2);
        self.shared = None;
        self.authenticated = self.svc.client_auth.is_none();
        self.reply_off = false;
        self.skip_next = false;
        self.no_evict = false;
        self.stop_tracking();
        self.client.set_silencing(false);
    }

    fn client_command(&mut self, frame: &[u8], cmd: CommandId, argc: usize, sub: &[u8], a2: &[u8]) -> Step {
        // Only a permanent dedicated connection carries the client's name upstream.
        let pinned = self.pinned.is_some() && self.permanent;
        let upper = sub.to_ascii_uppercase();
        match upper.as_slice() {
            b"SETNAME" if argc == 3 && !pinned => {
                if !valid_client_name(a2) {
                    return self.reply_local(cmd, replies::BAD_CLIENT_NAME);
                }
                self.set_name(if a2.is_empty() { None } else { Some(Bytes::copy_from_slice(a2)) });
                self.reply_local(cmd, replies::OK)
            }
            b"GETNAME" if argc == 2 && !pinned => {
                let mut r = BytesMut::new();
                match &self.name {
                    Some(n) => replies::bulk(&mut r, n),
                    None => r.extend_from_slice(replies::null(self.proto)),
                }
                self.reply_local(cmd, &r)
            }
            b"SETNAME" if argc == 3 => {
                let step = self.forward(frame, cmd, Want::Current, true);
                if valid_client_name(a2) {
                    self.set_name(if a2.is_empty() { None } else { Some(Bytes::copy_from_slice(a2)) });
                }
                self.permanent = true;
                step
            }
            // Replies stop or turn into pushes: the connection must be relayed as it is.
            b"REPLY" | b"TRACKING" => self.forward(frame, cmd, Want::Dedicated { permanent: true, raw: true }, false),
            // The client's own connection identity or per-connection modes.
            b"ID" | b"INFO" | b"CACHING" | b"NO-EVICT" | b"NO-TOUCH" | b"GETREDIR" | b"TRACKINGINFO" => {
                self.forward(frame, cmd, Want::Dedicated { permanent: true, raw: false }, true)
            }
            _ => self.forward(frame, cmd, Want::Current, true),
        }
    }
}

/// For UNSUBSCRIBE, PUNSUBSCRIBE and SUNSUBSCRIBE: the name of their messages.
pub(crate) fn unsubscribe_kind(cmd: CommandId) -> Option<&'static str> {
    match cmd.info()?.name {
        "UNSUBSCRIBE" => Some("unsubscribe"),
        "PUNSUBSCRIBE" => Some("punsubscribe"),
        "SUNSUBSCRIBE" => Some("sunsubscribe"),
        _ => None,
    }
}

/// Commands the proxy answers the same way whatever serves the session (a cluster, routes):
/// logins, protocol and name changes, QUIT, RESET, `SELECT 0`.
pub(crate) fn answered_by_proxy(frame: &[u8], argc: usize, spans: Spans, special: Special) -> bool {
    let arg = |i: usize| spans.get(frame, i).unwrap_or_default();
    match special {
        Special::Auth | Special::Hello | Special::Quit | Special::Reset => true,
        Special::Select => argc == 2 && arg(1) == b"0",
        Special::Client => matches!(arg(1).to_ascii_uppercase().as_slice(), b"SETNAME" | b"GETNAME"),
        _ => false,
    }
}

/// Compares credentials in constant time (for equal lengths). A missing username means
/// Redis's `default` user.
fn creds_match(expected: &Creds, user: Option<&[u8]>, pass: &[u8]) -> bool {
    let want_user = expected.username.as_deref().unwrap_or(b"default");
    let got_user = user.unwrap_or(b"default");
    let user_ok = ct_eq(want_user, got_user);
    let pass_ok = ct_eq(&expected.password.0, pass);
    user_ok & pass_ok
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// Redis accepts client names of printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// Parses an integer the way Redis's `string2ll` does (no leading `+`, no leading zeros).
fn parse_redis_int(s: &str) -> Option<i64> {
    if s.is_empty() || s.starts_with('+') || (s.len() > 1 && s.starts_with('0')) || s.starts_with("-0") {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn constant_time_compare_is_exact() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
        assert!(!ct_eq(b"", b"a"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn a_password_alone_means_the_default_user() {
        let pw = Creds { username: None, password: Secret(b"pw".to_vec()) };
        assert!(creds_match(&pw, None, b"pw"));
        assert!(creds_match(&pw, Some(b"default"), b"pw"));
        assert!(!creds_match(&pw, Some(b"app"), b"pw"));
        let app = Creds { username: Some(b"app".to_vec()), password: Secret(b"pw".to_vec()) };
        assert!(creds_match(&app, Some(b"app"), b"pw"));
        assert!(!creds_match(&app, None, b"pw"));
    }

    #[test]
    fn client_names_follow_redis_rules() {
        assert!(valid_client_name(b"worker-1"));
        assert!(valid_client_name(b""));
        assert!(!valid_client_name(b"has space"));
        assert!(!valid_client_name(b"new\nline"));
    }

    #[test]
    fn integers_parse_like_redis() {
        assert_eq!(parse_redis_int("3"), Some(3));
        assert_eq!(parse_redis_int("03"), None);
        assert_eq!(parse_redis_int("+3"), None);
        assert_eq!(parse_redis_int("x"), None);
    }
}
