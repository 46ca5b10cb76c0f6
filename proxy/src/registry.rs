//! Every client connection of the process, by the proxy's own client id: what CLIENT LIST
//! shows and CLIENT KILL acts on in CLUSTER mode, where no one Redis knows the client. A kill
//! marks the entry and wakes the owning worker, which closes the connection on its thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

pub struct Entry {
    pub id: u64,
    /// The service (host) the client connected to: one "Redis server" to the client.
    pub service: String,
    pub peer: String,
    pub local: String,
    pub fd: i32,
    pub since: Instant,
    name: Mutex<Option<String>>,
    proto: AtomicU8,
    killed: AtomicBool,
    /// Wakes the worker that owns the connection.
    kills: Arc<Notify>,
}

static CLIENTS: LazyLock<Mutex<BTreeMap<u64, Arc<Entry>>>> = LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn clients() -> std::sync::MutexGuard<'static, BTreeMap<u64, Arc<Entry>>> {
    CLIENTS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Entry {
    pub fn register(
        id: u64,
        service: String,
        peer: String,
        local: String,
        fd: i32,
        since: Instant,
        kills: Arc<Notify>,
    ) -> Arc<Entry> {
        let e = Arc::new(Entry {
            id,
            service,
            peer,
            local,
            fd,
            since,
            name: Mutex::new(None),
            proto: AtomicU8::new(2),
            killed: AtomicBool::new(false),
            kills,
        });
        clients().insert(id, e.clone());
        e
    }

    pub fn unregister(&self) {
        clients().remove(&self.id);
    }

    pub fn set_name(&self, name: Option<&[u8]>) {
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = name.map(|n| String::from_utf8_lossy(n).into_owned());
    }

    pub fn name(&self) -> String {
        self.name.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
    }

    pub fn set_proto(&self, proto: u8) {
        self.proto.store(proto, Ordering::Relaxed);
    }

    pub fn proto(&self) -> u8 {
        self.proto.load(Ordering::Relaxed)
    }

    /// Asks the owning worker to close this connection.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        self.kills.notify_one();
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }
}

/// The connections to `service`, by id.
pub fn of_service(service: &str) -> Vec<Arc<Entry>> {
    clients().values().filter(|e| e.service == service).cloned().collect()
}
