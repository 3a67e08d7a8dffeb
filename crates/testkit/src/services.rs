//! Private Redis and PostgreSQL servers for fault tests that restart or empty them: never the
//! shared ones other test binaries use at the same time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < timeout, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` on a free port with no persistence, in a temporary directory. Killed when
/// dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: bool,
}

/// The test Redis's certificate (self-signed, `localhost` and 127.0.0.1, valid until 2126):
/// what a client must trust to reach [`PrivateRedis::start_tls`].
pub const TEST_TLS_CERT: &str = include_str!("../tls/redis-cert.pem");
/// The key of [`TEST_TLS_CERT`], for test servers of TLS (`localhost`, `127.0.0.1`).
pub const TEST_TLS_KEY: &str = include_str!("../tls/redis-key.pem");

impl PrivateRedis {
    /// Starts one and waits until it answers.
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_with(false)
    }

    /// One that speaks only TLS, with the certificate [`TEST_TLS_CERT`] (clients are not asked
    /// for one). [`PrivateRedis::url`] is then `rediss://…`.
    pub fn start_tls() -> PrivateRedis {
        PrivateRedis::start_with(true)
    }

    fn start_with(tls: bool) -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
            tls,
        };
        if tls {
            std::fs::write(r.cert_file(), TEST_TLS_CERT).expect("write cert");
            std::fs::write(r.key_file(), TEST_TLS_KEY).expect("write key");
        }
        r.restart();
        r
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for one started with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A file holding the certificate to trust (`SSL_CERT_FILE`) for one started with TLS.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// SIGKILLs the server (every key is lost: there is no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server without closing anything (SIGSTOP): connections stay open and new ones
    /// are accepted by the kernel, but nothing answers — a frozen or partitioned Redis.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {signal} redis-server failed");
        }
    }

    /// Kills the server if it runs, and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new("redis-server");
        if self.tls {
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(self.cert_file())
                .arg("--tls-key-file")
                .arg(self.key_file())
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        // its log kept, so that a server that could not start (its port taken by another
        // test's listener) says why, instead of the test talking to whatever answers there
        let log_path = self.dir.path().join("redis-server.log");
        let log = std::fs::File::create(&log_path).expect("create the redis-server log");
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log.try_clone().expect("the redis-server log"))
            .stderr(log)
            .spawn()
            .expect("start redis-server (is it installed?)");
        self.child = Some(child);
        let port = self.port;
        wait_for("redis-server", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        // a bind failure ends the server within milliseconds
        std::thread::sleep(Duration::from_millis(100));
        if let Some(child) = self.child.as_mut()
            && !matches!(child.try_wait(), Ok(None))
        {
            panic!(
                "redis-server on port {port} exited at start; another process answers there:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL cluster of its own (initdb in a temporary directory, trust authentication,
/// superuser `postgres`) on a free port. Run as the `postgres` OS user when the tests run as
/// root. Stopped (immediate) when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    // owns the data directory; removed last
    _dir: tempfile::TempDir,
}

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists());
    dirs.sort();
    dirs.pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: install postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `program args` (as `postgres` when root) and panics with its output on failure.
fn run_pg(program: &Path, args: &[String]) {
    let out = if is_root() {
        let mut line = shell_quote(&program.display().to_string());
        for a in args {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c", &line])
            .stdin(Stdio::null())
            .output()
    } else {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
    }
    .expect("run a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl PrivatePostgres {
    /// initdb and start; waits until it accepts connections.
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new()
            .prefix("escalator-pg-")
            .tempdir()
            .expect("temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown the private cluster to postgres");
        }
        let bin = pg_bin();
        let pg = PrivatePostgres {
            port: free_port(),
            bin,
            data,
            _dir: dir,
        };
        run_pg(
            &pg.bin.join("initdb"),
            &[
                "-D".into(),
                pg.data.display().to_string(),
                "-A".into(),
                "trust".into(),
                "-U".into(),
                "postgres".into(),
                "--no-sync".into(),
            ],
        );
        pg.ctl("start");
        pg
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, action: &str) {
        let socket_dir = self.data.display().to_string();
        let opts = format!(
            "-p {} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c max_connections=200",
            self.port
        );
        let mut args = vec![
            action.to_owned(),
            "-D".into(),
            self.data.display().to_string(),
            "-w".into(),
            "-m".into(),
            "fast".into(),
            "-l".into(),
            self.data.join("log").display().to_string(),
        ];
        if action != "stop" {
            args.push("-o".into());
            args.push(opts);
        }
        run_pg(&self.bin.join("pg_ctl"), &args);
        if action != "stop" {
            let port = self.port;
            wait_for("postgres", Duration::from_secs(30), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
    }

    /// `pg_ctl restart -m fast`: every connection is cut.
    pub fn restart(&self) {
        self.ctl("restart");
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// `pg_ctl start`.
    pub fn start_again(&self) {
        self.ctl("start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            run_pg(
                &self.bin.join("pg_ctl"),
                &[
                    "stop".into(),
                    "-D".into(),
                    self.data.display().to_string(),
                    "-m".into(),
                    "immediate".into(),
                ],
            )
        });
    }
}
