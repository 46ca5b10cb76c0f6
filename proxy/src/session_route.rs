//! The session's key-prefix routing: a service with `routes` sends each command to the service
//! of the route its keys match (longest prefix first, else the default route), optionally
//! without the prefix, and mirrors it to the route's mirrors.
//!
//! One level of routing: a route's service serves the command with its own endpoints, mode,
//! credentials and faults, not its own routes. Connection state (a transaction, a
//! subscription) stays where it started.

use std::sync::Arc;

use bytes::BytesMut;

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
            return Some(self.reply_local(cmd, b"-CROSSSLOT Keys in request don't belong to the same route\r\n"));
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
