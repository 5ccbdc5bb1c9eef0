//! ClickHouse test servers: one shared server per test binary ([`server`]), or a private one a
//! test may stop and restart on the same ports ([`ClickHouseServer::start_private`]).
//!
//! When `RISKSTREAM_TEST_CLICKHOUSE_URL` is set, [`server`] uses that server instead of starting
//! one. Otherwise `clickhouse-server` (Debian's package: `apt-get install clickhouse-server`)
//! is started on free ports in a temporary directory. Every server started here runs under a
//! `sh` watchdog that kills it once the test process is gone (and removes its temporary
//! directory), so no server outlives its tests.
//! Tests isolate themselves with their own database (`crate::unique("t")`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable naming an existing server (`http://host:8123`) for the shared instance.
pub const URL_ENV: &str = "RISKSTREAM_TEST_CLICKHOUSE_URL";
/// Native-protocol port of that server (default 9000), for `clickhouse-client`.
pub const TCP_PORT_ENV: &str = "RISKSTREAM_TEST_CLICKHOUSE_TCP_PORT";
/// The server binary looked up on `PATH` and in `/usr/sbin`.
const SERVER_BINARIES: [&str; 3] = [
    "clickhouse-server",
    "/usr/sbin/clickhouse-server",
    "/usr/bin/clickhouse-server",
];
const START_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str = "ClickHouse is needed by this test: set RISKSTREAM_TEST_CLICKHOUSE_URL to a running \
server, or install the server with `apt-get install clickhouse-server`";

/// A ClickHouse server for tests.
pub struct ClickHouseServer {
    url: String,
    http_port: u16,
    tcp_port: u16,
    /// Where a local server keeps its config and data (`None` for an external server).
    dir: Option<tempfile::TempDir>,
    binary: Option<PathBuf>,
    /// Pid of the running local server and its watchdog shell, if running.
    pid: Mutex<Option<(u32, Child)>>,
}

/// The shared server of this test binary, started on first use.
pub fn server() -> &'static ClickHouseServer {
    static SERVER: OnceLock<ClickHouseServer> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => ClickHouseServer::external(url.trim()),
        _ => ClickHouseServer::start_private(),
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

fn find_binary() -> PathBuf {
    for candidate in SERVER_BINARIES {
        let ok = Command::new(candidate)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if ok {
            return PathBuf::from(candidate);
        }
    }
    panic!("{INSTALL_HINT}: clickhouse-server was not found");
}

impl ClickHouseServer {
    fn external(url: &str) -> Self {
        let url = url.trim_end_matches('/').to_string();
        let authority = url
            .split("://")
            .nth(1)
            .unwrap_or(&url)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let http_port = authority
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(8123);
        let server = Self {
            url,
            http_port,
            tcp_port: std::env::var(TCP_PORT_ENV)
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(9000),
            dir: None,
            binary: None,
            pid: Mutex::new(None),
        };
        server.wait_ready();
        server
    }

    /// Starts a new server of this test's own, on free ports. Dropping it stops the server.
    pub fn start_private() -> Self {
        let binary = find_binary();
        let dir = tempfile::Builder::new()
            .prefix("riskstream-clickhouse-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let http_port = free_port();
        let tcp_port = free_port();
        write_config(dir.path(), http_port, tcp_port);
        let server = Self {
            url: format!("http://127.0.0.1:{http_port}"),
            http_port,
            tcp_port,
            dir: Some(dir),
            binary: Some(binary),
            pid: Mutex::new(None),
        };
        server.start();
        server
    }

    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The native protocol port (for `clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// Starts (or restarts) the local server on its ports and waits until it answers `/ping`.
    /// Does nothing if it is already running.
    pub fn start(&self) {
        let (Some(dir), Some(binary)) = (&self.dir, &self.binary) else {
            panic!(
                "an external ClickHouse server ({}) cannot be started by the tests",
                self.url
            );
        };
        let mut pid = self.pid.lock().unwrap_or_else(|e| e.into_inner());
        if pid.is_some() {
            return;
        }
        let config = dir.path().join("config.xml");
        let pid_file = dir.path().join("server.pid");
        let _ = std::fs::remove_file(&pid_file);
        // The watchdog: start the server, then kill it as soon as the test process is gone.
        let script = format!(
            "{bin} --config-file={cfg} >{log} 2>&1 & ch=$!; echo $ch >{pidf}; \
             while kill -0 {parent} 2>/dev/null && kill -0 $ch 2>/dev/null; do sleep 1; done; \
             kill -9 $ch 2>/dev/null; \
             if ! kill -0 {parent} 2>/dev/null; then sleep 1; rm -rf {dir}; fi",
            bin = binary.display(),
            cfg = config.display(),
            log = dir.path().join("stdout.log").display(),
            pidf = pid_file.display(),
            parent = std::process::id(),
            dir = dir.path().display(),
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT}: cannot run sh: {e}"));
        let deadline = Instant::now() + START_TIMEOUT;
        let server_pid = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
            {
                break p;
            }
            if Instant::now() > deadline {
                panic!("clickhouse-server did not start (no pid file)");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        *pid = Some((server_pid, watchdog));
        drop(pid);
        self.wait_ready();
    }

    /// Stops the local server (SIGKILL, like a crash) and waits until its port is closed.
    pub fn stop(&self) {
        let mut pid = self.pid.lock().unwrap_or_else(|e| e.into_inner());
        let Some((p, mut watchdog)) = pid.take() else {
            return;
        };
        let _ = Command::new("kill").arg("-9").arg(p.to_string()).status();
        // The watchdog notices within a second and exits.
        let _ = watchdog.wait();
        let deadline = Instant::now() + START_TIMEOUT;
        while Path::new(&format!("/proc/{p}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        while http_get(self.http_port, "/ping").is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `/ping` answers now.
    pub fn is_up(&self) -> bool {
        http_get(self.http_port, "/ping").is_some_and(|b| b.starts_with("Ok"))
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.is_up() {
            if Instant::now() > deadline {
                let log = self
                    .dir
                    .as_ref()
                    .and_then(|d| std::fs::read_to_string(d.path().join("stderr.log")).ok())
                    .unwrap_or_default();
                panic!(
                    "ClickHouse at {} did not answer /ping within {START_TIMEOUT:?}. {INSTALL_HINT}\n{log}",
                    self.url
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one statement over HTTP and returns the body (panics on failure: test setup only).
    pub fn query(&self, sql: &str) -> String {
        http_post(self.http_port, sql)
            .unwrap_or_else(|e| panic!("clickhouse query failed: {e}\nquery: {sql}"))
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        if self.dir.is_some() {
            self.stop();
        }
    }
}

fn write_config(dir: &Path, http_port: u16, tcp_port: u16) {
    let d = dir.display();
    let config = format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/stderr.log</errorlog><console>0</console></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709120</mark_cache_size>
  <max_concurrent_queries>200</max_concurrent_queries>
</yandex>
"#
    );
    let users = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#;
    for (name, body) in [("config.xml", config.as_str()), ("users.xml", users)] {
        std::fs::write(dir.join(name), body)
            .unwrap_or_else(|e| panic!("cannot write the ClickHouse {name}: {e}"));
    }
}

fn http_request(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    match http_request(port, &req) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

fn http_post(port: u16, sql: &str) -> Result<String, String> {
    let req = format!(
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{sql}",
        sql.len()
    );
    match http_request(port, &req) {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(format!("status {status}: {body}")),
        Err(e) => Err(e.to_string()),
    }
}
