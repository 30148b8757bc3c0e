//! A throwaway PostgreSQL for tests, and a fresh database per test.
//!
//! When `BUTTRESS_POSTGRES_URL` is set (the test command `scripts/test.sh`
//! starts a server with `scripts/services.sh` and exports it), that server is
//! used. Otherwise the first call starts one for the whole test binary the
//! way `scripts/services.sh` does: `initdb` in a temporary directory (as the
//! `postgres` user when running as root), a free port on 127.0.0.1, `fsync`
//! off. That server and its directory go away when the test binary exits,
//! however it exits (a watchdog shell waits for the end of its stdin, a pipe
//! this process holds).
//!
//! Each [`database`] call creates a database of its own with a unique name,
//! so tests are isolated and can run in parallel; it is dropped (`WITH
//! (FORCE)`) when the [`Database`] is.
//!
//! ```no_run
//! # async fn demo() {
//! let db = buttress_test_support::postgres::database();
//! let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
//!     .await
//!     .unwrap();
//! tokio::spawn(connection);
//! client.batch_execute("CREATE TABLE t (id int)").await.unwrap();
//! # }
//! ```

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, postgres) were not found in \
     /usr/lib/postgresql/*/bin or on PATH: run the tests with `bash scripts/test.sh` (it installs \
     and starts one), or install the server (apt-get install postgresql), or set \
     BUTTRESS_POSTGRES_URL=postgres://user@127.0.0.1:<port>/<db>";

/// A database of its own on the test server, dropped with this value.
#[derive(Debug)]
pub struct Database {
    url: String,
    name: String,
    admin_url: String,
}

impl Database {
    /// The connection string of this database
    /// (`postgres://postgres@127.0.0.1:<port>/<name>` or the like).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection string of the server's maintenance database, to
    /// create or inspect others.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        // Best effort: the server is thrown away at the end anyway.
        let _ = run_sql(&self.admin_url, &sql);
    }
}

/// A fresh, empty database on the test server (started on first use when
/// `BUTTRESS_POSTGRES_URL` is not set). Panics with an install hint when
/// the PostgreSQL binaries are missing, and with the server's log when it
/// does not start.
pub fn database() -> Database {
    let base = server_url();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "buttress_t_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let admin_url = with_dbname(&base, "postgres");
    if let Err(e) = run_sql(&admin_url, &format!("CREATE DATABASE \"{name}\"")) {
        panic!("could not create test database {name} on {admin_url}: {e}");
    }
    Database {
        url: with_dbname(&base, &name),
        name,
        admin_url,
    }
}

/// The URL of the server in use: `BUTTRESS_POSTGRES_URL`, or one started
/// for this test binary.
pub fn server_url() -> String {
    if let Ok(url) = std::env::var("BUTTRESS_POSTGRES_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    static SERVER: OnceLock<Mutex<Server>> = OnceLock::new();
    let server = SERVER.get_or_init(|| Mutex::new(Server::start()));
    let port = server.lock().unwrap_or_else(|e| e.into_inner()).port;
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// `url` with its database name (the path) replaced by `name`.
fn with_dbname(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs `sql` on `url`, on a thread of its own (callers may be inside a
/// tokio runtime, which cannot block on another).
fn run_sql(url: &str, sql: &str) -> Result<(), String> {
    let url = url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let conn = tokio::spawn(connection);
            let out = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = conn.await;
            out
        })
    })
    .join()
    .map_err(|_| "the SQL thread panicked".to_owned())?
}

/// A server started for this test binary.
struct Server {
    port: u16,
    // Held for its stdin: when this process ends the pipe closes and the
    // watchdog shell stops the server and removes its directory.
    _watchdog: Child,
}

fn pg_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    dirs.sort();
    let has_all = |d: &Path| ["initdb", "postgres"].iter().all(|b| d.join(b).is_file());
    if let Some((_, dir)) = dirs.into_iter().rev().find(|(_, d)| has_all(d)) {
        return Some(dir);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| has_all(d)))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// `program args...`, as the `postgres` user when we are root (initdb and
/// the server refuse to run as root).
fn as_pg(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Server {
    fn start() -> Self {
        let bin = pg_bindir().unwrap_or_else(|| panic!("{INSTALL_HINT}"));
        let root = is_root();
        let tmp = std::env::temp_dir();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = tmp.join(format!("buttress-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the PostgreSQL directory");
        let data = dir.join("data");
        if root {
            let ok = Command::new("chown")
                .args(["postgres:"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "running as root needs a `postgres` user owning {}: `useradd postgres` or set \
                 BUTTRESS_POSTGRES_URL",
                dir.display()
            );
        }
        let out = as_pg(root, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8"])
            .args(["--no-locale", "--no-sync"])
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("could not run initdb: {e}; {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        match Self::spawn(root, &bin, &dir, &data, port) {
            Ok(watchdog) => Self {
                port,
                _watchdog: watchdog,
            },
            Err(log) => panic!("postgres did not start on 127.0.0.1:{port}; its log:\n{log}"),
        }
    }

    /// Starts the server under a watchdog shell; its log when it does not
    /// accept connections.
    fn spawn(root: bool, bin: &Path, dir: &Path, data: &Path, port: u16) -> Result<Child, String> {
        // The shell runs the server in the background, waits for its own
        // stdin to close (this process ended), then stops it at once and
        // removes the directory.
        let script = r#"
            "$@" &
            cat >/dev/null
            pg=$(head -n 1 "$BUTTRESS_PG_DIR/data/postmaster.pid" 2>/dev/null)
            if [ -n "$pg" ]; then
                kill -QUIT "$pg" 2>/dev/null
                for _ in $(seq 1 100); do kill -0 "$pg" 2>/dev/null || break; sleep 0.1; done
                kill -KILL "$pg" 2>/dev/null
            fi
            wait
            rm -rf "$BUTTRESS_PG_DIR"
        "#;
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg("sh");
        if root {
            command.args(["runuser", "-u", "postgres", "--"]);
        }
        command
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("port={port}")])
            .args(["-c", &format!("unix_socket_directories={}", dir.display())])
            .args(["-c", "max_connections=200"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .env("BUTTRESS_PG_DIR", dir)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let log = std::fs::File::create(dir.join("postgres.log"))
            .map_err(|e| format!("cannot create postgres.log: {e}"))?;
        command.stderr(log);
        let mut child = command.spawn().map_err(|e| format!("cannot run sh: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && run_sql(
                    &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                    "SELECT 1",
                )
                .is_ok()
            {
                return Ok(child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
        // Closing stdin makes the watchdog stop the server and clean up.
        drop(child.stdin.take());
        let _ = child.wait();
        Err(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }

    #[test]
    fn url_database_name_is_replaced() {
        assert_eq!(
            with_dbname("postgres://u@127.0.0.1:5/buttress_test", "x"),
            "postgres://u@127.0.0.1:5/x"
        );
        assert_eq!(
            with_dbname("postgres://u@127.0.0.1:5", "x"),
            "postgres://u@127.0.0.1:5/x"
        );
        assert_eq!(
            with_dbname("postgres://u@h/d?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_database_is_fresh_and_isolated() {
        let a = database();
        let b = database();
        assert_ne!(a.name(), b.name());
        let ca = connect(a.url()).await;
        let cb = connect(b.url()).await;
        ca.batch_execute("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        // The table exists in `a` only.
        assert!(cb.query("SELECT * FROM t", &[]).await.is_err());
        let n: i64 = ca
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
        let name = a.name().to_owned();
        let admin = connect(a.admin_url()).await;
        drop(ca);
        drop(a);
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "the database is dropped with its handle");
    }
}
