//! The environment an installation talks to: the bundled mock, Digdir's and Bits' test services,
//! or production. It decides default URLs, which identifiers are accepted and whether plain HTTP
//! is allowed, so it sits at the bottom of the module graph where every layer can name it.

use std::fmt;

/// The Maskinporten + KFR environment this installation talks to (kfr-notes §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// The bundled mock on loopback (`kfr mock`).
    Local,
    /// Digdir's test Maskinporten and Bits' preprod KFR.
    Test,
    /// Production.
    Prod,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Local => "local",
            Environment::Test => "test",
            Environment::Prod => "prod",
        }
    }

    /// Default Maskinporten issuer (= grant audience, with its trailing slash; kfr-notes §9).
    pub fn default_issuer(self) -> &'static str {
        match self {
            Environment::Local => "http://127.0.0.1:8080/maskinporten/",
            Environment::Test => "https://test.maskinporten.no/",
            Environment::Prod => "https://maskinporten.no/",
        }
    }

    /// Default KFR base URL (kfr-notes §2).
    pub fn default_kfr_base_url(self) -> &'static str {
        match self {
            Environment::Local => "http://127.0.0.1:8080/kar-ws/api/v1",
            Environment::Test => "https://preprod.api.bits.no/kar-ws/api/v1",
            Environment::Prod => "https://api.bits.no/kar-ws/api/v1",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
