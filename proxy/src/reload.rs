//! Configuration reload: the file (and the credential files it names) are watched through their
//! directories, because a Kubernetes ConfigMap or Secret volume changes by swapping a `..data`
//! symlink, which a watch on the file itself never sees. SIGHUP reloads too. A new
//! configuration that does not parse, validate or build is rejected with a log line and a
//! metric, and the one in force keeps serving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use respmesh_api::proxy::ProxyConfig;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::config::{self, Runtime};
use crate::metrics::Metrics;

/// A configuration file, the credentials directory it may name keys of, and listeners added
/// from the command line.
#[derive(Clone, Debug)]
pub struct FileSource {
    pub path: PathBuf,
    pub credentials_dir: Option<PathBuf>,
    pub binds: Vec<(SocketAddr, String)>,
}

impl FileSource {
    /// Reads and builds the configuration.
    pub fn load(&self, generation: u64) -> anyhow::Result<Runtime> {
        let path = &self.path;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let source = ProxyConfig::from_yaml(&text).with_context(|| format!("in {}", path.display()))?;
        let secret = self.credentials_dir.as_deref().map(config::read_secret_dir).transpose()?;
        Runtime::build_with(source, generation, secret, &self.binds).with_context(|| format!("in {}", path.display()))
    }
}

/// Puts a newly built configuration in force if it differs from the current one; a build
/// error is logged and counted, and the configuration in force keeps serving. Returns whether
/// the configuration changed.
pub fn apply(
    built: anyhow::Result<Runtime>,
    shared: &config::Shared,
    metrics: &Metrics,
    generations: &watch::Sender<u64>,
) -> bool {
    let current = shared.load();
    match built {
        Ok(rt) => {
            if rt.source == current.source && rt.services == current.services && rt.listeners == current.listeners {
                return false;
            }
            let generation = rt.generation;
            shared.store(rt);
            metrics.config_generation.set(generation as i64);
            metrics.reload(true);
            let _ = generations.send(generation);
            info!(generation, "configuration reloaded");
            true
        }
        Err(e) => {
            metrics.reload(false);
            error!(
                error = format!("{e:#}"),
                kept_generation = current.generation,
                "new configuration rejected; the previous one keeps serving"
            );
            false
        }
    }
}

/// Applies the file if it differs from the configuration in force. Returns whether it changed.
pub fn reload(src: &FileSource, shared: &config::Shared, metrics: &Metrics, generations: &watch::Sender<u64>) -> bool {
    apply(src.load(shared.next_generation()), shared, metrics, generations)
}

fn watched_dirs(src: &FileSource, rt: &Runtime) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let parent =
        |p: &Path| p.parent().map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
    dirs.extend(parent(&src.path));
    dirs.extend(src.credentials_dir.clone());
    for svc in &rt.source.services {
        for creds in [&svc.auth, &svc.client_auth].into_iter().flatten() {
            for f in [&creds.password_file, &creds.username_file].into_iter().flatten() {
                dirs.extend(parent(Path::new(f)));
            }
        }
    }
    dirs
}

/// Watches the configuration file and the credential files it names.
pub struct FileWatch {
    src: FileSource,
    watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    watching: BTreeSet<PathBuf>,
}

impl FileWatch {
    /// Starts watching at once, so that no change made after this call is missed.
    pub fn new(src: FileSource, current: &Runtime) -> FileWatch {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = match notify::recommended_watcher(move |_event| {
            let _ = tx.send(());
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
                None
            }
        };
        let mut w = FileWatch { src, watcher, events, watching: BTreeSet::new() };
        w.update(current);
        w
    }

    fn update(&mut self, current: &Runtime) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        let want = watched_dirs(&self.src, current);
        for dir in want.difference(&self.watching) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %e, "cannot watch a configuration directory");
            }
        }
        for dir in self.watching.difference(&want) {
            let _ = watcher.unwatch(dir);
        }
        self.watching = want;
    }
}

/// Applies changes to the watched files until the process ends.
pub async fn watch_file(
    mut fw: FileWatch,
    shared: Arc<config::Shared>,
    metrics: Arc<Metrics>,
    generations: watch::Sender<u64>,
) {
    let src = fw.src.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // A change between the first load and the start of the watch is picked up here.
    reload(&src, &shared, &metrics, &generations);
    loop {
        tokio::select! {
            got = fw.events.recv() => {
                if got.is_none() {
                    return;
                }
                // Editors and the kubelet make several changes in a row: settle first.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while fw.events.try_recv().is_ok() {}
            }
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => {
                info!("SIGHUP: reloading the configuration");
            }
        }
        reload(&src, &shared, &metrics, &generations);
        let current = shared.load();
        fw.update(&current);
    }
}
