//! The client side of a connection as upstreams see it: where replies go, in request order.
//!
//! Requests of one client may be answered by an upstream (in order, per connection) or by the
//! proxy itself (AUTH, errors). A local answer given while upstream replies are outstanding is
//! held back until they have arrived, so the client always sees replies in the order of its
//! requests. Upstream tasks append replies here and write them to the socket once per batch.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::signal::Signal;

/// Output buffers larger than this are released once written, so that one large reply does not
/// pin memory for the rest of an idle connection's life.
const KEEP_OUT_CAPACITY: usize = 64 * 1024;

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
}

#[derive(Default)]
struct Out {
    buf: BytesMut,
    /// Requests handed to upstreams, and replies received for them.
    issued: u64,
    delivered: u64,
    /// Local replies to emit once `delivered` reaches the position they were given.
    deferred: VecDeque<(u64, Bytes)>,
    /// The client is gone: replies are dropped.
    gone: bool,
    /// The connection must close once what is buffered has been written.
    close_after_flush: bool,
    /// A write would have blocked; the session waits for writability.
    blocked: bool,
}

impl Client {
    pub fn new(stream: TcpStream) -> Client {
        Client {
            stream,
            out: RefCell::new(Out::default()),
            wake: Signal::new(),
            waiting_drain: Cell::new(false),
            flush_queued: Cell::new(false),
        }
    }

    /// Records that one request was handed to an upstream; a reply (or error) will follow.
    #[inline]
    pub fn issue(&self) {
        self.out.borrow_mut().issued += 1;
    }

    /// Requests handed upstream and not answered yet.
    #[inline]
    pub fn outstanding(&self) -> u64 {
        let out = self.out.borrow();
        out.issued - out.delivered
    }

    /// The reply to the oldest outstanding request.
    #[inline]
    pub fn deliver(&self, reply: &[u8]) {
        let mut out = self.out.borrow_mut();
        out.delivered += 1;
        if !out.gone {
            out.buf.extend_from_slice(reply);
            let delivered = out.delivered;
            while out.deferred.front().is_some_and(|(at, _)| *at <= delivered) {
                let (_, r) = out.deferred.pop_front().expect("checked");
                out.buf.extend_from_slice(&r);
            }
        }
        if out.issued == out.delivered && (self.waiting_drain.get() || out.close_after_flush) {
            self.waiting_drain.set(false);
            self.wake.notify();
        }
    }

    /// Bytes relayed as they come (a subscriber's or monitor's stream).
    pub fn relay(&self, bytes: &[u8]) {
        let mut out = self.out.borrow_mut();
        if !out.gone {
            out.buf.extend_from_slice(bytes);
        }
    }

    /// A reply made by the proxy, placed after every reply still outstanding.
    pub fn local(&self, reply: &[u8]) {
        let mut out = self.out.borrow_mut();
        if out.gone {
            return;
        }
        if out.issued == out.delivered {
            out.buf.extend_from_slice(reply);
        } else {
            let at = out.issued;
            out.deferred.push_back((at, Bytes::copy_from_slice(reply)));
        }
    }

    /// Writes buffered output. Returns `Ok(false)` when the socket is full (the session will
    /// wait for writability and call again).
    pub fn flush(&self) -> io::Result<bool> {
        let mut out = self.out.borrow_mut();
        if out.gone {
            return Ok(true);
        }
        while !out.buf.is_empty() {
            match self.stream.try_write(&out.buf) {
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
        if out.buf.capacity() > KEEP_OUT_CAPACITY {
            out.buf = BytesMut::new();
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
        !out.gone && (!out.buf.is_empty() || !out.deferred.is_empty())
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
        out.deferred.clear();
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
