//! Connecting to PostgreSQL servers, for the state store's PostgreSQL backend and the core
//! system's outbox-table source alike: the server as configured ([`Target`]: a URL without a
//! password, the password in a file, a CA file), TLS through rustls with aws-lc-rs (no
//! OpenSSL), and the two clients built from it — blocking for the store (its backend runs on its
//! own thread) and async for the source.
//!
//! TLS rule: with a CA file, TLS is required and the server must present a certificate that
//! chains to that CA *and* names the host connected to (libpq's `sslmode=verify-full`). Without
//! one, a URL asking for `sslmode=require` or a `verify-*` mode is refused: kfr never talks TLS
//! to a server it cannot verify, since that would send the password to whoever answers.

mod target;

pub use target::{ConnectError, Target, error_chain};

#[cfg(test)]
pub(crate) mod cluster;

#[cfg(test)]
mod tests {
    use super::cluster;
    use super::*;

    fn target(db: &cluster::TestDb) -> Target {
        Target {
            url: db.url.clone(),
            password_file: Some(db.password_file.clone()),
            ca_file: None,
        }
    }

    #[test]
    fn connects_with_the_password_from_its_file() {
        let db = cluster::database();
        let mut c = target(&db).connect_blocking("kfr-test").unwrap();
        let who: String = c.query_one("SELECT current_user::text", &[]).unwrap().get(0);
        assert_eq!(who, cluster::ROLE);
        let app: String = c.query_one("SHOW application_name", &[]).unwrap().get(0);
        assert_eq!(app, "kfr-test");
    }

    #[test]
    fn with_a_ca_file_tls_is_required_and_the_server_verified() {
        let db = cluster::database();
        let t = Target {
            url: format!("postgres://{}@localhost:{}/{}", cluster::ROLE, db.port, db.name),
            ca_file: Some(db.ca_file.clone()),
            ..target(&db)
        };
        let mut c = t.connect_blocking("kfr-test").unwrap();
        let ssl: bool = c
            .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        assert!(ssl, "the session runs over TLS");

        // Another CA: the server's certificate does not chain to it, nothing is sent.
        let other = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(other.path().join("other.pem"), ca.cert.pem()).unwrap();
        let t2 = Target {
            ca_file: Some(other.path().join("other.pem")),
            ..t.clone()
        };
        let err = t2.connect_blocking("kfr-test").err().expect("refused").to_string();
        assert!(err.contains("cannot connect"), "{err}");

        // The right CA but a host name its certificate does not carry (verify-full).
        let t3 = Target {
            url: format!("postgres://{}@127.0.0.2:{}/{}", cluster::ROLE, db.port, db.name),
            ..t.clone()
        };
        assert!(t3.connect_blocking("kfr-test").is_err());
    }

    #[test]
    fn tls_without_a_ca_file_and_a_password_in_the_url_are_refused_by_name() {
        let db = cluster::database();
        let t = Target {
            url: db.tls_url(),
            ..target(&db)
        };
        let err = t.connect_blocking("kfr-test").err().expect("refused");
        assert!(err.to_string().contains("no CA file"), "{err}");
        let t = Target {
            url: format!("postgres://{}:secret@127.0.0.1:{}/{}", cluster::ROLE, db.port, db.name),
            ..target(&db)
        };
        let err = t.connect_blocking("kfr-test").err().expect("refused").to_string();
        assert!(err.contains("password") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn a_password_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let db = cluster::database();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "synthetic-test-password\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t = Target {
            password_file: Some(file),
            ..target(&db)
        };
        let err = t.connect_blocking("kfr-test").err().expect("refused");
        assert!(
            matches!(err, ConnectError::PasswordFileMode { mode: 0o644, .. }),
            "{err}"
        );
    }
}
