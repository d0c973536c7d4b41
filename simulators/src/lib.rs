//! Shared pieces of the simulators: a small client for vigil's API and the shape of a
//! simulated district. Simulators drive load and scenarios; they never prove our codecs.

pub mod checkpoint;
pub mod community;
pub mod gb_media;
pub mod platform;
pub mod rtsp_camera;
pub mod upper;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// vigil's API with a token.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    token: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(120)).pool_max_idle_per_host(64).build()?;
        Ok(Api { base: base.trim_end_matches('/').to_owned(), http, token: token.to_owned() })
    }

    pub async fn wait_healthy(&self, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(r) = self.http.get(format!("{}/api/v1/health", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("vigil at {} did not answer within {within:?}", self.base);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        let r = self.http.get(format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token).send().await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    /// GET without parsing the body (load generation).
    pub async fn get_bytes(&self, path: &str) -> Result<usize> {
        let r = self.http.get(format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}");
        }
        Ok(body.len())
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let r =
            self.http.post(format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token).json(body).send().await?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if !status.is_success() && status.as_u16() != 409 {
            bail!("POST {path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn import_csv(&self, csv: String) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}/api/v1/devices/import", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .context("POST /devices/import")?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("import: {status} {body}");
        }
        Ok(body)
    }
}
