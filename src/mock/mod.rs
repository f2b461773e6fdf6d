//! The bundled fake Maskinporten and fake KFR, one axum server with one admin surface.

/// Flags of `kfr mock`.
#[derive(Debug, clap::Args)]
pub struct MockFlags {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}
