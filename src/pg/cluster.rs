//! A throwaway PostgreSQL cluster for tests: `initdb` + `pg_ctl` in a temporary directory,
//! listening on a Unix socket there and on 127.0.0.1 (TLS on, with a CA of its own), stopped
//! when the test process ends, however it ends.
//!
//! Shared by the unit tests (`cfg(test)` in the library) and the integration tests (included by
//! path), so it names nothing of the crate: only std, `postgres`, `rcgen` and `libc`.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: the server then runs as the
//! `postgres` system user (the server package creates it). Without server binaries every test
//! that needs one fails saying what to install; none is skipped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The role tests connect as (over TCP, with a password), and its password.
pub const ROLE: &str = "kfr";
const PASSWORD: &str = "synthetic-test-password";

/// A running cluster. Dropping it stops it (a shared one lives until the process ends).
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    /// The CA that signed the server's certificate (for `ca_file`).
    pub ca_file: PathBuf,
    /// The password of [`ROLE`], in a 0600 file (for `password_file`).
    pub password_file: PathBuf,
}

/// A database of its own for one test, owned by [`ROLE`].
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    /// `postgres://kfr@127.0.0.1:PORT/NAME`: TCP, password from [`TestDb::password_file`].
    pub url: String,
    pub password_file: PathBuf,
    pub ca_file: PathBuf,
    pub port: u16,
    socket_dir: PathBuf,
}

impl TestDb {
    /// The same database with TLS asked for by the URL (`sslmode=require`).
    pub fn tls_url(&self) -> String {
        format!(
            "postgres://{ROLE}@localhost:{}/{}?sslmode=require",
            self.port, self.name
        )
    }

    /// A superuser connection to this database over the Unix socket (for what a test does
    /// behind kfr's back: terminating sessions, inspecting rows). Blocking: not for a thread that
    /// runs async tasks (use [`TestDb::query_i64`] / [`TestDb::execute`] there).
    pub fn admin(&self) -> postgres::Client {
        admin_client(&self.socket_dir, self.port, &self.name)
    }

    /// Runs `sql` as the superuser, from any thread (async tests included).
    pub fn execute(&self, sql: &str) {
        off_runtime(|| self.admin().batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}")));
    }

    /// The first column of the first row of `sql` as an integer, from any thread.
    pub fn query_i64(&self, sql: &str) -> i64 {
        off_runtime(|| {
            self.admin()
                .query_one(sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .get(0)
        })
    }
}

/// Runs `f` on a thread of its own: the blocking client starts a runtime of its own, which
/// must not happen on a thread that drives async tasks.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
}

fn admin_client(socket_dir: &Path, port: u16, db: &str) -> postgres::Client {
    postgres::Config::new()
        .host_path(socket_dir)
        .port(port)
        .user("postgres")
        .dbname(db)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to the test cluster as postgres: {e}"))
}

/// The cluster every test of this process shares (one `initdb` per process).
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    SHARED.get_or_init(|| off_runtime(Cluster::start).unwrap_or_else(|e| panic!("{e}")))
}

/// A fresh database on the shared cluster.
pub fn database() -> TestDb {
    shared().database()
}

/// Where the server binaries are: the directory of `pg_ctl` on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin`.
fn server_bin() -> Result<PathBuf, String> {
    let has_all = |d: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| d.join(b).is_file());
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_all(&d) {
                return Ok(d);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_all(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were found neither on PATH nor under \
         /usr/lib/postgresql/*/bin: install the PostgreSQL server package (Debian: `apt-get install \
         postgresql`; .ci/run does this) to run the PostgreSQL tests"
            .to_string()
    })
}

/// The user the server runs as: the `postgres` system user when we are root, else ourselves.
fn server_owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(
            "running as root, and there is no `postgres` user to run the test cluster as \
                    (PostgreSQL refuses root): install the PostgreSQL server package, which creates it"
                .into(),
        );
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Cluster {
    /// Starts a cluster of its own (for a test that restarts or stops the server).
    pub fn start() -> Result<Cluster, String> {
        off_runtime(Self::start_here)
    }

    fn start_here() -> Result<Cluster, String> {
        let bin = server_bin()?;
        let owner = server_owner()?;
        let dir = tempfile_dir()?;
        let data = dir.join("data");
        let port = free_port();
        if let Some((uid, gid)) = owner {
            chown(&dir, uid, gid)?;
        }
        run(
            Command::new(bin.join("initdb")).args(["-D"]).arg(&data).args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]),
            owner,
        )?;
        let (ca_file, cert, key) = write_tls(&dir)?;
        let password_file = dir.join("kfr.password");
        write_private(&password_file, PASSWORD.as_bytes())?;
        for f in [&cert, &key] {
            if let Some((uid, gid)) = owner {
                chown(f, uid, gid)?;
            }
        }
        // Test settings: no fsync (a test's database is thrown away), room for the agents and
        // handles of parallel tests, TLS for the tests that verify it.
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             max_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\nlog_min_messages = warning\n",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
        );
        append(&data.join("postgresql.conf"), &conf)?;
        let cluster = Cluster {
            dir: dir.clone(),
            port,
            bin,
            owner,
            ca_file,
            password_file,
        };
        cluster.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&dir.join("server.log")))?;
        cluster.watch_parent()?;
        let mut admin = admin_client(&dir, port, "postgres");
        admin
            .batch_execute(&format!("CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'"))
            .map_err(|e| format!("creating the test role: {e}"))?;
        Ok(cluster)
    }

    fn pg_ctl(&self, args: &[&str], log: Option<&Path>) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.dir.join("data")).args(args);
        if let Some(log) = log {
            cmd.arg(log);
        }
        run(&mut cmd, self.owner)
    }

    /// Stops the server when this process ends, however it ends (a watcher process that
    /// outlives a `kill -9` of the test binary).
    fn watch_parent(&self) -> Result<(), String> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            data = self.dir.join("data").display(),
            dir = self.dir.display(),
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_owner(&mut cmd, self.owner);
        cmd.spawn()
            .map(|_| ())
            .map_err(|e| format!("starting the cluster's watcher: {e}"))
    }

    /// A new database owned by [`ROLE`].
    pub fn database(&self) -> TestDb {
        off_runtime(|| self.database_here())
    }

    fn database_here(&self) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("kfr_test_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let mut admin = admin_client(&self.dir, self.port, "postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {ROLE}"))
            .unwrap_or_else(|e| panic!("creating the test database {name}: {e}"));
        TestDb {
            url: format!("postgres://{ROLE}@127.0.0.1:{}/{name}", self.port),
            name,
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            port: self.port,
            socket_dir: self.dir.clone(),
        }
    }

    /// Stops the server (`-m fast`: sessions are ended, what was committed stays).
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-w", "-m", "fast"], None)
            .expect("stopping the test cluster");
    }

    /// Starts a stopped server again, on the same port.
    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], Some(&self.dir.join("server.log")))
            .expect("starting the test cluster again");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate"], None);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempfile_dir() -> Result<PathBuf, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    // Short: the socket path (dir + `/.s.PGSQL.PORT`) must fit in 107 bytes.
    let dir = std::env::temp_dir().join(format!(
        "kfr-pg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        use std::os::unix::process::CommandExt as _;
        cmd.uid(uid).gid(gid);
        // HOME of root is not the postgres user's to read.
        cmd.env("HOME", "/tmp");
    }
}

fn run(cmd: &mut Command, owner: Option<(u32, u32)>) -> Result<(), String> {
    as_owner(cmd, owner);
    cmd.current_dir("/tmp");
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| format!("chown {}: {e}", path.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it: (CA file,
/// certificate, key).
fn write_tls(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let e = |e: rcgen::Error| format!("making the test cluster's certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kfr test cluster CA");
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).map_err(e)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).map_err(e)?;
    let (ca_file, cert_file, key_file) = (dir.join("ca.pem"), dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&ca_file, ca.pem()).map_err(|e| format!("writing the CA: {e}"))?;
    write_private(&cert_file, cert.pem().as_bytes())?;
    write_private(&key_file, key.serialize_pem().as_bytes())?;
    Ok((ca_file, cert_file, key_file))
}
