//! Busy polling (`--busy-poll`): after any read from a socket, a worker keeps polling epoll
//! (with a zero timeout) for the configured window instead of going to sleep.
//!
//! Why: every request through a proxy is one more hop, and with sleeping threads each hop costs
//! two wake-ups (the proxy woken by the request, then by Redis's reply). On virtual machines a
//! wake-up of a sleeping thread on an idle CPU costs tens of microseconds. A worker that is still
//! polling when the next event arrives takes it without being woken. The price is CPU: while
//! traffic keeps arriving within the window, the worker thread uses a whole core. Off by default.
//!
//! How: one task per worker. Reads mark the worker busy (a flag, no clock read on the hot
//! path); the task then yields to the runtime in a loop, and a current-thread tokio runtime
//! with only yielded tasks left polls epoll without blocking. Once the window passes with no
//! read, the task parks and the worker sleeps in epoll as usual.

use std::cell::Cell;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::metrics::WorkerStats;

/// Under steady traffic the poller never parks; its time is counted at least this often.
const COUNT_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    /// Whether this thread's worker busy-polls at all (read on every socket read).
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    /// A read happened since the poller last looked.
    static READ_SEEN: Cell<bool> = const { Cell::new(false) };
    /// The parked poller, to wake on the next read.
    static PARKED: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// Called after every read that produced data.
#[inline]
pub fn note_read() {
    if ENABLED.get() {
        READ_SEEN.set(true);
        if let Some(waker) = PARKED.take() {
            waker.wake();
        }
    }
}

/// The worker's poller: runs for the worker's lifetime (spawn it on the worker's `LocalSet`).
pub async fn run(window: Duration, stats: Arc<WorkerStats>) {
    ENABLED.set(true);
    loop {
        // Parked until a read happens.
        poll_fn(|cx| {
            if READ_SEEN.replace(false) {
                return Poll::Ready(());
            }
            PARKED.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        let mut counted_to = Instant::now();
        let mut last_read = counted_to;
        loop {
            tokio::task::yield_now().await;
            let now = Instant::now();
            let idle = !READ_SEEN.replace(false);
            if !idle {
                last_read = now;
            }
            let done = idle && now.duration_since(last_read) >= window;
            if done || now.duration_since(counted_to) >= COUNT_EVERY {
                stats.add_busy_poll(now.duration_since(counted_to));
                counted_to = now;
            }
            if done {
                break;
            }
        }
    }
}
