//! Configuration reload: the file (and the credential files it names) are watched through their
//! directories, because a Kubernetes ConfigMap or Secret volume changes by swapping a `..data`
//! symlink, which a watch on the file itself never sees. SIGHUP reloads too. A new
//! configuration that does not parse, validate or build is rejected with a log line and a
//! metric, and the one in force keeps serving.

use std::collections::BTreeSet;
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

/// Reads and builds the configuration in `path`.
pub fn load(path: &Path, generation: u64) -> anyhow::Result<Runtime> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let source = ProxyConfig::from_yaml(&text).with_context(|| format!("in {}", path.display()))?;
    Runtime::build(source, generation).with_context(|| format!("in {}", path.display()))
}

/// Applies `path` if it differs from the configuration in force. Returns whether it changed.
pub fn reload(path: &Path, shared: &config::Shared, metrics: &Metrics, generations: &watch::Sender<u64>) -> bool {
    let current = shared.load();
    match load(path, shared.next_generation()) {
        Ok(rt) => {
            if rt.source == current.source && rt.services == current.services {
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

fn watched_dirs(path: &Path, rt: &Runtime) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let parent =
        |p: &Path| p.parent().map(|d| if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
    dirs.extend(parent(path));
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
    path: PathBuf,
    watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    watching: BTreeSet<PathBuf>,
}

impl FileWatch {
    /// Starts watching at once, so that no change made after this call is missed.
    pub fn new(path: PathBuf, current: &Runtime) -> FileWatch {
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
        let mut w = FileWatch { path, watcher, events, watching: BTreeSet::new() };
        w.update(current);
        w
    }

    fn update(&mut self, current: &Runtime) {
        let Some(watcher) = self.watcher.as_mut() else { return };
        let want = watched_dirs(&self.path, current);
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
    let path = fw.path.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // A change between the first load and the start of the watch is picked up here.
    reload(&path, &shared, &metrics, &generations);
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
        reload(&path, &shared, &metrics, &generations);
        let current = shared.load();
        fw.update(&current);
    }
}
