//! Log pseudonyms for person identifiers: a keyed hash, so the same person has the same name in
//! every log line of every run, while the logs alone do not reveal who it is.
//!
//! Why keyed: there are only about 10⁸ well-formed fødselsnumre, so a plain hash is reversed by
//! trying them all. HMAC-SHA256 under a secret installation key makes that impossible without the
//! key file. Organisation numbers are public and logged in clear.
//!
//! The key lives in `pseudonym_key_file` (32 random bytes, hex-encoded, mode 0600), created on
//! first use. `kfr pseudonym ID` uses the same key, so an operator can find a customer in logs.
//! Processes that never install a key (unit tests, tools) get a random per-process key: their
//! pseudonyms are consistent within the run and meaningless after it, which is the safe default.

use super::CustomerId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// Hex characters of the MAC kept in a pseudonym: 48 bits. With 10 hex (40 bits) a register of
/// ~5 million persons would expect about ten collisions; with 12 the expectation is well below one.
const PSEUDONYM_HEX: usize = 12;
/// Length of a newly created key.
const KEY_BYTES: usize = 32;
/// Shorter keys in an existing file are refused: they would make the pseudonyms guessable.
const MIN_KEY_BYTES: usize = 16;

/// Turns customer identifiers into their log names. `Debug` never shows the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer([redacted])")
    }
}

/// Why the pseudonym key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PseudonymKeyError {
    #[error("cannot read pseudonym key file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot create pseudonym key file {path}: {source}")]
    Create { path: PathBuf, source: std::io::Error },
    #[error("pseudonym key file {path} is not usable: {reason}")]
    Invalid { path: PathBuf, reason: &'static str },
}

impl Pseudonymizer {
    /// A pseudonymizer for the given key (any length; HMAC accepts all).
    pub fn from_key(key: &[u8]) -> Self {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        Self { mac }
    }

    /// A pseudonymizer with a fresh random key that is never stored.
    pub fn random() -> Self {
        let key = Zeroizing::new(random_key());
        Self::from_key(&*key)
    }

    /// Reads the hex-encoded key from `path`, or creates the file with a new random 32-byte key
    /// (mode 0600, created exclusively so two processes starting at once agree on one key).
    pub fn load_or_create(path: &Path) -> Result<Self, PseudonymKeyError> {
        match std::fs::read(path) {
            Ok(text) => Self::from_file_contents(path, &Zeroizing::new(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_key_file(path) {
                Ok(key) => {
                    tracing::warn!(
                        path = %path.display(),
                        "created a new pseudonym key; pseudonyms in logs written with an earlier key will not match"
                    );
                    Ok(Self::from_key(&*key))
                }
                // Another process created it between our read and our create: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read(path).map_err(|source| PseudonymKeyError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    Self::from_file_contents(path, &Zeroizing::new(text))
                }
                Err(source) => Err(PseudonymKeyError::Create {
                    path: path.to_path_buf(),
                    source,
                }),
            },
            Err(source) => Err(PseudonymKeyError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn from_file_contents(path: &Path, text: &[u8]) -> Result<Self, PseudonymKeyError> {
        let invalid = |reason| PseudonymKeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let hex_text = text.trim_ascii();
        let key = Zeroizing::new(hex::decode(hex_text).map_err(|_| invalid("expected the key as hex digits"))?);
        if key.len() < MIN_KEY_BYTES {
            return Err(invalid("key shorter than 16 bytes"));
        }
        warn_if_readable_by_others(path);
        Ok(Self::from_key(&key))
    }

    /// The log name of `id`: organisation numbers as they are, persons as `p-` + 12 hex digits of
    /// HMAC-SHA256(key, the 11 digits).
    pub fn pseudonym(&self, id: &CustomerId) -> String {
        let mut s = String::with_capacity(2 + PSEUDONYM_HEX);
        let _ = self.write(id, &mut s);
        s
    }

    pub(super) fn write(&self, id: &CustomerId, out: &mut impl fmt::Write) -> fmt::Result {
        if !id.is_person() {
            return out.write_str(id.as_str());
        }
        let mut mac = self.mac.clone();
        mac.update(id.as_str().as_bytes());
        let tag = mac.finalize().into_bytes();
        out.write_str("p-")?;
        out.write_str(&hex::encode(&tag[..PSEUDONYM_HEX / 2]))
    }
}

fn random_key() -> [u8; KEY_BYTES] {
    // ThreadRng is a CSPRNG seeded from the operating system.
    let mut key = [0u8; KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    key
}

fn create_key_file(path: &Path) -> std::io::Result<Zeroizing<[u8; KEY_BYTES]>> {
    let key = Zeroizing::new(random_key());
    // The default lives in the state home, which may not exist yet; a new folder is private.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let mut text = Zeroizing::new(hex::encode(*key));
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(key)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "pseudonym key file is readable by other users; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

static GLOBAL: OnceLock<Pseudonymizer> = OnceLock::new();

/// Makes `p` the pseudonymizer behind [`CustomerId::log`] for the rest of the process. Call it
/// once at start-up, before anything logs an identifier: the first call wins, and once a log
/// line has used the per-process random key it can no longer be replaced (a warning says so).
pub fn install_pseudonymizer(p: Pseudonymizer) {
    if GLOBAL.set(p).is_err() {
        tracing::warn!("a pseudonymizer was already in use; keeping it, later log pseudonyms use the earlier key");
    }
}

pub(super) fn global() -> &'static Pseudonymizer {
    GLOBAL.get_or_init(Pseudonymizer::random)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::IdPolicy;

    fn person() -> CustomerId {
        CustomerId::parse("15108695088", &IdPolicy::prod()).unwrap()
    }

    #[test]
    fn person_pseudonym_is_stable_for_one_key_and_differs_across_keys() {
        let a = Pseudonymizer::from_key(b"key one, thirty-two bytes long!!");
        let b = Pseudonymizer::from_key(b"key two, thirty-two bytes long!!");
        let p = a.pseudonym(&person());
        assert_eq!(p, a.pseudonym(&person()));
        assert_eq!(
            p,
            Pseudonymizer::from_key(b"key one, thirty-two bytes long!!").pseudonym(&person())
        );
        assert_ne!(p, b.pseudonym(&person()));
        assert!(p.starts_with("p-") && p.len() == 2 + PSEUDONYM_HEX, "{p}");
        assert!(p[2..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(!p.contains("151086"));
    }

    #[test]
    fn pseudonym_is_hmac_sha256_of_the_digits() {
        let key = b"k";
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(b"15108695088");
        let expected = format!("p-{}", &hex::encode(mac.finalize().into_bytes())[..PSEUDONYM_HEX]);
        assert_eq!(Pseudonymizer::from_key(key).pseudonym(&person()), expected);
    }

    #[test]
    fn org_numbers_are_their_own_pseudonym() {
        let org = CustomerId::parse("916960190", &IdPolicy::prod()).unwrap();
        assert_eq!(Pseudonymizer::from_key(b"k").pseudonym(&org), "916960190");
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kfr-pseudonym.key");
        let first = Pseudonymizer::load_or_create(&path).unwrap().pseudonym(&person());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(hex::decode(text.trim()).unwrap().len(), KEY_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = Pseudonymizer::load_or_create(&path).unwrap().pseudonym(&person());
        assert_eq!(first, again);
        let from_key = Pseudonymizer::from_key(&hex::decode(text.trim()).unwrap()).pseudonym(&person());
        assert_eq!(first, from_key);
    }

    #[test]
    fn unusable_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not hex\n").unwrap();
        let err = Pseudonymizer::load_or_create(&path).unwrap_err();
        assert!(matches!(err, PseudonymKeyError::Invalid { .. }), "{err}");
        std::fs::write(&path, "00ff\n").unwrap();
        assert!(matches!(
            Pseudonymizer::load_or_create(&path),
            Err(PseudonymKeyError::Invalid { .. })
        ));
        // Below a file there is no key and no folder can be made: an error naming the path.
        let under_a_file = path.join("k");
        let err = Pseudonymizer::load_or_create(&under_a_file).unwrap_err();
        assert!(
            matches!(err, PseudonymKeyError::Read { .. } | PseudonymKeyError::Create { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&under_a_file.display().to_string()), "{err}");
    }

    #[test]
    fn a_missing_folder_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/kfr/pseudonym.key");
        Pseudonymizer::load_or_create(&path).unwrap();
        assert!(path.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        assert_eq!(
            format!("{:?}", Pseudonymizer::from_key(b"secret")),
            "Pseudonymizer([redacted])"
        );
    }
}
