//! PostgreSQL for the tests: a database of the test's own on the machine's server
//! (127.0.0.1:5432, user `postgres`, trust auth), or, for tests that stop, kill or
//! hold up the server, a server of the test's own (Debian's `initdb` and `pg_ctl`,
//! a temporary data folder, a free loopback port), so the machine's is never
//! disturbed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::free_port;

/// The machine's server.
const SHARED: (&str, u16) = ("127.0.0.1", 5432);

/// Which outbox a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's temporary folder.
    Sqlite,
    /// A database of its own on the machine's PostgreSQL.
    Postgres,
}

/// Runs `psql` against `port`'s database `db` and returns what it printed
/// (unaligned, tuples only).
fn psql(port: u16, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-h",
            SHARED.0,
            "-U",
            "postgres",
            "-X",
            "-q",
            "-tA",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-p", &port.to_string(), "-d", db, "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A database created for one test, dropped with it.
pub struct Database {
    /// Its name.
    pub name: String,
    port: u16,
}

impl Database {
    /// A new database on the machine's server.
    pub fn create() -> Self {
        Self::create_on(SHARED.1)
    }

    /// A new database on the server listening on `port`.
    pub fn create_on(port: u16) -> Self {
        let name = format!("hr_it_{}", uuid::Uuid::new_v4().simple());
        psql(port, "postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("create database on 127.0.0.1:{port}: {e}"));
        Self { name, port }
    }

    /// The outbox URL of this database, through `addr` (a proxy) if given.
    pub fn url_via(&self, addr: Option<std::net::SocketAddr>) -> String {
        let host = addr.map_or_else(|| format!("{}:{}", SHARED.0, self.port), |a| a.to_string());
        format!("postgres://postgres@{host}/{}?sslmode=disable", self.name)
    }

    /// The outbox URL of this database.
    pub fn url(&self) -> String {
        self.url_via(None)
    }

    /// The server's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs SQL in this database; returns what it printed.
    pub fn sql(&self, sql: &str) -> String {
        psql(self.port, &self.name, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            self.port,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// A PostgreSQL server of the test's own.
pub struct PgServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Debian's server programs, newest version first.
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL's server programs under /usr/lib/postgresql (Debian's postgresql package)",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version with pg_ctl")
}

/// Runs a server program as the `postgres` user (they refuse to run as root).
fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    let mut command = if nix_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .output()
        .expect("run a PostgreSQL server program")
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A temporary folder the server programs (run as `postgres`) may write.
fn server_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    if nix_is_root() {
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success(), "chown the data folder to postgres");
    }
    dir
}

impl PgServer {
    /// Initialises a cluster in a temporary folder and starts it on a free port.
    pub fn start() -> Self {
        let dir = server_dir();
        let data = dir.path().join("data");
        let bin = server_bin();
        let init = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().expect("path"),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let server = Self {
            port: free_port(),
            bin,
            data,
            _dir: dir,
        };
        server.start_again();
        server
    }

    /// A streaming standby of this server (`pg_basebackup -R`), started on a
    /// free port. The primary's `initdb` allows replication from loopback.
    pub fn standby(&self) -> Self {
        let dir = server_dir();
        let data = dir.path().join("data");
        let backup = as_postgres(
            &self.bin.join("pg_basebackup"),
            &[
                "-h",
                SHARED.0,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().expect("path"),
                "-R",
                "-X",
                "stream",
                // Not the default spread checkpoint: that waits most of
                // checkpoint_timeout.
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        assert!(
            backup.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&backup.stderr)
        );
        let standby = Self {
            port: free_port(),
            bin: self.bin.clone(),
            data,
            _dir: dir,
        };
        standby.start_again();
        standby
    }

    /// Promotes this standby to a primary and waits until it takes writes.
    pub fn promote(&self) {
        let out = self.pg_ctl(&["-w", "-t", "60", "promote"]);
        assert!(
            out.status.success(),
            "pg_ctl promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while psql(self.port, "postgres", "SELECT pg_is_in_recovery()").as_deref() != Ok("f") {
            assert!(
                Instant::now() < deadline,
                "the promoted server takes writes"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs SQL in this server's database `db`; returns what it printed.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        psql(self.port, db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["-D", self.data.to_str().expect("path")];
        all.extend_from_slice(args);
        as_postgres(&self.bin.join("pg_ctl"), &all)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c fsync=on",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        let out = self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-o",
            &options,
            "-l",
            log.to_str().expect("path"),
            "start",
        ]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while psql(self.port, "postgres", "SELECT 1").is_err() {
            assert!(Instant::now() < deadline, "the server accepts connections");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`):
    /// no checkpoint, connections cut, recovery from the WAL at the next start.
    pub fn stop_immediate(&self) {
        let out = self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}
