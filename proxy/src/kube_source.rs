//! The Kubernetes source: the ConfigMap the operator writes (key `config.yaml`, the proxy
//! schema) and its credentials Secret, watched through the API. A change applies within
//! the watch latency, typically well under a second.
//!
//! Failing safe: until the ConfigMap has been read the proxy is not ready and serves nothing;
//! a ConfigMap that is deleted or turns invalid leaves the last good configuration in force;
//! a credentials Secret that disappears makes the services that need it refuse their
//! clients (never serve them without the password).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use respmesh_api::proxy::ProxyConfig;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{self, Runtime, SecretData};
use crate::metrics::Metrics;
use crate::reload;

/// The ConfigMap key holding the configuration.
pub const CONFIG_KEY: &str = "config.yaml";
/// The Secret the operator writes beside the ConfigMap.
pub const DEFAULT_SECRET: &str = "respmesh-proxy-credentials";

#[derive(Clone, Debug)]
pub struct KubeSource {
    pub namespace: String,
    pub configmap: String,
    pub secret: String,
    pub binds: Vec<(SocketAddr, String)>,
}

impl KubeSource {
    /// Parses `NAMESPACE/NAME`.
    pub fn parse_ref(s: &str) -> anyhow::Result<(String, String)> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns.to_owned(), name.to_owned()))
            }
            _ => Err(anyhow!("{s:?} is not NAMESPACE/NAME")),
        }
    }

    fn build(&self, cm: &ConfigMap, secret: SecretData, generation: u64) -> anyhow::Result<Runtime> {
        let at = format!("ConfigMap {}/{}", self.namespace, self.configmap);
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .ok_or_else(|| anyhow!("{at} has no key {CONFIG_KEY:?}"))?;
        let source = ProxyConfig::from_yaml(text).with_context(|| format!("in {at}"))?;
        Runtime::build_with(source, generation, secret, &self.binds).with_context(|| format!("in {at}"))
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.trim_ascii().to_vec())).collect()
}

enum Change {
    Config(watcher::Event<ConfigMap>),
    Secret(watcher::Event<Secret>),
}

/// The latest state of one watched object through the watcher's relists.
struct Latest<K> {
    current: Option<K>,
    relisting: Option<Option<K>>,
    synced: bool,
}

impl<K> Latest<K> {
    fn new() -> Self {
        Latest { current: None, relisting: None, synced: false }
    }

    /// Returns whether the object (or its absence) is now known.
    fn update(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(o) => self.current = Some(o),
            watcher::Event::Delete(_) => self.current = None,
            watcher::Event::Init => {
                self.relisting = Some(None);
                return false;
            }
            watcher::Event::InitApply(o) => {
                self.relisting = Some(Some(o));
                return false;
            }
            watcher::Event::InitDone => {
                self.current = self.relisting.take().flatten();
                self.synced = true;
            }
        }
        self.synced
    }
}

/// Watches the ConfigMap and the Secret until the process ends; `ready` turns true once a
/// configuration from the ConfigMap is in force.
pub async fn watch(
    src: KubeSource,
    shared: Arc<config::Shared>,
    metrics: Arc<Metrics>,
    generations: watch::Sender<u64>,
    ready: Arc<AtomicBool>,
) {
    let client = loop {
        match kube::Client::try_default().await {
            Ok(c) => break c,
            Err(e) => {
                warn!(error = %e, "cannot reach the Kubernetes API; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    let cms = watcher(Api::<ConfigMap>::namespaced(client.clone(), &src.namespace), by_name(&src.configmap))
        .default_backoff()
        .map(|e| e.map(Change::Config));
    let secrets = watcher(Api::<Secret>::namespaced(client, &src.namespace), by_name(&src.secret))
        .default_backoff()
        .map(|e| e.map(Change::Secret));
    let mut changes = std::pin::pin!(futures::stream::select(cms, secrets));
    let (mut cm, mut secret) = (Latest::<ConfigMap>::new(), Latest::<Secret>::new());
    info!(namespace = %src.namespace, configmap = %src.configmap, secret = %src.secret, "watching the configuration");
    while let Some(change) = changes.next().await {
        let known = match change {
            Ok(Change::Config(e)) => cm.update(e),
            Ok(Change::Secret(e)) => secret.update(e),
            Err(e) => {
                warn!(error = %e, "watching the configuration failed; retrying");
                continue;
            }
        };
        if !known || !cm.synced || !secret.synced {
            continue;
        }
        let Some(config_map) = &cm.current else {
            let what = if ready.load(Ordering::Acquire) {
                "the last good configuration keeps serving"
            } else {
                "not ready until it exists"
            };
            warn!(namespace = %src.namespace, configmap = %src.configmap, "the ConfigMap does not exist; {what}");
            continue;
        };
        if secret.current.is_none() {
            warn!(namespace = %src.namespace, secret = %src.secret, "the credentials Secret does not exist; services that need credentials refuse their clients");
        }
        let data = secret.current.as_ref().map(secret_data);
        let built = src.build(config_map, data, shared.next_generation());
        let ok = built.is_ok();
        reload::apply(built, &shared, &metrics, &generations);
        if ok && !ready.swap(true, Ordering::AcqRel) {
            info!("configuration from the ConfigMap in force; ready");
        }
    }
}
