//! Connections to Redis.
//!
//! A *shared* upstream is one connection per worker, service and protocol version that carries
//! the requests of every client of that worker: requests are appended to one buffer and written
//! with one syscall per batch; replies come back in order and are handed to their clients. A
//! *dedicated* upstream serves one client whose connection holds state that cannot be shared
//! (a transaction, a blocking command, a subscription, a selected database...). It can switch
//! to *raw* relay, where Redis's bytes go to the client as they come (subscriptions, MONITOR).
//!
//! Each upstream has a task that connects, logs in (AUTH, HELLO 3, CLIENT SETNAME as needed),
//! writes, reads and dispatches replies. A shared upstream that loses its connection fails the
//! requests in flight and reconnects on the next request; one that cannot connect fails
//! requests at once, with the reason, until its backoff expires.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::client::{Client, Flusher, Seq};
use crate::cluster::ClusterRouter;
use crate::cluster::merge::Merge;
use crate::command::CommandId;
use crate::config::ServiceRt;
use crate::metrics::{Metrics, WorkerStats};
use crate::net::{Read, read_some};
use crate::replies;
use crate::resp::reply::{ReplyScanner, Scan, is_error, simple_text};
use crate::resp::request::encode_command;
use crate::signal::Signal;
use prometheus_client::metrics::counter::Counter;

const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// MOVED/ASK replies followed for one request before its client gets the error.
const MAX_REDIRECTS: u8 = 5;

/// A cluster redirection: `-MOVED <slot> <host:port>`, `-ASK <slot> <host:port>`, or
/// `-TRYAGAIN ...` (a multi-key command during a slot migration: retry shortly).
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    Moved { slot: u16, addr: String },
    Ask { slot: u16, addr: String },
    TryAgain,
}

impl Redirect {
    pub fn parse(reply: &[u8]) -> Option<Redirect> {
        let text = std::str::from_utf8(simple_text(reply)).ok()?;
        let mut parts = text.split(' ');
        let kind = parts.next()?;
        if kind == "TRYAGAIN" {
            return Some(Redirect::TryAgain);
        }
        let slot = parts.next()?.parse().ok()?;
        let addr = parts.next()?.to_owned();
        if parts.next().is_some() || !addr.contains(':') {
            return None;
        }
        match kind {
            "MOVED" => Some(Redirect::Moved { slot, addr }),
            "ASK" => Some(Redirect::Ask { slot, addr }),
            _ => None,
        }
    }
}
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const READ_SPARE: usize = 16 * 1024;
/// Buffers that a large value made grow past this are given back once empty. (Batches this
/// large are rare enough that steady traffic does not reallocate them each time.)
const KEEP_CAPACITY: usize = 1024 * 1024;
/// Replies read since the clients were last written to, past which they are written at once.
const FLUSH_EVERY: usize = 256 * 1024;
/// The line of replies in flight keeps room for this many when empty.
const KEEP_INFLIGHT: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Shared,
    Dedicated,
}

enum State {
    Connecting,
    Ready,
    /// Requests fail with `reply` until `until`; after that the next one reconnects.
    Down {
        until: Instant,
        reply: Bytes,
    },
    /// A dedicated upstream that will not come back. `was_connected`: its client may have
    /// state upstream that is now lost.
    Dead {
        reply: Bytes,
        was_connected: bool,
    },
}

pub struct InFlight {
    pub client: Rc<Client>,
    pub seq: Seq,
    pub cmd: CommandId,
    pub start: Instant,
    /// Subject to opTimeout (blocking commands are not).
    pub timed: bool,
    /// Sent by the proxy itself: the reply is dropped.
    pub internal: bool,
    /// Cluster mode: the request, copied out of the connection's log of sent requests when a
    /// MOVED, ASK or TRYAGAIN makes it go again.
    pub frame: Option<Bytes>,
    /// Cluster mode: the request's length in the connection's log of sent requests.
    sent: usize,
    /// Cluster mode: the reply is one part of a split command's reply.
    pub merge: Option<(Rc<Merge>, usize)>,
    pub redirects: u8,
    /// A DELAY fault: the reply is held back this long.
    pub hold: Option<Duration>,
}

impl InFlight {
    fn clone_parts(&self) -> InFlight {
        InFlight {
            client: self.client.clone(),
            seq: self.seq,
            cmd: self.cmd,
            start: self.start,
            timed: self.timed,
            internal: self.internal,
            frame: self.frame.clone(),
            sent: self.sent,
            merge: self.merge.clone(),
            redirects: self.redirects,
            hold: self.hold,
        }
    }

    pub fn new(client: Rc<Client>, seq: Seq, cmd: CommandId, start: Instant, timed: bool) -> InFlight {
        InFlight {
            client,
            seq,
            cmd,
            start,
            timed,
            internal: false,
            frame: None,
            sent: 0,
            merge: None,
            redirects: 0,
            hold: None,
        }
    }

    /// A request of the proxy's own, made for `client`: its reply is dropped.
    fn internal(client: Rc<Client>, start: Instant) -> InFlight {
        InFlight { internal: true, ..InFlight::new(client, 0, CommandId::UNKNOWN, start, true) }
    }

    /// Hands the reply to the client, or to the split command it is part of (after the hold of
    /// a DELAY fault, if any: later replies of the client wait, other clients do not).
    pub fn answer(&self, reply: &[u8]) {
        if let Some(hold) = self.hold {
            let held = InFlight { hold: None, frame: None, ..self.clone_parts() };
            let reply = Bytes::copy_from_slice(reply);
            tokio::task::spawn_local(async move {
                tokio::time::sleep(hold).await;
                held.answer(&reply);
                held.client.flush_from_upstream();
            });
            return;
        }
        match &self.merge {
            Some((m, part)) => m.put(*part, reply),
            None => self.client.deliver(self.seq, reply),
        }
    }
}

/// Sent ahead of a request that an ASK redirection sends to another node.
const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

struct Inner {
    state: State,
    /// Requests to write. With `keep_sent`, also the requests written and not yet answered,
    /// in order (`written` bytes of them): a cluster node's log from which a request that
    /// gets MOVED or ASK is taken again, with no copy kept per request.
    wbuf: BytesMut,
    written: usize,
    keep_sent: bool,
    /// One batch at a time (shared connections): requests written and not yet answered, and
    /// bytes of the batch not yet written. Requests that come meanwhile wait in `wbuf` and go
    /// together as the next batch once this one is answered: Redis answers a connection's
    /// requests in order anyway, and fewer, larger writes cost both sides less CPU (and wake
    /// Redis less often) than a write per request that happens to arrive alone.
    /// Dedicated connections (subscribers, MONITOR) write at once.
    awaiting: usize,
    /// Requests in the last batch written: more than one means the connection is busy, and a
    /// request finding it idle waits for the upstream task to write it with whatever else
    /// comes in the same scheduler round.
    prev_batch: usize,
    batch_left: usize,
    one_batch: bool,
    inflight: VecDeque<InFlight>,
    /// A large request (or a long pipeline) went through `wbuf`: its memory is given back
    /// once the log is empty, so that one large value does not stay in an idle proxy.
    wbuf_large: bool,
    /// Raw relay: every byte read goes to this client.
    raw: Option<Rc<Client>>,
    /// The raw client sent RESET: relay whole replies until Redis's `+RESET`, then close (see
    /// [`Upstream::reset_through`]).
    until_reset: bool,
    /// Redis's `+RESET` came (and went to the client).
    reset_answered: bool,
    /// The raw client's next reply comes from elsewhere: relay whole replies until the answer
    /// to the proxy's `PING <token>`, which is dropped (see [`Upstream::sync_through`]).
    until_marker: Option<Bytes>,
    /// MONITOR over a cluster: this node's lines go to the client, whole.
    monitor: Option<Monitor>,
    /// RESP3 pushes (a tracking client's invalidations) go to this client as they come.
    pushes: Option<Rc<Client>>,
    /// The connection, while established.
    stream: Option<Rc<TcpStream>>,
    wake_queued: bool,
    /// Replaced by a newer upstream (configuration change): finish what is in flight, then go.
    retired: bool,
}

/// One node's share of a client's MONITOR in CLUSTER mode: the client sees the lines of every
/// node, each line whole.
struct Monitor {
    client: Rc<Client>,
    /// The node's `+OK` to MONITOR came (the client had its own from the proxy).
    confirmed: bool,
    /// On a replica: lines of commands its primary replicates to it contain this
    /// (` <primary address>] `); they are shown once, by the primary.
    hide: Option<Vec<u8>>,
}

impl Inner {
    /// Gives back the memory that a large request or a long pipeline made the log and the line
    /// of replies grow to, once both are empty again.
    fn release_large_buffers(&mut self) {
        self.wbuf_large |= self.wbuf.len() > KEEP_CAPACITY;
        if self.wbuf_large && self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
            self.written = 0;
            self.wbuf_large = false;
        }
        if self.inflight.is_empty() && self.inflight.capacity() > KEEP_INFLIGHT {
            self.inflight = VecDeque::new();
        }
    }

    /// Queues a request to write and its place in the line of replies.
    /// When the oldest request's opTimeout started: when it was sent or, if Redis answered
    /// others since, when it last did (`progress`). `None` when nothing is in flight, or the
    /// oldest is a blocking command: it may block as long as the client asked, and what
    /// follows it on the connection waits for it.
    fn timed_head(&self, progress: Instant) -> Option<Instant> {
        self.inflight.front().filter(|f| f.timed).map(|f| f.start.max(progress))
    }

    fn queue(&mut self, frame: &[u8], mut f: InFlight) {
        self.wbuf.extend_from_slice(frame);
        if self.keep_sent {
            f.sent = frame.len();
        }
        self.inflight.push_back(f);
    }
}

/// Whether `reply` answers `PING token`: a bulk string, or in a RESP2 subscriber's context
/// `["pong", token]`.
fn is_pong(reply: &[u8], token: &[u8]) -> bool {
    // `$<len>\r\n<token>\r\n`, read without building the header (this runs for every reply
    // relayed while a subscriber waits for its marker).
    let bulk = |r: &[u8]| {
        let Some(r) = r.strip_prefix(b"$") else { return false };
        let Some(end) = r.iter().position(|&b| b == b'\r') else { return false };
        let len = std::str::from_utf8(&r[..end]).ok().and_then(|n| n.parse::<usize>().ok());
        len == Some(token.len())
            && r[end..].strip_prefix(b"\r\n").and_then(|r| r.strip_prefix(token)).is_some_and(|r| r == b"\r\n")
    };
    bulk(reply) || reply.strip_prefix(b"*2\r\n$4\r\npong\r\n".as_slice()).is_some_and(bulk)
}

/// Relays the complete replies in `rbuf` to a raw connection's `client`, one by one, up to and
/// including the first that `is_end` (given to the client too if `relay_end`). Returns whether
/// that reply came; a partial reply waits in `rbuf` for the rest.
fn relay_whole_until(
    client: &Rc<Client>,
    rbuf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    touched: &mut Vec<Rc<Client>>,
    relay_end: bool,
    is_end: impl Fn(&[u8]) -> bool,
) -> Result<bool, String> {
    if !touched.last().is_some_and(|l| Rc::ptr_eq(l, client)) {
        touched.push(client.clone());
    }
    loop {
        let len = match scanner.scan(rbuf) {
            Ok(Scan::Complete { len }) => len,
            Ok(Scan::Incomplete { .. }) => return Ok(false),
            Err(e) => return Err(format!("unreadable reply from Redis: {e}")),
        };
        let end = is_end(&rbuf[..len]);
        if !end || relay_end {
            client.relay(&rbuf[..len]);
        }
        rbuf.advance(len);
        if end {
            return Ok(true);
        }
    }
}

/// Relays every complete MONITOR line in `rbuf` (a partial one waits for the rest).
fn relay_monitor_lines(
    m: &mut Monitor,
    rbuf: &mut BytesMut,
    scanner: &mut ReplyScanner,
    touched: &mut Vec<Rc<Client>>,
) -> Result<(), String> {
    loop {
        let len = match scanner.scan(rbuf) {
            Ok(Scan::Complete { len }) => len,
            Ok(Scan::Incomplete { .. }) => return Ok(()),
            Err(e) => return Err(format!("unreadable reply from Redis: {e}")),
        };
        let line = &rbuf[..len];
        if !m.confirmed {
            m.confirmed = true;
            if is_error(line) {
                // Refused (an ACL without MONITOR, say): the client learns why and goes.
                m.client.relay(line);
                m.client.close_after_flush();
            }
        } else if !m.hide.as_deref().is_some_and(|h| line.windows(h.len()).any(|w| w == h)) {
            m.client.relay(line);
        }
        rbuf.advance(len);
        if !touched.last().is_some_and(|l| Rc::ptr_eq(l, &m.client)) {
            touched.push(m.client.clone());
        }
        if rbuf.is_empty() {
            return Ok(());
        }
    }
}

/// What to connect to, and how.
pub struct Spec {
    pub svc: Arc<ServiceRt>,
    /// `host:port`; the service's first endpoint if not given.
    pub endpoint: Option<String>,
    pub kind: Kind,
    pub proto: u8,
    /// For dedicated upstreams: the client's name, set on connect.
    pub client_name: Option<Bytes>,
    /// For cluster nodes: where MOVED and ASK replies go.
    pub router: Option<Weak<ClusterRouter>>,
    /// For cluster replicas: send READONLY on connect.
    pub readonly: bool,
    /// A command of the client's run on connect (CLIENT TRACKING on a tracking client's node
    /// connections); its reply must not be an error.
    pub setup: Option<Bytes>,
}

impl Spec {
    pub fn new(svc: Arc<ServiceRt>, kind: Kind, proto: u8) -> Spec {
        Spec { svc, endpoint: None, kind, proto, client_name: None, router: None, readonly: false, setup: None }
    }
}

/// What every upstream of a worker shares.
pub struct Ctx {
    pub stats: Arc<WorkerStats>,
    pub metrics: Arc<Metrics>,
    pub flusher: Rc<Flusher>,
}

pub struct Upstream {
    ctx: Rc<Ctx>,
    svc: RefCell<Arc<ServiceRt>>,
    endpoint: String,
    router: Option<Weak<ClusterRouter>>,
    readonly: bool,
    setup: Option<Bytes>,
    pub kind: Kind,
    proto: u8,
    /// For dedicated upstreams: the client's name, set on connect.
    client_name: Option<Bytes>,
    inner: RefCell<Inner>,
    wake: Signal,
    stats: Arc<WorkerStats>,
    metrics: Arc<Metrics>,
    max_depth: Cell<u32>,
    /// Batches of requests written (shared connections).
    batches: Counter,
    /// A tracking client's node connection, one of the set it belongs to: the client's for its
    /// whole life (never pooled; only [`Upstream::close_private`] closes it), and redirections
    /// are followed on the set's other connections.
    tracked: RefCell<Option<Weak<crate::cluster::tracked::Tracked>>>,
    /// Clients to wake once Redis has answered on this connection (or it failed).
    on_first_reply: RefCell<Vec<Rc<Client>>>,
    answered: Cell<bool>,
}

/// Why a connection attempt failed.
enum ConnectError {
    Io(String),
    Auth(String),
}

impl Upstream {
    /// Creates an upstream and starts its task on the current `LocalSet`.
    pub fn spawn(spec: Spec, ctx: &Rc<Ctx>, max_depth: u32) -> Rc<Upstream> {
        let (stats, metrics) = (ctx.stats.clone(), ctx.metrics.clone());
        let keep_sent = spec.router.is_some();
        let batches = metrics.upstream_batches.get_or_create(&Metrics::service(&spec.svc.host)).clone();
        let up = Rc::new(Upstream {
            endpoint: spec.endpoint.unwrap_or_else(|| spec.svc.endpoint().to_owned()),
            svc: RefCell::new(spec.svc),
            kind: spec.kind,
            proto: spec.proto,
            client_name: spec.client_name,
            router: spec.router,
            readonly: spec.readonly,
            setup: spec.setup,
            inner: RefCell::new(Inner {
                state: State::Connecting,
                wbuf: BytesMut::new(),
                written: 0,
                keep_sent,
                awaiting: 0,
                prev_batch: 0,
                batch_left: 0,
                one_batch: spec.kind == Kind::Shared,
                inflight: VecDeque::new(),
                wbuf_large: false,
                raw: None,
                until_reset: false,
                reset_answered: false,
                until_marker: None,
                monitor: None,
                pushes: None,
                stream: None,
                wake_queued: false,
                retired: false,
            }),
            wake: Signal::new(),
            stats,
            metrics,
            ctx: ctx.clone(),
            max_depth: Cell::new(max_depth),
            batches,
            tracked: RefCell::new(None),
            on_first_reply: RefCell::new(Vec::new()),
            answered: Cell::new(false),
        });
        tokio::task::spawn_local(up.clone().run());
        up
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Redis has not answered anything on this connection yet (beyond the login), and the
    /// connection is still wanted and working.
    pub fn awaits_first_reply(&self) -> bool {
        let inner = self.inner.borrow();
        !self.answered.get() && !inner.retired && matches!(inner.state, State::Connecting | State::Ready)
    }

    /// Wakes `client` once Redis has answered on this connection, or it failed.
    pub fn wake_on_first_reply(&self, client: &Rc<Client>) {
        self.on_first_reply.borrow_mut().push(client.clone());
    }

    /// Redis answered (or the connection ended): wakes who waited for that.
    pub fn first_reply(&self) {
        self.answered.set(true);
        for c in self.on_first_reply.borrow_mut().drain(..) {
            c.wake.notify();
        }
    }

    pub fn service(&self) -> Arc<ServiceRt> {
        self.svc.borrow().clone()
    }

    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// Adopts settings that do not need a new connection (timeouts, client auth).
    pub fn update_service(&self, svc: Arc<ServiceRt>, max_depth: u32) {
        *self.svc.borrow_mut() = svc;
        self.max_depth.set(max_depth);
    }

    /// Hands one request to this upstream. `Err` carries the error reply for the client when
    /// the upstream is known to be unavailable; the request was not sent.
    #[inline]
    pub fn send(
        &self,
        client: &Rc<Client>,
        frame: &[u8],
        cmd: CommandId,
        timed: bool,
        now: Instant,
        hold: Option<Duration>,
    ) -> Result<(), Bytes> {
        let mut inner = self.inner.borrow_mut();
        match &inner.state {
            State::Down { until, reply } => {
                if now < *until {
                    return Err(reply.clone());
                }
                inner.state = State::Connecting;
            }
            State::Dead { reply, .. } => return Err(reply.clone()),
            State::Connecting | State::Ready => {}
        }
        if inner.raw.is_none() {
            let seq = client.issue();
            let mut f = InFlight::new(client.clone(), seq, cmd, now, timed);
            f.hold = hold;
            if inner.keep_sent {
                f.sent = frame.len();
            }
            inner.inflight.push_back(f);
        } else {
            self.stats.record_local(cmd, false);
        }
        // An idle connection whose last batch was a lone request forms no batch to wait for:
        // write at once, saving the hop to the upstream task (the latency of a lone client).
        // A busy one batches, and so does one that just was: after a batch of several, the
        // first request of the next round waits for the upstream task like the rest of the
        // round, instead of going alone and splitting the round into two batches.
        if inner.wbuf.is_empty()
            && !inner.keep_sent
            && inner.prev_batch <= 1
            && inner.inflight.len() <= 1
            && let Some(stream) = &inner.stream
        {
            let result = crate::net::try_send(stream, frame);
            if inner.one_batch {
                inner.awaiting = 1;
                inner.prev_batch = 1;
                inner.batch_left = frame.len() - *result.as_ref().unwrap_or(&0);
            }
            if self.kind == Kind::Shared {
                self.batches.inc();
            }
            match result {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => {
                    let rest = &frame[n..];
                    inner.wbuf.extend_from_slice(rest);
                }
                // Errors surface in the upstream task, which owns the connection's fate.
                Err(_) => inner.wbuf.extend_from_slice(frame),
            }
        } else {
            inner.wbuf.extend_from_slice(frame);
        }
        if !inner.wake_queued {
            inner.wake_queued = true;
            self.wake.notify();
        }
        Ok(())
    }

    /// Cluster mode: sends a request whose place in the client's reply order (and, for a part
    /// of a split command, in the merged reply) is already fixed; `asking` sends ASKING first.
    /// When the upstream is known to be down, the request is answered with the error at once.
    pub fn send_request(&self, req: InFlight, frame: &[u8], asking: bool) {
        let mut inner = self.inner.borrow_mut();
        let down = match &inner.state {
            State::Down { until, reply } if req.start < *until => Some(reply.clone()),
            State::Down { .. } => {
                inner.state = State::Connecting;
                None
            }
            State::Dead { reply, .. } => Some(reply.clone()),
            State::Connecting | State::Ready => None,
        };
        if let Some(reply) = down {
            drop(inner);
            req.answer(&reply);
            self.stats.record_local(req.cmd, true);
            req.client.flush_from_upstream();
            return;
        }
        if asking {
            inner.queue(ASKING, InFlight::internal(req.client.clone(), req.start));
        }
        inner.queue(frame, InFlight { frame: None, ..req });
        if !inner.wake_queued {
            inner.wake_queued = true;
            self.wake.notify();
        }
    }

    /// Sends a command of the proxy's own (ahead of the client's next one); its reply is dropped.
    /// Best effort: if the upstream is unavailable, the client's own command will say so.
    pub fn send_internal(&self, client: &Rc<Client>, frame: &[u8], now: Instant) {
        let mut inner = self.inner.borrow_mut();
        if !matches!(inner.state, State::Ready | State::Connecting) || inner.raw.is_some() {
            return;
        }
        inner.queue(frame, InFlight::internal(client.clone(), now));
        if !inner.wake_queued {
            inner.wake_queued = true;
            self.wake.notify();
        }
    }

    /// Sends a mirrored copy of a request; its reply is dropped. Never waits: when this
    /// upstream is unavailable or already has `limit` requests queued, the copy is dropped and
    /// `false` returned.
    pub fn send_mirror(&self, client: &Rc<Client>, frame: &[u8], now: Instant, limit: usize) -> bool {
        let mut inner = self.inner.borrow_mut();
        match &inner.state {
            State::Ready | State::Connecting => {}
            State::Down { until, .. } if now >= *until => inner.state = State::Connecting,
            _ => return false,
        }
        if inner.raw.is_some() || inner.inflight.len() >= limit {
            return false;
        }
        inner.queue(frame, InFlight::internal(client.clone(), now));
        if !inner.wake_queued {
            inner.wake_queued = true;
            self.wake.notify();
        }
        true
    }

    /// From now on every byte from Redis goes to `client` as it comes. Called with nothing in
    /// flight, just before sending the command that starts the stream (SUBSCRIBE, MONITOR).
    /// A dedicated upstream becomes one node's part of a cluster-wide MONITOR: it sends
    /// MONITOR and relays the node's lines to `client`, except those containing `hide`.
    pub fn start_monitor(&self, client: Rc<Client>, hide: Option<Vec<u8>>) {
        let mut inner = self.inner.borrow_mut();
        inner.monitor = Some(Monitor { client, confirmed: false, hide });
        inner.wbuf.extend_from_slice(b"*1\r\n$7\r\nMONITOR\r\n");
        if !inner.wake_queued {
            inner.wake_queued = true;
            self.wake.notify();
        }
    }

    pub fn set_raw(&self, client: Rc<Client>) {
        self.inner.borrow_mut().raw = Some(client);
    }

    pub fn is_raw(&self) -> bool {
        self.inner.borrow().raw.is_some()
    }

    /// A raw connection's client sent RESET, which was just sent on: Redis answers it after
    /// every reply still due there, which the client must get first. Replies are relayed whole
    /// until Redis's `+RESET`; then the connection closes (RESET logged it out) and `client`
    /// is woken. The connection failing wakes it too.
    pub fn reset_through(&self, client: &Rc<Client>) {
        self.inner.borrow_mut().until_reset = true;
        self.wake_on_first_reply(client);
    }

    /// A raw connection's client sent a command answered elsewhere (another node, or the
    /// proxy): the replies still due here must reach it first. Sends `PING <token>`, which
    /// Redis answers after them; replies are relayed whole until that answer, which is dropped,
    /// and `client` is woken. The connection failing wakes it too.
    /// Returns false (nothing sent) when the connection is not relaying or not working.
    pub fn sync_through(&self, client: &Rc<Client>, token: Bytes) -> bool {
        let mut inner = self.inner.borrow_mut();
        if inner.raw.is_none() || inner.retired || !matches!(inner.state, State::Connecting | State::Ready) {
            return false;
        }
        encode_command(&mut inner.wbuf, &[&b"PING"[..], &token]);
        inner.until_marker = Some(token);
        if !inner.wake_queued {
            inner.wake_queued = true;
            self.wake.notify();
        }
        drop(inner);
        self.wake_on_first_reply(client);
        true
    }

    /// Whether [`Upstream::sync_through`] still waits for its answer.
    pub fn syncing(&self) -> bool {
        let inner = self.inner.borrow();
        inner.until_marker.is_some() && !inner.retired && matches!(inner.state, State::Connecting | State::Ready)
    }

    /// Whether Redis's `+RESET` came through (see [`Upstream::reset_through`]).
    pub fn reset_answered(&self) -> bool {
        self.inner.borrow().reset_answered
    }

    /// Whether [`Upstream::reset_through`] is still waiting for Redis's `+RESET`.
    pub fn resetting(&self) -> bool {
        let inner = self.inner.borrow();
        inner.until_reset && !inner.retired && matches!(inner.state, State::Connecting | State::Ready)
    }

    /// Whether this upstream can take requests now or after reconnecting.
    pub fn is_usable(&self) -> bool {
        !matches!(self.inner.borrow().state, State::Dead { .. })
    }

    /// For a dead dedicated upstream: whether its client may have lost state with it.
    pub fn lost_state(&self) -> bool {
        matches!(self.inner.borrow().state, State::Dead { was_connected: true, .. })
    }

    /// Connected, connecting, or due to retry: not failing requests at once.
    pub fn is_available(&self) -> bool {
        match &self.inner.borrow().state {
            State::Ready | State::Connecting => true,
            State::Down { until, .. } => Instant::now() >= *until,
            State::Dead { .. } => false,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.inner.borrow().state, State::Ready)
    }

    /// Closes the connection once nothing is in flight (dedicated: at once).
    /// Nothing queued, nothing awaiting a reply.
    /// Waiting for a blocking command's reply (a request without opTimeout at the head).
    pub fn is_blocked(&self) -> bool {
        self.inner.borrow().inflight.front().is_some_and(|f| !f.timed && !f.internal)
    }

    pub fn is_idle(&self) -> bool {
        let inner = self.inner.borrow();
        inner.inflight.is_empty() && inner.wbuf.len() == inner.written
    }

    /// Makes this a connection of a tracking client's own, in `set`: the node's RESP3 pushes
    /// (invalidations) go to `client` as they come, out of the order of replies.
    pub fn make_tracked(&self, client: Rc<Client>, set: Weak<crate::cluster::tracked::Tracked>) {
        self.inner.borrow_mut().pushes = Some(client);
        *self.tracked.borrow_mut() = Some(set);
    }

    pub fn is_private(&self) -> bool {
        self.tracked.borrow().is_some()
    }

    /// Closes a tracking client's connection (it stopped tracking, or left).
    pub fn close_private(&self) {
        *self.tracked.borrow_mut() = None;
        self.retire();
    }

    pub fn retire(&self) {
        if self.is_private() {
            return;
        }
        let mut inner = self.inner.borrow_mut();
        inner.retired = true;
        if self.kind == Kind::Dedicated {
            inner.raw = None;
            inner.monitor = None;
            inner.pushes = None;
            // Replies to a departed client are of no use; drop them with the connection.
            inner.inflight.clear();
        }
        drop(inner);
        self.wake.notify();
        self.first_reply();
    }

    async fn run(self: Rc<Self>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.inner.borrow().retired {
                return;
            }
            let svc = self.service();
            let endpoint = self.endpoint.clone();
            match self.connect(&svc, &endpoint).await {
                Ok(stream) => {
                    backoff = BACKOFF_MIN;
                    let gauge = self.metrics.upstream_connections.get_or_create(&Metrics::service(&svc.host)).clone();
                    gauge.inc();
                    let stream = Rc::new(stream);
                    {
                        let mut inner = self.inner.borrow_mut();
                        inner.state = State::Ready;
                        inner.stream = Some(stream.clone());
                    }
                    debug!(service = %svc.host, %endpoint, kind = ?self.kind, "upstream connected");
                    let why = self.serve(&stream).await;
                    self.inner.borrow_mut().stream = None;
                    gauge.dec();
                    let reply = replies::upstream_unavailable(&svc.host, &endpoint, &why);
                    let retired = self.inner.borrow().retired;
                    if !retired {
                        warn!(service = %svc.host, %endpoint, reason = %why, "upstream connection lost");
                    }
                    self.fail_all(&reply);
                    self.first_reply();
                    if self.kind == Kind::Dedicated {
                        self.inner.borrow_mut().state = State::Dead { reply, was_connected: true };
                        return;
                    }
                    // Reconnect on the next request.
                    self.inner.borrow_mut().state = State::Down { until: Instant::now(), reply };
                }
                Err(e) => {
                    let reply = match &e {
                        ConnectError::Auth(said) => {
                            self.metrics.upstream_auth_failures.get_or_create(&Metrics::service(&svc.host)).inc();
                            error!(service = %svc.host, %endpoint, redis_said = %said,
                                "Redis refused the proxy's credentials; clients get errors until the service's auth is fixed");
                            replies::upstream_auth_failed(&svc.host, &endpoint, said)
                        }
                        ConnectError::Io(why) => {
                            self.metrics.upstream_connect_failures.get_or_create(&Metrics::service(&svc.host)).inc();
                            warn!(service = %svc.host, %endpoint, reason = %why, retry_in = ?backoff, "cannot connect to upstream");
                            replies::upstream_unavailable(&svc.host, &endpoint, why)
                        }
                    };
                    self.fail_all(&reply);
                    self.first_reply();
                    if self.kind == Kind::Dedicated {
                        self.inner.borrow_mut().state = State::Dead { reply, was_connected: false };
                        return;
                    }
                    self.inner.borrow_mut().state = State::Down { until: Instant::now() + backoff, reply };
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            // Wait for demand: a request accepted after the backoff, or retirement.
            loop {
                {
                    let mut inner = self.inner.borrow_mut();
                    inner.wake_queued = false;
                    if inner.retired || !inner.inflight.is_empty() || matches!(inner.state, State::Connecting) {
                        break;
                    }
                }
                self.wake.wait().await;
            }
        }
    }

    /// Answers every request in flight (or queued while connecting) with `reply`.
    fn fail_all(&self, reply: &[u8]) {
        // A cluster node that fails may have been failed over: look at the topology again.
        if let Some(router) = self.router.as_ref().and_then(Weak::upgrade) {
            router.request_refresh();
        }
        let (failed, raw) = {
            let mut inner = self.inner.borrow_mut();
            inner.wbuf.clear();
            inner.written = 0;
            inner.awaiting = 0;
            inner.batch_left = 0;
            let raw = inner.raw.take().or_else(|| {
                let m = inner.monitor.take()?;
                // The client's MONITOR stream is incomplete without this node: say why, end it.
                m.client.relay(reply);
                Some(m.client)
            });
            (std::mem::take(&mut inner.inflight), raw)
        };
        for f in failed.iter().filter(|f| !f.internal) {
            f.answer(reply);
            self.stats.record_local(f.cmd, true);
        }
        for f in &failed {
            f.client.flush_from_upstream();
        }
        if let Some(client) = raw {
            // A subscriber whose link is gone would wait for messages forever: close it.
            client.close_after_flush();
        }
    }

    async fn connect(&self, svc: &ServiceRt, endpoint: &str) -> Result<TcpStream, ConnectError> {
        if let Some(why) = &svc.refused {
            // Fail closed: never connect without the credentials the service needs.
            return Err(ConnectError::Io(format!("the service is not usable: {why}")));
        }
        let attempt = async {
            let stream = TcpStream::connect(endpoint).await.map_err(|e| ConnectError::Io(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            self.handshake(stream, svc).await
        };
        match tokio::time::timeout(svc.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Io(format!(
                "no connection within connectTimeout {}",
                respmesh_api::Duration(svc.connect_timeout)
            ))),
        }
    }

    /// Logs in and sets the connection up; the replies are checked here, never seen by clients.
    async fn handshake(&self, mut stream: TcpStream, svc: &ServiceRt) -> Result<TcpStream, ConnectError> {
        let mut hello = BytesMut::new();
        let mut expected = Vec::new();
        if let Some(auth) = &svc.auth {
            match &auth.username {
                Some(user) => encode_command(&mut hello, &[&b"AUTH"[..], user, &auth.password.0]),
                None => encode_command(&mut hello, &[&b"AUTH"[..], &auth.password.0]),
            }
            expected.push("AUTH");
        }
        if self.proto == 3 {
            encode_command(&mut hello, &[&b"HELLO"[..], b"3"]);
            expected.push("HELLO");
        }
        if let Some(name) = &self.client_name {
            encode_command(&mut hello, &[&b"CLIENT"[..], b"SETNAME", name]);
            expected.push("CLIENT SETNAME");
        }
        if self.readonly {
            // A cluster replica serves reads only after READONLY.
            encode_command(&mut hello, &[&b"READONLY"[..]]);
            expected.push("READONLY");
        }
        if let Some(setup) = &self.setup {
            hello.extend_from_slice(setup);
            expected.push("CLIENT TRACKING");
        }
        if expected.is_empty() {
            return Ok(stream);
        }
        let io_err = |e: io::Error| ConnectError::Io(e.to_string());
        stream.write_all(&hello).await.map_err(io_err)?;
        let mut buf = BytesMut::with_capacity(1024);
        let mut scanner = ReplyScanner::new(self.max_depth.get());
        for what in expected {
            let len = loop {
                match scanner.scan(&buf) {
                    Ok(Scan::Complete { len }) => break len,
                    Ok(Scan::Incomplete { .. }) => {
                        if stream.read_buf(&mut buf).await.map_err(io_err)? == 0 {
                            return Err(ConnectError::Io("connection closed during login".into()));
                        }
                    }
                    Err(e) => return Err(ConnectError::Io(format!("bad reply during login: {e}"))),
                }
            };
            let reply = buf.split_to(len);
            if is_error(&reply) {
                let said = String::from_utf8_lossy(simple_text(&reply)).into_owned();
                return Err(if what == "AUTH" || said.starts_with("NOAUTH") || said.starts_with("WRONGPASS") {
                    ConnectError::Auth(said)
                } else {
                    ConnectError::Io(format!("{what} failed: {said}"))
                });
            }
        }
        Ok(stream)
    }

    /// Runs one established connection until it fails; returns why.
    async fn serve(&self, stream: &TcpStream) -> String {
        let mut rbuf = BytesMut::with_capacity(READ_SPARE);
        let mut rbuf_large = false;
        let mut unflushed = 0;
        let mut scanner = ReplyScanner::new(self.max_depth.get());
        let mut touched: Vec<Rc<Client>> = Vec::new();
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut timer_armed = false;
        // When Redis last sent something: a request queued behind others on this connection
        // cannot be answered before them, so its opTimeout counts from then at the earliest.
        let mut progress = Instant::now();
        loop {
            let want_write;
            {
                let mut inner = self.inner.borrow_mut();
                inner.wake_queued = false;
                inner.release_large_buffers();
                if let Err(e) = self.write_batch(&mut inner, stream) {
                    return e.to_string();
                }
                want_write = inner.batch_left > 0;
                if inner.retired && inner.inflight.is_empty() && !want_write {
                    return "retired".into();
                }
                if !timer_armed && let Some(due) = inner.timed_head(progress) {
                    timer.as_mut().reset(due + self.svc.borrow().op_timeout);
                    timer_armed = true;
                }
            }
            let interest = if want_write { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            tokio::select! {
                biased;
                ready = stream.ready(interest) => {
                    let ready = match ready {
                        Ok(r) => r,
                        Err(e) => return e.to_string(),
                    };
                    if ready.is_readable() || ready.is_read_closed() {
                        loop {
                            match read_some(stream, &mut rbuf, READ_SPARE) {
                                Ok(Read::Data(n)) => {
                                    progress = Instant::now();
                                    if self.kind == Kind::Dedicated && !self.answered.get() {
                                        self.first_reply();
                                    }
                                    rbuf_large |= rbuf.len() > KEEP_CAPACITY;
                                    if let Err(why) = self.dispatch(&mut rbuf, &mut scanner, &mut touched) {
                                        self.flush_touched(&mut touched);
                                        return why;
                                    }
                                    // The next batch goes before these replies go to their
                                    // clients: Redis works on it meanwhile instead of going to
                                    // sleep, and its replies are often there by the time the
                                    // clients have theirs, so the proxy does not sleep either.
                                    if let Err(e) = self.write_batch(&mut self.inner.borrow_mut(), stream) {
                                        self.flush_touched(&mut touched);
                                        return e.to_string();
                                    }
                                    // Replies that keep coming (large values, a long pipeline)
                                    // go out as they come rather than pile up in the proxy
                                    // until Redis pauses: a client that is gone is then known
                                    // as such, and what it asked for is dropped, not kept.
                                    unflushed += n;
                                    if unflushed >= FLUSH_EVERY {
                                        unflushed = 0;
                                        for c in touched.drain(..) {
                                            c.flush_from_upstream();
                                        }
                                    }
                                }
                                Ok(Read::WouldBlock) => {
                                    if rbuf_large && rbuf.is_empty() {
                                        // A large reply has gone: so does the memory it took.
                                        rbuf = BytesMut::with_capacity(READ_SPARE);
                                        rbuf_large = false;
                                    }
                                    break;
                                }
                                Ok(Read::Eof) => {
                                    self.flush_touched(&mut touched);
                                    return "connection closed by Redis".into();
                                }
                                Err(e) => {
                                    self.flush_touched(&mut touched);
                                    return e.to_string();
                                }
                            }
                        }
                        self.flush_touched(&mut touched);
                        unflushed = 0;
                    }
                }
                _ = self.wake.wait() => {}
                _ = &mut timer, if timer_armed => {
                    timer_armed = false;
                    let svc = self.service();
                    let now = Instant::now();
                    let expired = self.inner.borrow().timed_head(progress).is_some_and(|due| due + svc.op_timeout <= now);
                    if expired {
                        self.metrics.upstream_timeouts.get_or_create(&Metrics::service(&svc.host)).inc();
                        let reply = replies::upstream_timeout(&svc.host, &self.endpoint, svc.op_timeout_text);
                        warn!(service = %svc.host, timeout = %svc.op_timeout_text, "request timed out; resetting the upstream connection");
                        self.fail_all(&reply);
                        return format!("no reply within opTimeout {}", svc.op_timeout_text);
                    }
                }
            }
        }
    }

    /// Starts the next batch when the rule allows, and writes what the socket takes of it.
    fn write_batch(&self, inner: &mut Inner, stream: &TcpStream) -> io::Result<()> {
        if !inner.one_batch || (inner.awaiting == 0 && inner.batch_left == 0) {
            // A new batch: everything queued.
            let fresh = inner.batch_left == 0;
            inner.batch_left = inner.wbuf.len() - inner.written;
            inner.awaiting = inner.inflight.len();
            if fresh && inner.batch_left > 0 {
                inner.prev_batch = inner.awaiting;
            }
            if fresh && inner.batch_left > 0 && self.kind == Kind::Shared {
                self.batches.inc();
            }
        }
        while inner.batch_left > 0 {
            let end = inner.written + inner.batch_left;
            match crate::net::try_send(stream, &inner.wbuf[inner.written..end]) {
                Ok(n) => {
                    inner.batch_left -= n;
                    if inner.keep_sent {
                        inner.written += n;
                    } else {
                        inner.wbuf.advance(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands every complete reply in `rbuf` to its client.
    fn dispatch(
        &self,
        rbuf: &mut BytesMut,
        scanner: &mut ReplyScanner,
        touched: &mut Vec<Rc<Client>>,
    ) -> Result<(), String> {
        let mut redirects = Vec::new();
        let result = self.dispatch_replies(rbuf, scanner, touched, &mut redirects);
        // Followed once this upstream's state is no longer borrowed: a redirect may well
        // point back here.
        for (req, redirect) in redirects {
            let tracked = self.tracked.borrow().as_ref().and_then(Weak::upgrade);
            if let Some(set) = tracked {
                set.redirect(req, redirect, &self.endpoint);
                continue;
            }
            match self.router.as_ref().and_then(Weak::upgrade) {
                Some(router) => router.redirect(req, redirect, self.proto, &self.endpoint),
                None => req.answer(b"-ERR respmesh: redirected by a node that is no longer configured\r\n"),
            }
        }
        result
    }

    fn dispatch_replies(
        &self,
        rbuf: &mut BytesMut,
        scanner: &mut ReplyScanner,
        touched: &mut Vec<Rc<Client>>,
        redirects: &mut Vec<(InFlight, Redirect)>,
    ) -> Result<(), String> {
        let mut inner = self.inner.borrow_mut();
        if let Some(m) = inner.monitor.as_mut() {
            return relay_monitor_lines(m, rbuf, scanner, touched);
        }
        if inner.until_reset
            && let Some(client) = inner.raw.clone()
        {
            if !relay_whole_until(&client, rbuf, scanner, touched, true, |r| r == replies::RESET)? {
                return Ok(());
            }
            rbuf.clear();
            inner.until_reset = false;
            inner.reset_answered = true;
            inner.raw = None;
            inner.retired = true;
            drop(inner);
            self.first_reply();
            return Ok(());
        }
        if let Some(token) = inner.until_marker.clone()
            && let Some(client) = inner.raw.clone()
        {
            if !relay_whole_until(&client, rbuf, scanner, touched, false, |r| is_pong(r, &token))? {
                return Ok(());
            }
            inner.until_marker = None;
            drop(inner);
            self.first_reply();
            inner = self.inner.borrow_mut();
        }
        if let Some(client) = &inner.raw {
            client.relay(rbuf);
            rbuf.clear();
            if !touched.last().is_some_and(|l| Rc::ptr_eq(l, client)) {
                touched.push(client.clone());
            }
            return Ok(());
        }
        let mut logged = 0;
        let result = self.answer_replies(&mut inner, rbuf, scanner, touched, redirects, &mut logged);
        if logged > 0 {
            inner.wbuf.advance(logged);
            inner.written = inner.written.saturating_sub(logged);
        }
        result
    }

    /// Hands each complete reply in `rbuf` to its request; `logged` counts the bytes of the
    /// answered requests at the front of a cluster node's log.
    fn answer_replies(
        &self,
        inner: &mut Inner,
        rbuf: &mut BytesMut,
        scanner: &mut ReplyScanner,
        touched: &mut Vec<Rc<Client>>,
        redirects: &mut Vec<(InFlight, Redirect)>,
        logged: &mut usize,
    ) -> Result<(), String> {
        let mut now = None;
        loop {
            let len = match scanner.scan(rbuf) {
                Ok(Scan::Complete { len }) => len,
                Ok(Scan::Incomplete { need }) => {
                    if need > rbuf.capacity() {
                        rbuf.reserve(need - rbuf.len());
                    }
                    return Ok(());
                }
                Err(e) => return Err(format!("unreadable reply from Redis: {e}")),
            };
            if rbuf[0] == b'>'
                && let Some(client) = &inner.pushes
            {
                client.relay(&rbuf[..len]);
                if !touched.last().is_some_and(|l| Rc::ptr_eq(l, client)) {
                    touched.push(client.clone());
                }
                rbuf.advance(len);
                if rbuf.is_empty() {
                    return Ok(());
                }
                continue;
            }
            let Some(mut req) = inner.inflight.pop_front() else {
                let mut text = String::new();
                let _ = write!(text, "reply with no request waiting for it ({} bytes)", len);
                return Err(text);
            };
            inner.awaiting = inner.awaiting.saturating_sub(1);
            let reply = &rbuf[..len];
            let mut redirect = None;
            if inner.keep_sent {
                if !req.internal
                    && req.redirects < MAX_REDIRECTS
                    && is_error(reply)
                    && let Some(r) = Redirect::parse(reply)
                {
                    let at = *logged;
                    req.frame = Some(Bytes::copy_from_slice(&inner.wbuf[at..at + req.sent.min(inner.wbuf.len() - at)]));
                    redirect = Some(r);
                }
                // Answered: out of the log (Redis answers only what it has read whole), once
                // the replies at hand are handled.
                *logged += req.sent.min(inner.wbuf.len() - *logged);
            }
            if req.internal {
                rbuf.advance(len);
                if rbuf.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if let Some(redirect) = redirect {
                redirects.push((req, redirect));
                rbuf.advance(len);
                if rbuf.is_empty() {
                    return Ok(());
                }
                continue;
            }
            req.answer(reply);
            let now = *now.get_or_insert_with(Instant::now);
            self.stats.record(req.cmd, is_error(reply), now.saturating_duration_since(req.start));
            if !touched.last().is_some_and(|l| Rc::ptr_eq(l, &req.client)) {
                touched.push(req.client);
            }
            rbuf.advance(len);
            if rbuf.is_empty() {
                return Ok(());
            }
        }
    }

    fn flush_touched(&self, touched: &mut Vec<Rc<Client>>) {
        if self.router.is_some() {
            // Cluster nodes: a client's read batch may be waiting for replies of other nodes.
            for c in touched.drain(..) {
                self.ctx.flusher.flush_or_mark(&c);
            }
            return;
        }
        for c in touched.drain(..) {
            c.flush_from_upstream();
        }
    }
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    #[test]
    fn redirections_parse() {
        assert_eq!(
            Redirect::parse(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved { slot: 3999, addr: "127.0.0.1:6381".into() })
        );
        assert_eq!(
            Redirect::parse(b"-ASK 1 10.0.0.1:7000\r\n"),
            Some(Redirect::Ask { slot: 1, addr: "10.0.0.1:7000".into() })
        );
        assert_eq!(
            Redirect::parse(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(Redirect::parse(b"-ERR MOVED is a word\r\n"), None);
        assert_eq!(Redirect::parse(b"-MOVED x y\r\n"), None);
    }

    #[test]
    fn the_sync_marker_is_known_in_both_contexts() {
        // Outside a RESP2 subscriber's context (and in RESP3): a bulk string.
        assert!(is_pong(b"$4\r\nsync\r\n", b"sync"));
        // In a RESP2 subscriber's context.
        assert!(is_pong(b"*2\r\n$4\r\npong\r\n$4\r\nsync\r\n", b"sync"));
        // A client's own replies are not the marker.
        assert!(!is_pong(b"$5\r\nsync2\r\n", b"sync"));
        assert!(!is_pong(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n", b"sync"));
        assert!(!is_pong(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\nsync\r\n", b"sync"));
        assert!(!is_pong(b"+PONG\r\n", b"sync"));
    }
}
