//! The operator's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub writes: Family<WriteLabels, Counter>,
    pub redis_services: Gauge,
    pub leader: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("respmesh_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Counter::default();
        let writes = Family::<WriteLabels, Counter>::default();
        let redis_services = Gauge::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Namespace reconciliations that succeeded", reconciles.clone());
        registry.register("reconcile_errors", "Reconciliations or status writes that failed", reconcile_errors.clone());
        registry.register("writes", "Objects written (ConfigMap, Secret, status) or deleted", writes.clone());
        registry.register("redis_services", "Redis services in the proxy configuration", redis_services.clone());
        registry.register("leader", "1 while this instance holds the lease", leader.clone());
        Metrics { registry, reconciles, reconcile_errors, writes, redis_services, leader }
    }

    pub fn write(&self, kind: &str) {
        self.writes.get_or_create(&WriteLabels { kind: kind.to_owned() }).inc();
    }

    pub fn reconciled(&self) {
        self.reconciles.inc();
    }

    pub fn reconcile_error(&self) {
        self.reconcile_errors.inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
