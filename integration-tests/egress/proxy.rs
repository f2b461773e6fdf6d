//! A bank's egress proxy, small enough to read, on a loopback port chosen by the OS: it takes
//! `CONNECT host:port`, may demand `Proxy-Authorization: Basic` (407 without it), and either
//! tunnels the bytes untouched or inspects TLS: it answers the client's handshake with a
//! certificate for the target made on the spot by its own CA (the bank's, which `kfr` knows only
//! through `extra_ca_bundle`) and opens its own TLS to the target, trusting the target's CA.
//! Every CONNECT is recorded, so a test can assert that traffic went through it.

use kfr::certs::TlsCa;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What the proxy does with a tunnel.
pub(crate) enum Mode {
    /// Relays the bytes (TLS end to end between `kfr` and the server).
    Tunnel,
    /// Terminates TLS with certificates from `ca`, and re-encrypts to the target, which must
    /// present a certificate from `upstream_ca_pem`.
    Inspect { ca: Box<TlsCa>, upstream_ca_pem: String },
}

/// One CONNECT the proxy saw.
#[derive(Debug, Clone)]
pub(crate) struct Connect {
    /// `host:port` asked for.
    pub(crate) target: String,
    /// Refused with 407 (credentials missing or wrong).
    pub(crate) refused: bool,
}

pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Connect>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    mode: Mode,
    /// The exact `Proxy-Authorization` value required, when credentials are.
    expected_auth: Option<String>,
    seen: Arc<Mutex<Vec<Connect>>>,
}

impl Proxy {
    /// Starts the proxy; `credentials` (user, password) makes it demand them.
    pub(crate) async fn start(mode: Mode, credentials: Option<(&str, &str)>) -> Proxy {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(vec![]));
        let shared = Arc::new(Shared {
            mode,
            expected_auth: credentials.map(|(u, p)| {
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )
            }),
            seen: seen.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = handle(tcp, &shared).await;
                });
            }
        });
        Proxy { addr, seen, task }
    }

    /// `http://127.0.0.1:port`, or with `user:password@` in it.
    pub(crate) fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("http://{u}:{p}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// Every CONNECT so far.
    pub(crate) fn connects(&self) -> Vec<Connect> {
        self.seen.lock().unwrap().clone()
    }

    /// CONNECTs let through.
    pub(crate) fn tunnels(&self) -> usize {
        self.connects().iter().filter(|c| !c.refused).count()
    }

    /// CONNECTs refused with 407.
    pub(crate) fn refusals(&self) -> usize {
        self.connects().iter().filter(|c| c.refused).count()
    }
}

/// The request head, up to the empty line. The client sends nothing more before our answer.
async fn read_head(tcp: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 || head.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn handle(mut tcp: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let head = read_head(&mut tcp).await?;
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split(' ');
    let (method, target) = (request.next().unwrap_or_default(), request.next().unwrap_or_default());
    if method != "CONNECT" {
        // Only tunnels: kfr talks https to Maskinporten and KFR.
        tcp.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    let auth = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_string())
    });
    let refused = shared.expected_auth.as_ref().is_some_and(|e| auth.as_ref() != Some(e));
    shared.seen.lock().unwrap().push(Connect {
        target: target.to_string(),
        refused,
    });
    if refused {
        tcp.write_all(
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"bank egress\"\r\nContent-Length: 0\r\n\r\n",
        )
        .await?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect(target).await?;
    tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await?;
    match &shared.mode {
        Mode::Tunnel => {
            tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await?;
        }
        Mode::Inspect { ca, upstream_ca_pem } => {
            let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
            let mut client_side = acceptor_for(ca, host).accept(tcp).await?;
            let mut server_side = connector(upstream_ca_pem)
                .connect(ServerName::try_from(host.to_string()).unwrap(), upstream)
                .await?;
            tokio::io::copy_bidirectional(&mut client_side, &mut server_side).await?;
        }
    }
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The inspecting side: a certificate for `host` from the bank's CA. HTTP/1.1 only, so both
/// halves speak the same protocol and the bytes can be relayed.
fn acceptor_for(ca: &TlsCa, host: &str) -> tokio_rustls::TlsAcceptor {
    let cert = ca.issue_server(&[host], None).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// The proxy's own TLS to the target, trusting only the target's CA.
fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
