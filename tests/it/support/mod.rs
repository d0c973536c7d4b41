//! Test support: the in-process gateway harness, the vigil binary as a process, a fresh
//! PostgreSQL database per test, and a small HTTP client. anyhow is fine here.
#![allow(dead_code)]

pub mod gateway;
pub mod mqtt;
pub mod platform;
pub mod postgres;
pub mod proxy;
pub mod rtsp;
pub mod tmpfs;

use std::net::TcpListener;

/// Ports handed out in blocks of this many: a test may use its port and the next 31 (a media
/// port range) without meeting another test's.
const PORT_BLOCK: u16 = 32;

/// A port free on 127.0.0.1 for TCP and UDP, with the 31 after it for the caller alone.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`, 32768 by default), so no
/// socket bound to port 0 in the meantime — a test's, vigil's RTP sockets, GStreamer's,
/// SIPp's — can take it between now and its use (with ports from the ephemeral range two tests
/// of a run now and then met on one port: "Address already in use"). Blocks are handed out in
/// turn from an offset of this process's, each once per run.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let first = 10_000u32;
    let blocks = low.saturating_sub(first) / u32::from(PORT_BLOCK);
    if blocks < 64 {
        // An unusual ephemeral range: the kernel's choice, as before.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        return l.local_addr().expect("local addr").port();
    }
    let offset = std::process::id() % blocks;
    for _ in 0..blocks {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + ((offset + n) % blocks) * u32::from(PORT_BLOCK)) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if tcp && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port block below {low} on 127.0.0.1");
}

/// The lines a child prints on its stdout (spawned with `Stdio::piped()`), as they come.
pub fn stdout_lines(child: &mut std::process::Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("the child's stdout is piped");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Fails the test with the way out when a peer is missing.
pub fn require_command(cmd: &str) -> std::path::PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = std::path::Path::new(dir).join(cmd);
        if p.is_file() {
            return p;
        }
    }
    panic!("{cmd} is not installed: run scripts/install-deps.sh (or make test, which does)");
}

/// `vigil-sim` beside the test binary (`make test` builds it before the tests).
pub fn sim_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let sim = exe.parent().and_then(|d| d.parent()).expect("target dir").join("vigil-sim");
    assert!(sim.is_file(), "{} is missing: run `make test` (or cargo build --all-targets)", sim.display());
    sim
}

/// Starts a server that prints its URL (starting with `prefix`) as its first line, and
/// answers the child and the URL.
pub fn start_printing_url(mut cmd: std::process::Command, prefix: &str, what: &str) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap_or_else(|e| panic!("{what} prints its URL: {e}"));
    let url = line.trim().to_owned();
    assert!(url.starts_with(prefix), "{what} did not start: {url:?}");
    (child, url)
}

/// The district's wall-clock time (Asia/Shanghai, as devices write it: no offset) `ago`
/// before now. Test data is stamped relative to now so that the clock-sanity window and
/// retention never overtake it, whatever the date the suite runs on.
pub fn device_local_time(ago: std::time::Duration) -> String {
    let at = chrono::Utc::now() - chrono::Duration::from_std(ago).expect("a small duration");
    at.with_timezone(&chrono_tz::Asia::Shanghai).format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// The sum of a metric's samples in Prometheus text (every label set; 0 when absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}
