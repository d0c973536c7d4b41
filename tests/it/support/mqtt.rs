//! MQTT peers for tests: a QoS 1 publisher (rumqttc) that counts the broker's PUBACKs, a
//! private Mosquitto on a free port (for broker restarts), and a copy of a shipped profile
//! whose routes carry a per-test topic prefix, so tests sharing the CI broker never see each
//! other's messages.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The CI / developer broker.
pub const BROKER_PORT: u16 = 1883;

/// A unique topic prefix for one test.
pub fn prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// Copies the shipped `file` into `dir` with every route under `prefix/`.
pub fn profile_with_prefix(dir: &Path, file: &str, prefix: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("device-profiles").join(file);
    let text = std::fs::read_to_string(src).expect("shipped profile");
    let mut out = String::new();
    for line in text.lines() {
        let l = if line.contains("mqtt = \"") {
            line.replacen("mqtt = \"", &format!("mqtt = \"{prefix}/"), 1)
        } else if line.starts_with("lwt = {") || line.starts_with("route = \"") && !line.contains("\"/") {
            line.replacen("topic = \"", &format!("topic = \"{prefix}/"), 1).replacen(
                "route = \"",
                &format!("route = \"{prefix}/"),
                1,
            )
        } else {
            line.to_owned()
        };
        out.push_str(&l);
        out.push('\n');
    }
    std::fs::write(dir.join(file), out).expect("write profile");
}

/// A QoS 1 publisher; `acked()` counts PUBACKs from the broker.
pub struct Publisher {
    pub client: AsyncClient,
    acked: Arc<AtomicUsize>,
    /// Publishes made through `publish`.
    published: AtomicUsize,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub async fn connect(port: u16, id: &str) -> Publisher {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(16 << 20, 16 << 20);
        o.set_inflight(200);
        let (client, mut ev) = AsyncClient::new(o, 1000);
        let acked = Arc::new(AtomicUsize::new(0));
        let a = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher { client, acked, published: AtomicUsize::new(0), task }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.expect("publish");
        self.published.fetch_add(1, Ordering::SeqCst);
    }

    /// How many publishes `publish` made.
    pub fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }

    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until the broker has acknowledged `n` publishes.
    pub async fn wait_acked(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.acked() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker acknowledged {} of {n} publishes",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A private Mosquitto on a free port, stopped on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub async fn start(port: u16) -> Mosquitto {
        Self::start_with(port, "allow_anonymous true\n").await
    }

    /// With `extra` configuration lines (e.g. `password_file`, `acl_file`).
    pub async fn start_with(port: u16, extra: &str) -> Mosquitto {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .map(Into::into)
            .unwrap_or_else(|| super::require_command("mosquitto"));
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\n{extra}persistence false\nmax_inflight_messages 1000\nmax_queued_messages 100000\n"),
        )
        .expect("conf");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "mosquitto did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Mosquitto { port, child, _dir: dir }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
