//! A wake-up signal between tasks of one thread.
//!
//! `tokio::sync::Notify` is built for threads: a mutex-guarded waiter list, registered and
//! removed on every wait. Tasks on a worker's single thread need only a flag and a waker,
//! which this is. Like `Notify::notify_one`, a signal given while nobody waits is kept for the
//! next wait.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Wakes the waiting task, or the next one to wait.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Completes once the signal has been given since the last wait completed.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            let mut slot = self.waker.borrow_mut();
            match slot.as_ref() {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_signal_before_the_wait_is_kept_and_one_wait_consumes_it() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = Signal::new();
            s.notify();
            s.wait().await;
            let waited = tokio::time::timeout(std::time::Duration::from_millis(20), s.wait()).await;
            assert!(waited.is_err(), "the signal was consumed");
        });
    }

    #[test]
    fn a_waiting_task_is_woken() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let s = Rc::new(Signal::new());
            let s2 = s.clone();
            let waiter = tokio::task::spawn_local(async move { s2.wait().await });
            tokio::task::yield_now().await;
            s.notify();
            tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.unwrap().unwrap();
        });
    }
}
