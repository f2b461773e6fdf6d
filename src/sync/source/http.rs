//! HTTP ingest: `POST /events` with a bearer key, answered 202 only after the events are durably
//! committed (docs/sync.md, "Sources").
//!
//! Answers, in the order they are decided:
//! - 503 while the agent drains (shutdown has begun) — nothing read;
//! - 401 without the right `Authorization: Bearer <key>` — before the body is read;
//! - 413 over the size limit (8 MiB by default);
//! - 415 for a body that is neither `application/json` (one object or an array of objects) nor
//!   NDJSON (`application/x-ndjson`, or `text/plain`, which line-oriented tools send); a body
//!   without a type, or with curl's default `application/x-www-form-urlencoded`, is read by its
//!   first character (`[`: an array, else NDJSON);
//! - 400 when any event breaks a rule: every refusal listed, and **nothing** of the request
//!   stored (a sender fixes and resends the whole request; half-taken requests would make that
//!   resend ambiguous);
//! - 202 once the outbox committed: counts and each event's id and result (stored / duplicate);
//! - 503 when the store fails (nothing stored; the agent is marked not ready).
//!
//! Security choices:
//! - The key is compared in constant time over SHA-256 digests of both sides, so neither its
//!   content nor its length leaks through timing.
//! - The key file must not be accessible to group or others (mode `0600` or stricter), as ssh does
//!   for private keys: a key readable by every local user is not a secret. Refused, not warned:
//!   a warning in a log nobody reads protects nothing.
//! - TLS (rustls with the aws-lc-rs provider) when `tls_cert`/`tls_key` are set. Plain HTTP only
//!   on a loopback address, unless `allow_plain_http` says the network in between is trusted
//!   (e.g. a TLS-terminating sidecar); otherwise the server refuses to start. The certificate is
//!   loaded again for a new connection when its files changed on disk, so a renewal needs no
//!   restart (issue 21).

use super::{Intake, Source, SourceError, SourceReport, counts, flood_refusal};
use crate::file_stamp::FileStamp;
use crate::store::StoreError;
use crate::store::{Enqueued, NewEvent};
use crate::sync::event::{self, Broken, Location, Refusal};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::future::BoxFuture;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// Where ingest listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Largest request body accepted by default.
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
/// Shortest key accepted: anything shorter is guessable.
pub const MIN_KEY_LEN: usize = 16;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for requests in progress.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why ingest could not start. Each message says what is wrong; its [`Hinted`] hint says what
/// to change.
///
/// [`Hinted`]: crate::error::Hinted
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read the ingest key file {path}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ingest key file {path} is accessible to group or others (mode {mode:04o})")]
    KeyFilePermissions { path: PathBuf, mode: u32 },
    #[error("the ingest key in {path} is shorter than {MIN_KEY_LEN} characters")]
    KeyTooShort { path: PathBuf },
    #[error("cannot use the TLS {what} {path}: {detail}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error(
        "refusing plain HTTP on {addr}: events carry customer identifiers, so without TLS only a \
         loopback address is allowed (or allow_plain_http behind a trusted proxy)"
    )]
    PlainHttpNotLoopback { addr: SocketAddr },
    #[error("cannot listen for events on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Hinted for IngestError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            IngestError::KeyFile { path, .. } => format!(
                "check the path given by --ingest-key-file or sync.ingest_key_file ({}), and that the agent's user may read it",
                path.display()
            ),
            IngestError::KeyFilePermissions { path, .. } => format!(
                "run `chmod 600 {}` and make the agent's user its owner, so no other local user can read the key",
                path.display()
            ),
            IngestError::KeyTooShort { path } => format!(
                "write a random key of at least {MIN_KEY_LEN} characters, e.g. `(umask 077; head -c 24 /dev/urandom | base64 > {})`, and give the core system the same key",
                path.display()
            ),
            IngestError::Tls { .. } => "--tls-cert (sync.tls_cert) must be the PEM certificate chain and --tls-key (sync.tls_key) its PEM private key, both readable by the agent's user and belonging together".into(),
            IngestError::PlainHttpNotLoopback { .. } => "give the endpoint TLS (--tls-cert and --tls-key), listen on loopback (--listen 127.0.0.1:8090), or, only if a trusted proxy in front terminates TLS, pass --allow-plain-http (sync.allow_plain_http)".into(),
            IngestError::Bind { addr, .. } => format!(
                "another process may be listening on {addr} (a second agent?), or it is not an address of this host: stop it or choose another --listen (sync.listen)"
            ),
        })
    }
}

/// The bearer key senders must present. Never printed.
#[derive(Clone)]
pub struct IngestKey(SecretString);

impl std::fmt::Debug for IngestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngestKey(..)")
    }
}

impl IngestKey {
    /// Reads the key from `path` (surrounding whitespace, such as the final newline, dropped);
    /// refuses a file group or others may access, and a key under [`MIN_KEY_LEN`].
    pub fn from_file(path: &Path) -> Result<IngestKey, IngestError> {
        let err = |source| IngestError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(IngestError::KeyFilePermissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(err)?);
        Self::new(SecretString::from(text.trim().to_string())).map_err(|()| IngestError::KeyTooShort {
            path: path.to_path_buf(),
        })
    }

    /// A key given directly (tests, or a CLI that reads it elsewhere); `Err` when too short.
    #[allow(clippy::result_unit_err)]
    pub fn new(key: SecretString) -> Result<IngestKey, ()> {
        if key.expose_secret().len() < MIN_KEY_LEN {
            return Err(());
        }
        Ok(IngestKey(key))
    }

    /// Constant-time comparison of `given` with the key.
    fn matches(&self, given: &[u8]) -> bool {
        use aws_lc_rs::digest::{SHA256, digest};
        let want = digest(&SHA256, self.0.expose_secret().as_bytes());
        let got = digest(&SHA256, given);
        aws_lc_rs::constant_time::verify_slices_are_equal(want.as_ref(), got.as_ref()).is_ok()
    }
}

/// The TLS certificate chain and private key, both PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How ingest runs. Build with [`IngestOptions::new`] and adjust.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The source name stored with the events (default `http`).
    pub name: String,
    pub listen: SocketAddr,
    pub key: IngestKey,
    pub tls: Option<TlsFiles>,
    /// Plain HTTP on a non-loopback address (behind a trusted TLS-terminating proxy).
    pub allow_plain_http: bool,
    pub max_body_bytes: usize,
}

impl IngestOptions {
    /// Name `http`, no TLS, plain HTTP only on loopback, 8 MiB bodies.
    pub fn new(listen: SocketAddr, key: IngestKey) -> Self {
        IngestOptions {
            name: "http".into(),
            listen,
            key,
            tls: None,
            allow_plain_http: false,
            max_body_bytes: DEFAULT_MAX_BODY,
        }
    }
}

/// The entry point: see [`IngestServer::bind`].
pub struct IngestServer;

impl IngestServer {
    /// Checks the options (TLS files load, plain HTTP allowed), binds the address, and returns
    /// the bound server; port 0 picks a free port ([`BoundIngest::local_addr`]). Nothing is
    /// served until [`BoundIngest::run`].
    pub async fn bind(opts: IngestOptions, intake: Intake) -> Result<BoundIngest, IngestError> {
        let tls = match &opts.tls {
            Some(files) => Some(tls_acceptor(files)?),
            None if !opts.listen.ip().is_loopback() && !opts.allow_plain_http => {
                return Err(IngestError::PlainHttpNotLoopback { addr: opts.listen });
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| IngestError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| IngestError::Bind {
            addr: opts.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            key: opts.key,
            max_body: opts.max_body_bytes,
            intake,
            stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        Ok(BoundIngest {
            listener,
            addr,
            tls,
            shared,
        })
    }
}

/// A bound ingest server, not yet serving.
pub struct BoundIngest {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
}

impl BoundIngest {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` is cancelled, then stops accepting and lets requests in progress
    /// finish (their commits included) for up to 30 s.
    pub async fn run(self, shutdown: CancellationToken) -> Result<SourceReport, IngestError> {
        let BoundIngest {
            listener, tls, shared, ..
        } = self;
        let router = router(shared.clone());
        let graceful = GracefulShutdown::new();
        loop {
            let (tcp, _peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pass, and do not spin.
                        tracing::warn!(error = %e, "ingest: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let service = TowerToHyperService::new(router.clone());
            let watcher = graceful.watcher();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new());
                let result = match tls {
                    None => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(tcp), service).into_owned())
                            .await
                    }
                    Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(stream), service).into_owned())
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "ingest: TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("ingest: TLS handshake timed out");
                            return;
                        }
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "ingest: connection ended with an error");
                }
            });
        }
        drop(listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
                tracing::warn!("ingest: requests still in progress after {DRAIN_TIMEOUT:?}; stopping anyway");
            }
        }
        Ok(shared.report())
    }
}

impl Source for BoundIngest {
    fn name(&self) -> &str {
        &self.shared.name
    }
    fn run(self: Box<Self>, shutdown: CancellationToken) -> BoxFuture<'static, Result<SourceReport, SourceError>> {
        Box::pin(async move { Ok(BoundIngest::run(*self, shutdown).await?) })
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, IngestError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let stamp = FileStamp::of(&[files.cert.clone(), files.key.clone()]);
    let key = load_certified_key(files, &provider)?;
    let resolver = ReloadingCert {
        files: files.clone(),
        provider: provider.clone(),
        current: std::sync::Mutex::new((stamp, Arc::new(key))),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| IngestError::Tls {
            what: "certificate",
            path: files.cert.clone(),
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificate chain and key of `files`, checked to belong together.
fn load_certified_key(
    files: &TlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, IngestError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |detail: String| IngestError::Tls {
        what: "certificate",
        path: files.cert.clone(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| IngestError::Tls {
        what: "private key",
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    rustls::sign::CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| cert_err(format!("does not fit the private key or is unusable: {e}")))
}

/// The intake's certificate for each new connection: loaded again first when its files changed
/// on disk (issue 21), so a renewed certificate is served without a restart. A changed pair that
/// does not load (half copied, a key that does not fit) is logged, and the previous one is
/// served until the files change again. Connections already open keep their session.
#[derive(Debug)]
struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: std::sync::Mutex<(FileStamp, Arc<rustls::sign::CertifiedKey>)>,
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let mut current = self.current.lock().ok()?;
        let now = FileStamp::of(&[self.files.cert.clone(), self.files.key.clone()]);
        if current.0 != now {
            current.0 = now;
            match load_certified_key(&self.files, &self.provider) {
                Ok(key) => {
                    tracing::info!(certificate = %self.files.cert.display(), "the intake's TLS certificate changed on disk: serving the new one");
                    current.1 = Arc::new(key);
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "the intake's TLS certificate changed on disk but cannot be used; still serving the previous one"
                ),
            }
        }
        Some(current.1.clone())
    }
}

struct Shared {
    name: String,
    key: IngestKey,
    max_body: usize,
    intake: Intake,
    stored: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn report(&self) -> SourceReport {
        SourceReport {
            name: self.name.clone(),
            stored: self.stored.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new().route("/events", post(post_events)).with_state(shared)
}

fn problem(status: StatusCode, error: &str, message: &str) -> Response {
    (status, axum::Json(json!({ "error": error, "message": message }))).into_response()
}

fn authorized(headers: &HeaderMap, key: &IngestKey) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let v = value.as_bytes();
    // The scheme is case-insensitive (RFC 9110 §11.1).
    v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") && key.matches(v[7..].trim_ascii())
}

/// How the body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Json,
    Ndjson,
}

/// The body's shape from its declared type: `Ok(None)` when the body itself must tell (no type,
/// or `application/x-www-form-urlencoded`: what `curl --data-binary @events.ndjson` sends unless
/// told otherwise, and nothing a form would post here); `Err` for any other type (415: a sender
/// that names a type means it).
fn declared_shape(headers: &HeaderMap) -> Result<Option<Shape>, ()> {
    let mime = match headers.get(header::CONTENT_TYPE) {
        None => String::new(),
        Some(v) => v
            .to_str()
            .map_err(|_| ())?
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    };
    match mime.as_str() {
        "application/json" => Ok(Some(Shape::Json)),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "text/plain" => Ok(Some(Shape::Ndjson)),
        "" | "application/x-www-form-urlencoded" => Ok(None),
        _ => Err(()),
    }
}

/// An undeclared body by its first character: `[` an array of events, else NDJSON (a single
/// object on one line is one line of NDJSON).
fn sniffed_shape(body: &[u8]) -> Shape {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Shape::Json,
        _ => Shape::Ndjson,
    }
}

async fn post_events(State(st): State<Arc<Shared>>, req: Request) -> Response {
    if st.intake.health.is_draining() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the agent is shutting down and takes no events; send them again to the next instance",
        );
    }
    if !authorized(req.headers(), &st.key) {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer key (Authorization: Bearer <ingest key>)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!(
                "the body is over {} bytes; split the events over several requests",
                st.max_body
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_body as u64) {
        return too_large();
    }
    let Ok(declared) = declared_shape(req.headers()) else {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json (an event or an array of events) or application/x-ndjson (one event per line)",
        );
    };
    let body = match axum::body::to_bytes(req.into_body(), st.max_body).await {
        Ok(b) => b,
        Err(e) => {
            let over = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            if over {
                return too_large();
            }
            return problem(StatusCode::BAD_REQUEST, "body", "the request body could not be read");
        }
    };
    let shape = declared.unwrap_or_else(|| sniffed_shape(&body));
    let cx = st.intake.context(&st.name);
    let (events, refusals) = parse_body(&body, shape, &cx);
    if !refusals.is_empty() {
        st.refused.fetch_add(refusals.len() as u64, Ordering::Relaxed);
        for r in &refusals {
            st.intake.refused(&st.name, r);
        }
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({
                "error": "invalid_events",
                "message": "the request was refused whole: nothing of it was stored; fix the events listed and send it again",
                "refused": refusals,
            })),
        )
            .into_response();
    }
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    // For the flood guard's refusal, which names the event's customer (masked).
    let customers: Vec<String> = events.iter().map(|e| e.customer_id.clone()).collect();
    match st.intake.commit(&st.name, events).await {
        Ok(results) => {
            let (stored, duplicate) = counts(&results);
            st.stored.fetch_add(stored, Ordering::Relaxed);
            st.duplicates.fetch_add(duplicate, Ordering::Relaxed);
            let each: Vec<Value> = ids
                .iter()
                .zip(&results)
                .map(|(id, r)| {
                    let result = match r {
                        Enqueued::Stored { .. } => "stored",
                        Enqueued::Duplicate { .. } => "duplicate",
                    };
                    json!({ "event_id": id, "result": result })
                })
                .collect();
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "stored": stored, "duplicate": duplicate, "events": each })),
            )
                .into_response()
        }
        // An event id that names another stored event: the sender's mistake, not the store's.
        Err(StoreError::EventIdConflict { index, seq }) => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "error": "event_id_conflict",
                "message": format!(
                    "event {index}: its event_id is stored already, as outbox entry {seq}, for a different event (operation, customer or start date); an event id names one event for good; nothing of the request was stored"
                ),
                "index": index,
                "seq": seq,
            })),
        )
            .into_response(),
        // One customer would have more unfinished events than the flood guard allows.
        Err(StoreError::CustomerFlood { index, max }) => {
            st.refused.fetch_add(1, Ordering::Relaxed);
            let refused: Vec<Refusal> = ids
                .get(index)
                .zip(customers.get(index))
                .map(|(id, customer)| flood_refusal(Location::Index { index, line: None }, id, customer, max))
                .into_iter()
                .collect();
            for r in &refused {
                st.intake.refused(&st.name, r);
            }
            (
                StatusCode::CONFLICT,
                axum::Json(json!({
                    "error": "customer_flood",
                    "message": format!(
                        "event {index}: its customer has {max} unfinished events in the outbox already (sync.max_events_per_customer); the request was refused whole: nothing of it was stored"
                    ),
                    "index": index,
                    "refused": refused,
                })),
            )
                .into_response()
        }
        Err(_) => {
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store",
                "the state store did not commit the events; nothing was stored; send them again later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            r
        }
    }
}

/// The events of a body, or every refusal in it (a request is taken whole or not at all).
pub(crate) fn parse_body(body: &[u8], shape: Shape, cx: &event::Context) -> (Vec<NewEvent>, Vec<Refusal>) {
    let whole = |b: Broken| (vec![], vec![b.at(Location::Index { index: 0, line: None }, None)]);
    let Ok(text) = std::str::from_utf8(body) else {
        return whole(Broken::new("body", "encoding", "the body is not UTF-8"));
    };
    let mut events = vec![];
    let mut refusals = vec![];
    let mut take = |r: Result<NewEvent, Refusal>| match r {
        Ok(e) => events.push(e),
        Err(r) => refusals.push(r),
    };
    match shape {
        Shape::Json => {
            let decoded = match event::decode(text) {
                Ok(d) => d,
                Err(e) => {
                    let b = event::json_syntax(&e);
                    return whole(Broken::new("body", "json", b.message));
                }
            };
            // An event naming a key twice is refused, whatever its other fields say.
            let one = |index: usize, v: &Value| {
                let at = Location::Index { index, line: None };
                let repeated = decoded.duplicates.iter().find(|(i, _)| i.unwrap_or(0) == index);
                match repeated {
                    Some((_, key)) => Err(event::duplicate_key(key).at(at, v.get("event_id").and_then(Value::as_str))),
                    None => event::from_json(v, at, cx),
                }
            };
            match &decoded.value {
                Value::Array(items) => {
                    for (index, v) in items.iter().enumerate() {
                        take(one(index, v));
                    }
                }
                v @ Value::Object(_) => take(one(0, v)),
                _ => {
                    return whole(Broken::new(
                        "body",
                        "shape",
                        "the body is neither an event object nor an array of events",
                    ));
                }
            }
        }
        Shape::Ndjson => {
            let mut index = 0;
            for (n, line) in text.split('\n').enumerate() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if line.trim().is_empty() {
                    continue;
                }
                let at = Location::Index {
                    index,
                    line: Some(n as u64 + 1),
                };
                take(event::from_json_text(line, at, cx));
                index += 1;
            }
        }
    }
    if events.is_empty() && refusals.is_empty() {
        return whole(Broken::new("body", "empty", "the request holds no events"));
    }
    if !refusals.is_empty() {
        events.clear();
    }
    (events, refusals)
}

#[cfg(test)]
mod tests;
