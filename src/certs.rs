//! Throwaway test certificates for the local mock (`kfr certs local`) and for tests.
//!
//! Everything here is synthetic: a self-signed CA whose name says "Test", and leaf certificates
//! shaped like a Norwegian business certificate (virksomhetssertifikat, kfr-notes §3): subject
//! `C=NO, O=<name>, CN=<name> TEST, serialNumber=<org.nr>`, an RSA 2048 key (Maskinporten grants
//! are RS256), a critical KeyUsage with only digitalSignature, and no CA rights. The org.nr goes in
//! the subject's serialNumber *attribute* (OID 2.5.4.5), which is where Buypass and Commfides put
//! it and where Maskinporten reads the certificate owner from (MP-122, kfr-notes §9) — not in the
//! certificate's own serial number.
//!
//! Nothing here touches the file system; [`crate::cli`] writes the files. Keys are returned in
//! [`zeroize::Zeroizing`] buffers so they are wiped when dropped.

use anyhow::{Context as _, bail};
use chrono::{Datelike as _, Days, NaiveDate, Utc};
use p12_keystore::{Certificate as P12Certificate, KeyStore, KeyStoreEntry, PrivateKeyChain};
use rcgen::string::PrintableString;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_RSA_SHA256, date_time_ymd,
};
use zeroize::Zeroizing;

/// Common name of the generated CA. It contains "Test" so that [`crate::maskinporten::CertInfo`]
/// flags certificates it issued as test certificates, and so nobody mistakes it for a real CA.
pub const LOCAL_CA_NAME: &str = "KFR Local Test CA";

/// Common name of the root above [`LOCAL_CA_NAME`] in the PKI `kfr certs local` makes.
pub const LOCAL_ROOT_NAME: &str = "KFR Local Test Root CA";

/// The X.520 serialNumber attribute type (2.5.4.5), which carries the org.nr in the subject.
const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// The X.520 organizationIdentifier attribute type (2.5.4.97), `NTRNO-<org.nr>` in SEID 2.0.
const OID_ORGANIZATION_IDENTIFIER: &[u64] = &[2, 5, 4, 97];

/// A leaf certificate with its private key.
pub struct IssuedCert {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    /// Unencrypted PKCS#8 `PrivateKeyInfo` (RSA).
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
    /// The same key as PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: Zeroizing<String>,
    pub org_number: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("org_number", &self.org_number)
            .field("cert_der", &format_args!("{} bytes", self.cert_der.len()))
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A test CA that can issue more leaves (expired ones, ones without digitalSignature, …).
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("name", &LOCAL_CA_NAME)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The whole local PKI made by [`generate`], shaped like SEID 2.0: a root, an issuing CA below
/// it, and two organisations' leaves issued by that CA.
#[derive(Debug)]
pub struct LocalPki {
    /// The issuing CA (below the root): what the leaves chain to directly. Trusting it alone is
    /// enough for a leaf-only `x5c`.
    pub ca_cert_der: Vec<u8>,
    pub ca_cert_pem: String,
    /// The self-signed root above the issuing CA.
    pub root_cert_der: Vec<u8>,
    pub root_cert_pem: String,
    /// The institution itself (the org.nr given to [`generate`]).
    pub client: IssuedCert,
    /// A second organisation under the same CA, for negative tests (e.g. the certificate's org.nr
    /// is not the owner of the client id, MP-122).
    pub other: IssuedCert,
    /// The CA itself, to issue further certificates in tests.
    pub ca: TestCa,
}

/// What a leaf certificate should look like; [`LeafOptions::standard`] is the normal shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafOptions {
    /// First day of validity (00:00 UTC).
    pub not_before: NaiveDate,
    /// Last instant of validity is 00:00 UTC on this day.
    pub not_after: NaiveDate,
    /// Whether KeyUsage contains digitalSignature (Maskinporten needs it to accept the signature).
    pub digital_signature: bool,
}

impl LeafOptions {
    /// Valid from yesterday (so small clock differences do not matter) for about two years.
    pub fn standard() -> Self {
        let today = Utc::now().date_naive();
        Self {
            not_before: today - Days::new(1),
            not_after: today + Days::new(730),
            digital_signature: true,
        }
    }

    /// Expired yesterday.
    pub fn expired() -> Self {
        let today = Utc::now().date_naive();
        Self {
            not_before: today - Days::new(400),
            not_after: today - Days::new(1),
            digital_signature: true,
        }
    }

    /// Valid for `years` years from yesterday (the committed fixtures use 20 so tests do not rot).
    pub fn years(years: u64) -> Self {
        let today = Utc::now().date_naive();
        Self {
            not_before: today - Days::new(1),
            not_after: today + Days::new(365 * years),
            digital_signature: true,
        }
    }
}

impl TestCa {
    /// A fresh self-signed RSA 2048 CA named [`LOCAL_CA_NAME`], valid from yesterday for 10 years.
    pub fn new() -> anyhow::Result<Self> {
        Self::named(LOCAL_CA_NAME)
    }

    /// As [`TestCa::new`], with another common name: tests use real CA names (e.g. Buypass')
    /// to see what `kfr doctor` says about them. The key is still our own, of course.
    pub fn named(common_name: &str) -> anyhow::Result<Self> {
        Self::build(common_name, None, 0)
    }

    /// A self-signed root that may have one CA below it (SEID 2.0 issues from an intermediate).
    pub fn root(common_name: &str) -> anyhow::Result<Self> {
        Self::build(common_name, None, 1)
    }

    /// An issuing CA below `root`, as Buypass' and Commfides' business CAs sit below their roots.
    pub fn intermediate(root: &TestCa, common_name: &str) -> anyhow::Result<Self> {
        Self::build(common_name, Some(root), 0)
    }

    fn build(common_name: &str, parent: Option<&TestCa>, path_len: u8) -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&PKCS_RSA_SHA256).context("generating the test CA's RSA key")?;
        let today = Utc::now().date_naive();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, printable("NO")?);
        dn.push(DnType::OrganizationName, "KFR Local Test");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, today - Days::new(1), today + Days::new(3650));
        let cert = match parent {
            None => params.self_signed(&key).context("self-signing the test CA")?,
            Some(p) => {
                params.use_authority_key_identifier_extension = true;
                let issuer = rcgen::Issuer::from_params(&p.params, &p.key);
                params.signed_by(&key, &issuer).context("signing the intermediate CA")?
            }
        };
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// Issues a business-certificate-shaped leaf for `org_number` under this CA.
    pub fn issue(&self, org_number: &str, name: &str, opts: &LeafOptions) -> anyhow::Result<IssuedCert> {
        issue(self, org_number, name, opts)
    }
}

/// Issues a leaf shaped like a virksomhetssertifikat under `ca`. The org.nr is not checked here,
/// so tests can make certificates with a malformed one; [`generate`] and the CLI do check it.
pub fn issue(ca: &TestCa, org_number: &str, name: &str, opts: &LeafOptions) -> anyhow::Result<IssuedCert> {
    if opts.not_after <= opts.not_before {
        bail!("not_after must be later than not_before");
    }
    let key = KeyPair::generate_for(&PKCS_RSA_SHA256).context("generating an RSA key")?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, printable("NO")?);
    dn.push(DnType::OrganizationName, name);
    dn.push(DnType::CommonName, format!("{name} TEST"));
    // X.520 wants serialNumber as a PrintableString; digits always fit.
    dn.push(DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()), printable(org_number)?);
    // SEID 2.0 certificates name the organisation as organizationIdentifier NTRNO-<org.nr>.
    dn.push(
        DnType::CustomDnType(OID_ORGANIZATION_IDENTIFIER.to_vec()),
        printable(&format!("NTRNO-{org_number}"))?,
    );
    params.distinguished_name = dn;
    // No BasicConstraints at all rather than an explicit cA=FALSE: DER forbids encoding a
    // DEFAULT value (X.690 §11.5), and strict parsers refuse a leaf that does.
    params.is_ca = IsCa::NoCa;
    params.key_usages = if opts.digital_signature {
        vec![KeyUsagePurpose::DigitalSignature]
    } else {
        // Still a KeyUsage extension, just without the bit, so "present but wrong" can be tested.
        vec![KeyUsagePurpose::KeyEncipherment]
    };
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, opts.not_before, opts.not_after);
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let cert = params
        .signed_by(&key, &issuer)
        .with_context(|| format!("issuing the test certificate for {org_number}"))?;
    Ok(IssuedCert {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key_pkcs8_der: Zeroizing::new(key.serialize_der()),
        key_pem: Zeroizing::new(key.serialize_pem()),
        org_number: org_number.to_string(),
    })
}

/// A fresh local PKI: a test CA, a leaf for `org_number` (O=`name`) and a leaf for a second,
/// different organisation (see [`other_org_number`]).
pub fn generate(org_number: &str, name: &str) -> anyhow::Result<LocalPki> {
    if !valid_org_number(org_number) {
        bail!("{org_number:?} is not a valid organisation number (9 digits with a mod-11 check digit)");
    }
    let root = TestCa::root(LOCAL_ROOT_NAME)?;
    let ca = TestCa::intermediate(&root, LOCAL_CA_NAME)?;
    let opts = LeafOptions::standard();
    let client = ca.issue(org_number, name, &opts)?;
    let other = ca.issue(&other_org_number(org_number), "KFR OTHER ORG AS", &opts)?;
    Ok(LocalPki {
        ca_cert_der: ca.cert_der.clone(),
        ca_cert_pem: ca.cert_pem.clone(),
        root_cert_der: root.cert_der.clone(),
        root_cert_pem: root.cert_pem.clone(),
        client,
        other,
        ca,
    })
}

/// A CA for TLS server certificates (not business certificates): ECDSA P-256, quick to make. The
/// mock's TLS certificate comes from one, and so does the certificate a TLS-inspecting proxy shows
/// in tests (a bank's own CA, known to `kfr` only through `extra_ca_bundle`).
pub struct TlsCa {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
}

impl std::fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCa").field("key", &"[redacted]").finish()
    }
}

/// A TLS server certificate with its key, both PEM.
pub struct TlsServerCert {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for TlsServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServerCert").field("key", &"[redacted]").finish()
    }
}

impl TlsCa {
    /// A fresh self-signed CA named `common_name`, valid from yesterday for 10 years.
    pub fn new(common_name: &str) -> anyhow::Result<TlsCa> {
        let key = KeyPair::generate().context("generating the TLS CA's key")?;
        let today = Utc::now().date_naive();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "KFR Local Test");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, today - Days::new(1), today + Days::new(3650));
        let cert = params.self_signed(&key).context("self-signing the TLS CA")?;
        Ok(TlsCa {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// A server certificate for `hosts` (DNS names or IP addresses, e.g. `127.0.0.1`), valid from
    /// yesterday until `not_after` (two years when `None`).
    pub fn issue_server(&self, hosts: &[&str], not_after: Option<NaiveDate>) -> anyhow::Result<TlsServerCert> {
        let key = KeyPair::generate().context("generating a TLS server key")?;
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).context("TLS server names")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, hosts.first().copied().unwrap_or("localhost"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let today = Utc::now().date_naive();
        set_validity(
            &mut params,
            today - Days::new(1),
            not_after.unwrap_or(today + Days::new(730)),
        );
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .context("issuing a TLS server certificate")?;
        Ok(TlsServerCert {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// Packs `cert` (and `chain`, e.g. the CA) with its key into a PKCS#12 file protected by
/// `password`: AES-256-CBC with PBKDF2 and an HMAC-SHA256 MAC, the same modern profile
/// `openssl pkcs12 -export` uses by default since OpenSSL 3.
pub fn to_pkcs12(cert: &IssuedCert, chain: &[&[u8]], password: &str) -> anyhow::Result<Vec<u8>> {
    let mut certs = vec![P12Certificate::from_der(&cert.cert_der).context("reading the certificate")?];
    for c in chain {
        certs.push(P12Certificate::from_der(c).context("reading a chain certificate")?);
    }
    // localKeyId ties the key bag to its certificate bag; any stable bytes work, the leaf's SHA-1
    // is what OpenSSL uses, a truncated SHA-256 is as good and avoids another hash.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert.cert_der);
    let key_id = &digest.as_ref()[..20];
    let chain = PrivateKeyChain::new(cert.key_pkcs8_der.as_slice(), key_id, certs);
    let mut store = KeyStore::new();
    store.add_entry(&cert.org_number, KeyStoreEntry::PrivateKeyChain(chain));
    store.writer(password).write().context("writing the PKCS#12 file")
}

/// True for a Norwegian organisation number: 9 digits whose last digit is the mod-11 check digit
/// over weights 3,2,7,6,5,4,3,2 (remainder 0 gives check digit 0; remainder 1 is never issued).
pub fn valid_org_number(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    check_digit(&b[..8]).is_some_and(|c| c == b[8] - b'0')
}

/// The mod-11 check digit for the first eight digits (ASCII), or `None` if none exists.
fn check_digit(first8: &[u8]) -> Option<u8> {
    const WEIGHTS: [u32; 8] = [3, 2, 7, 6, 5, 4, 3, 2];
    let sum: u32 = first8.iter().zip(WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

/// A valid org.nr different from `org_number`, deterministic so tests and docs can rely on it:
/// the first valid number from 910000000 upwards that is not `org_number`.
pub fn other_org_number(org_number: &str) -> String {
    (91_000_000u32..)
        .filter_map(|base| {
            let first8 = base.to_string();
            check_digit(first8.as_bytes()).map(|c| format!("{first8}{c}"))
        })
        .find(|candidate| candidate != org_number)
        .expect("the range holds many valid numbers")
}

fn printable(s: &str) -> anyhow::Result<DnValue> {
    Ok(DnValue::PrintableString(
        PrintableString::try_from(s).with_context(|| format!("{s:?} is not a PrintableString"))?,
    ))
}

/// Sets validity to 00:00 UTC on the given days. Whole days are precise enough for test
/// material, and they spare a direct dependency on rcgen's `time` types.
fn set_validity(params: &mut CertificateParams, from: NaiveDate, to: NaiveDate) {
    params.not_before = date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = date_time_ymd(to.year(), to.month() as u8, to.day() as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn org_number_check_digit() {
        assert!(valid_org_number("916960190"));
        assert!(!valid_org_number("916960191"));
        assert!(!valid_org_number("91696019"));
        assert!(!valid_org_number("9169601900"));
        assert!(!valid_org_number("91696019a"));
        // 91000008x: the weighted sum leaves remainder 1, so no valid check digit exists.
        assert_eq!(check_digit(b"91000008"), None);
        let other = other_org_number("916960190");
        assert_eq!(other, "910000004");
        assert!(valid_org_number(&other), "{other}");
        assert_ne!(other, "916960190");
        // If the first candidate is taken, the next one is used.
        assert_ne!(other_org_number(&other), other);
        assert!(valid_org_number(&other_org_number(&other)));
    }

    #[test]
    fn generated_leaf_looks_like_a_business_certificate() {
        let pki = generate("916960190", "KFR LOCAL BANK AS").unwrap();
        let (_, leaf) = parse_x509_certificate(&pki.client.cert_der).unwrap();
        let (_, ca) = parse_x509_certificate(&pki.ca_cert_der).unwrap();

        let serial: Vec<_> = leaf
            .subject()
            .iter_attributes()
            .filter(|a| a.attr_type().to_id_string() == "2.5.4.5")
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(serial, ["916960190"]);
        assert_eq!(
            leaf.subject().iter_common_name().next().unwrap().as_str().unwrap(),
            "KFR LOCAL BANK AS TEST"
        );
        assert_eq!(leaf.issuer(), ca.subject());
        assert!(ca.subject().to_string().contains("Test"));

        let ku = leaf.key_usage().unwrap().expect("KeyUsage present");
        assert!(ku.critical);
        assert!(ku.value.digital_signature());
        assert!(!leaf.is_ca());
        assert!(ca.is_ca());
        assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());

        // RSA 2048: Maskinporten signs and verifies RS256.
        match leaf.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
            other => panic!("not RSA: {other:?}"),
        }
        let now = chrono::Utc::now().timestamp();
        assert!(leaf.validity().not_before.timestamp() < now - 3600);
        assert!(leaf.validity().not_after.timestamp() > now + 700 * 86_400);

        // The leaf really is signed by the CA.
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &ca.public_key().subject_public_key.data,
        )
        .verify(leaf.tbs_certificate.as_ref(), &leaf.signature_value.data)
        .expect("leaf signed by the CA");

        // The second organisation differs and is valid.
        assert_ne!(pki.other.org_number, pki.client.org_number);
        assert!(valid_org_number(&pki.other.org_number));
        assert!(pki.client.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn issue_can_make_expired_and_non_signing_leaves() {
        let ca = TestCa::new().unwrap();
        let expired = ca.issue("916960190", "X AS", &LeafOptions::expired()).unwrap();
        let (_, c) = parse_x509_certificate(&expired.cert_der).unwrap();
        assert!(c.validity().not_after.timestamp() < chrono::Utc::now().timestamp());

        let opts = LeafOptions {
            digital_signature: false,
            ..LeafOptions::standard()
        };
        let no_sig = ca.issue("916960190", "X AS", &opts).unwrap();
        let (_, c) = parse_x509_certificate(&no_sig.cert_der).unwrap();
        assert!(!c.key_usage().unwrap().unwrap().value.digital_signature());

        let backwards = LeafOptions {
            not_after: LeafOptions::standard().not_before,
            ..LeafOptions::standard()
        };
        assert!(ca.issue("916960190", "X AS", &backwards).is_err());
    }

    #[test]
    fn generate_refuses_a_bad_org_number() {
        let err = generate("916960191", "X AS").unwrap_err();
        assert!(err.to_string().contains("not a valid organisation number"), "{err}");
    }

    #[test]
    fn debug_does_not_print_keys() {
        let ca = TestCa::new().unwrap();
        let leaf = ca.issue("916960190", "X AS", &LeafOptions::standard()).unwrap();
        let dbg = format!("{leaf:?} {ca:?}");
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains("PRIVATE KEY"));
    }
}
