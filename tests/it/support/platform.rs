//! `vigil-sim platform` (an upper GA/T 1400 view library) as a child process on a chosen
//! port, stopped on drop; `stats` and `control` speak its test endpoints.

use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub struct Platform {
    child: Child,
    /// `http://127.0.0.1:PORT/VIID`
    pub base: String,
    root: String,
}

impl Platform {
    pub fn start(port: u16, password: &str) -> Self {
        let mut cmd = Command::new(super::sim_binary());
        cmd.args(["platform", "--listen", &format!("127.0.0.1:{port}"), "--password", password])
            .stderr(Stdio::inherit());
        let (child, base) = super::start_printing_url(cmd, "http://127.0.0.1:", "vigil-sim platform");
        let root = base.trim_end_matches("/VIID").to_owned();
        Platform { child, base, root }
    }

    pub async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.root)).await.expect("GET /stats").json().await.expect("stats JSON")
    }

    pub async fn control(&self, body: Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/control", self.root))
            .json(&body)
            .send()
            .await
            .expect("POST /control");
        assert!(r.status().is_success());
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
