//! The agent's operations endpoints on their own address (`sync.metrics_listen`), apart from
//! ingest so a scraper or a probe never needs the ingest key: `/metrics` (Prometheus text),
//! `/livez` (200 while the process serves), `/readyz` (200 `ready`, or 503 with each reason).
//!
//! Nothing here carries personal data: the metric labels have none (see [`super::metrics`]) and
//! readiness reasons are about the agent, not about customers.

use super::health::Health;
use super::metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// The operations server could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics server stopped: {0}")]
    Serve(#[source] std::io::Error),
}

#[derive(Clone)]
struct Ops {
    prometheus: PrometheusHandle,
    health: Health,
}

/// A bound, not yet serving, operations listener: bind first so the caller can report the
/// address (port 0 picks a free one).
#[derive(Debug)]
pub struct OpsServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl OpsServer {
    pub async fn bind(addr: SocketAddr) -> Result<OpsServer, OpsError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| OpsError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| OpsError::Bind { addr, source })?;
        Ok(OpsServer { listener, addr })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled; requests in progress are finished.
    pub async fn run(
        self,
        prometheus: PrometheusHandle,
        health: Health,
        shutdown: CancellationToken,
    ) -> Result<(), OpsError> {
        axum::serve(self.listener, router(prometheus, health))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .map_err(OpsError::Serve)
    }
}

/// Binds `addr` and serves until `shutdown` (see [`OpsServer`] to learn the port first).
pub async fn serve(
    addr: SocketAddr,
    prometheus: PrometheusHandle,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), OpsError> {
    OpsServer::bind(addr).await?.run(prometheus, health, shutdown).await
}

/// The routes, for embedding or testing.
pub fn router(prometheus: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/livez", get(|| async { "alive\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { prometheus, health })
}

async fn render(State(ops): State<Ops>) -> impl IntoResponse {
    metrics::set_ready(ops.health.unready().is_empty());
    // Histograms and summaries age out on upkeep; without the exporter's own thread, do it here.
    ops.prometheus.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        ops.prometheus.render(),
    )
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let reasons = ops.health.unready();
    metrics::set_ready(reasons.is_empty());
    if reasons.is_empty() {
        return (StatusCode::OK, "ready\n".to_string());
    }
    let body: String = reasons.iter().map(|r| format!("not ready: {r}\n")).collect();
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_and_metrics_answer_on_their_own_port() {
        let prometheus = metrics::install().unwrap();
        let health = Health::new();
        let server = OpsServer::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let base = format!("http://{}", server.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(prometheus, health.clone(), shutdown.clone()));
        let c = reqwest::Client::new();

        let live = c.get(format!("{base}/livez")).send().await.unwrap();
        assert_eq!(live.status(), 200);
        let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(
            (ready.status().as_u16(), ready.text().await.unwrap()),
            (200, "ready\n".into())
        );

        health.set_store_problem(Some("disk full".into()));
        health.set_paused(Some("credentials: grant refused".into()));
        let ready = c.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        assert!(
            body.contains("not ready: state store not writable: disk full\n"),
            "{body}"
        );
        assert!(
            body.contains("not ready: delivery paused: credentials: grant refused\n"),
            "{body}"
        );

        let m = c.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(m.status(), 200);
        let text = m.text().await.unwrap();
        assert!(text.contains("# TYPE kfr_sync_ready gauge"), "{text}");
        assert!(text.contains("kfr_sync_ready 0"), "{text}");
        // Still alive while not ready: liveness is only "the process serves".
        assert_eq!(c.get(format!("{base}/livez")).send().await.unwrap().status(), 200);

        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert!(
            c.get(format!("{base}/livez")).send().await.is_err(),
            "stopped after shutdown"
        );
    }
}
