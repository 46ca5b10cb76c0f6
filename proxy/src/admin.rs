//! The admin endpoint: `/metrics` (Prometheus), `/ready`, `/live` and `/config` (credentials
//! redacted). A deliberately small HTTP/1.1 server: GET only, one request per connection,
//! bounded request size and time, so the sidecar needs no HTTP stack on its data path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::config;
use crate::metrics::Metrics;

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoint reports on.
pub struct AdminState {
    pub config: Arc<config::Shared>,
    pub metrics: Arc<Metrics>,
    /// Listeners are bound, a configuration is in force, and the proxy is not shutting down.
    pub ready: Arc<AtomicBool>,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &state)).await {
                debug!(error = %e, "admin request timed out");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, state: &AdminState) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() >= MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", "request header too large\n").await;
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET is supported\n").await;
    }
    match path {
        "/live" => respond(&mut stream, 200, "text/plain", "live\n").await,
        "/ready" => {
            if state.ready.load(Ordering::Acquire) {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            } else {
                respond(&mut stream, 503, "text/plain", "not ready\n").await
            }
        }
        "/metrics" => {
            let body = state.metrics.render();
            respond(&mut stream, 200, "text/plain; version=0.0.4; charset=utf-8", &body).await
        }
        "/config" => {
            let rt = state.config.load();
            let body = serde_json::json!({
                "generation": rt.generation,
                "config": rt.source.redacted(),
            });
            let text = serde_json::to_string_pretty(&body).unwrap_or_default() + "\n";
            respond(&mut stream, 200, "application/json", &text).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found; try /metrics, /ready, /live or /config\n").await,
    }
}

async fn respond(stream: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
