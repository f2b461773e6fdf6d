//! The institution's business certificate (virksomhetssertifikat) and its private key: loading,
//! checking and describing it.
//!
//! Maskinporten's JWT-bearer grant is signed RS256 with the key of the business certificate, and
//! the certificate itself travels in the `x5c` header (kfr-notes §3, §9). So a [`Credential`] is
//! exactly: an RSA private key ready for `jsonwebtoken`, the leaf certificate's DER, and any
//! intermediates that came with it. Two on-disk shapes are accepted:
//!
//! - **PKCS#12** (`certificate` + a password), the way Buypass and Commfides deliver soft
//!   certificates. Both the legacy profile (RC2-40/3DES, SHA-1 MAC) and the OpenSSL 3 default
//!   (AES-256-CBC with PBKDF2, SHA-256 MAC) load.
//! - **PEM** (`private_key` + `certificate_pem`): PKCS#8 (`PRIVATE KEY`), encrypted PKCS#8
//!   (`ENCRYPTED PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`); the certificate file holds the leaf
//!   first, then the chain.
//!
//! Whatever the shape, the key must be RSA (RS256 is the only algorithm kfr signs with) and must
//! belong to the leaf certificate; this is checked by signing a probe message with the key and
//! verifying it with the certificate's public key, so a mismatch is caught here, with the file
//! names, rather than later as an opaque `invalid_grant` from Maskinporten.
//!
//! Secrets: passwords are only exposed (via [`ExposeSecret`]) at the call that decrypts; the
//! decoded key bytes live in [`Zeroizing`] buffers; no `Debug`/`Display` prints key material.
//! One gap remains outside our control: `jsonwebtoken::EncodingKey` keeps its own copy of the
//! PKCS#1 key in a plain `Vec` that is not wiped on drop.

use crate::env_vars::KFR_CERTIFICATE_PASSWORD;
use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use p12_keystore::KeyStore;
use secrecy::{ExposeSecret as _, SecretString};
use std::fmt;
use std::path::{Path, PathBuf};
use x509_parser::prelude::*;
use zeroize::Zeroizing;

/// How the business certificate and its key are supplied.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    Pkcs12 {
        path: PathBuf,
        password: Option<SecretString>,
    },
    Pem {
        private_key: PathBuf,
        certificate: PathBuf,
        password: Option<SecretString>,
    },
}

impl CredentialSource {
    /// The files the credential is read from.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            CredentialSource::Pkcs12 { path, .. } => vec![path.clone()],
            CredentialSource::Pem {
                private_key,
                certificate,
                ..
            } => vec![certificate.clone(), private_key.clone()],
        }
    }
}

/// rsaEncryption (RFC 8017): the only private-key algorithm accepted.
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
/// X.520 serialNumber; Buypass and Commfides put the org.nr here (kfr-notes §3).
const OID_SERIAL_NUMBER: &str = "2.5.4.5";
/// X.520 organizationIdentifier; eIDAS-style profiles carry the org.nr as `NTRNO-<org.nr>`.
const OID_ORGANIZATION_IDENTIFIER: &str = "2.5.4.97";

/// Why a credential could not be loaded. Every variant names the file involved; none carries
/// key material or passwords.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path} does not exist")]
    NotFound { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is encrypted, but no password is configured")]
    PasswordRequired { path: PathBuf },
    #[error("wrong password for {path}: {detail}")]
    WrongPassword { path: PathBuf, detail: &'static str },
    #[error("{path} is not a PKCS#12 file: {detail}")]
    NotPkcs12 { path: PathBuf, detail: String },
    #[error("cannot open the PKCS#12 file {path}: {detail}")]
    Pkcs12 { path: PathBuf, detail: String },
    #[error("{path} holds no private key (with a certificate belonging to it)")]
    NoPrivateKey { path: PathBuf },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the private key in {key} does not belong to the certificate in {certificate}")]
    KeyMismatch { key: PathBuf, certificate: PathBuf },
    #[error("the private key in {path} is {algorithm}; only RSA keys can sign Maskinporten grants (RS256)")]
    UnsupportedKeyType { path: PathBuf, algorithm: String },
    #[error("the RSA private key in {path} is not usable: {detail}")]
    InvalidKey { path: PathBuf, detail: String },
    #[error("{path} uses the old OpenSSL PEM encryption (Proc-Type: 4,ENCRYPTED), which is not supported")]
    LegacyEncryptedPem { path: PathBuf },
    #[error("cannot read PEM from {path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("{path} holds a certificate that cannot be parsed: {detail}")]
    Certificate { path: PathBuf, detail: String },
}

impl crate::error::Hinted for CredentialError {
    fn hint(&self) -> Option<String> {
        use CredentialError::*;
        let password_sources = format!("{KFR_CERTIFICATE_PASSWORD} or certificate_password_file");
        Some(match self {
            NotFound { .. } => "check `certificate` / `private_key` / `certificate_pem`; relative paths in kfr.toml \
                                are resolved against the directory of kfr.toml"
                .into(),
            Read { .. } => "check that the file is readable by the user running kfr".into(),
            PasswordRequired { .. } => format!("set {password_sources} (the password is never accepted as a flag)"),
            WrongPassword { .. } => format!(
                "check the password in {password_sources}; a trailing newline in the file is ignored, other \
                 whitespace is not"
            ),
            NotPkcs12 { .. } => "if you have PEM files, configure `private_key` + `certificate_pem` instead of \
                                 `certificate`; `openssl pkcs12 -info -noout -in FILE` shows what a PKCS#12 file holds"
                .into(),
            Pkcs12 { .. } => "re-export it with OpenSSL 3 defaults: `openssl pkcs12 -in OLD.p12 -nodes | openssl \
                              pkcs12 -export -out NEW.p12` (add -legacy to the first command for old files)"
                .into(),
            NoPrivateKey { .. } => "the file holds only certificates; use the PKCS#12 file delivered with the \
                                    business certificate's private key (a smart-card certificate cannot be used)"
                .into(),
            NoCertificate { .. } => "the certificate file must hold the business certificate as \
                                     `-----BEGIN CERTIFICATE-----`, leaf first, then the chain"
                .into(),
            KeyMismatch { .. } => "the key and certificate come from different key pairs; compare \
                                   `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`"
                .into(),
            UnsupportedKeyType { .. } => "a Buypass/Commfides business certificate has an RSA key; check that this \
                                          is the authentication certificate, not some other key"
                .into(),
            InvalidKey { .. } => "Maskinporten needs an RSA key of at least 2048 bits".into(),
            LegacyEncryptedPem { .. } => "convert it to encrypted PKCS#8: `openssl pkcs8 -topk8 -v2 aes-256-cbc -in \
                                          OLD.pem -out NEW.pem`"
                .into(),
            Pem { .. } => "expected a PEM file (`-----BEGIN …-----`); for DER input convert with `openssl pkey` \
                           or `openssl x509 -inform der`"
                .into(),
            Certificate { .. } => {
                "`openssl x509 -noout -text -in FILE` shows whether the certificate is readable".into()
            }
        })
    }
}

/// What kfr needs to know about a certificate, read from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN as text, e.g. `C=NO, O=BITS AS, CN=BITS AS TEST, serialNumber=916960190`.
    pub subject: String,
    pub issuer: String,
    /// The issuer's common name, e.g. `Buypass Class 3 Test4 CA G2 ST Business`.
    pub issuer_cn: Option<String>,
    /// The organisation number from the subject: the serialNumber attribute when it is 9 digits
    /// (Buypass/Commfides, kfr-notes §3), else an organizationIdentifier `NTRNO-<9 digits>`.
    pub org_number: Option<String>,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    /// `None` when the certificate has no KeyUsage extension at all.
    pub key_usage_digital_signature: Option<bool>,
    pub is_ca: bool,
    /// The issuer looks like a test CA. Heuristic: some word of the issuer's CN, O or OU starts
    /// with "test" (case-insensitive). That matches Buypass "… Test4 CA …", Commfides "… TEST …"
    /// and our own "KFR Local Test CA", and not production issuers. A hint for messages only:
    /// Maskinporten itself decides which environment accepts a certificate (kfr-notes §2).
    pub test_issuer: bool,
    /// SHA-256 of the DER, upper-case hex pairs separated by colons (as `openssl x509
    /// -fingerprint -sha256` prints it).
    pub sha256_fingerprint: String,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Result<Self, CredentialError> {
        cert_info(der, Path::new("<certificate>"))
    }

    /// True when `now` lies within the validity period.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn cert_info(der: &[u8], path: &Path) -> Result<CertInfo, CredentialError> {
    let bad = |detail: String| CredentialError::Certificate {
        path: path.into(),
        detail,
    };
    let (_, cert) = parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
    let timestamp = |t: ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0).ok_or_else(|| bad("validity date out of range".into()))
    };
    let key_usage = cert
        .key_usage()
        .map_err(|e| bad(format!("KeyUsage: {e}")))?
        .map(|ku| ku.value.digital_signature());
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| bad(format!("BasicConstraints: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        issuer_cn: cert
            .issuer()
            .iter_common_name()
            .find_map(|a| a.as_str().ok())
            .map(str::to_string),
        org_number: subject_org_number(cert.subject()),
        not_before: timestamp(cert.validity().not_before)?,
        not_after: timestamp(cert.validity().not_after)?,
        key_usage_digital_signature: key_usage,
        is_ca,
        test_issuer: looks_like_test_issuer(cert.issuer()),
        sha256_fingerprint: fingerprint(der),
    })
}

/// What Digdir's trust list says about a business certificate's issuing CA, by the CA's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuingCa {
    /// A SEID 2.0 CA Maskinporten trusts in test (Buypass Test4 G2 ST Business, Commfides G3 TEST).
    Seid2Test,
    /// A SEID 2.0 CA Maskinporten trusts in production (Buypass G2 ST/HT Business, Commfides G3).
    Seid2Prod,
    /// Buypass' older Class 3 (Test4) CA 3: still issued from, but on its way out for SEID 2.0.
    /// `test` says which environment it belongs to.
    BuypassCa3 { test: bool },
    /// Commfides' SEID 1 CAs, whose certificates stopped working on 31.12.2024.
    CommfidesSeid1,
    /// A name Digdir's list does not hold (our local test CA, or something else).
    Unknown,
}

impl IssuingCa {
    /// Classifies an issuer common name. Exact names for the SEID 2.0 CAs; Commfides' SEID 1
    /// CAs all carry "CPN" in their names.
    pub fn from_cn(cn: &str) -> Self {
        match cn.trim() {
            "Buypass Class 3 Test4 CA G2 ST Business" | "Commfides Legal Person - G3 - TEST" => IssuingCa::Seid2Test,
            "Buypass Class 3 CA G2 ST Business"
            | "Buypass Class 3 CA G2 HT Business"
            | "Commfides Legal Person - G3" => IssuingCa::Seid2Prod,
            "Buypass Class 3 Test4 CA 3" => IssuingCa::BuypassCa3 { test: true },
            "Buypass Class 3 CA 3" => IssuingCa::BuypassCa3 { test: false },
            other if other.starts_with("Commfides") && other.contains("CPN") => IssuingCa::CommfidesSeid1,
            _ => IssuingCa::Unknown,
        }
    }
}

/// The organisation number a business certificate's subject names: the serialNumber attribute
/// when it is 9 digits (Buypass/Commfides, kfr-notes §3), else an organizationIdentifier
/// `NTRNO-<9 digits>` (SEID 2.0 / eIDAS style). Surrounding spaces are trimmed: a padded value
/// still names the same organisation, and refusing it would turn a cosmetic quirk of a subject
/// into "no org.nr". The one reading of the rule, shared by the client (`kfr doctor`, the
/// credential check) and the mock Maskinporten, so the two cannot disagree about a certificate.
pub fn subject_org_number(subject: &X509Name<'_>) -> Option<String> {
    let nine_digits = |s: &str| s.len() == 9 && s.bytes().all(|b| b.is_ascii_digit());
    let values = |oid: &'static str| {
        subject
            .iter_attributes()
            .filter(move |a| a.attr_type().to_id_string() == oid)
            .filter_map(|a| a.as_str().ok())
    };
    values(OID_SERIAL_NUMBER)
        .map(str::trim)
        .find(|s| nine_digits(s))
        .or_else(|| {
            values(OID_ORGANIZATION_IDENTIFIER)
                .filter_map(|s| s.trim().strip_prefix("NTRNO-"))
                .find(|s| nine_digits(s))
        })
        .map(str::to_string)
}

fn looks_like_test_issuer(issuer: &X509Name<'_>) -> bool {
    issuer
        .iter_common_name()
        .chain(issuer.iter_organization())
        .chain(issuer.iter_organizational_unit())
        .filter_map(|a| a.as_str().ok())
        .flat_map(|s| s.split(|c: char| !c.is_alphanumeric()))
        .any(|word| word.to_ascii_lowercase().starts_with("test"))
}

fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let pairs: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    pairs.join(":")
}

/// The business certificate with its RSA private key, ready to sign RS256 grants.
pub struct Credential {
    encoding_key: jsonwebtoken::EncodingKey,
    leaf_der: Vec<u8>,
    chain_der: Vec<Vec<u8>>,
    info: CertInfo,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("info", &self.info)
            .field("chain_len", &self.chain_der.len())
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl Credential {
    /// Loads a PKCS#12 file.
    pub fn from_pkcs12(path: &Path, password: &SecretString) -> Result<Self, CredentialError> {
        let der = read(path)?;
        pkcs12(&der, password, path)
    }

    /// Loads PKCS#12 bytes (errors name the source as `<PKCS#12 bytes>`).
    pub fn from_pkcs12_bytes(der: &[u8], password: &SecretString) -> Result<Self, CredentialError> {
        pkcs12(der, password, Path::new("<PKCS#12 bytes>"))
    }

    /// Loads a PEM private key (PKCS#8, encrypted PKCS#8 or PKCS#1) and a PEM certificate file
    /// (leaf first, then the chain). `password` is only used for an encrypted key.
    pub fn from_pem(
        private_key: &Path,
        certificate: &Path,
        password: Option<&SecretString>,
    ) -> Result<Self, CredentialError> {
        let key_text = Zeroizing::new(read(private_key)?);
        let pkcs1 = pem_private_key(&key_text, password, private_key)?;
        let cert_text = read(certificate)?;
        let certs: Vec<Vec<u8>> = pem_blocks(&cert_text, certificate)?
            .into_iter()
            .filter(|b| b.label == "CERTIFICATE")
            .map(|b| b.der.to_vec())
            .collect();
        if certs.is_empty() {
            return Err(CredentialError::NoCertificate {
                path: certificate.into(),
            });
        }
        assemble(pkcs1, certs, private_key, certificate)
    }

    /// Loads whatever the configuration points at. A PKCS#12 file needs a password; a PEM key
    /// only when it is encrypted.
    pub fn from_config(src: &CredentialSource) -> Result<Self, CredentialError> {
        match src {
            CredentialSource::Pkcs12 { path, password } => match password {
                Some(p) => Self::from_pkcs12(path, p),
                None => Err(CredentialError::PasswordRequired { path: path.clone() }),
            },
            CredentialSource::Pem {
                private_key,
                certificate,
                password,
            } => Self::from_pem(private_key, certificate, password.as_ref()),
        }
    }

    /// The signing key for `jsonwebtoken` (`Algorithm::RS256`).
    pub fn encoding_key(&self) -> &jsonwebtoken::EncodingKey {
        &self.encoding_key
    }

    /// DER of the business certificate itself (the only entry of `x5c`, kfr-notes §3).
    pub fn leaf_der(&self) -> &[u8] {
        &self.leaf_der
    }

    /// Certificates that came with the leaf (intermediates, maybe the root), leaf excluded.
    pub fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    /// The leaf as an `x5c` entry: standard base64 (not base64url) of the DER (kfr-notes §9).
    pub fn leaf_x5c(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.leaf_der)
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => CredentialError::NotFound { path: path.into() },
        _ => CredentialError::Read {
            path: path.into(),
            source,
        },
    })
}

fn pkcs12(der: &[u8], password: &SecretString, path: &Path) -> Result<Credential, CredentialError> {
    let not_p12 = |detail: &str| CredentialError::NotPkcs12 {
        path: path.into(),
        detail: detail.into(),
    };
    if der.starts_with(b"-----BEGIN") {
        return Err(not_p12("it is a PEM file"));
    }
    // A PKCS#12 PFX is a DER SEQUENCE; anything else is not worth handing to the parser.
    if der.first() != Some(&0x30) {
        return Err(not_p12("it does not start with a DER SEQUENCE"));
    }
    let store = KeyStore::from_pkcs12(der, password.expose_secret()).map_err(|e| {
        use p12_keystore::error::Error as E;
        match e {
            // The MAC is keyed with the password, so a MAC failure means a wrong password (or a
            // corrupted file, which is far rarer). Without a MAC, a wrong password shows up as bad
            // padding after decryption.
            E::MacError(_) => CredentialError::WrongPassword {
                path: path.into(),
                detail: "the PKCS#12 integrity check (MAC) failed",
            },
            E::UnpadError => CredentialError::WrongPassword {
                path: path.into(),
                detail: "the PKCS#12 contents did not decrypt",
            },
            E::DerError(_) | E::InvalidVersion | E::UnsupportedContentType => not_p12(&e.to_string()),
            other => CredentialError::Pkcs12 {
                path: path.into(),
                detail: other.to_string(),
            },
        }
    })?;

    // p12-keystore pairs each key with the certificate carrying the same localKeyId and follows
    // issuer names for the chain. Some deliveries hold more than one key pair (e.g. an
    // authentication and an encryption certificate); the one allowed to sign is the one we want.
    let chains: Vec<_> = store
        .entries()
        .filter_map(|(_, e)| match e {
            p12_keystore::KeyStoreEntry::PrivateKeyChain(c) => Some(c),
            _ => None,
        })
        .collect();
    let signs = |c: &&&p12_keystore::PrivateKeyChain| {
        c.chain()
            .first()
            .and_then(|leaf| cert_info(leaf.as_der(), path).ok())
            .is_some_and(|i| i.key_usage_digital_signature != Some(false))
    };
    let chain = chains
        .iter()
        .find(signs)
        .or(chains.first())
        .copied()
        .ok_or_else(|| CredentialError::NoPrivateKey { path: path.into() })?;
    let certs: Vec<Vec<u8>> = chain.chain().iter().map(|c| c.as_der().to_vec()).collect();
    if certs.is_empty() {
        return Err(CredentialError::NoCertificate { path: path.into() });
    }
    let pkcs1 = pkcs8_to_rsa(chain.key(), path)?;
    assemble(pkcs1, certs, path, path)
}

/// Picks the certificate that belongs to the key as the leaf (normally the first), keeps the
/// others as the chain, and builds the credential.
fn assemble(
    pkcs1: Zeroizing<Vec<u8>>,
    mut certs: Vec<Vec<u8>>,
    key_path: &Path,
    cert_path: &Path,
) -> Result<Credential, CredentialError> {
    let key_pair = RsaKeyPair::from_der(&pkcs1).map_err(|e| CredentialError::InvalidKey {
        path: key_path.into(),
        detail: e.to_string(),
    })?;
    // Sign a probe and verify it with each certificate's public key: this compares the key pairs
    // semantically, independent of how either side happens to be encoded.
    let probe = b"kfr: does this key belong to this certificate?";
    let mut sig = Zeroizing::new(vec![0u8; key_pair.public_modulus_len()]);
    key_pair
        .sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            probe,
            &mut sig,
        )
        .map_err(|e| CredentialError::InvalidKey {
            path: key_path.into(),
            detail: e.to_string(),
        })?;
    let matches = |der: &[u8]| {
        parse_x509_certificate(der).is_ok_and(|(_, c)| {
            c.public_key().algorithm.algorithm.to_id_string() == OID_RSA_ENCRYPTION
                && aws_lc_rs::signature::UnparsedPublicKey::new(
                    &RSA_PKCS1_2048_8192_SHA256,
                    &c.public_key().subject_public_key.data,
                )
                .verify(probe, &sig)
                .is_ok()
        })
    };
    let Some(leaf_at) = certs.iter().position(|c| matches(c)) else {
        // Report a parse failure of the first certificate as such, not as a mismatch.
        cert_info(&certs[0], cert_path)?;
        return Err(CredentialError::KeyMismatch {
            key: key_path.into(),
            certificate: cert_path.into(),
        });
    };
    let leaf_der = certs.remove(leaf_at);
    let info = cert_info(&leaf_der, cert_path)?;
    // jsonwebtoken's RSA EncodingKey from DER expects PKCS#1 RSAPrivateKey (aws-lc-rs
    // `RsaKeyPair::from_der`), which is what `pkcs1` holds.
    let encoding_key = jsonwebtoken::EncodingKey::from_rsa_der(&pkcs1);
    drop(key_pair);
    Ok(Credential {
        encoding_key,
        leaf_der,
        chain_der: certs,
        info,
    })
}

/// Unwraps a PKCS#8 `PrivateKeyInfo` into the PKCS#1 `RSAPrivateKey` inside it, refusing other
/// key types by name.
fn pkcs8_to_rsa(der: &[u8], path: &Path) -> Result<Zeroizing<Vec<u8>>, CredentialError> {
    let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|e| CredentialError::Pem {
        path: path.into(),
        detail: format!("not a PKCS#8 private key: {e}"),
    })?;
    let oid = info.algorithm.oid.to_string();
    if oid != OID_RSA_ENCRYPTION {
        return Err(CredentialError::UnsupportedKeyType {
            path: path.into(),
            algorithm: key_algorithm_name(&oid),
        });
    }
    Ok(Zeroizing::new(info.private_key.to_vec()))
}

fn key_algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10045.2.1" => "an EC key".into(),
        "1.3.101.112" => "an Ed25519 key".into(),
        "1.3.101.113" => "an Ed448 key".into(),
        "1.2.840.113549.1.1.10" => "an RSA-PSS key".into(),
        other => format!("a key of algorithm {other}"),
    }
}

/// The private key from a PEM file, as PKCS#1 DER.
fn pem_private_key(
    text: &[u8],
    password: Option<&SecretString>,
    path: &Path,
) -> Result<Zeroizing<Vec<u8>>, CredentialError> {
    let blocks = pem_blocks(text, path)?;
    let Some(block) = blocks.iter().find(|b| b.label.ends_with("PRIVATE KEY")) else {
        return Err(CredentialError::Pem {
            path: path.into(),
            detail: "no `PRIVATE KEY` block found".into(),
        });
    };
    match block.label.as_str() {
        "PRIVATE KEY" => pkcs8_to_rsa(&block.der, path),
        "RSA PRIVATE KEY" if block.encrypted_headers => Err(CredentialError::LegacyEncryptedPem { path: path.into() }),
        "RSA PRIVATE KEY" => Ok(block.der.clone()),
        "ENCRYPTED PRIVATE KEY" => {
            let Some(password) = password else {
                return Err(CredentialError::PasswordRequired { path: path.into() });
            };
            let enc =
                pkcs8::EncryptedPrivateKeyInfo::try_from(block.der.as_slice()).map_err(|e| CredentialError::Pem {
                    path: path.into(),
                    detail: format!("not an encrypted PKCS#8 key: {e}"),
                })?;
            let doc = enc.decrypt(password.expose_secret()).map_err(|e| match e {
                // Bad padding, or padding that happened to be fine but decrypted to garbage.
                // pkcs5 0.7 reports a padding failure during *decryption* as `EncryptFailed`, so
                // both variants mean "wrong password" here.
                pkcs8::Error::EncryptedPrivateKey(
                    pkcs8::pkcs5::Error::DecryptFailed | pkcs8::pkcs5::Error::EncryptFailed,
                )
                | pkcs8::Error::Asn1(_) => CredentialError::WrongPassword {
                    path: path.into(),
                    detail: "the encrypted private key did not decrypt",
                },
                other => CredentialError::Pem {
                    path: path.into(),
                    detail: format!("cannot decrypt the key: {other}"),
                },
            })?;
            pkcs8_to_rsa(doc.as_bytes(), path)
        }
        "EC PRIVATE KEY" => Err(CredentialError::UnsupportedKeyType {
            path: path.into(),
            algorithm: "an EC key".into(),
        }),
        other => Err(CredentialError::Pem {
            path: path.into(),
            detail: format!("unsupported block `{other}`"),
        }),
    }
}

struct PemBlock {
    label: String,
    /// RFC 1421-style headers such as `Proc-Type: 4,ENCRYPTED` were present.
    encrypted_headers: bool,
    der: Zeroizing<Vec<u8>>,
}

/// Splits PEM text into blocks. Written here rather than borrowed because the key's base64 text
/// and bytes must end up in wiped buffers, and old OpenSSL headers must be recognised to give a
/// precise error instead of "bad base64".
fn pem_blocks(text: &[u8], path: &Path) -> Result<Vec<PemBlock>, CredentialError> {
    let err = |detail: String| CredentialError::Pem {
        path: path.into(),
        detail,
    };
    let text = std::str::from_utf8(text).map_err(|_| err("not text (is it DER or PKCS#12?)".into()))?;
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Zeroizing::new(String::new());
        let mut headers = false;
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.contains(':') {
                headers = true;
            } else {
                body.push_str(line);
            }
        }
        if !closed {
            return Err(err(format!("`{label}` block has no END line")));
        }
        let der = if headers {
            // Encrypted legacy body: not base64 of DER we could use; keep it empty.
            Zeroizing::new(Vec::new())
        } else {
            Zeroizing::new(
                base64::engine::general_purpose::STANDARD
                    .decode(body.as_bytes())
                    .map_err(|e| err(format!("bad base64 in `{label}` block: {e}")))?,
            )
        };
        blocks.push(PemBlock {
            label: label.to_string(),
            encrypted_headers: headers,
            der,
        });
    }
    if blocks.is_empty() {
        return Err(err("no `-----BEGIN …-----` block found".into()));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, LeafOptions, TestCa};
    use crate::error::Hinted as _;
    use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};

    const FIXTURE_PASSWORD: &str = "kfr-fixture";

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/fixtures").join(name)
    }

    fn pw(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Signs an RS256 JWT with the credential and verifies it with the certificate's public key,
    /// the way Maskinporten does with the `x5c` certificate.
    fn sign_and_verify(cred: &Credential) {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Claims {
            aud: String,
            iss: String,
            exp: i64,
        }
        let claims = Claims {
            aud: "https://test.maskinporten.no/".into(),
            iss: "client".into(),
            exp: Utc::now().timestamp() + 60,
        };
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, cred.encoding_key()).unwrap();
        let (_, cert) = parse_x509_certificate(cred.leaf_der()).unwrap();
        let key = DecodingKey::from_rsa_der(&cert.public_key().subject_public_key.data);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["https://test.maskinporten.no/"]);
        let decoded = jsonwebtoken::decode::<Claims>(&jwt, &key, &validation).unwrap();
        assert_eq!(decoded.claims.iss, "client");

        // A certificate of another key pair must not verify it.
        let other = TestCa::new()
            .unwrap()
            .issue("916960190", "X AS", &LeafOptions::standard())
            .unwrap();
        let (_, other) = parse_x509_certificate(&other.cert_der).unwrap();
        let wrong = DecodingKey::from_rsa_der(&other.public_key().subject_public_key.data);
        assert!(jsonwebtoken::decode::<Claims>(&jwt, &wrong, &validation).is_err());
    }

    fn assert_fixture_identity(cred: &Credential) {
        let info = cred.info();
        assert_eq!(info.org_number.as_deref(), Some("916960190"));
        assert_eq!(info.key_usage_digital_signature, Some(true));
        assert!(info.test_issuer, "{}", info.issuer);
        assert!(!info.is_ca);
        assert!(info.subject.contains("KFR FIXTURE BANK AS TEST"), "{}", info.subject);
        assert!(info.issuer.contains("KFR Fixture Test CA"), "{}", info.issuer);
        assert!(info.is_valid_at(Utc::now()));
        // As printed by `openssl x509 -in certs/fixtures/cert.pem -noout -fingerprint -sha256`.
        assert_eq!(
            info.sha256_fingerprint,
            "35:33:DA:54:86:1E:23:D2:8F:A2:E1:BC:F4:C3:2B:28:9B:33:E7:77:35:96:46:95:5B:ED:E0:DC:A4:D9:74:8F"
        );
        // The CA came along in the file and is the chain; the leaf is not repeated there.
        assert_eq!(cred.chain_der().len(), 1);
        assert!(CertInfo::from_der(&cred.chain_der()[0]).unwrap().is_ca);
    }

    #[test]
    fn legacy_and_aes256_pkcs12_fixtures_load() {
        let legacy = Credential::from_pkcs12(&fixture("legacy.p12"), &pw(FIXTURE_PASSWORD)).unwrap();
        let modern = Credential::from_pkcs12(&fixture("aes256.p12"), &pw(FIXTURE_PASSWORD)).unwrap();
        assert_fixture_identity(&legacy);
        assert_fixture_identity(&modern);
        assert_eq!(legacy.leaf_der(), modern.leaf_der());
        sign_and_verify(&modern);
    }

    #[test]
    fn wrong_pkcs12_password_says_so() {
        for name in ["legacy.p12", "aes256.p12"] {
            let err = Credential::from_pkcs12(&fixture(name), &pw("not-the-password")).unwrap_err();
            assert!(matches!(err, CredentialError::WrongPassword { .. }), "{name}: {err:?}");
            let text = err.to_string();
            assert!(text.starts_with("wrong password for "), "{text}");
            assert!(text.contains(name), "{text}");
            assert!(!text.contains("not-the-password"));
            assert!(err.hint().unwrap().contains(KFR_CERTIFICATE_PASSWORD));
        }
    }

    #[test]
    fn encrypted_pem_needs_its_password() {
        let key = fixture("key-encrypted.pem");
        let cert = fixture("cert.pem");
        let cred = Credential::from_pem(&key, &cert, Some(&pw(FIXTURE_PASSWORD))).unwrap();
        assert_fixture_identity(&cred);
        sign_and_verify(&cred);
        let p12 = Credential::from_pkcs12(&fixture("aes256.p12"), &pw(FIXTURE_PASSWORD)).unwrap();
        assert_eq!(cred.info(), p12.info());

        let err = Credential::from_pem(&key, &cert, None).unwrap_err();
        assert!(matches!(err, CredentialError::PasswordRequired { .. }), "{err:?}");
        assert!(err.to_string().contains("key-encrypted.pem"));
        assert!(err.hint().unwrap().contains(KFR_CERTIFICATE_PASSWORD));

        let err = Credential::from_pem(&key, &cert, Some(&pw("wrong"))).unwrap_err();
        assert!(matches!(err, CredentialError::WrongPassword { .. }), "{err:?}");
    }

    #[test]
    fn unencrypted_pkcs8_and_pkcs1_pem_load() {
        let pki = certs::generate("916960190", "KFR LOCAL BANK AS").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = write(
            dir.path(),
            "cert.pem",
            format!("{}{}", pki.client.cert_pem, pki.ca_cert_pem).as_bytes(),
        );
        let key8 = write(dir.path(), "key8.pem", pki.client.key_pem.as_bytes());
        let cred = Credential::from_pem(&key8, &cert, None).unwrap();
        assert_eq!(cred.info().org_number.as_deref(), Some("916960190"));
        assert_eq!(cred.chain_der(), std::slice::from_ref(&pki.ca_cert_der));
        sign_and_verify(&cred);

        let pkcs1 = pkcs8::PrivateKeyInfo::try_from(pki.client.key_pkcs8_der.as_slice())
            .unwrap()
            .private_key
            .to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&pkcs1);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem1 = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let key1 = write(dir.path(), "key1.pem", pem1.as_bytes());
        let cred1 = Credential::from_pem(&key1, &cert, None).unwrap();
        assert_eq!(cred1.leaf_der(), cred.leaf_der());
        sign_and_verify(&cred1);

        // The matching certificate is the leaf even if the file lists the CA first.
        let swapped = write(
            dir.path(),
            "swapped.pem",
            format!("{}{}", pki.ca_cert_pem, pki.client.cert_pem).as_bytes(),
        );
        let cred = Credential::from_pem(&key8, &swapped, None).unwrap();
        assert_eq!(cred.leaf_der(), pki.client.cert_der);
        assert_eq!(cred.chain_der(), std::slice::from_ref(&pki.ca_cert_der));
    }

    #[test]
    fn mismatching_key_and_certificate_are_refused() {
        let pki = certs::generate("916960190", "KFR LOCAL BANK AS").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "client-cert.pem", pki.client.cert_pem.as_bytes());
        let key = write(dir.path(), "other-key.pem", pki.other.key_pem.as_bytes());
        let err = Credential::from_pem(&key, &cert, None).unwrap_err();
        assert!(matches!(err, CredentialError::KeyMismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("other-key.pem") && text.contains("client-cert.pem"),
            "{text}"
        );

        // The same inside a PKCS#12: the other organisation's key with the client's certificate.
        let franken = certs::IssuedCert {
            cert_der: pki.client.cert_der.clone(),
            cert_pem: pki.client.cert_pem.clone(),
            key_pkcs8_der: pki.other.key_pkcs8_der.clone(),
            key_pem: pki.other.key_pem.clone(),
            org_number: "916960190".into(),
        };
        let p12 = certs::to_pkcs12(&franken, &[], "pw").unwrap();
        let err = Credential::from_pkcs12_bytes(&p12, &pw("pw")).unwrap_err();
        assert!(matches!(err, CredentialError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn generated_pkcs12_round_trips() {
        let pki = certs::generate("916960190", "KFR LOCAL BANK AS").unwrap();
        let p12 = certs::to_pkcs12(&pki.client, &[&pki.ca_cert_der], "s3cret").unwrap();
        let cred = Credential::from_pkcs12_bytes(&p12, &pw("s3cret")).unwrap();
        assert_eq!(cred.leaf_der(), pki.client.cert_der);
        assert_eq!(cred.chain_der(), std::slice::from_ref(&pki.ca_cert_der));
        assert_eq!(cred.info().org_number.as_deref(), Some("916960190"));
        assert!(cred.info().test_issuer);
        sign_and_verify(&cred);
        let err = Credential::from_pkcs12_bytes(&p12, &pw("S3cret")).unwrap_err();
        assert!(matches!(err, CredentialError::WrongPassword { .. }), "{err:?}");
    }

    #[test]
    fn pkcs12_prefers_the_key_pair_that_may_sign() {
        // Like a delivery with an encryption certificate next to the authentication one.
        let ca = TestCa::new().unwrap();
        let enc = ca
            .issue(
                "916960190",
                "A AS",
                &LeafOptions {
                    digital_signature: false,
                    ..LeafOptions::standard()
                },
            )
            .unwrap();
        let auth = ca.issue("916960190", "A AS", &LeafOptions::standard()).unwrap();
        let mut store = KeyStore::new();
        for (alias, c) in [("a-encryption", &enc), ("b-authentication", &auth)] {
            let cert = p12_keystore::Certificate::from_der(&c.cert_der).unwrap();
            let chain = p12_keystore::PrivateKeyChain::new(c.key_pkcs8_der.as_slice(), alias.as_bytes(), [cert]);
            store.add_entry(alias, p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
        }
        let p12 = store.writer("pw").write().unwrap();
        let cred = Credential::from_pkcs12_bytes(&p12, &pw("pw")).unwrap();
        assert_eq!(cred.leaf_der(), auth.cert_der);
    }

    #[test]
    fn other_files_are_not_pkcs12() {
        let err = Credential::from_pkcs12(&fixture("cert.pem"), &pw("x")).unwrap_err();
        assert!(matches!(err, CredentialError::NotPkcs12 { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("certificate_pem"));
        let err = Credential::from_pkcs12_bytes(&[0x30, 0x03, 0x02, 0x01, 0x03], &pw("x")).unwrap_err();
        assert!(matches!(err, CredentialError::NotPkcs12 { .. }), "{err:?}");
        let err = Credential::from_pkcs12_bytes(b"hello", &pw("x")).unwrap_err();
        assert!(matches!(err, CredentialError::NotPkcs12 { .. }), "{err:?}");
    }

    #[test]
    fn missing_files_and_bad_pem_are_named() {
        let missing = fixture("does-not-exist.p12");
        let err = Credential::from_pkcs12(&missing, &pw("x")).unwrap_err();
        assert!(matches!(err, CredentialError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("does-not-exist.p12"));
        assert!(err.hint().unwrap().contains("relative paths"));

        let dir = tempfile::tempdir().unwrap();
        let cert = fixture("cert.pem");
        let junk = write(dir.path(), "junk.pem", b"not pem at all\n");
        let err = Credential::from_pem(&junk, &cert, None).unwrap_err();
        assert!(matches!(err, CredentialError::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains("junk.pem"));

        // A key file given where the certificate should be.
        let key = fixture("key-encrypted.pem");
        let err = Credential::from_pem(&key, &key, Some(&pw(FIXTURE_PASSWORD))).unwrap_err();
        assert!(matches!(err, CredentialError::NoCertificate { .. }), "{err:?}");

        let legacy = write(
            dir.path(),
            "legacy.pem",
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        );
        let err = Credential::from_pem(&legacy, &cert, Some(&pw("x"))).unwrap_err();
        assert!(matches!(err, CredentialError::LegacyEncryptedPem { .. }), "{err:?}");
        assert!(err.hint().unwrap().contains("openssl pkcs8 -topk8"));
    }

    #[test]
    fn non_rsa_keys_are_refused_by_name() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::default().self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let k = write(dir.path(), "ec.pem", key.serialize_pem().as_bytes());
        let c = write(dir.path(), "ec-cert.pem", cert.pem().as_bytes());
        let err = Credential::from_pem(&k, &c, None).unwrap_err();
        assert!(matches!(err, CredentialError::UnsupportedKeyType { .. }), "{err:?}");
        assert!(err.to_string().contains("an EC key"), "{err}");
    }

    #[test]
    fn key_usage_test_issuer_and_org_number_are_read() {
        let ca = TestCa::new().unwrap();
        let no_sig = ca
            .issue(
                "916960190",
                "A AS",
                &LeafOptions {
                    digital_signature: false,
                    ..LeafOptions::standard()
                },
            )
            .unwrap();
        let info = CertInfo::from_der(&no_sig.cert_der).unwrap();
        assert_eq!(info.key_usage_digital_signature, Some(false));
        let expired = ca.issue("916960190", "A AS", &LeafOptions::expired()).unwrap();
        assert!(!CertInfo::from_der(&expired.cert_der).unwrap().is_valid_at(Utc::now()));

        // Issuer names: a self-signed certificate is its own issuer, which is enough to exercise
        // the heuristic on real-world CA names.
        let self_signed = |dn: &[(rcgen::DnType, &str)]| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            for (t, v) in dn {
                params.distinguished_name.push(t.clone(), *v);
            }
            CertInfo::from_der(params.self_signed(&key).unwrap().der()).unwrap()
        };
        use rcgen::DnType::*;
        assert!(self_signed(&[(CommonName, "Buypass Class 3 Test4 CA 3")]).test_issuer);
        assert!(self_signed(&[(CommonName, "Commfides Legal Person - G3 - TEST")]).test_issuer);
        assert!(!self_signed(&[(CommonName, "Buypass Class 3 CA 3")]).test_issuer);
        assert!(!self_signed(&[(OrganizationName, "Attestation Services AS")]).test_issuer);

        // No KeyUsage extension at all, and the eIDAS-style organizationIdentifier.
        let info = self_signed(&[
            (CustomDnType(vec![2, 5, 4, 97]), "NTRNO-916960190"),
            (CommonName, "Seid2 Style"),
        ]);
        assert_eq!(info.key_usage_digital_signature, None);
        assert_eq!(info.org_number.as_deref(), Some("916960190"));
        // A serialNumber that is not an org.nr is not reported as one.
        let info = self_signed(&[(CustomDnType(vec![2, 5, 4, 5]), "UN:NO-9578-5999-4-1234567")]);
        assert_eq!(info.org_number, None);
    }

    /// Padding around either attribute is not part of the number (the mock Maskinporten reads
    /// certificates with the same function, so the two cannot disagree about a padded subject).
    #[test]
    fn org_number_is_read_through_padding() {
        let subject_org = |dn: &[(Vec<u64>, &str)]| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            for (oid, v) in dn {
                params
                    .distinguished_name
                    .push(rcgen::DnType::CustomDnType(oid.clone()), *v);
            }
            let der = params.self_signed(&key).unwrap().der().to_vec();
            let (_, cert) = X509Certificate::from_der(&der).unwrap();
            subject_org_number(cert.subject())
        };
        let (serial, org_id) = (vec![2, 5, 4, 5], vec![2, 5, 4, 97]);
        assert_eq!(
            subject_org(&[(serial.clone(), " 916960190 ")]).as_deref(),
            Some("916960190")
        );
        assert_eq!(
            subject_org(&[(org_id.clone(), " NTRNO-916960190 ")]).as_deref(),
            Some("916960190")
        );
        // Padding inside the value still makes it something else.
        assert_eq!(subject_org(&[(serial.clone(), "916 960 190")]), None);
        assert_eq!(subject_org(&[(org_id, "NTRNO- 916960190")]), None);
        // serialNumber wins over organizationIdentifier when both name a number.
        let both = [(serial, "916960190"), (vec![2, 5, 4, 97], "NTRNO-810000002")];
        assert_eq!(subject_org(&both).as_deref(), Some("916960190"));
    }

    #[test]
    fn from_config_requires_a_pkcs12_password() {
        let src = CredentialSource::Pkcs12 {
            path: fixture("aes256.p12"),
            password: None,
        };
        let err = Credential::from_config(&src).unwrap_err();
        assert!(matches!(err, CredentialError::PasswordRequired { .. }), "{err:?}");
        let hint = err.hint().unwrap();
        assert!(hint.contains(KFR_CERTIFICATE_PASSWORD) && hint.contains("certificate_password_file"));

        let src = CredentialSource::Pkcs12 {
            path: fixture("aes256.p12"),
            password: Some(pw(FIXTURE_PASSWORD)),
        };
        assert_fixture_identity(&Credential::from_config(&src).unwrap());
        let src = CredentialSource::Pem {
            private_key: fixture("key-encrypted.pem"),
            certificate: fixture("cert.pem"),
            password: Some(pw(FIXTURE_PASSWORD)),
        };
        assert_fixture_identity(&Credential::from_config(&src).unwrap());
    }

    #[test]
    fn debug_and_x5c_hold_no_secrets() {
        let cred = Credential::from_pkcs12(&fixture("aes256.p12"), &pw(FIXTURE_PASSWORD)).unwrap();
        let dbg = format!("{cred:?}");
        assert!(dbg.contains("[redacted]"), "{dbg}");
        assert!(!dbg.contains(FIXTURE_PASSWORD));
        // The PKCS#1 key's base64 would start with MII…; no base64 blob at all should appear.
        assert!(!dbg.contains("MII"), "{dbg}");
        // x5c is standard base64 of the leaf (kfr-notes §9).
        let x5c = cred.leaf_x5c();
        assert_eq!(
            base64::engine::general_purpose::STANDARD.decode(&x5c).unwrap(),
            cred.leaf_der()
        );
    }
}
