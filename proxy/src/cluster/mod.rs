//! Redis Cluster behind one address.
//!
//! A [`ClusterRouter`] per worker and service knows the cluster's topology (from `CLUSTER
//! SLOTS`, refreshed periodically, at once after a MOVED, and after failures; a failed refresh
//! keeps the last good map) and holds one shared connection per node. The session asks it where
//! a slot lives; upstreams hand it MOVED and ASK replies, which it follows without the client
//! ever seeing them.

pub mod merge;
pub mod ring;
pub mod slot;
pub mod topology;
pub mod tracked;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::client::Client;
use crate::config::ServiceRt;
use crate::resp::reply::{ReplyScanner, Scan, is_error, simple_text};
use crate::resp::request::encode_command;
use crate::resp::value;
use crate::signal::Signal;
use crate::upstream::{Ctx, InFlight, Kind, Redirect, Spec, Upstream};
use respmesh_api::proxy::ReadPolicy;
use topology::Topology;

/// Periodic topology refresh.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// First wait before retrying a request that got TRYAGAIN; it doubles with each retry.
const TRYAGAIN_BACKOFF: Duration = Duration::from_millis(10);
/// Refreshes triggered by MOVED or failures are at least this far apart.
const REFRESH_MIN_GAP: Duration = Duration::from_millis(100);

pub struct ClusterRouter {
    /// Standalone endpoints sharded by consistent hashing, not a Redis Cluster.
    sharded: bool,
    svc: RefCell<Arc<ServiceRt>>,
    topology: RefCell<Option<Topology>>,
    /// Why the last refresh failed, while no topology is known.
    last_error: RefCell<Option<String>>,
    nodes: RefCell<HashMap<(String, u8), Rc<Upstream>>>,
    /// Per protocol (RESP2, RESP3): the connection to each shard's primary.
    by_shard: RefCell<[Vec<Option<Rc<Upstream>>>; 2]>,
    refresh: Signal,
    /// Clients waiting for the first topology.
    waiters: RefCell<Vec<Rc<Client>>>,
    retired: Cell<bool>,
    ctx: Rc<Ctx>,
    max_depth: u32,
    me: Weak<ClusterRouter>,
}

impl ClusterRouter {
    /// A router for `svc`: a Redis Cluster (topology learned and refreshed), or standalone
    /// endpoints sharded by consistent hashing (a fixed topology, see [`ring`]).
    pub fn spawn(svc: Arc<ServiceRt>, ctx: Rc<Ctx>, max_depth: u32) -> Rc<Self> {
        let sharded = svc.mode == respmesh_api::proxy::Mode::Proxy;
        let topology = sharded.then(|| ring::topology(&svc.endpoints));
        let router = Rc::new_cyclic(|me| ClusterRouter {
            sharded,
            svc: RefCell::new(svc),
            topology: RefCell::new(topology),
            last_error: RefCell::new(None),
            nodes: RefCell::new(HashMap::new()),
            by_shard: RefCell::new([Vec::new(), Vec::new()]),
            refresh: Signal::new(),
            waiters: RefCell::new(Vec::new()),
            retired: Cell::new(false),
            ctx,
            max_depth,
            me: me.clone(),
        });
        if !sharded {
            tokio::task::spawn_local(router.clone().refresh_loop());
        }
        router
    }

    /// The slot (cluster) or bucket (sharding) of a key.
    #[inline]
    pub fn slot_of(&self, key: &[u8]) -> u16 {
        if self.sharded { ring::key_bucket(key, self.svc.borrow().hashtags) } else { slot::key_slot(key) }
    }

    pub fn service(&self) -> Arc<ServiceRt> {
        self.svc.borrow().clone()
    }

    pub fn update_service(&self, svc: Arc<ServiceRt>) {
        for up in self.nodes.borrow().values() {
            up.update_service(svc.clone(), self.max_depth);
        }
        *self.svc.borrow_mut() = svc;
    }

    /// Stops refreshing and closes the node connections once idle.
    pub fn retire(&self) {
        self.retired.set(true);
        self.refresh.notify();
        for up in self.nodes.borrow().values() {
            up.retire();
        }
    }

    /// The topology is known.
    pub fn ready(&self) -> bool {
        self.topology.borrow().is_some()
    }

    /// Why no topology is known (after a first refresh failed).
    pub fn unavailable(&self) -> Option<String> {
        if self.ready() { None } else { self.last_error.borrow().clone() }
    }

    /// Wakes `client` once the first topology arrives (or its refresh fails).
    pub fn wait_ready(&self, client: &Rc<Client>) {
        self.waiters.borrow_mut().push(client.clone());
    }

    /// The primary serving `slot`.
    pub fn primary(&self, slot: u16) -> Option<String> {
        self.topology.borrow().as_ref()?.primary(slot).map(str::to_owned)
    }

    /// The shared connection to the primary serving `slot`, without allocating: connections are
    /// cached per shard and protocol until the topology changes. (Shared connections never
    /// die, they reconnect: a cached one is always usable.)
    #[inline]
    pub fn slot_node(&self, slot: u16, proto: u8) -> Option<Rc<Upstream>> {
        let shard = {
            let topo = self.topology.borrow();
            let shard = topo.as_ref()?.slots.get(slot)?;
            if shard == topology::UNASSIGNED {
                return None;
            }
            shard as usize
        };
        let p = usize::from(proto >= 3);
        if let Some(Some(up)) = self.by_shard.borrow()[p].get(shard) {
            debug_assert!(up.is_usable(), "a shared node connection died");
            return Some(up.clone());
        }
        let addr = self.primary(slot)?;
        let up = self.node(&addr, proto);
        let mut cache = self.by_shard.borrow_mut();
        if cache[p].len() <= shard {
            cache[p].resize(shard + 1, None);
        }
        cache[p][shard] = Some(up.clone());
        Some(up)
    }

    /// Every node, with its primary's address for a replica.
    pub fn nodes_with_primary(&self) -> Vec<(String, Option<String>)> {
        let topo = self.topology.borrow();
        let Some(t) = topo.as_ref() else { return Vec::new() };
        let mut out = Vec::new();
        for s in &t.shards {
            out.push((t.nodes[s.primary].clone(), None));
            for &r in &s.replicas {
                out.push((t.nodes[r].clone(), Some(t.nodes[s.primary].clone())));
            }
        }
        out
    }

    /// A key of the proxy's own that the primary `addr` serves (`__respmesh__:wait:{n}`).
    pub fn key_on(&self, addr: &str) -> Option<Vec<u8>> {
        (0..100_000u32)
            .map(|n| format!("__respmesh__:wait:{{{n}}}"))
            .find(|k| {
                let slot = self.slot_of(k.as_bytes());
                self.primary(slot).as_deref() == Some(addr)
            })
            .map(String::into_bytes)
    }

    /// Every primary.
    pub fn primaries(&self) -> Vec<String> {
        self.topology.borrow().as_ref().map(|t| t.primaries().map(str::to_owned).collect()).unwrap_or_default()
    }

    /// The shared connection to a node.
    pub fn node(&self, addr: &str, proto: u8) -> Rc<Upstream> {
        self.node_as(addr, proto, false)
    }

    /// The shared connection to a node, in READONLY mode for `readonly` (replicas).
    fn node_as(&self, addr: &str, proto: u8, readonly: bool) -> Rc<Upstream> {
        let key = (addr.to_owned(), proto + if readonly { 10 } else { 0 });
        if let Some(up) = self.nodes.borrow().get(&key)
            && up.is_usable()
        {
            return up.clone();
        }
        let spec = Spec {
            endpoint: Some(addr.to_owned()),
            router: Some(self.me.clone()),
            readonly,
            ..Spec::new(self.service(), Kind::Shared, proto)
        };
        let up = Upstream::spawn(spec, &self.ctx, self.max_depth);
        self.nodes.borrow_mut().insert(key, up.clone());
        up
    }

    /// Where a read-only command for `slot` goes under the service's read policy; `None`
    /// means the primary (the caller's fast path).
    pub fn read_node(&self, slot: u16, proto: u8) -> Option<Rc<Upstream>> {
        let policy = self.svc.borrow().read_policy;
        if policy == ReadPolicy::Master {
            return None;
        }
        let (primary, replicas) = {
            let topo = self.topology.borrow();
            let t = topo.as_ref()?;
            let shard = t.shards.get(t.slots.get(slot)? as usize)?;
            let replicas: Vec<String> = shard.replicas.iter().map(|&r| t.nodes[r].clone()).collect();
            (t.nodes[shard.primary].clone(), replicas)
        };
        let replica = || {
            let healthy: Vec<Rc<Upstream>> =
                replicas.iter().map(|r| self.node_as(r, proto, true)).filter(|u| u.is_available()).collect();
            (!healthy.is_empty()).then(|| healthy[fastrand::usize(..healthy.len())].clone())
        };
        match policy {
            ReadPolicy::Master => None,
            ReadPolicy::Replica => {
                let all: Vec<&String> = replicas.iter().collect();
                let pick = all.get(fastrand::usize(..all.len().max(1)))?;
                Some(self.node_as(pick, proto, true))
            }
            ReadPolicy::PreferReplica => replica(),
            ReadPolicy::PreferMaster => {
                if self.node(&primary, proto).is_available() {
                    None
                } else {
                    replica()
                }
            }
            ReadPolicy::Any => {
                let n = replicas.len() + 1;
                let i = fastrand::usize(..n);
                if i == 0 { None } else { Some(self.node_as(&replicas[i - 1], proto, true)) }
            }
        }
    }

    /// Follows a MOVED or ASK for a request, or retries it after a TRYAGAIN (with backoff).
    pub fn redirect(&self, req: InFlight, redirect: Redirect, proto: u8, from: &str) {
        self.redirect_via(req, redirect, from, |addr| self.node(addr, proto));
    }

    /// Follows a redirection on the connection `node` gives for an address (a tracking
    /// client's follow on its own connections).
    pub fn redirect_via(&self, mut req: InFlight, redirect: Redirect, from: &str, node: impl Fn(&str) -> Rc<Upstream>) {
        req.redirects += 1;
        let Some(frame) = req.frame.take() else {
            req.answer(b"-ERR respmesh: cannot follow a redirection for this request\r\n");
            return;
        };
        match redirect {
            Redirect::Moved { slot, addr } => {
                self.moved(slot, &addr);
                node(&addr).send_request(req, &frame, false);
            }
            Redirect::Ask { addr, .. } => node(&addr).send_request(req, &frame, true),
            Redirect::TryAgain => {
                let node = node(from);
                let delay = TRYAGAIN_BACKOFF * (1 << req.redirects.min(5));
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(delay).await;
                    node.send_request(req, &frame, false);
                });
            }
        }
    }

    /// A MOVED reply: the slot is `addr`'s now; the whole map is refreshed soon.
    pub fn moved(&self, slot: u16, addr: &str) {
        debug!(slot, to = %addr, "MOVED: updating the slot map and refreshing");
        if let Some(t) = self.topology.borrow_mut().as_mut() {
            t.moved(slot, addr);
        }
        *self.by_shard.borrow_mut() = [Vec::new(), Vec::new()];
        self.refresh.notify();
    }

    /// Asks for a topology refresh soon (after MOVED, a connection failure, ...).
    pub fn request_refresh(&self) {
        self.refresh.notify();
    }

    async fn refresh_loop(self: Rc<Self>) {
        let mut last = Instant::now() - REFRESH_MIN_GAP;
        loop {
            if self.retired.get() {
                return;
            }
            let since = last.elapsed();
            if since < REFRESH_MIN_GAP {
                tokio::time::sleep(REFRESH_MIN_GAP - since).await;
            }
            last = Instant::now();
            match self.fetch().await {
                Ok((topology, from)) => {
                    let changed = self.topology.borrow().as_ref() != Some(&topology);
                    if changed {
                        info!(service = %self.service().host, from = %from, primaries = topology.shards.len(),
                            nodes = topology.nodes.len(), "cluster topology updated");
                    }
                    if changed {
                        *self.by_shard.borrow_mut() = [Vec::new(), Vec::new()];
                    }
                    *self.topology.borrow_mut() = Some(topology);
                    *self.last_error.borrow_mut() = None;
                }
                Err(why) => {
                    warn!(service = %self.service().host, reason = %why, "cannot refresh the cluster topology; keeping the last one");
                    *self.last_error.borrow_mut() = Some(why);
                }
            }
            for c in self.waiters.borrow_mut().drain(..) {
                c.wake.notify();
            }
            let interval = self.service().refresh_interval;
            tokio::select! {
                _ = self.refresh.wait() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Asks the known nodes (primaries first), then the configured seeds, for `CLUSTER SLOTS`.
    async fn fetch(&self) -> Result<(Topology, String), String> {
        let svc = self.service();
        let mut candidates: Vec<String> = Vec::new();
        if let Some(t) = self.topology.borrow().as_ref() {
            candidates.extend(t.primaries().map(str::to_owned));
            candidates.extend(t.nodes.iter().cloned());
        }
        candidates.extend(svc.endpoints.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|c| seen.insert(c.clone()));
        let mut errors = Vec::new();
        for addr in candidates {
            match tokio::time::timeout(svc.connect_timeout * 2, cluster_slots(&svc, &addr, self.max_depth)).await {
                Ok(Ok(t)) => return Ok((t, addr)),
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: no answer in time")),
            }
        }
        Err(errors.join("; "))
    }
}

/// One `CLUSTER SLOTS` round trip on a connection of its own.
async fn cluster_slots(svc: &ServiceRt, addr: &str, max_depth: u32) -> Result<Topology, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut req = BytesMut::new();
    let mut expect = 1;
    if let Some(auth) = &svc.auth {
        match &auth.username {
            Some(user) => encode_command(&mut req, &[&b"AUTH"[..], user, &auth.password.0]),
            None => encode_command(&mut req, &[&b"AUTH"[..], &auth.password.0]),
        }
        expect += 1;
    }
    encode_command(&mut req, &[&b"CLUSTER"[..], b"SLOTS"]);
    stream.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut replies = Vec::new();
    while replies.len() < expect {
        match ReplyScanner::new(max_depth).scan(&buf) {
            Ok(Scan::Complete { len }) => replies.push(buf.split_to(len)),
            Ok(Scan::Incomplete { .. }) => {
                if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed".into());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    for r in &replies {
        if is_error(r) {
            return Err(String::from_utf8_lossy(simple_text(r)).into_owned());
        }
    }
    let v = value::decode(replies.last().expect("read"), max_depth).map_err(|e| e.to_string())?;
    Topology::from_cluster_slots(&v, addr)
}
