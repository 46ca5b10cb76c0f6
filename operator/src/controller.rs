//! The reconcilers. Everything the operator reads is mirrored in reflector stores (warm on
//! followers too); any change to them re-runs the translation ([`crate::translate`]), which
//! is cheap and global, because a proxy's configuration describes every Redis service of
//! the mesh.
//!
//! - A kube-rs `Controller` over Namespaces writes, in every namespace labeled
//!   `respmesh.io/inject=enabled`, the ConfigMap `respmesh-proxy` and the Secret
//!   `respmesh-proxy-credentials` by server-side apply, only when their content differs from
//!   what is stored, and removes them from namespaces that lose the label.
//! - The status writer sets `Accepted`/`ResolvedRefs` on every RedisService and
//!   RedisDestination of both API groups when they change, with an Event per change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use respmesh_api::crd::{COMPAT_GROUP, GROUP, RedisStatus, VERSION};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::translate::{self, Cond, Cr, CrKey, Inputs, Kind, Translation};

pub const INJECT_LABEL: &str = "respmesh.io/inject";
pub const CONFIGMAP: &str = "respmesh-proxy";
pub const SECRET: &str = "respmesh-proxy-credentials";
pub const MANAGER: &str = "respmesh-operator";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "respmesh-operator");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("cannot render the proxy configuration: {0}")]
    Render(String),
}

/// One custom resource kind in one API group.
#[derive(Clone)]
struct CrType {
    kind: Kind,
    resource: ApiResource,
    store: Store<DynamicObject>,
}

/// What every reconciler reads.
pub struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    configmaps: Store<ConfigMap>,
    crs: Vec<CrType>,
}

pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub domain: String,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
}

fn cr_resources() -> Vec<(Kind, ApiResource)> {
    let mut out = Vec::new();
    for group in [GROUP, COMPAT_GROUP] {
        for (kind, name, plural) in [
            (Kind::RedisService, "RedisService", "redisservices"),
            (Kind::RedisDestination, "RedisDestination", "redisdestinations"),
        ] {
            let gvk = GroupVersionKind::gvk(group, VERSION, name);
            out.push((kind, ApiResource::from_gvk_with_plural(&gvk, plural)));
        }
    }
    out
}

/// Starts the reflectors; `changed` ticks on every change. [`Stores::wait_synced`] returns
/// once every store has its first full list.
pub fn start_stores(client: &Client, changed: watch::Sender<u64>) -> Stores {
    fn mirror<K>(api: Api<K>, cfg: watcher::Config, writer: reflector::store::Writer<K>, changed: watch::Sender<u64>)
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
        K::DynamicType: Clone + Eq + std::hash::Hash + Default + Send + Sync,
    {
        let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => changed.send_modify(|n| *n += 1),
                    Err(e) => warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying"),
                }
            }
        });
    }
    let (services, w) = reflector::store();
    mirror(Api::<Service>::all(client.clone()), watcher::Config::default(), w, changed.clone());
    let (slices, w) = reflector::store();
    mirror(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default(), w, changed.clone());
    let (secrets, w) = reflector::store();
    mirror(Api::<Secret>::all(client.clone()), watcher::Config::default(), w, changed.clone());
    let (configmaps, w) = reflector::store();
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    mirror(Api::<ConfigMap>::all(client.clone()), managed, w, changed.clone());
    let mut crs = Vec::new();
    for (kind, resource) in cr_resources() {
        let writer = reflector::store::Writer::new(resource.clone());
        let store = writer.as_reader();
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
        let changed = changed.clone();
        let what = format!("{}.{}", resource.plural, resource.group);
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(_) => changed.send_modify(|n| *n += 1),
                    Err(e) => warn!(resource = %what, error = %e, "watch failed; retrying (is the CRD installed?)"),
                }
            }
        });
        crs.push(CrType { kind, resource, store });
    }
    Stores { services, slices, secrets, configmaps, crs }
}

impl Stores {
    pub async fn wait_synced(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
        let _ = self.configmaps.wait_until_ready().await;
        for c in &self.crs {
            let _ = c.store.wait_until_ready().await;
        }
    }

    /// Snapshots the stores as the translation's inputs.
    pub fn inputs(&self, domain: &str) -> Inputs {
        let managed = |s: &Secret| s.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
        let mut inputs = Inputs {
            services: self.services.state().iter().map(|s| (**s).clone()).collect(),
            slices: self.slices.state().iter().map(|s| (**s).clone()).collect(),
            secrets: self.secrets.state().iter().filter(|s| !managed(s)).map(|s| (**s).clone()).collect(),
            domain: domain.to_owned(),
            ..Default::default()
        };
        for ct in &self.crs {
            for obj in ct.store.state() {
                let key = cr_key(ct, &obj);
                let created = obj.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
                let spec = obj.data.get("spec").cloned().unwrap_or(serde_json::Value::Null);
                match ct.kind {
                    Kind::RedisService => inputs.redis_services.push(Cr {
                        key,
                        created,
                        spec: serde_json::from_value(spec).map_err(|e| e.to_string()),
                    }),
                    Kind::RedisDestination => inputs.redis_destinations.push(Cr {
                        key,
                        created,
                        spec: serde_json::from_value(spec).map_err(|e| e.to_string()),
                    }),
                }
            }
        }
        inputs
    }
}

fn cr_key(ct: &CrType, obj: &DynamicObject) -> CrKey {
    CrKey {
        group: ct.resource.group.clone(),
        kind: ct.kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

/// The ConfigMap and Secret for one namespace, as server-side apply bodies.
pub fn outputs(t: &Translation, ns: &Namespace) -> Result<(ConfigMap, Secret), Error> {
    let yaml = serde_yaml_ng::to_string(&t.config).map_err(|e| Error::Render(e.to_string()))?;
    let labels: BTreeMap<String, String> = [(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())].into();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        name: ns.name_any(),
        uid: ns.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    let meta = |name: &str| kube::api::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.name_any()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };
    let cm = ConfigMap {
        metadata: meta(CONFIGMAP),
        data: Some(
            [(respmesh_proxy_config_key(), format!("# Written by respmesh-operator; do not edit.\n{yaml}"))].into(),
        ),
        ..Default::default()
    };
    let secret = Secret {
        metadata: meta(SECRET),
        type_: Some("Opaque".into()),
        data: Some(t.credentials.iter().map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes()))).collect()),
        ..Default::default()
    };
    Ok((cm, secret))
}

/// The ConfigMap key the proxy reads (`respmesh_proxy::kube_source::CONFIG_KEY`).
pub fn respmesh_proxy_config_key() -> String {
    "config.yaml".to_owned()
}

fn injected(ns: &Namespace) -> bool {
    ns.labels().get(INJECT_LABEL).map(String::as_str) == Some("enabled") && ns.metadata.deletion_timestamp.is_none()
}

fn same_owner(stored: &kube::api::ObjectMeta, wanted: &kube::api::ObjectMeta) -> bool {
    stored.owner_references == wanted.owner_references
        && stored.labels.as_ref().is_some_and(|l| wanted.labels.iter().flatten().all(|(k, v)| l.get(k) == Some(v)))
}

/// Reconciles one namespace's ConfigMap and Secret.
pub async fn reconcile_namespace(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = ns.name_any();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &name);
    let stored_cm = ctx
        .stores
        .configmaps
        .state()
        .into_iter()
        .find(|c| c.namespace().as_deref() == Some(&name) && c.name_any() == CONFIGMAP);
    let stored_secret = ctx
        .stores
        .secrets
        .state()
        .into_iter()
        .find(|s| s.namespace().as_deref() == Some(&name) && s.name_any() == SECRET);
    if !injected(&ns) {
        let ours = |m: &kube::api::ObjectMeta| {
            m.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).map(String::as_str) == Some(MANAGED_BY.1)
        };
        if stored_cm.as_ref().is_some_and(|c| ours(&c.metadata)) {
            cms.delete(CONFIGMAP, &DeleteParams::default()).await.map(|_| ()).or_else(ignore_not_found)?;
            ctx.metrics.write("configmap_delete");
            info!(namespace = %name, "namespace no longer injected: removed the proxy ConfigMap");
        }
        if stored_secret.as_ref().is_some_and(|s| ours(&s.metadata)) {
            secrets.delete(SECRET, &DeleteParams::default()).await.map(|_| ()).or_else(ignore_not_found)?;
            ctx.metrics.write("secret_delete");
        }
        return Ok(Action::await_change());
    }
    let t = translate::translate(&ctx.stores.inputs(&ctx.domain));
    let (cm, secret) = outputs(&t, &ns)?;
    let params = PatchParams::apply(MANAGER).force();
    // The Secret first: a configuration never names a key its proxies cannot find yet.
    let empty = BTreeMap::new();
    if !stored_secret.as_ref().is_some_and(|s| {
        s.data.as_ref().unwrap_or(&empty) == secret.data.as_ref().unwrap_or(&empty)
            && same_owner(&s.metadata, &secret.metadata)
    }) {
        secrets.patch(SECRET, &params, &Patch::Apply(&secret)).await?;
        ctx.metrics.write("secret");
        info!(namespace = %name, keys = t.credentials.len(), "proxy credentials Secret written");
    }
    if !stored_cm.as_ref().is_some_and(|c| c.data == cm.data && same_owner(&c.metadata, &cm.metadata)) {
        cms.patch(CONFIGMAP, &params, &Patch::Apply(&cm)).await?;
        ctx.metrics.write("configmap");
        info!(namespace = %name, services = t.config.services.len(), "proxy ConfigMap written");
    }
    Ok(Action::await_change())
}

fn ignore_not_found(e: kube::Error) -> Result<(), kube::Error> {
    match &e {
        kube::Error::Api(s) if s.code == 404 => Ok(()),
        _ => Err(e),
    }
}

pub fn error_policy(ns: Arc<Namespace>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error();
    warn!(namespace = %ns.name_any(), error = %err, "reconcile failed; retrying in 2s");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the namespace controller until the process ends.
pub async fn run_namespace_controller(ctx: Arc<Context>, namespaces: Api<Namespace>, changed: watch::Receiver<u64>) {
    let cms: Api<ConfigMap> = Api::all(ctx.client.clone());
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let ticks = tokio_stream::wrappers::WatchStream::new(changed).map(|_| ());
    Controller::new(namespaces, watcher::Config::default())
        .owns(cms, managed.clone())
        .owns(Api::<Secret>::all(ctx.client.clone()), managed)
        .reconcile_all_on(ticks)
        .shutdown_on_signal()
        .run(reconcile_namespace, error_policy, ctx.clone())
        .for_each(|r| {
            match r {
                Ok((obj, _)) => {
                    ctx.metrics.reconciled();
                    debug!(namespace = %obj.name, "reconciled");
                }
                Err(e) => debug!(error = %e, "reconcile error"),
            }
            futures::future::ready(())
        })
        .await;
}

/// Keeps every custom resource's status current; runs until the process ends.
pub async fn run_status_writer(ctx: Arc<Context>, mut changed: watch::Receiver<u64>) {
    loop {
        // Let a burst of changes settle.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Err(e) = write_statuses(&ctx).await {
            ctx.metrics.reconcile_error();
            warn!(error = %e, "writing statuses failed; retrying in 2s");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

async fn write_statuses(ctx: &Context) -> Result<(), Error> {
    let t = translate::translate(&ctx.stores.inputs(&ctx.domain));
    ctx.metrics.redis_services.set(t.config.services.len() as i64);
    for ct in &ctx.stores.crs {
        for obj in ct.store.state() {
            let key = cr_key(ct, &obj);
            let Some(conds) = t.conditions.get(&key) else { continue };
            let old: RedisStatus =
                obj.data.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default();
            let generation = obj.metadata.generation;
            let new = status_with(&old, conds, generation);
            if new == old {
                continue;
            }
            let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &key.namespace, &ct.resource);
            let patch = serde_json::json!({ "status": new });
            match api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => ctx.metrics.write("status"),
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => return Err(e.into()),
            }
            for c in conds {
                let before = old.conditions.iter().find(|o| o.type_ == c.kind);
                if before
                    .is_some_and(|b| b.reason == c.reason && b.message == c.message && (b.status == "True") == c.ok)
                {
                    continue;
                }
                let event = Event {
                    type_: if c.ok { EventType::Normal } else { EventType::Warning },
                    reason: c.reason.to_owned(),
                    note: Some(truncate(&c.message, 1000)),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                let oref = obj.object_ref(&ct.resource);
                if let Err(e) = ctx.recorder.publish(&event, &oref).await {
                    warn!(error = %e, "cannot record an event");
                }
            }
            if conds.iter().any(|c| !c.ok) {
                let msg: Vec<String> =
                    conds.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.reason, c.message)).collect();
                warn!(resource = %format!("{}/{}", key.namespace, key.name), group = %key.group, problems = %msg.join("; "), "resource not fully applied");
            }
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// The status for `conds`, keeping each condition's transition time while its status holds.
pub fn status_with(old: &RedisStatus, conds: &[Cond], generation: Option<i64>) -> RedisStatus {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = conds
        .iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" }.to_owned();
            let prev = old.conditions.iter().find(|o| o.type_ == c.kind);
            let unchanged = prev.is_some_and(|p| {
                p.status == status
                    && p.reason == c.reason
                    && p.message == c.message
                    && p.observed_generation == generation
            });
            if unchanged {
                return prev.expect("checked").clone();
            }
            let last_transition_time = match prev {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: c.kind.to_owned(),
                status,
                reason: c.reason.to_owned(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    RedisStatus { observed_generation: generation, conditions }
}

pub fn reporter(instance: &str) -> Reporter {
    Reporter { controller: MANAGER.into(), instance: Some(instance.to_owned()) }
}

pub fn recorder(client: Client, instance: &str) -> Recorder {
    Recorder::new(client, reporter(instance))
}
