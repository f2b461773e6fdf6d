//! The bundled fake Maskinporten and fake KFR: one axum server, one shared [`MockState`], one admin
//! surface under `/_mock/`.
//!
//! The mock is how `kfr` measures itself, so it is at least as strict as the real services
//! (kfr-notes §3, §9): a lenient mock is a defect. Files by role:
//! - [`config`]: `kfr mock` flags and [`MockConfig`].
//! - [`state`]: the shared state: clock with adjustable skew, settings, counters, fault switches.
//! - [`maskinporten`]: discovery, token endpoint with Digdir's checks and MP-codes, JWKS, and
//!   [`MockState::verify_access_token`] for the KFR half; [`signing`] the mock's own key, which
//!   signs access tokens and reads them back.
//! - [`kfr`]: the fake KFR under `/kar-ws/api/v1` (add, delete, own lookup, batch) and the
//!   batch ingest task; [`register`] its register with history and the ingest queue;
//!   [`multipart`] the strict batch-body reader.
//! - [`quirks`]: deliberate defects (`--quirk`) that the integration-test checklist must catch.
//! - [`tls`]: HTTPS (`--tls-cert`/`--tls-key`), so the mock can stand behind a proxy as KFR does.
//! - [`admin`]: `/healthz`, `/_mock/state`, `/_mock/reset`, `/_mock/faults`,
//!   `/_mock/relationships`.
//!
//! Every response carries a `Date` header from the mock's (possibly skewed) clock, because clients
//! measure their clock offset from it. docs/mock.md is the operator's description.

mod admin;
mod config;
mod kfr;
mod maskinporten;
// The batch encoder's fuzz target checks that the mock reads back what kfr sends (src/fuzzing.rs).
pub(crate) mod multipart;
mod quirks;
mod register;
mod signing;
mod state;
mod tls;

pub use config::{
    ClientKeys, DEFAULT_INGEST_RATE, DEFAULT_SCOPE, Delegation, KfrFaults, MockClient, MockConfig, MockEnv, MockFlags,
    MockTls, OTHER_SCOPE,
};
pub use kfr::BASE_PATH as KFR_BASE_PATH;
pub use maskinporten::JWT_BEARER;
pub use quirks::{Quirk, Quirks};
pub use register::RelationshipRow;
pub use signing::{AccessClaims, TokenRejection};
pub use state::{
    KfrSnapshot, MaskinportenSnapshot, MockClock, MockState, REQUEST_LOG_CAP, RequestLogEntry, StateSnapshot,
    TokenFaults,
};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The whole app: Maskinporten, KFR and admin routes, and the `Date` header on every response.
/// Batch ingestion needs the task [`MockServer::start`] spawns; a bare router accepts batches but
/// never stores them.
pub fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .merge(maskinporten::routes())
        .merge(kfr::routes())
        .merge(admin::routes())
        .layer(axum::middleware::map_response_with_state(state.clone(), date_header))
        .with_state(state)
}

/// Replaces hyper's `Date` (real clock) with the mock's clock.
async fn date_header(State(state): State<Arc<MockState>>, mut resp: Response) -> Response {
    let date = httpdate::fmt_http_date(state.clock().now());
    if let Ok(value) = HeaderValue::from_str(&date) {
        resp.headers_mut().insert(header::DATE, value);
    }
    resp
}

/// A running mock server. Dropping it stops the server too; [`MockServer::shutdown`] also waits
/// for in-flight requests to finish.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<MockState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    ingest: JoinHandle<()>,
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Release requests held open by timeout injection, so the server task can end.
        self.state.begin_stopping();
        self.ingest.abort();
    }
}

impl MockServer {
    /// Serves the mock on an already bound listener (tests bind `127.0.0.1:0`).
    pub async fn start(listener: tokio::net::TcpListener, cfg: MockConfig) -> anyhow::Result<MockServer> {
        let addr = listener.local_addr().context("reading the mock's listen address")?;
        config::check_listen(addr, cfg.allow_remote)?;
        if !cfg.quirks.is_empty() {
            let names: Vec<&str> = cfg.quirks.iter().map(|q| q.name()).collect();
            tracing::warn!(
                quirks = %names.join(","),
                "kfr mock runs with deliberate defects: it is NOT a faithful KFR"
            );
        }
        let acceptor = cfg.tls.as_ref().map(tls::acceptor).transpose()?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let state = Arc::new(MockState::new(cfg, format!("{scheme}://{addr}"))?);
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(state.clone());
        let ingest = kfr::spawn_ingest(&state);
        // A dropped sender (MockServer dropped) stops the server as well.
        let stopped = async {
            let _ = stopped.await;
        };
        let task = match acceptor {
            None => tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await }),
            Some(acceptor) => tokio::spawn(tls::serve(listener, app, acceptor, stopped)),
        };
        Ok(MockServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
            ingest,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port` (`https://` when the mock serves TLS).
    pub fn base_url(&self) -> String {
        self.state.base_url().to_string()
    }

    /// `http://127.0.0.1:port/kar-ws/api/v1`: the KFR base URL a client configures.
    pub fn kfr_base_url(&self) -> String {
        format!("{}{}", self.state.base_url(), kfr::BASE_PATH)
    }

    /// The Maskinporten issuer identifier, trailing slash included; also the `aud` grants need.
    pub fn issuer(&self) -> String {
        self.state.issuer().to_string()
    }

    /// The shared state: counters, clock skew and fault switches, changeable at runtime.
    pub fn state(&self) -> Arc<MockState> {
        self.state.clone()
    }

    /// Stops accepting connections and waits for in-flight requests.
    pub async fn shutdown(mut self) {
        self.state.begin_stopping();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "mock server stopped with an error"),
                Err(e) => tracing::warn!(error = %e, "mock server task failed"),
            }
        }
    }
}
