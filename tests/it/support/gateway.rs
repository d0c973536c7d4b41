//! `TestGateway`: vigil running in-process on 127.0.0.1:0 with a temp data dir and the
//! chosen database; and `Process`: the real binary, for CLI, kill -9 and restart stories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::postgres::TestDb;

pub const ADMIN: &str = "test-admin-token";
pub const VIEWER: &str = "test-viewer-token";

/// Which store a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A small HTTP client that speaks the API with a token.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            token: token.map(str::to_owned),
        }
    }
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Client { token: token.map(str::to_owned), ..self.clone() }
    }
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path)).timeout(Duration::from_secs(20));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.expect("GET");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    /// Status, content type and body bytes.
    pub async fn get_bytes(&self, path: &str) -> (u16, String, Vec<u8>) {
        let r = self.req(reqwest::Method::GET, path).send().await.expect("GET");
        let s = r.status().as_u16();
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        (s, ct, r.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
    }
    pub async fn get_text(&self, path: &str, accept: &str) -> (u16, String) {
        let r = self.req(reqwest::Method::GET, path).header("accept", accept).send().await.expect("GET");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self.req(method, path).json(&body).send().await.expect("request");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }
    pub async fn post_csv(&self, path: &str, csv: &str) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .header("content-type", "text/csv")
            .body(csv.to_owned())
            .send()
            .await
            .expect("POST");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    /// The Prometheus text from `/metrics` (beside, not under, /api/v1).
    pub async fn metrics(&self) -> String {
        let root = self.base.trim_end_matches("/api/v1");
        let r = self.http.get(format!("{root}/metrics")).send().await.expect("GET /metrics");
        assert!(r.status().is_success(), "/metrics answered {}", r.status());
        r.text().await.unwrap_or_default()
    }
    /// Polls until `check` holds on GET `path`, or panics after `within`.
    pub async fn wait_for(&self, path: &str, within: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (s, v) = self.get(path).await;
            if s == 200 && check(&v) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("GET {path} did not reach the expected state within {within:?}; last: {s} {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    /// Polls `/metrics` until `check` holds on its text, or panics after `within`.
    pub async fn wait_for_metrics(&self, within: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let m = self.metrics().await;
            if check(&m) {
                return m;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("/metrics did not reach the expected state within {within:?}; last:\n{m}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The config text for a test gateway.
pub fn config_toml(data_dir: &Path, db_url: Option<&str>, http_port: u16, extra: &str) -> String {
    config_toml_as(None, data_dir, db_url, http_port, extra)
}

/// `config_toml` for a gateway with its own id (tiers linked by QUIC each have one).
pub fn config_toml_as(
    gateway_id: Option<&str>,
    data_dir: &Path,
    db_url: Option<&str>,
    http_port: u16,
    extra: &str,
) -> String {
    let id = gateway_id.map(|id| format!("id = \"{id}\"\n")).unwrap_or_default();
    let db = db_url.map(|u| format!("[database]\nurl = \"{u}\"\n")).unwrap_or_default();
    // Sources with fixed default ports are off unless the test configures them.
    let mut off = String::new();
    if !extra.contains("[mqtt]") {
        off.push_str("[mqtt]\nmode = \"off\"\n");
    }
    if !extra.contains("[gat1400]") {
        off.push_str("[gat1400]\nenabled = false\n");
    }
    format!(
        r#"
[gateway]
{id}data_dir = "{}"
{db}
[http]
listen = "127.0.0.1:{http_port}"
tokens = [ {{ token = "{ADMIN}", role = "admin" }}, {{ token = "{VIEWER}", role = "viewer" }} ]

[gb28181]
listen = "127.0.0.1:0"

[presence]
checkpoint_every = "1s"
flush_every = "50ms"

[tuning]
rate_refresh = "200ms"
{off}
{extra}
"#,
        data_dir.display()
    )
}

/// vigil in this process.
pub struct TestGateway {
    pub api: Client,
    pub url: String,
    pub sip: Option<std::net::SocketAddr>,
    pub gat1400: Option<std::net::SocketAddr>,
    running: Option<vigil::Running>,
    config: String,
    _dir: tempfile::TempDir,
    _db: Option<TestDb>,
}

impl TestGateway {
    pub async fn start(db: Db, extra: &str) -> Self {
        Self::start_via(db, extra, None).await
    }

    /// Starts with `[gateway] id` set.
    pub async fn start_as(db: Db, gateway_id: &str, extra: &str) -> Self {
        Self::start_inner(db, extra, None, "", Some(gateway_id), None).await
    }

    /// Starts with its data directory at `data_dir` (a tmpfs, say) instead of a temp dir.
    pub async fn start_in(db: Db, data_dir: &Path, extra: &str) -> Self {
        Self::start_inner(db, extra, None, "", None, Some(data_dir)).await
    }

    /// Starts with extra keys in the `[gb28181]` section (the harness already opens it).
    pub async fn start_with_sip(db: Db, gb28181_keys: &str) -> Self {
        Self::start_inner(db, "", None, gb28181_keys, None, None).await
    }

    /// Starts with extra keys in `[gb28181]` and extra sections.
    pub async fn start_with_sip_and(db: Db, gb28181_keys: &str, extra: &str) -> Self {
        Self::start_inner(db, extra, None, gb28181_keys, None, None).await
    }

    /// Starts with PostgreSQL reached through `proxy_port` (a `Proxy` in front of it).
    pub async fn start_via(db: Db, extra: &str, proxy_port: Option<u16>) -> Self {
        Self::start_inner(db, extra, proxy_port, "", None, None).await
    }

    async fn start_inner(
        db: Db,
        extra: &str,
        proxy_port: Option<u16>,
        gb28181_keys: &str,
        gateway_id: Option<&str>,
        data_dir: Option<&Path>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = match db {
            Db::Postgres => Some(TestDb::create().await),
            Db::Sqlite => None,
        };
        let url = pg.as_ref().map(|p| match proxy_port {
            Some(port) => p.url.replace("127.0.0.1:5432", &format!("127.0.0.1:{port}")),
            None => p.url.clone(),
        });
        let text = config_toml_as(gateway_id, data_dir.unwrap_or(dir.path()), url.as_deref(), 0, extra).replace(
            "[gb28181]\nlisten = \"127.0.0.1:0\"\n",
            &format!("[gb28181]\nlisten = \"127.0.0.1:0\"\n{gb28181_keys}"),
        );
        let config = vigil::Config::from_toml_with_env(&text, false).expect("test config is valid");
        let running = vigil::start(config).await.expect("gateway starts");
        let url = format!("http://{}", running.http_addr);
        TestGateway {
            api: Client::new(&format!("{url}/api/v1"), Some(ADMIN)),
            url,
            sip: running.sip_addr,
            gat1400: running.gat1400_addr,
            running: Some(running),
            config: text,
            _dir: dir,
            _db: pg,
        }
    }

    /// Stops in order and starts again on the same data (new HTTP and SIP ports).
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let config = vigil::Config::from_toml_with_env(&self.config, false).expect("test config is valid");
        let running = vigil::start(config).await.expect("gateway starts again");
        self.url = format!("http://{}", running.http_addr);
        self.api = Client::new(&format!("{}/api/v1", self.url), Some(ADMIN));
        self.sip = running.sip_addr;
        self.gat1400 = running.gat1400_addr;
        self.running = Some(running);
    }
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The vigil binary as a child process (killed on drop; its log printed if the test failed).
pub struct Process {
    pub child: Child,
    pub api: Client,
    pub url: String,
    log: PathBuf,
}

impl Process {
    pub async fn start(config_file: &Path, port: u16, log: &Path) -> Self {
        Self::start_command(Command::new(env!("CARGO_BIN_EXE_vigil")), config_file, port, log).await
    }

    /// The binary under `prlimit --nofile=N:N`: soft and hard open-file limits of `nofile`.
    pub async fn start_with_nofile(config_file: &Path, port: u16, log: &Path, nofile: u64) -> Self {
        let mut cmd = Command::new(super::require_command("prlimit"));
        cmd.arg(format!("--nofile={nofile}:{nofile}")).arg(env!("CARGO_BIN_EXE_vigil"));
        Self::start_command(cmd, config_file, port, log).await
    }

    /// The process's resident memory now, bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS of a running vigil")
    }

    async fn start_command(mut cmd: Command, config_file: &Path, port: u16, log: &Path) -> Self {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .args(["run", "--config"])
            .arg(config_file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn vigil");
        let url = format!("http://127.0.0.1:{port}");
        let p = Process { child, api: Client::new(&format!("{url}/api/v1"), Some(ADMIN)), url, log: log.to_owned() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/api/v1/health", p.url)).await {
                if r.status().is_success() {
                    break;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "vigil did not answer on {} within 30 s; log:\n{}",
                    p.url,
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    /// kill -9: no shutdown, no final checkpoint.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- vigil log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}
