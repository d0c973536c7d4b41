//! GB/T 28181 cascade, vigil the lower platform: SIPp (Debian `sip-tester`) plays the upper
//! platform from the scenario files in `tests/fixtures/sipp/`. It challenges vigil's REGISTER
//! with digest and verifies the answer itself (`verifyauth`: SIPp computes the digest, not
//! vigil), grants the registration, and answers the keepalives that follow; the upstream's
//! state in `GET /api/v1/relay/targets` follows. A wrong password is refused by the upper and
//! shown with its code.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::gateway::{Db, TestGateway};
use crate::support::{free_port, require_command};

const LOWER: &str = "42010400002000000001";
const UPPER: &str = "42010000002000000001";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sipp").join(name)
}

/// SIPp as the upper platform on `port`, for one registration and one keepalive.
struct Upper(Child);

impl Upper {
    fn start(port: u16) -> Upper {
        let sipp = require_command("sipp");
        let child = Command::new(sipp)
            .arg("-sf")
            .arg(fixture("upper_register.xml"))
            // Two calls: the registration, and the first keepalive.
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-m", "2", "-nostdin", "-timeout", "60s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp");
        Upper(child)
    }

    /// SIPp's verdict on the call: true when every step of the scenario held.
    async fn passed(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.success();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

impl Drop for Upper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn upstream(port: u16, password: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"city\"\nprotocol = \"gb28181\"\nserver_id = \"{UPPER}\"\nserver_addr = \"127.0.0.1:{port}\"\n\
user_id = \"{LOWER}\"\npassword = \"{password}\"\nlisten = \"127.0.0.1:{}\"\nkeepalive_interval = \"5s\"\n",
        free_port()
    )
}

async fn city(gw: &TestGateway, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let v = gw
        .api
        .wait_for("/relay/targets", Duration::from_secs(20), |v| {
            v["items"].as_array().is_some_and(|a| a.iter().any(|t| t["name"] == "city" && check(t)))
        })
        .await;
    v["items"].as_array().and_then(|a| a.iter().find(|t| t["name"] == "city").cloned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_registers_to_an_upper_platform_with_digest_and_keeps_alive() {
    let port = free_port();
    let mut upper = Upper::start(port);
    let gw = TestGateway::start(Db::Sqlite, &upstream(port, "12345678")).await;
    let t = city(&gw, |t| t["session"]["state"] == "registered" && !t["session"]["last_keepalive_at"].is_null()).await;
    assert_eq!((t["protocol"].as_str(), t["state"].as_str()), (Some("gb28181"), Some("registered")), "{t}");
    assert!(t["session"]["until"].is_string() && t["last_error"].is_null(), "{t}");
    let passed = upper.passed(Duration::from_secs(20)).await;
    assert!(passed, "SIPp, the upper platform, verified vigil's digest answer and its registration");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_by_the_upper_and_shown_with_its_code() {
    let port = free_port();
    let _upper = Upper::start(port);
    let gw = TestGateway::start(Db::Sqlite, &upstream(port, "wrong-password")).await;
    let t = city(&gw, |t| t["session"]["state"] == "failing").await;
    assert_eq!(t["state"], "failing", "{t}");
    assert!(t["last_error"].as_str().is_some_and(|e| e.contains("403")), "{t}");
    assert!(t["session"]["next_attempt_at"].is_string() && t["session"]["failures"] == 1, "{t}");
    gw.shutdown().await;
}
