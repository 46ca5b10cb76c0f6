//! Worker threads. Each runs a single-threaded tokio runtime with its own listeners (bound with
//! SO_REUSEPORT so the kernel spreads connections), its own client sessions and its own
//! upstream connections: nothing on the request path is shared between threads, so nothing
//! needs a lock or an atomic reference count.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::client::{Client, Flusher};
use crate::cluster::ClusterRouter;
use crate::config::{self, ServiceRt};
use crate::metrics::{Metrics, WorkerStats};
use crate::session::Session;
use crate::upstream::{Ctx, Kind, Spec, Upstream};

/// Idle dedicated connections kept per service and protocol for later transactions and
/// blocking commands.
const POOL_SIZE: usize = 4;

/// How long PUBLISH may wait for a new subscriber's connection (see [`Worker::subscribing`]).
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// A new subscriber connection, and when it was opened.
type Subscribing = (Weak<Upstream>, Instant);

/// Upstream connections are kept per service host and protocol version.
type UpstreamKey = (String, u8);
/// Idle dedicated connections: by service, endpoint and protocol version.
type PoolKey = (String, String, u8);

pub struct Worker {
    pub id: usize,
    pub config: Arc<config::Shared>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<WorkerStats>,
    /// What the worker's upstreams share.
    pub ctx: Rc<Ctx>,
    /// Shutting down: sessions answer what they were sent, then close.
    pub draining: Cell<bool>,
    /// Woken when CLIENT KILL (from any worker) marks one of this worker's clients.
    pub kills: Arc<Notify>,
    /// Open client connections, to wake them when draining starts.
    clients: RefCell<HashMap<u64, Weak<Client>>>,
    shared: RefCell<HashMap<UpstreamKey, Rc<Upstream>>>,
    routers: RefCell<HashMap<String, Rc<ClusterRouter>>>,
    pool: RefCell<HashMap<PoolKey, Vec<Rc<Upstream>>>>,
    sessions: Cell<usize>,
    sessions_idle: Notify,
    /// New subscriber connections that Redis has not answered yet; see [`Worker::subscribing`].
    subscribing: RefCell<Vec<Subscribing>>,
}

impl Worker {
    /// The worker's shared connection for a service and protocol version, replaced when the
    /// service's endpoints or credentials changed.
    pub fn shared_upstream(&self, svc: &Arc<ServiceRt>, proto: u8, max_depth: u32) -> Rc<Upstream> {
        let key = (svc.host.clone(), proto);
        let mut shared = self.shared.borrow_mut();
        if let Some(up) = shared.get(&key) {
            let current = up.service();
            if Arc::ptr_eq(&current, svc) || current.same_upstream(svc) {
                up.update_service(svc.clone(), max_depth);
                return up.clone();
            }
            info!(service = %svc.host, "service endpoints or credentials changed: opening a new upstream connection");
            up.retire();
        }
        let up = Upstream::spawn(Spec::new(svc.clone(), Kind::Shared, proto), &self.ctx, max_depth);
        shared.insert(key, up.clone());
        up
    }

    /// The worker's router for a CLUSTER service, replaced when the service's seeds or
    /// credentials changed.
    pub fn cluster_router(&self, svc: &Arc<ServiceRt>, max_depth: u32) -> Rc<ClusterRouter> {
        let mut routers = self.routers.borrow_mut();
        if let Some(r) = routers.get(&svc.host) {
            if r.service().same_upstream(svc) {
                r.update_service(svc.clone());
                return r.clone();
            }
            info!(service = %svc.host, "cluster seeds or credentials changed: rediscovering the topology");
            r.retire();
        }
        let r = ClusterRouter::spawn(svc.clone(), self.ctx.clone(), max_depth);
        routers.insert(svc.host.clone(), r.clone());
        r
    }

    /// A new dedicated connection to `endpoint` (the service's first if `None`), named `name`.
    pub fn new_dedicated(
        &self,
        svc: &Arc<ServiceRt>,
        endpoint: Option<&str>,
        proto: u8,
        name: Option<Bytes>,
        max_depth: u32,
    ) -> Rc<Upstream> {
        let spec = Spec {
            endpoint: endpoint.map(str::to_owned),
            client_name: name,
            ..Spec::new(svc.clone(), Kind::Dedicated, proto)
        };
        Upstream::spawn(spec, &self.ctx, max_depth)
    }

    /// Notes a new subscriber connection, until Redis confirms its first subscription.
    pub fn note_subscribing(&self, up: &Rc<Upstream>) {
        if !up.awaits_first_reply() {
            return;
        }
        let mut list = self.subscribing.borrow_mut();
        list.retain(|(w, since)| since.elapsed() < PUBLISH_WAIT && w.upgrade().is_some_and(|u| u.awaits_first_reply()));
        list.push((Rc::downgrade(up), Instant::now()));
        // Whatever happens to the connection, who waits for it goes on after PUBLISH_WAIT.
        let up = Rc::downgrade(up);
        tokio::task::spawn_local(async move {
            tokio::time::sleep(PUBLISH_WAIT).await;
            if let Some(up) = up.upgrade() {
                up.first_reply();
            }
        });
    }

    /// A new subscriber connection of this worker that Redis has not answered yet, if any.
    /// PUBLISH waits for it (at most [`PUBLISH_WAIT`]): a client that sent SUBSCRIBE and then,
    /// on another connection, PUBLISH gets its own message, as from Redis, although its
    /// subscription needed a new upstream connection.
    pub fn subscribing(&self) -> Option<Rc<Upstream>> {
        let mut list = self.subscribing.borrow_mut();
        if list.is_empty() {
            return None;
        }
        list.retain(|(w, since)| since.elapsed() < PUBLISH_WAIT && w.upgrade().is_some_and(|u| u.awaits_first_reply()));
        list.first().and_then(|(w, _)| w.upgrade())
    }

    /// A dedicated connection for a transaction, a blocking command or a WAIT, to `endpoint`
    /// (the service's first if `None`), from the pool if one is idle there.
    pub fn take_dedicated(
        &self,
        svc: &Arc<ServiceRt>,
        endpoint: Option<&str>,
        proto: u8,
        max_depth: u32,
    ) -> Rc<Upstream> {
        let endpoint = endpoint.unwrap_or_else(|| svc.endpoint()).to_owned();
        let mut pool = self.pool.borrow_mut();
        if let Some(idle) = pool.get_mut(&(svc.host.clone(), endpoint.clone(), proto)) {
            while let Some(up) = idle.pop() {
                if up.is_ready() && up.service().same_upstream(svc) {
                    up.update_service(svc.clone(), max_depth);
                    return up;
                }
                up.retire();
            }
        }
        drop(pool);
        self.new_dedicated(svc, Some(&endpoint), proto, None, max_depth)
    }

    /// Takes back a dedicated connection whose state has ended.
    pub fn give_back(&self, up: Rc<Upstream>) {
        if up.is_private() {
            return;
        }
        if !up.is_ready() || up.is_raw() {
            up.retire();
            return;
        }
        let svc = up.service();
        let mut pool = self.pool.borrow_mut();
        let idle = pool.entry((svc.host.clone(), up.endpoint().to_owned(), up.proto())).or_default();
        if idle.len() < POOL_SIZE {
            idle.push(up);
        } else {
            up.retire();
        }
    }

    fn session_started(&self, client: &Rc<Client>) -> u64 {
        let id = client.id;
        self.clients.borrow_mut().insert(id, Rc::downgrade(client));
        self.sessions.set(self.sessions.get() + 1);
        id
    }

    fn session_ended(&self, id: u64) {
        self.clients.borrow_mut().remove(&id);
        self.sessions.set(self.sessions.get() - 1);
        if self.sessions.get() == 0 {
            self.sessions_idle.notify_waiters();
        }
    }
}

/// Everything a worker thread needs to start.
pub struct WorkerSetup {
    pub id: usize,
    pub config: Arc<config::Shared>,
    pub metrics: Arc<Metrics>,
    pub generations: watch::Receiver<u64>,
    pub shutdown: watch::Receiver<bool>,
    pub drain_timeout: Duration,
    /// Busy-poll window (zero: off).
    pub busy_poll: Duration,
}

/// Starts a worker thread; returns once its listeners are bound (or failed to bind).
pub fn spawn(setup: WorkerSetup) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Vec<SocketAddr>, String>>();
    let id = setup.id;
    let handle = std::thread::Builder::new()
        .name(format!("respmesh-worker-{id}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the runtime: {e}")));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, worker_main(setup, ready_tx));
        })
        .context("cannot start a worker thread")?;
    match ready_rx.recv() {
        Ok(Ok(_)) => Ok(handle),
        Ok(Err(e)) => anyhow::bail!("{e}"),
        Err(_) => anyhow::bail!("worker {id} stopped while starting"),
    }
}

struct Bound {
    service: Rc<RefCell<String>>,
    task: JoinHandle<()>,
}

async fn worker_main(setup: WorkerSetup, ready: mpsc::Sender<Result<Vec<SocketAddr>, String>>) {
    let WorkerSetup { id, config, metrics, mut generations, mut shutdown, drain_timeout, busy_poll } = setup;
    let stats = metrics.worker();
    let ctx = Rc::new(Ctx { stats: stats.clone(), metrics: metrics.clone(), flusher: Flusher::spawn() });
    let worker = Rc::new(Worker {
        id,
        stats,
        ctx,
        config,
        metrics,
        draining: Cell::new(false),
        clients: RefCell::new(HashMap::new()),
        shared: RefCell::new(HashMap::new()),
        routers: RefCell::new(HashMap::new()),
        pool: RefCell::new(HashMap::new()),
        sessions: Cell::new(0),
        sessions_idle: Notify::new(),
        subscribing: RefCell::new(Vec::new()),
        kills: Arc::new(Notify::new()),
    });
    tokio::task::spawn_local(close_killed(worker.clone()));
    if !busy_poll.is_zero() {
        tokio::task::spawn_local(crate::busy_poll::run(busy_poll, worker.stats.clone()));
    }
    let mut bound: HashMap<SocketAddr, Bound> = HashMap::new();
    let first = reconcile_listeners(&worker, &mut bound);
    let failed = first.is_err();
    let _ = ready.send(first);
    if failed {
        return;
    }
    loop {
        tokio::select! {
            changed = generations.changed() => {
                if changed.is_err() {
                    break;
                }
                if let Err(e) = reconcile_listeners(&worker, &mut bound) {
                    error!(worker = id, error = %e, "cannot apply the new listeners; the others keep serving");
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Stop accepting, then give clients time to receive what they are owed.
    for (_, b) in bound.drain() {
        b.task.abort();
    }
    worker.draining.set(true);
    let open: Vec<Rc<Client>> = worker.clients.borrow().values().filter_map(Weak::upgrade).collect();
    for client in open {
        client.wake.notify();
    }
    if worker.sessions.get() > 0 {
        let idle = worker.sessions_idle.notified();
        if tokio::time::timeout(drain_timeout, idle).await.is_err() {
            warn!(worker = id, open = worker.sessions.get(), "drain timeout: closing the remaining client connections");
        }
    }
}

enum Captured {
    Service(String),
    Relay(SocketAddr),
    Refuse,
}

/// Where a redirected connection was going, and so which service (if any) serves it.
fn captured_service(stream: &tokio::net::TcpStream, worker: &Worker) -> Captured {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok();
    let original = match local {
        Some(SocketAddr::V6(_)) => sock.original_dst_v6(),
        _ => sock.original_dst_v4(),
    };
    let dst = match original.map(|a| a.as_socket()) {
        Ok(Some(dst)) => dst,
        Ok(None) | Err(_) => {
            warn!(peer = ?stream.peer_addr().ok(), "a connection on the capture port has no original destination; closed");
            return Captured::Refuse;
        }
    };
    // A direct connection to the capture port (not redirected) would relay to itself.
    if Some(dst) == local {
        debug!("a direct connection to the capture port; closed");
        return Captured::Refuse;
    }
    match worker.config.load().by_address.get(&dst) {
        Some(host) => Captured::Service(host.clone()),
        None => Captured::Relay(dst),
    }
}

/// Relays a connection to a destination that is no Redis service, byte for byte.
async fn relay(mut client: tokio::net::TcpStream, dst: SocketAddr) {
    match tokio::net::TcpStream::connect(dst).await {
        Ok(mut upstream) => {
            let _ = upstream.set_nodelay(true);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                debug!(destination = %dst, error = %e, "relay ended");
            }
        }
        Err(e) => debug!(destination = %dst, error = %e, "relay: cannot connect; closing the client"),
    }
}

/// Binds new listeners, drops removed ones, and retargets ones whose service changed.
fn reconcile_listeners(worker: &Rc<Worker>, bound: &mut HashMap<SocketAddr, Bound>) -> Result<Vec<SocketAddr>, String> {
    let rt = worker.config.load();
    let mut problems = Vec::new();
    let wanted: HashMap<SocketAddr, &String> = rt.listeners.iter().map(|(a, s)| (*a, s)).collect();
    bound.retain(|addr, b| {
        let keep = wanted.contains_key(addr);
        if !keep {
            info!(worker = worker.id, address = %addr, "listener removed");
            b.task.abort();
        }
        keep
    });
    let mut addrs = Vec::new();
    for (addr, service) in &rt.listeners {
        if let Some(b) = bound.get(addr) {
            if *b.service.borrow() != **service {
                *b.service.borrow_mut() = (*service).clone();
            }
            continue;
        }
        match bind(*addr) {
            Ok(listener) => {
                let local = listener.local_addr().unwrap_or(*addr);
                addrs.push(local);
                if service.as_str() == config::CAPTURE {
                    info!(worker = worker.id, address = %local, "capturing redirected connections");
                } else {
                    info!(worker = worker.id, address = %local, service = %service, "listening");
                }
                let service = Rc::new(RefCell::new((*service).clone()));
                let task = tokio::task::spawn_local(accept_loop(listener, service.clone(), worker.clone()));
                bound.insert(*addr, Bound { service, task });
            }
            // A pod without IPv6 has no [::1]: its capture listener is simply not needed.
            Err(e) if service.as_str() == config::CAPTURE && addr.is_ipv6() => {
                warn!(worker = worker.id, address = %addr, error = %e, "no IPv6 capture (the pod has no IPv6 loopback)")
            }
            Err(e) => problems.push(format!("cannot listen on {addr}: {e}")),
        }
    }
    if problems.is_empty() { Ok(addrs) } else { Err(problems.join("; ")) }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    TcpListener::from_std(sock.into())
}

/// Closes the clients of this worker that CLIENT KILL marked.
async fn close_killed(worker: Rc<Worker>) {
    loop {
        worker.kills.notified().await;
        let clients: Vec<Rc<Client>> = worker.clients.borrow().values().filter_map(Weak::upgrade).collect();
        for c in clients {
            if c.entry.get().is_some_and(|e| e.is_killed()) {
                c.set_gone();
                c.wake.notify();
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, service: Rc<RefCell<String>>, worker: Rc<Worker>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut host = service.borrow().clone();
        if host == config::CAPTURE {
            match captured_service(&stream, &worker) {
                Captured::Service(h) => host = h,
                Captured::Relay(dst) => {
                    worker.metrics.relayed_connections.inc();
                    tokio::task::spawn_local(relay(stream, dst));
                    continue;
                }
                Captured::Refuse => continue,
            }
        }
        let client = Rc::new(Client::new(stream));
        let Some(session) = Session::new(client.clone(), worker.clone(), host) else {
            continue;
        };
        worker.metrics.client_connections.inc();
        worker.metrics.client_connections_total.inc();
        let id = worker.session_started(&client);
        let w = worker.clone();
        tokio::task::spawn_local(async move {
            session.run().await;
            w.metrics.client_connections.dec();
            w.session_ended(id);
        });
    }
}
