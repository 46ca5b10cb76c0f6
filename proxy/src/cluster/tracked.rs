//! A tracking client's connections of its own to the cluster's primaries (CLIENT TRACKING in
//! CLUSTER mode). Each tracks the keys the client reads through it and sends the node's
//! invalidation pushes to the client. A redirection (MOVED, ASK, TRYAGAIN) is followed on
//! the client's own connection to the new node, so that the read stays tracked.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use bytes::Bytes;

use super::ClusterRouter;
use crate::client::Client;
use crate::config::ServiceRt;
use crate::upstream::{Ctx, InFlight, Kind, Redirect, Spec, Upstream};

pub struct Tracked {
    /// The client's CLIENT TRACKING ON command: run on connect by connections opened after the
    /// first ones (which carried it as the client's request).
    on: Bytes,
    conns: RefCell<Vec<Rc<Upstream>>>,
    client: Rc<Client>,
    svc: Arc<ServiceRt>,
    name: Option<Bytes>,
    ctx: Rc<Ctx>,
    max_depth: u32,
    router: Weak<ClusterRouter>,
    me: Weak<Tracked>,
}

impl Tracked {
    pub fn new(
        on: Bytes,
        client: Rc<Client>,
        svc: Arc<ServiceRt>,
        name: Option<Bytes>,
        ctx: Rc<Ctx>,
        max_depth: u32,
        router: &Rc<ClusterRouter>,
    ) -> Rc<Tracked> {
        Rc::new_cyclic(|me| Tracked {
            on,
            conns: RefCell::new(Vec::new()),
            client,
            svc,
            name,
            ctx,
            max_depth,
            router: Rc::downgrade(router),
            me: me.clone(),
        })
    }

    /// A new connection to `addr`; `with_tracking` runs the client's CLIENT TRACKING on
    /// connect (otherwise the caller sends it as a request).
    pub fn open(&self, addr: &str, with_tracking: bool) -> Rc<Upstream> {
        let spec = Spec {
            endpoint: Some(addr.to_owned()),
            client_name: self.name.clone(),
            router: Some(self.router.clone()),
            setup: with_tracking.then(|| self.on.clone()),
            ..Spec::new(self.svc.clone(), Kind::Dedicated, 3)
        };
        let up = Upstream::spawn(spec, &self.ctx, self.max_depth);
        up.make_tracked(self.client.clone(), self.me.clone());
        self.conns.borrow_mut().push(up.clone());
        up
    }

    /// The client's connection to `addr`, opened if the topology gained a primary since.
    pub fn conn(&self, addr: &str) -> Rc<Upstream> {
        if let Some(up) = self.conns.borrow().iter().find(|c| c.endpoint() == addr && c.is_usable()) {
            return up.clone();
        }
        self.open(addr, true)
    }

    pub fn first(&self) -> Option<Rc<Upstream>> {
        self.conns.borrow().first().cloned()
    }

    /// One of the connections was lost (and with it what that node tracked).
    pub fn lost(&self) -> bool {
        self.conns.borrow().iter().any(|c| !c.is_usable())
    }

    pub fn close(&self) {
        for c in self.conns.borrow_mut().drain(..) {
            c.close_private();
        }
    }

    /// Follows a redirection of a request sent on the connection to `from`, on the client's
    /// own connection to the node it names.
    pub fn redirect(&self, req: InFlight, redirect: Redirect, from: &str) {
        match self.router.upgrade() {
            Some(router) => router.redirect_via(req, redirect, from, |addr| self.conn(addr)),
            None => req.answer(b"-ERR respmesh: redirected by a node that is no longer configured\r\n"),
        }
    }
}
