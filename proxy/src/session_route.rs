//! The session's key-prefix routing: a service with `routes` sends each command to the service
//! of the route its keys match (longest prefix first, else the default route), optionally
//! without the prefix, and mirrors it to the route's mirrors.
//!
//! One level of routing: a route's service serves the command with its own endpoints, mode,
//! credentials and faults, not its own routes. Connection state (a transaction, a
//! subscription) stays where it started.

use std::sync::Arc;

use bytes::BytesMut;

use crate::cluster::merge::Combine;
use crate::command::keys::key_positions;
use crate::command::{CommandId, Special, flags};
use crate::config::{RouteRt, ServiceRt};
use crate::resp::request::{Parsed, RequestParser, Spans, args, encode_command};
use crate::session::{Session, Step, answered_by_proxy};

/// Mirrored requests queued on one mirror connection beyond which copies are dropped.
const MIRROR_QUEUE_LIMIT: usize = 10_000;

impl Session {
    /// `None` leaves the command to the session's own service (commands the proxy answers).
    pub(crate) fn routed(
        &mut self,
        frame: &[u8],
        argc: usize,
        spans: Spans,
        cmd: CommandId,
        special: Special,
    ) -> Option<Step> {
        if answered_by_proxy(frame, argc, spans, special) {
            return None;
        }
        let svc = self.svc.clone();
        let all: Vec<&[u8]> = args(frame).collect();
        let positions = match key_positions(cmd, &all) {
            Ok(p) => p,
            Err(why) => return Some(self.reply_local(cmd, format!("-ERR respmesh: {why}\r\n").as_bytes())),
        };
        // The route of every key; a keyless command takes the default route.
        let pick = |key: &[u8]| svc.routes.iter().position(|r| r.matches(key));
        let route = match positions.first() {
            None => svc.routes.iter().position(|r| r.prefix.is_none()),
            Some(&p) => pick(all[p]),
        };
        let Some(route) = route else {
            let reply = match positions.first() {
                Some(&p) => format!(
                    "-ERR respmesh: no route of service {} matches key '{}' and there is no default route\r\n",
                    svc.host,
                    String::from_utf8_lossy(all[p]).replace(['\r', '\n'], " ")
                ),
                None => format!("-ERR respmesh: service {} has no default route for keyless commands\r\n", svc.host),
            };
            return Some(self.reply_local(cmd, reply.as_bytes()));
        };
        if positions.iter().any(|&p| pick(all[p]) != Some(route)) {
            return Some(self.split_across_routes(&all, &positions, cmd, special));
        }
        let r: &RouteRt = &svc.routes[route];
        let Some(target) = self.worker.config.load().services.get(&r.target).cloned() else {
            return Some(self.reply_local(cmd, &crate::replies::service_gone(&r.target)));
        };
        // Without the prefix, if the route says so: the command is rewritten.
        let rewritten = match (&r.prefix, r.remove_prefix) {
            (Some(prefix), true) if !positions.is_empty() => {
                let new_args: Vec<&[u8]> = all
                    .iter()
                    .enumerate()
                    .map(|(i, a)| if positions.contains(&i) { &a[prefix.len()..] } else { a })
                    .collect();
                let mut buf = BytesMut::new();
                encode_command(&mut buf, &new_args);
                Some(buf)
            }
            _ => None,
        };
        let frame = rewritten.as_deref().unwrap_or(frame);
        let spans = match &rewritten {
            Some(buf) => {
                let mut p = RequestParser::new(self.limits);
                match p.parse(buf, true) {
                    Ok(Parsed::Multibulk { .. }) => p.spans(),
                    _ => spans,
                }
            }
            None => spans,
        };
        let step = self.on_service(target, |s| s.dispatch(frame, argc, spans, cmd, special));
        if matches!(step, Step::Done) {
            // Not when the command waits to be handled again (then it is counted once, later).
            self.worker.metrics.route(&svc.host, &r.target);
        }
        if matches!(step, Step::Done) && !r.mirrors.is_empty() {
            self.mirror(r, frame, cmd, positions.first().map(|&p| all[p]));
        }
        Some(step)
    }

    /// A multi-key command whose keys fall under several routes: one part per route, each
    /// served by its route's service, and one reply combined as one Redis would give it (MGET
    /// values in key order, DEL/EXISTS/UNLINK/TOUCH counts added, MSET's OK). Other commands
    /// get a CROSSSLOT-style error.
    fn split_across_routes(&mut self, all: &[&[u8]], positions: &[usize], cmd: CommandId, special: Special) -> Step {
        const CROSSROUTE: &[u8] = b"-CROSSSLOT Keys in request don't belong to the same route\r\n";
        let name = cmd.info().map_or("", |i| i.name);
        let combine = match name {
            "MGET" => Combine::Mget { keys: positions.len(), positions: Vec::new() },
            "MSET" => Combine::Same,
            "DEL" | "EXISTS" | "UNLINK" | "TOUCH" => Combine::Sum,
            _ => return self.reply_local(cmd, CROSSROUTE),
        };
        if name == "MSET" && all.len().is_multiple_of(2) {
            let mut r = BytesMut::new();
            crate::replies::wrong_arity(&mut r, "mset");
            return self.reply_local(cmd, &r);
        }
        // A transaction or a dedicated connection lives on one service.
        if self.pinned.is_some() || self.in_multi {
            return self.reply_local(cmd, CROSSROUTE);
        }
        let svc = self.svc.clone();
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (j, &p) in positions.iter().enumerate() {
            let Some(r) = svc.routes.iter().position(|r| r.matches(all[p])) else {
                let reply = format!(
                    "-ERR respmesh: no route of service {} matches key '{}' and there is no default route\r\n",
                    svc.host,
                    String::from_utf8_lossy(all[p]).replace(['\r', '\n'], " ")
                );
                return self.reply_local(cmd, reply.as_bytes());
            };
            match groups.iter_mut().find(|(g, _)| *g == r) {
                Some((_, js)) => js.push(j),
                None => groups.push((r, vec![j])),
            }
        }
        let rt = self.worker.config.load();
        let mut targets = Vec::with_capacity(groups.len());
        for (r, _) in &groups {
            match rt.services.get(&svc.routes[*r].target) {
                Some(t) => targets.push(t.clone()),
                None => return self.reply_local(cmd, &crate::replies::service_gone(&svc.routes[*r].target)),
            }
        }
        // Earlier replies first, and every cluster's topology known: then no part can be
        // told to wait, and each gets exactly one reply.
        if self.client.outstanding() > 0 {
            return self.drain();
        }
        let depth = self.limits.max_nesting_depth;
        for t in targets.iter().filter(|t| t.distributed()) {
            let router = self.worker.cluster_router(t, depth);
            if !router.ready() && router.unavailable().is_none() {
                router.wait_ready(&self.client);
                return Step::Drain;
            }
        }
        let combine = match combine {
            Combine::Mget { keys, .. } => {
                Combine::Mget { keys, positions: groups.iter().map(|(_, js)| js.clone()).collect() }
            }
            other => other,
        };
        self.client.group_next(groups.len(), combine);
        self.splitting = true;
        for ((r, js), target) in groups.iter().zip(targets) {
            let route = &svc.routes[*r];
            let strip = match (&route.prefix, route.remove_prefix) {
                (Some(p), true) => p.len(),
                _ => 0,
            };
            let mut sub: Vec<&[u8]> = vec![all[0]];
            for &j in js {
                sub.push(&all[positions[j]][strip..]);
                if name == "MSET" {
                    sub.push(all[positions[j] + 1]);
                }
            }
            let mut buf = BytesMut::new();
            encode_command(&mut buf, &sub);
            let mut parser = RequestParser::new(self.limits);
            let spans = match parser.parse(&buf, true) {
                Ok(Parsed::Multibulk { .. }) => parser.spans(),
                _ => unreachable!("a command just encoded parses"),
            };
            let before = self.client.next_seq();
            let step = self.on_service(target, |s| s.dispatch(&buf, sub.len(), spans, cmd, special));
            if !matches!(step, Step::Done) || self.client.issued_since(before) != 1 {
                // Never expected (see above); answer the part so that the client still gets one reply.
                debug_assert!(false, "a split part was not answered exactly once");
                if self.client.issued_since(before) == 0 {
                    self.client.local(b"-ERR respmesh: internal error splitting a command across routes\r\n");
                }
            }
            self.worker.metrics.route(&svc.host, &route.target);
            if !route.mirrors.is_empty() {
                self.mirror(route, &buf, cmd, sub.get(1).copied());
            }
        }
        self.splitting = false;
        Step::Done
    }

    /// Runs `f` as if the client were connected to `target`.
    fn on_service<T>(&mut self, target: Arc<ServiceRt>, f: impl FnOnce(&mut Session) -> T) -> T {
        let own = std::mem::replace(&mut self.svc, target);
        let was = std::mem::replace(&mut self.routing, true);
        let out = f(self);
        self.svc = own;
        self.routing = was;
        out
    }

    /// Sends copies to the route's mirrors, never waiting for them.
    fn mirror(&mut self, route: &RouteRt, frame: &[u8], cmd: CommandId, key: Option<&[u8]>) {
        let read = cmd.has_flag(flags::READONLY) && !cmd.has_flag(flags::WRITE);
        let now = *self.batch_start.get_or_insert_with(tokio::time::Instant::now);
        for m in &route.mirrors {
            if (m.writes_only && read) || fastrand::f64() >= m.chance {
                continue;
            }
            let Some(svc) = self.worker.config.load().services.get(&m.target).cloned() else { continue };
            let depth = self.limits.max_nesting_depth;
            let up = if svc.distributed() {
                let router = self.worker.cluster_router(&svc, depth);
                let slot = key.map_or(0, |k| router.slot_of(k));
                match router.slot_node(slot, self.proto) {
                    Some(up) => up,
                    None => {
                        self.worker.metrics.mirror(&m.target, false);
                        continue;
                    }
                }
            } else {
                self.worker.shared_upstream(&svc, self.proto, depth)
            };
            let sent = up.send_mirror(&self.client, frame, now, MIRROR_QUEUE_LIMIT);
            self.worker.metrics.mirror(&m.target, sent);
        }
    }
}
