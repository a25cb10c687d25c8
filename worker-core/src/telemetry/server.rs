//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::health::Health;
use super::metrics::Metrics;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// A running endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// The address it listens on (useful with port 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves the endpoints until stopped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<Endpoint> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Shared { metrics, health });
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    Ok(Endpoint { addr, task })
}

/// Renders every metric; `worker_ready` is evaluated first with `/readyz`'s check, so the two
/// never disagree. That check's one database round trip is bounded by its own 2 s timeout
/// (well under Prometheus's default 10 s scrape timeout); everything else it reads is in memory.
async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    let ready = shared.health.readiness().await.is_ok();
    shared.metrics.set_ready(ready);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn ready(State(shared): State<Shared>) -> impl IntoResponse {
    let detail = shared.health.detail();
    match shared.health.readiness().await {
        Ok(()) => (StatusCode::OK, format!("ready\n{detail}")),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n{detail}"),
        ),
    }
}
