//! A PostgreSQL server of one test's own that accepts only TLS connections: a cluster made with
//! the installed server's `initdb` in a temporary directory, on a free port, with `ssl = on`, a
//! server certificate from the test's CA ([`TestPki`]) and a `pg_hba.conf` of `hostssl` lines
//! only (so a plain connection is refused by the server itself). The shared cluster on 5432 is
//! not touched. The server runs as the `postgres` user (`runuser`), like the shared one; it is
//! stopped and its directory removed on drop, and a later test stops the servers of test
//! processes that were killed before they could.
//!
//! Users: `postgres` (trust, over TLS) and `worker` (a superuser authenticated by client
//! certificate: `pki`'s `client.pem`, whose common name is `worker`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::broker_tls::TestPki;

/// Name prefix of the servers' directories under the temp directory.
const PREFIX: &str = "worker-pg-tls-";

/// A running TLS-only PostgreSQL, stopped on drop.
#[derive(Debug)]
pub struct TlsPostgres {
    /// The server's port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl TlsPostgres {
    /// Creates and starts the server with `pki`'s certificate for `localhost`. Panics with the
    /// tool's output when a step fails: nothing here skips.
    pub fn start(pki: &TestPki, test_id: &str) -> Self {
        let bin = server_bin();
        stop_orphans(&bin);
        let dir = std::env::temp_dir().join(format!("{PREFIX}{test_id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server directory");
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .expect("write the owner's pid");
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir));
        let data = dir.join("data");
        run(as_postgres(&bin.join("initdb"))
            .args(["--no-sync", "-A", "trust", "-U", "postgres", "-D"])
            .arg(&data));
        for (from, to) in [
            ("server.pem", "server.crt"),
            ("server.key", "server.key"),
            ("ca.pem", "root.crt"),
        ] {
            let target = data.join(to);
            std::fs::copy(pki.path(from), &target).expect("copy a certificate file");
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))
                .expect("make the key private (PostgreSQL refuses a readable key)");
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            "local   all  all                  trust\n\
             hostssl all  worker  127.0.0.1/32  cert\n\
             hostssl all  all     127.0.0.1/32  trust\n",
        )
        .expect("write pg_hba.conf");
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data));

        let mut last = String::new();
        // The port is free when chosen; another process may take it first, so a few tries.
        for _ in 0..5 {
            let port = crate::closed_port();
            let settings = format!(
                "-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
                 -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key \
                 -c ssl_ca_file=root.crt -c fsync=off -c shared_buffers=16MB \
                 -c max_connections=100",
                dir.display()
            );
            let output = as_postgres(&bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-o", &settings, "start"])
                .output()
                .expect("run pg_ctl");
            if output.status.success() {
                let server = Self { port, dir, bin };
                server.psql("CREATE ROLE worker LOGIN SUPERUSER");
                return server;
            }
            last = format!(
                "{}{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            if !last.contains("already in use") {
                break;
            }
        }
        panic!("the TLS-only PostgreSQL did not start: {last}");
    }

    /// A URL of this server's `postgres` database for `user` at `host`, with `query` (the
    /// `sslmode`, `sslrootcert`, ... parameters).
    pub fn url(&self, host: &str, user: &str, query: &str) -> String {
        format!("postgres://{user}@{host}:{}/postgres?{query}", self.port)
    }

    /// Runs `sql` as `postgres` over the server's Unix socket (no TLS needed there).
    pub fn psql(&self, sql: &str) -> String {
        run(as_postgres(&self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ]))
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        stop(&self.bin, &self.dir);
    }
}

/// The `bin` directory of the newest installed PostgreSQL server (Debian's layout).
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server is installed under /usr/lib/postgresql")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("an initdb under /usr/lib/postgresql/<version>/bin")
}

/// `program` run as the `postgres` user (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

/// Runs `command`; its stdout, or a panic with what it printed.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Stops the server in `dir` at once (its data is thrown away) and removes the directory.
fn stop(bin: &Path, dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let _ = as_postgres(&bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(&data)
            .arg("stop")
            .output();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Stops the servers of test processes that no longer run (killed before their drop ran).
fn stop_orphans(bin: &Path) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join("owner.pid")).unwrap_or_default();
        let alive = owner
            .trim()
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            stop(bin, &entry.path());
        }
    }
}
