//! The client side of a connection as upstreams see it: where replies go, in request order.
//!
//! Every request gets a sequence number when it is issued. Its reply may come from an upstream
//! or from the proxy itself, and replies from different upstreams may arrive in any order; each
//! is written to the client only once every earlier one has been. The common case, a reply that
//! is next in line, is appended straight to the output buffer; only a reply that overtakes an
//! earlier one is parked (copied) until its turn. Upstream tasks append replies here and write
//! them to the socket once per batch.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::cluster::merge::{Combine, combine};
use crate::signal::Signal;

/// Output buffers larger than this are released once written, so that one large reply does not
/// pin memory for the rest of an idle connection's life.
const KEEP_OUT_CAPACITY: usize = 64 * 1024;
/// An output buffer that held more than this (a large reply: usual writes stop near
/// `HOLD_LIMIT`) is given back once written.
const RELEASE_OUT_ABOVE: usize = 256 * 1024;
/// Queues of replies keep room for this many entries when empty (a long pipeline made them grow).
const KEEP_QUEUED: usize = 4096;

/// Unsent bytes of a relayed stream (messages, MONITOR lines) a client may have before it is
/// disconnected: Redis's default hard limit for pub/sub clients.
pub const RELAY_LIMIT: usize = 32 << 20;

/// Replies held back for the rest of their read batch (see [`Client::end_batch`]) are written
/// anyway once this many bytes wait, or once they have waited [`HOLD_TIME`].
const HOLD_LIMIT: usize = 64 * 1024;
const HOLD_TIME: std::time::Duration = std::time::Duration::from_millis(1);

/// A parked-reply arena larger than this is compacted when most of it was written already
/// (replies that keep overtaking one slow one would otherwise grow it without end).
const ARENA_COMPACT: usize = 64 * 1024;

pub struct Client {
    pub stream: TcpStream,
    out: RefCell<Out>,
    /// Wakes the session task: output needs the socket to become writable, a barrier was
    /// released, or the connection must close.
    pub wake: Signal,
    /// The session waits for every outstanding reply before sending its next request.
    pub waiting_drain: Cell<bool>,
    /// Queued on some upstream's list of clients to flush after its current batch.
    pub flush_queued: Cell<bool>,
    /// While this client's output waits for the rest of a read batch: the mark of its entry
    /// in the flusher's [`Holds`] (0: not held).
    held: Cell<u64>,
    /// The proxy's own id for this connection (CLIENT ID where no one Redis connection is
    /// the client's), unique in the process.
    pub id: u64,
    /// This connection in the process's registry of clients (set once its session starts).
    pub entry: std::cell::OnceCell<std::sync::Arc<crate::registry::Entry>>,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A request's place in its client's reply order.
pub type Seq = u64;

#[derive(Default)]
struct Out {
    buf: BytesMut,
    /// Sequence number of the next request to issue, and of the oldest reply not yet written.
    next: Seq,
    head: Seq,
    /// Replies waiting for earlier ones: `parked[i]` belongs to `head + i`, as a range of
    /// `arena`. Empty while replies arrive in order.
    parked: VecDeque<Option<(usize, usize)>>,
    /// The bytes of parked replies, one buffer for all of them (no allocation per reply).
    arena: BytesMut,
    /// Bytes of `arena` still parked (the rest were written).
    arena_live: usize,
    /// The client is gone: replies are dropped.
    gone: bool,
    /// The connection must close once what is buffered has been written.
    close_after_flush: bool,
    /// A write would have blocked; the session waits for writability.
    blocked: bool,
    /// Replies that combine into one (a command split across routes): oldest first.
    groups: VecDeque<Group>,
    /// Requests issued now get no reply written (CLIENT REPLY OFF or SKIP).
    silencing: bool,
    /// Requests whose reply is dropped, in order.
    silent: VecDeque<Seq>,
    /// Where the client's read batches end (the `next` after each), oldest first; those
    /// already answered in full are dropped as `head` passes them.
    batch_ends: VecDeque<Seq>,
    /// Relayed bytes (messages, MONITOR lines) are waiting: write without holding.
    urgent: bool,
    /// A large reply went into `buf`: its memory is given back once written.
    large: bool,
}

/// Consecutive requests `first..first + len` whose replies the client gets as one.
struct Group {
    first: Seq,
    len: usize,
    combine: Combine,
    parts: Vec<Option<Bytes>>,
}

impl Out {
    /// Whether what is buffered should be written now rather than held for the rest of its
    /// read batch: some batch was answered in full since the last write, nothing is
    /// outstanding, or there is reason not to wait.
    fn batch_done(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let mut done = self.next == self.head || self.urgent || self.close_after_flush || self.buf.len() >= HOLD_LIMIT;
        while self.batch_ends.front().is_some_and(|&end| end <= self.head) {
            self.batch_ends.pop_front();
            done = true;
        }
        done || self.batch_ends.is_empty()
    }

    fn put(&mut self, seq: Seq, reply: &[u8]) {
        debug_assert!(seq >= self.head && seq < self.next, "reply for an unknown request");
        let i = (seq - self.head) as usize;
        if i > 0 {
            // Mostly one slot short: pushing is cheaper than `resize`.
            while self.parked.len() <= i {
                self.parked.push_back(None);
            }
            if self.arena.len() > ARENA_COMPACT && self.arena.len() > 2 * self.arena_live {
                self.compact_arena();
            }
            self.parked[i] = Some((self.arena.len(), reply.len()));
            self.arena.extend_from_slice(reply);
            self.arena_live += reply.len();
            return;
        }
        self.emit(reply);
        self.parked.pop_front();
        if self.parked.front().is_some_and(Option::is_some) {
            let arena = std::mem::take(&mut self.arena);
            while let Some(Some((at, len))) = self.parked.front().copied() {
                self.parked.pop_front();
                self.emit(&arena[at..at + len]);
                self.arena_live -= len;
            }
            self.arena = arena;
        }
        if self.parked.is_empty() && !self.arena.is_empty() {
            self.clear_arena();
        }
    }

    /// Drops what the arena holds, and the arena itself if a large reply made it large.
    fn clear_arena(&mut self) {
        if self.arena.capacity() > KEEP_OUT_CAPACITY {
            self.arena = BytesMut::new();
        } else {
            self.arena.clear();
        }
        self.arena_live = 0;
    }

    /// Moves the replies still parked to a fresh arena, leaving the written ones behind.
    fn compact_arena(&mut self) {
        let mut fresh = BytesMut::with_capacity(self.arena_live * 2);
        for (at, len) in self.parked.iter_mut().flatten() {
            let start = fresh.len();
            fresh.extend_from_slice(&self.arena[*at..*at + *len]);
            *at = start;
        }
        self.arena = fresh;
    }

    /// The reply to request `head`, in order: written, or kept for its group.
    fn emit(&mut self, reply: &[u8]) {
        let seq = self.head;
        self.head += 1;
        if let Some(g) = self.groups.front_mut()
            && seq >= g.first
        {
            g.parts.push(Some(Bytes::copy_from_slice(reply)));
            if g.parts.len() < g.len {
                return;
            }
            let g = self.groups.pop_front().expect("checked");
            let merged = combine(&g.combine, &g.parts);
            if !self.gone && !self.silenced(g.first) {
                self.buf.extend_from_slice(&merged);
            }
            return;
        }
        if !self.gone && (self.silent.is_empty() || !self.silenced(seq)) {
            self.buf.extend_from_slice(reply);
        }
    }

    /// Whether the reply to `seq` is to be dropped (forgetting silenced requests before it).
    fn silenced(&mut self, seq: Seq) -> bool {
        while let Some(&s) = self.silent.front() {
            if s > seq {
                return false;
            }
            self.silent.pop_front();
            if s == seq {
                return true;
            }
        }
        false
    }
}

impl Client {
    pub fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            out: RefCell::new(Out::default()),
            wake: Signal::new(),
            waiting_drain: Cell::new(false),
            flush_queued: Cell::new(false),
            held: Cell::new(0),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            entry: std::cell::OnceCell::new(),
        }
    }

    /// From now on (until turned off), requests issued get no reply written: CLIENT REPLY.
    pub fn set_silencing(&self, on: bool) {
        self.out.borrow_mut().silencing = on;
    }

    /// Gives the next request its place in the reply order; exactly one reply must follow.
    #[inline]
    pub fn issue(&self) -> Seq {
        let mut out = self.out.borrow_mut();
        out.next += 1;
        if out.silencing {
            let seq = out.next - 1;
            out.silent.push_back(seq);
        }
        out.next - 1
    }

    /// The replies to the next `len` requests issued reach the client as one, combined as
    /// `combine` says. Each of those requests must get exactly one reply.
    pub fn group_next(&self, len: usize, combine: Combine) {
        let mut out = self.out.borrow_mut();
        let first = out.next;
        out.groups.push_back(Group { first, len, combine, parts: Vec::with_capacity(len) });
    }

    /// The requests issued so far form a batch (everything one read brought, or what came
    /// before a command that may block): replies from several upstreams (cluster nodes) are
    /// written together once the whole batch is answered, as Redis writes the replies to
    /// one read in one go, instead of one write per node.
    pub fn end_batch(&self) {
        let mut out = self.out.borrow_mut();
        let next = out.next;
        if next > out.head && out.batch_ends.back().is_none_or(|&end| end < next) {
            out.batch_ends.push_back(next);
        }
    }

    /// Requests issued since `since` (a value of [`Client::next_seq`]).
    pub fn issued_since(&self, since: Seq) -> u64 {
        self.out.borrow().next - since
    }

    /// The sequence number the next request will get.
    pub fn next_seq(&self) -> Seq {
        self.out.borrow().next
    }

    /// Requests issued and not answered yet.
    #[inline]
    pub fn outstanding(&self) -> u64 {
        let out = self.out.borrow();
        out.next - out.head
    }

    /// The reply to request `seq`.
    #[inline]
    pub fn deliver(&self, seq: Seq, reply: &[u8]) {
        let mut out = self.out.borrow_mut();
        out.put(seq, reply);
        if out.next == out.head && (self.waiting_drain.get() || out.close_after_flush) {
            self.waiting_drain.set(false);
            self.wake.notify();
        }
    }

    /// Bytes relayed as they come (a subscriber's or monitor's stream). A client that lets
    /// more than [`RELAY_LIMIT`] of them pile up unread is disconnected, as Redis disconnects
    /// a pub/sub client past its output buffer limit: the proxy's memory is not its queue.
    pub fn relay(&self, bytes: &[u8]) {
        let mut out = self.out.borrow_mut();
        if out.gone {
            return;
        }
        if out.buf.len() + bytes.len() > RELAY_LIMIT {
            drop(out);
            tracing::warn!(
                limit_mib = RELAY_LIMIT >> 20,
                "disconnecting a subscriber or MONITOR client that does not read what it is sent"
            );
            self.set_gone();
            self.wake.notify();
            return;
        }
        out.buf.extend_from_slice(bytes);
        out.urgent = true;
    }

    /// A reply made by the proxy, placed after every reply still outstanding.
    pub fn local(&self, reply: &[u8]) {
        let seq = self.issue();
        self.deliver(seq, reply);
    }

    /// Writes buffered output. Returns `Ok(false)` when the socket is full (the session will
    /// wait for writability and call again).
    pub fn flush(&self) -> io::Result<bool> {
        let mut out = self.out.borrow_mut();
        if out.gone {
            return Ok(true);
        }
        out.large |= out.buf.len() > RELEASE_OUT_ABOVE;
        while !out.buf.is_empty() {
            match crate::net::try_send(&self.stream, &out.buf) {
                Ok(n) => out.buf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.blocked = true;
                    return Ok(false);
                }
                Err(e) => {
                    out.gone = true;
                    out.buf = BytesMut::new();
                    return Err(e);
                }
            }
        }
        out.blocked = false;
        out.urgent = false;
        let head = out.head;
        while out.batch_ends.front().is_some_and(|&end| end <= head) {
            out.batch_ends.pop_front();
        }
        // Once written, what a large reply or a long pipeline made grow is given back (the
        // capacity of `buf`, seen after `advance`, is not the memory it holds: hence `large`).
        if out.large || out.buf.capacity() > KEEP_OUT_CAPACITY {
            out.buf = BytesMut::new();
            out.large = false;
        }
        if out.parked.is_empty() && out.parked.capacity() > KEEP_QUEUED {
            out.parked = VecDeque::new();
        }
        if out.batch_ends.is_empty() && out.batch_ends.capacity() > KEEP_QUEUED {
            out.batch_ends = VecDeque::new();
        }
        Ok(true)
    }

    /// Called by upstreams after a batch: write now, or let the session wait for the socket.
    pub fn flush_from_upstream(&self) {
        match self.flush() {
            Ok(true) => {}
            Ok(false) | Err(_) => self.wake.notify(),
        }
    }

    pub fn write_blocked(&self) -> bool {
        self.out.borrow().blocked
    }

    pub fn has_output(&self) -> bool {
        let out = self.out.borrow();
        !out.gone && (!out.buf.is_empty() || !out.parked.is_empty())
    }

    /// Bytes written to this client's buffer and not yet sent.
    pub fn buffered(&self) -> usize {
        self.out.borrow().buf.len()
    }

    /// The client went away: later replies are dropped.
    pub fn set_gone(&self) {
        let mut out = self.out.borrow_mut();
        out.gone = true;
        out.buf = BytesMut::new();
        out.parked.clear();
        out.clear_arena();
    }

    pub fn is_gone(&self) -> bool {
        self.out.borrow().gone
    }

    /// Close once buffered output is written (QUIT, protocol errors, a lost subscriber link).
    pub fn close_after_flush(&self) {
        self.out.borrow_mut().close_after_flush = true;
        self.wake.notify();
    }

    pub fn closing(&self) -> bool {
        self.out.borrow().close_after_flush
    }
}

/// Writes the output of clients that upstream tasks marked, once per turn of the event loop:
/// a client whose pipeline spans several upstreams (cluster nodes) gets one write for the
/// replies that arrived from all of them. (A client whose read batch is answered in full is
/// written at once by the upstream that answered last: see [`Flusher::flush_or_mark`].) A client still waiting for other replies of the same
/// read batch is held (see [`Client::end_batch`]), each for at most [`HOLD_TIME`] from the
/// moment it was first held.
pub struct Flusher {
    dirty: RefCell<Vec<Rc<Client>>>,
    holds: RefCell<Holds<Rc<Client>>>,
    signal: Signal,
}

impl Flusher {
    /// Creates the flusher of the current worker and starts its task.
    pub fn spawn() -> Rc<Flusher> {
        let f = Rc::new(Flusher { dirty: RefCell::new(Vec::new()), holds: RefCell::default(), signal: Signal::new() });
        tokio::task::spawn_local(f.clone().run());
        f
    }

    /// `client` has new output from a cluster node: written now when its read batch is
    /// answered in full (nothing else is coming for it), else held for the rest as [`mark`]
    /// does.
    ///
    /// [`mark`]: Flusher::mark
    pub fn flush_or_mark(&self, client: &Rc<Client>) {
        if !client.flush_queued.get() && client.out.borrow_mut().batch_done() {
            client.held.set(0);
            client.flush_from_upstream();
        } else {
            self.mark(client);
        }
    }

    /// `client` has new output; it is written after the tasks that are ready now have run.
    pub fn mark(&self, client: &Rc<Client>) {
        if !client.flush_queued.replace(true) {
            let mut dirty = self.dirty.borrow_mut();
            if dirty.is_empty() {
                self.signal.notify();
            }
            dirty.push(client.clone());
        }
    }

    async fn run(self: Rc<Self>) {
        let mut batch = Vec::new();
        let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        // The deadline the timer is set to: the oldest live hold's.
        let mut armed: Option<std::time::Instant> = None;
        let live = |c: &Rc<Client>, mark: u64| c.held.get() == mark;
        loop {
            tokio::select! {
                biased;
                _ = self.signal.wait() => {
                    std::mem::swap(&mut batch, &mut *self.dirty.borrow_mut());
                    let mut now = None;
                    for c in batch.drain(..) {
                        c.flush_queued.set(false);
                        if c.out.borrow_mut().batch_done() {
                            c.held.set(0);
                            c.flush_from_upstream();
                        } else if c.held.get() == 0 {
                            let now = *now.get_or_insert_with(std::time::Instant::now);
                            let mark = self.holds.borrow_mut().hold(now, c.clone());
                            c.held.set(mark);
                        }
                    }
                }
                _ = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.holds.borrow_mut().expire(std::time::Instant::now(), live, &mut batch);
                    for c in batch.drain(..) {
                        c.held.set(0);
                        c.flush_from_upstream();
                    }
                }
            }
            // The timer follows the oldest client still held; clients written meanwhile no
            // longer count, so a steady flow of short holds does not wake the thread.
            let due = self.holds.borrow_mut().deadline(live);
            if due != armed {
                match due {
                    Some(at) => timer.as_mut().reset(at.into()),
                    None => timer.as_mut().reset(far()),
                }
                armed = due;
            }
        }
    }
}

/// Clients held for the rest of their read batch, oldest first. Each entry carries a mark; it
/// is live while its client's own mark still equals it. A client written before its time is up
/// (its batch answered) only clears its own mark: its stale entry is dropped when it reaches
/// the front, and a later hold of the same client gets a new entry and a new mark.
struct Holds<T> {
    queue: VecDeque<(u64, std::time::Instant, T)>,
    last_mark: u64,
}

impl<T> Default for Holds<T> {
    fn default() -> Self {
        Holds { queue: VecDeque::new(), last_mark: 0 }
    }
}

impl<T> Holds<T> {
    /// Holds `item` from `now`; returns its mark (never 0).
    fn hold(&mut self, now: std::time::Instant, item: T) -> u64 {
        self.last_mark += 1;
        self.queue.push_back((self.last_mark, now, item));
        self.last_mark
    }

    /// Moves the live entries held for [`HOLD_TIME`] or longer to `out`, dropping stale ones
    /// on the way.
    fn expire(&mut self, now: std::time::Instant, live: impl Fn(&T, u64) -> bool, out: &mut Vec<T>) {
        while let Some((mark, since, item)) = self.queue.front() {
            if live(item, *mark) {
                if *since + HOLD_TIME > now {
                    return;
                }
                out.push(self.queue.pop_front().expect("front exists").2);
            } else {
                self.queue.pop_front();
            }
        }
    }

    /// When the oldest live entry is due, if any.
    fn deadline(&mut self, live: impl Fn(&T, u64) -> bool) -> Option<std::time::Instant> {
        while let Some((mark, since, item)) = self.queue.front() {
            if live(item, *mark) {
                return Some(*since + HOLD_TIME);
            }
            self.queue.pop_front();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_with(n: u64) -> Out {
        Out { next: n, ..Default::default() }
    }

    #[test]
    fn in_order_replies_go_straight_to_the_buffer() {
        let mut out = out_with(3);
        out.put(0, b"a");
        out.put(1, b"b");
        assert_eq!(&out.buf[..], b"ab");
        assert!(out.parked.is_empty());
        out.put(2, b"c");
        assert_eq!((out.head, &out.buf[..]), (3, &b"abc"[..]));
    }

    #[test]
    fn a_reply_that_overtakes_waits_for_its_turn() {
        let mut out = out_with(4);
        out.put(2, b"c");
        out.put(1, b"b");
        assert_eq!(&out.buf[..], b"", "nothing before the first reply");
        out.put(0, b"a");
        assert_eq!(&out.buf[..], b"abc");
        assert_eq!(out.head, 3);
        out.put(3, b"d");
        assert_eq!(&out.buf[..], b"abcd");
        assert!(out.parked.is_empty());
    }

    #[test]
    fn parked_replies_keep_their_order_and_their_arena_stays_small() {
        // Reply n+1 always overtakes reply n, so something is parked at every moment.
        let rounds = 2000u64;
        let mut out = out_with(2 * rounds + 4);
        let reply = |n: u64| format!("${:04}:{}\r\n", n, "x".repeat(1000)).into_bytes();
        out.put(1, &reply(1));
        for n in (0..2 * rounds).step_by(2) {
            out.put(n + 3, &reply(n + 3));
            out.put(n, &reply(n));
            assert!(!out.parked.is_empty());
            assert!(out.arena.len() <= 2 * ARENA_COMPACT, "arena grew to {}", out.arena.len());
        }
        let expected: Vec<u8> = (0..2 * rounds).flat_map(reply).collect();
        assert_eq!(&out.buf[..], &expected[..]);
    }

    fn batch(out: &mut Out, n: u64) {
        out.next += n;
        out.batch_ends.push_back(out.next);
    }

    #[test]
    fn replies_wait_for_the_rest_of_their_read_batch() {
        let mut out = Out::default();
        batch(&mut out, 3);
        out.put(0, b"a");
        out.put(2, b"c");
        assert!(!out.batch_done(), "reply 1 is still missing");
        out.put(1, b"b");
        assert!(out.batch_done());
        assert_eq!(&out.buf[..], b"abc");
    }

    #[test]
    fn a_finished_batch_is_written_while_the_next_one_is_incomplete() {
        let mut out = Out::default();
        batch(&mut out, 2);
        batch(&mut out, 2);
        out.put(0, b"a");
        out.put(1, b"b");
        out.put(2, b"c");
        assert!(out.batch_done(), "the first batch is complete");
        out.buf.clear();
        out.put(3, b"d");
        assert!(out.batch_done());
    }

    #[test]
    fn partial_replies_of_a_new_batch_are_held() {
        let mut out = Out::default();
        batch(&mut out, 1);
        out.put(0, b"a");
        assert!(out.batch_done());
        out.buf.clear();
        batch(&mut out, 2);
        out.put(1, b"b");
        assert!(!out.batch_done());
    }

    #[test]
    fn relayed_bytes_and_large_output_are_not_held() {
        let mut out = Out::default();
        batch(&mut out, 2);
        out.put(0, b"a");
        assert!(!out.batch_done());
        out.urgent = true;
        assert!(out.batch_done(), "messages go out as they come");
        out.urgent = false;
        out.buf.extend_from_slice(&vec![b'x'; HOLD_LIMIT]);
        assert!(out.batch_done(), "a large output does not wait");
    }

    #[test]
    fn a_hold_lasts_hold_time_from_its_start_and_stale_entries_do_not_count() {
        use std::collections::HashMap;
        let t0 = std::time::Instant::now();
        let tenths = |n: u64| t0 + std::time::Duration::from_micros(n * 100);
        let mut holds = Holds::default();
        // Each client's current mark, as the client itself keeps it.
        let mut marks: HashMap<&str, u64> = HashMap::new();
        marks.insert("a", holds.hold(tenths(0), "a"));
        marks.insert("b", holds.hold(tenths(3), "b"));
        assert_eq!(holds.deadline(|c, m| marks[c] == m), Some(t0 + HOLD_TIME));

        // "a" is answered in full and written: the timer moves on to "b", held later.
        marks.insert("a", 0);
        assert_eq!(holds.deadline(|c, m| marks[c] == m), Some(tenths(3) + HOLD_TIME));

        // "a" is held again with a new batch: its old entry must not make it due early.
        marks.insert("a", holds.hold(tenths(9), "a"));
        let mut due = Vec::new();
        holds.expire(tenths(13), |c, m| marks[c] == m, &mut due);
        assert_eq!(due, vec!["b"], "only b has waited HOLD_TIME");
        marks.insert("b", 0);
        holds.expire(tenths(18), |c, m| marks[c] == m, &mut due);
        assert_eq!(due, vec!["b"], "a's second hold began at 0.9 ms");
        assert_eq!(holds.deadline(|c, m| marks[c] == m), Some(tenths(9) + HOLD_TIME));
        holds.expire(tenths(19), |c, m| marks[c] == m, &mut due);
        assert_eq!(due, vec!["b", "a"]);
        marks.insert("a", 0);
        assert_eq!(holds.deadline(|c, m| marks[c] == m), None);
        assert!(holds.queue.is_empty());
    }

    #[test]
    fn replies_to_a_departed_client_are_dropped_but_counted() {
        let mut out = out_with(2);
        out.gone = true;
        out.put(1, b"b");
        out.put(0, b"a");
        assert!(out.buf.is_empty());
        assert_eq!(out.head, 2);
    }
}
