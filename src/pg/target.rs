//! [`Target`]: one PostgreSQL server as configured, and how to connect to it.

use secrecy::{ExposeSecret as _, SecretString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long a connection attempt may take before it is reported as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL server and database, as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// `postgres://user@host:port/database[?options]`, never with a password in it.
    pub url: String,
    /// A file holding the role's password (read at each connection, so a rotated password is
    /// picked up by the next one).
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) the server's certificate must chain to; TLS is then required.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({})", self.describe())
    }
}

/// Why a connection could not be made; never contains the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url} is not a PostgreSQL URL kfr can use: {detail}")]
    Url { url: String, detail: String },
    #[error("cannot read the PostgreSQL password file {path}: {source}")]
    PasswordFile { path: PathBuf, source: std::io::Error },
    #[error("the PostgreSQL password file {path} may be read by others (mode {mode:o})")]
    PasswordFileMode { path: PathBuf, mode: u32 },
    #[error("cannot use the CA file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
}

impl crate::error::Hinted for ConnectError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            ConnectError::Url { .. } => {
                "write it as postgres://user@host:port/database; the password goes in a file (password_file), the CA in ca_file".into()
            }
            ConnectError::PasswordFile { .. } => "the file holds the role's password on one line".into(),
            ConnectError::PasswordFileMode { path, .. } => format!("chmod 600 {}", path.display()),
            ConnectError::CaFile { .. } => "give the PEM file of the CA that signed the server's certificate".into(),
            ConnectError::Connect { .. } => {
                "check that the server runs and takes connections from this host (pg_hba.conf), the role and its password, and that its certificate names the host in the URL".into()
            }
        })
    }
}

impl Target {
    /// For messages: the URL as configured (it holds no password).
    pub fn describe(&self) -> String {
        self.url.clone()
    }

    /// The connection settings: the URL parsed, the password read from its file, kfr named as
    /// the application (visible in `pg_stat_activity`), a connect timeout.
    pub fn config(&self, application: &str) -> Result<tokio_postgres::Config, ConnectError> {
        let mut config: tokio_postgres::Config =
            self.url.parse().map_err(|e: tokio_postgres::Error| ConnectError::Url {
                url: self.url.clone(),
                detail: e.to_string(),
            })?;
        if config.get_password().is_some() {
            return Err(ConnectError::Url {
                url: "the URL".into(),
                detail: "it carries a password; put it in password_file".into(),
            });
        }
        if let Some(path) = &self.password_file {
            let password = read_password(path)?;
            config.password(password.expose_secret().as_bytes());
        }
        config.application_name(application);
        config.connect_timeout(CONNECT_TIMEOUT);
        match (&self.ca_file, config.get_ssl_mode()) {
            (Some(_), _) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
            }
            (None, tokio_postgres::config::SslMode::Require) => {
                return Err(ConnectError::Url {
                    url: self.url.clone(),
                    detail: "it asks for TLS but no CA file is given to verify the server with (ca_file)".into(),
                });
            }
            (None, _) => {
                // `prefer` is libpq's default: TLS if offered, unverified. kfr does not send a
                // password over a TLS it cannot verify, so without a CA file it is plain (for a
                // Unix socket or loopback) and says so in the docs.
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            }
        }
        Ok(config)
    }

    /// The TLS connector: rustls verifying the chain to the CA file and the host name.
    fn tls(&self) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, ConnectError> {
        let Some(path) = &self.ca_file else { return Ok(None) };
        let ca_err = |detail: String| ConnectError::CaFile {
            path: path.clone(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        let mut found = 0;
        for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
            let cert: rustls_pki_types::CertificateDer<'static> =
                cert.map_err(|e| ca_err(format!("not PEM: {e:?}")))?;
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            found += 1;
        }
        if found == 0 {
            return Err(ca_err("it holds no certificate".into()));
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_err(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
    }

    fn connect_error(&self, e: impl std::fmt::Display) -> ConnectError {
        ConnectError::Connect {
            url: self.describe(),
            detail: e.to_string(),
        }
    }

    /// A blocking client (for a thread of its own, never inside an async task).
    pub fn connect_blocking(&self, application: &str) -> Result<postgres::Client, ConnectError> {
        let config = postgres::Config::from(self.config(application)?);
        match self.tls()? {
            Some(tls) => config.connect(tls),
            None => config.connect(tokio_postgres::NoTls),
        }
        .map_err(|e| self.connect_error(error_chain(&e)))
    }

    /// An async client, and its connection as a task that ends when the session ends (the
    /// server went away, the connection was terminated): await it to learn so.
    pub async fn connect(
        &self,
        application: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        ConnectError,
    > {
        let config = self.config(application)?;
        match self.tls()? {
            Some(tls) => {
                let (client, conn) = config
                    .connect(tls)
                    .await
                    .map_err(|e| self.connect_error(error_chain(&e)))?;
                Ok((client, tokio::spawn(conn)))
            }
            None => {
                let (client, conn) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| self.connect_error(error_chain(&e)))?;
                Ok((client, tokio::spawn(conn)))
            }
        }
    }
}

/// A PostgreSQL error with its causes (the server's message, the refused connection).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        src = s.source();
    }
    text
}

/// The password in `path` (surrounding whitespace dropped); refuses a file others may read.
fn read_password(path: &Path) -> Result<SecretString, ConnectError> {
    let err = |source| ConnectError::PasswordFile {
        path: path.to_path_buf(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map_err(err)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(ConnectError::PasswordFileMode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(err)?);
    Ok(SecretString::from(text.trim().to_string()))
}
