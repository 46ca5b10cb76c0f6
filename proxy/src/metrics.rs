//! Metrics, exposed in Prometheus text format on the admin port's `/metrics`.
//!
//! Per-command counters and latency histograms sit on the hot path, so each worker thread has
//! its own plain arrays of relaxed atomics (no locks, no label lookups, no contention) and a
//! collector sums them at scrape time. Rare events (connections, failures, reloads) use
//! prometheus-client's own types.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::command::{COMMANDS, CommandId};

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];
const NB: usize = BUCKETS_US.len() + 1;

/// Adds `v` to a counter that only one thread writes: a plain load and store, not an atomic
/// read-modify-write, which takes a locked instruction (three per request, the hottest
/// instructions of reply dispatch in a profile). A scrape from another thread reads each
/// counter whole (aligned 64-bit words), at worst a few increments behind.
#[inline]
fn bump(counter: &AtomicU64, v: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(v), Relaxed);
}

/// One worker's per-command statistics. Only that worker's thread writes them (see [`bump`]);
/// [`Metrics::worker`] hands out one per worker and the collector only reads.
#[derive(Debug)]
pub struct WorkerStats {
    requests: Box<[AtomicU64]>,
    errors: Box<[AtomicU64]>,
    latency_sum_us: Box<[AtomicU64]>,
    latency_buckets: Box<[AtomicU64]>,
    /// Time spent busy polling (`--busy-poll`), in nanoseconds.
    busy_poll_ns: AtomicU64,
}

fn zeros(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl WorkerStats {
    fn new() -> Self {
        let n = CommandId::count();
        WorkerStats {
            requests: zeros(n),
            errors: zeros(n),
            latency_sum_us: zeros(n),
            latency_buckets: zeros(n * NB),
            busy_poll_ns: AtomicU64::new(0),
        }
    }

    /// Counts one command answered by Redis after `elapsed`.
    #[inline]
    pub fn record(&self, cmd: CommandId, error: bool, elapsed: Duration) {
        let i = cmd.index();
        bump(&self.requests[i], 1);
        if error {
            bump(&self.errors[i], 1);
        }
        let us = elapsed.as_micros() as u64;
        bump(&self.latency_sum_us[i], us);
        let b = BUCKETS_US.iter().position(|&ub| us <= ub).unwrap_or(BUCKETS_US.len());
        bump(&self.latency_buckets[i * NB + b], 1);
    }

    /// Counts time the worker spent polling instead of sleeping.
    pub fn add_busy_poll(&self, d: Duration) {
        bump(&self.busy_poll_ns, d.as_nanos() as u64);
    }

    /// Counts one command answered by the proxy itself (no latency recorded).
    #[inline]
    pub fn record_local(&self, cmd: CommandId, error: bool) {
        let i = cmd.index();
        bump(&self.requests[i], 1);
        if error {
            bump(&self.errors[i], 1);
        }
    }
}

/// Label set for per-service metrics.
type ServiceLabel = [(&'static str, String); 1];

/// All of the proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    workers: Mutex<Vec<Arc<WorkerStats>>>,
    pub client_connections: Gauge,
    pub client_connections_total: Counter,
    /// Captured connections to no known service, relayed as plain TCP.
    pub relayed_connections: Counter,
    pub protocol_errors: Counter,
    pub upstream_connections: Family<ServiceLabel, Gauge>,
    pub upstream_connect_failures: Family<ServiceLabel, Counter>,
    pub upstream_auth_failures: Family<ServiceLabel, Counter>,
    pub upstream_timeouts: Family<ServiceLabel, Counter>,
    pub upstream_batches: Family<ServiceLabel, Counter>,
    pub config_reloads: Family<[(&'static str, &'static str); 1], Counter>,
    pub faults: Family<[(&'static str, String); 2], Counter>,
    pub mirrored: Family<[(&'static str, String); 2], Counter>,
    pub routed: Family<[(&'static str, String); 2], Counter>,
    pub config_generation: Gauge<i64, AtomicI64>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics {
            workers: Mutex::new(Vec::new()),
            client_connections: Gauge::default(),
            client_connections_total: Counter::default(),
            relayed_connections: Counter::default(),
            protocol_errors: Counter::default(),
            upstream_connections: Family::default(),
            upstream_connect_failures: Family::default(),
            upstream_auth_failures: Family::default(),
            upstream_timeouts: Family::default(),
            upstream_batches: Family::default(),
            config_reloads: Family::default(),
            faults: Family::default(),
            mirrored: Family::default(),
            routed: Family::default(),
            config_generation: Gauge::default(),
        })
    }

    /// A new worker's statistics, included in every later scrape.
    pub fn worker(&self) -> Arc<WorkerStats> {
        let stats = Arc::new(WorkerStats::new());
        self.workers.lock().unwrap().push(stats.clone());
        stats
    }

    pub fn service(host: &str) -> ServiceLabel {
        [("service", host.to_owned())]
    }

    /// Counts one injected fault (`kind`: error or delay).
    pub fn fault(&self, service: &str, kind: &'static str) {
        self.faults.get_or_create(&[("service", service.to_owned()), ("type", kind.to_owned())]).inc();
    }

    /// Counts one command sent by `service`'s routes to `target`.
    pub fn route(&self, service: &str, target: &str) {
        self.routed.get_or_create(&[("service", service.to_owned()), ("route", target.to_owned())]).inc();
    }

    /// Counts one mirrored copy, sent or dropped (mirror unavailable or its queue full).
    pub fn mirror(&self, target: &str, sent: bool) {
        let result = if sent { "sent" } else { "dropped" };
        self.mirrored.get_or_create(&[("mirror", target.to_owned()), ("result", result.to_owned())]).inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.get_or_create(&[("result", result)]).inc();
    }

    /// The Prometheus text exposition of everything.
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = Registry::with_prefix("respmesh_proxy");
        registry.register("client_connections", "Client connections open now", self.client_connections.clone());
        registry.register("client_connections", "Client connections accepted", self.client_connections_total.clone());
        registry.register(
            "relayed_connections",
            "Captured connections to no known Redis service, relayed as plain TCP",
            self.relayed_connections.clone(),
        );
        registry.register(
            "protocol_errors",
            "Client connections closed for malformed or oversized input",
            self.protocol_errors.clone(),
        );
        registry.register("upstream_connections", "Upstream connections open now", self.upstream_connections.clone());
        registry.register(
            "upstream_connect_failures",
            "Failed attempts to connect to an upstream",
            self.upstream_connect_failures.clone(),
        );
        registry.register(
            "upstream_auth_failures",
            "Upstream logins refused by Redis",
            self.upstream_auth_failures.clone(),
        );
        registry.register(
            "upstream_timeouts",
            "Requests that hit opTimeout (the upstream connection is then reset)",
            self.upstream_timeouts.clone(),
        );
        registry.register(
            "upstream_batches",
            "Writes of requests to shared upstream connections (one batch at a time per connection)",
            self.upstream_batches.clone(),
        );
        registry.register("config_reloads", "Configuration reloads by result", self.config_reloads.clone());
        registry.register("faults_injected", "Faults injected, by service and type", self.faults.clone());
        registry.register(
            "mirrored_requests",
            "Mirrored copies by mirror service and result (sent, dropped)",
            self.mirrored.clone(),
        );
        registry.register(
            "routed_requests",
            "Commands sent by a service's routes, by route target",
            self.routed.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the configuration in force",
            self.config_generation.clone(),
        );
        registry.register_collector(Box::new(CommandCollector(self.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String");
        out
    }
}

#[derive(Debug)]
struct CommandCollector(Arc<Metrics>);

impl Collector for CommandCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let workers = self.0.workers.lock().unwrap().clone();
        let n = CommandId::count();
        let sum = |f: &dyn Fn(&WorkerStats) -> u64| -> u64 { workers.iter().map(|w| f(w)).sum() };
        let label = |i: usize| {
            let name = if i < COMMANDS.len() { COMMANDS[i].name.to_ascii_lowercase() } else { "unknown".to_owned() };
            [("command", name)]
        };
        let busy = sum(&|w| w.busy_poll_ns.load(Relaxed)) as f64 / 1e9;
        let e = encoder.encode_descriptor(
            "busy_poll_seconds",
            "Time worker threads spent polling for I/O instead of sleeping (--busy-poll)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(busy).encode(e)?;
        let used: Vec<usize> = (0..n).filter(|&i| sum(&|w| w.requests[i].load(Relaxed)) > 0).collect();

        let mut e = encoder.encode_descriptor("commands", "Commands by name", None, MetricType::Counter)?;
        for &i in &used {
            ConstCounter::new(sum(&|w| w.requests[i].load(Relaxed))).encode(e.encode_family(&label(i))?)?;
        }
        let mut e = encoder.encode_descriptor(
            "command_errors",
            "Commands answered with an error, by name",
            None,
            MetricType::Counter,
        )?;
        for &i in &used {
            ConstCounter::new(sum(&|w| w.errors[i].load(Relaxed))).encode(e.encode_family(&label(i))?)?;
        }
        let mut e = encoder.encode_descriptor(
            "command_latency_seconds",
            "Time from forwarding a command upstream to its reply, by name",
            None,
            MetricType::Histogram,
        )?;
        for &i in &used {
            let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(NB);
            let mut count = 0;
            for b in 0..NB {
                let c = sum(&|w| w.latency_buckets[i * NB + b].load(Relaxed));
                count += c;
                let ub = BUCKETS_US.get(b).map_or(f64::INFINITY, |&us| us as f64 / 1e6);
                buckets.push((ub, c));
            }
            if count == 0 {
                continue;
            }
            let total = sum(&|w| w.latency_sum_us[i].load(Relaxed)) as f64 / 1e6;
            e.encode_family(&label(i))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(total, count, &buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    #[test]
    fn per_worker_counts_are_summed_at_scrape() {
        let m = Metrics::new();
        let (a, b) = (m.worker(), m.worker());
        a.record(lookup(b"get"), false, Duration::from_micros(80));
        b.record(lookup(b"get"), true, Duration::from_millis(3));
        b.record_local(lookup(b"auth"), false);
        let text = m.render();
        assert!(text.contains("respmesh_proxy_commands_total{command=\"get\"} 2"), "{text}");
        assert!(text.contains("respmesh_proxy_command_errors_total{command=\"get\"} 1"), "{text}");
        assert!(
            text.contains("respmesh_proxy_command_latency_seconds_bucket{le=\"0.0001\",command=\"get\"} 1")
                || text.contains("respmesh_proxy_command_latency_seconds_bucket{command=\"get\",le=\"0.0001\"} 1"),
            "{text}"
        );
        assert!(text.contains("respmesh_proxy_commands_total{command=\"auth\"} 1"), "{text}");
        assert!(!text.contains("command=\"set\""), "unused commands are not listed");
    }
}
