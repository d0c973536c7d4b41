//! `vigil-sim checkpoint`: GA/T 1400 checkpoint cameras (人脸/车辆卡口) against vigil's view
//! library: register with HTTP digest, keep alive every 30 s, and push faces and motor
//! vehicles with base64 images. `live` runs until Ctrl-C (for `make demo`); `bench` pushes
//! N faces with `--image-kb` scene pictures from `--concurrency` requests in flight and
//! prints objects per second (the load driver of BENCHMARKS.md). Loopback only.
#![allow(clippy::disallowed_methods)] // a load driver measures real time

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vigil::protocol::digest::answer;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// vigil's GA/T 1400 endpoint.
    #[arg(long, default_value = "http://127.0.0.1:9100")]
    pub server: String,
    #[arg(long, default_value = "12345678")]
    pub password: String,
    /// Cameras: ids 4201040000121 + a 7-digit serial (type 121: checkpoint camera).
    #[arg(long, default_value_t = 2)]
    pub count: u32,
    /// Size of the scene picture in each record, KB (0: records without pictures).
    #[arg(long, default_value_t = 100)]
    pub image_kb: usize,
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(clap::Subcommand, Clone)]
pub enum Mode {
    /// Push a face or a vehicle every `every` seconds per camera until Ctrl-C.
    Live {
        #[arg(long, default_value_t = 5.0)]
        every: f64,
    },
    /// Push `faces` faces (one per request) with `concurrency` requests in flight.
    Bench {
        #[arg(long, default_value_t = 10_000)]
        faces: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

fn cam_id(n: u32) -> String {
    format!("4201040000121{n:07}")
}

/// yyyyMMddHHmmss at +08:00, as GA/T 1400 writes times (the view library's own codec).
fn local_now() -> String {
    vigil::protocol::gat1400::codec::local_time(vigil::clock::now_ms(), &chrono_tz::Asia::Shanghai)
}

fn jpeg(len: usize, seed: u64) -> String {
    use base64::Engine;
    // Base64 of a fake JPEG: the right magic, then noise; vigil stores bytes, not pixels.
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct Camera {
    id: String,
    http: reqwest::Client,
    server: String,
}

impl Camera {
    async fn register(&self, password: &str) -> Result<()> {
        let url = format!("{}/VIID/System/Register", self.server);
        let body = json!({"RegisterObject": {"DeviceID": self.id}}).to_string();
        let r = self.http.post(&url).header("content-type", "application/VIID+JSON").body(body.clone()).send().await?;
        let www = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .context("no digest challenge")?
            .to_owned();
        let cnonce = format!("{:x}", Instant::now().elapsed().as_nanos() ^ 0x5eed);
        let auth =
            answer(&www, &self.id, password, "POST", "/VIID/System/Register", 1, &cnonce).context("bad challenge")?;
        let r = self
            .http
            .post(&url)
            .header("authorization", auth)
            .header("content-type", "application/VIID+JSON")
            .body(body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("{} did not register: {} {}", self.id, r.status(), r.text().await.unwrap_or_default());
        }
        Ok(())
    }

    async fn keepalive(&self) -> Result<bool> {
        let r = self
            .http
            .post(format!("{}/VIID/System/Keepalive", self.server))
            .header("content-type", "application/VIID+JSON")
            .body(json!({"KeepaliveObject": {"DeviceID": self.id}}).to_string())
            .send()
            .await?;
        Ok(r.status().is_success())
    }

    async fn push(&self, path: &str, body: String) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.server))
            .header("content-type", "application/VIID+JSON;charset=UTF-8")
            .header("User-Identify", &self.id)
            .body(body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: {status} {v}");
        }
        Ok(v)
    }
}

/// The picture with 6 bytes after the JPEG magic made unique to `serial` (8 base64
/// characters), so every record stores a picture of its own, as real traffic does.
fn unique(image: &str, serial: u64) -> String {
    use base64::Engine;
    if image.len() < 16 {
        return image.to_owned();
    }
    // 6 bytes of the serial are exactly 8 base64 characters, aligned after the first 6 bytes.
    let tag = base64::engine::general_purpose::STANDARD.encode(&serial.to_le_bytes()[..6]);
    format!("{}{tag}{}", &image[..8], &image[16..])
}

fn face(cam: &str, serial: u64, image: &str) -> String {
    let now = local_now();
    let image = unique(image, serial);
    let v = json!({"FaceListObject": {"FaceObject": [{
        "FaceID": format!("{cam}02{now}{:05}06{:05}", serial % 100_000, serial % 100_000),
        "InfoKind": 1, "SourceID": format!("{cam}02{now}{:05}", serial % 100_000), "DeviceID": cam,
        "LeftTopX": 163, "LeftTopY": 726, "RightBtmX": 334, "RightBtmY": 897,
        "FaceAppearTime": now, "GenderCode": "1", "AgeLowerLimit": 30, "AgeUpLimit": 40,
        "SubImageList": {"SubImageInfoObject": [{"ImageID": format!("{cam}02{now}{:05}", serial % 100_000), "EventSort": 2,
            "DeviceID": cam, "Type": "14", "FileFormat": "Jpeg", "ShotTime": now, "Width": 1920, "Height": 1080, "Data": image}]}
    }]}});
    without_empty_picture(v)
}

/// `--image-kb 0`: records without pictures (the SubImageList left out).
fn without_empty_picture(mut v: serde_json::Value) -> String {
    if let Some(o) = v.as_object_mut().and_then(|o| o.values_mut().next()).and_then(|l| l.as_object_mut()) {
        for list in o.values_mut() {
            for obj in list.as_array_mut().into_iter().flatten() {
                let empty = obj.pointer("/SubImageList/SubImageInfoObject/0/Data").and_then(|d| d.as_str()) == Some("");
                if empty {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("SubImageList");
                    }
                }
            }
        }
    }
    v.to_string()
}

fn vehicle(cam: &str, serial: u64, image: &str) -> String {
    let now = local_now();
    let image = unique(image, serial);
    let v = json!({"MotorVehicleListObject": {"MotorVehicleObject": [{
        "MotorVehicleID": format!("{cam}02{now}{:05}02{:05}", serial % 100_000, serial % 100_000),
        "InfoKind": 1, "DeviceID": cam, "HasPlate": "1", "PlateNo": format!("鄂A{:05}", serial % 100_000), "PlateColor": "5",
        "LaneNo": "1", "Speed": "", "PassTime": now,
        "SubImageList": {"SubImageInfoObject": [{"Type": "01", "FileFormat": "Jpeg", "ShotTime": now, "Data": image}]}
    }]}});
    without_empty_picture(v)
}

pub async fn run(args: Args) -> Result<()> {
    let host = args.server.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
    if !(host == "127.0.0.1" || host == "localhost") {
        bail!("this simulator only targets loopback servers");
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(256).build()?;
    let cams: Vec<Arc<Camera>> = (0..args.count.max(1))
        .map(|n| {
            Arc::new(Camera {
                id: cam_id(n + 1),
                http: http.clone(),
                server: args.server.trim_end_matches('/').to_owned(),
            })
        })
        .collect();
    for c in &cams {
        c.register(&args.password).await?;
    }
    let image = Arc::new(jpeg(args.image_kb * 1024, 7));
    match args.mode {
        Mode::Live { every } => {
            let mut tasks = Vec::new();
            for c in cams {
                let (image, password) = (image.clone(), args.password.clone());
                tasks.push(tokio::spawn(async move {
                    let mut serial = 0u64;
                    let mut last_keepalive = Instant::now();
                    loop {
                        tokio::time::sleep(Duration::from_secs_f64(every.max(0.1))).await;
                        serial += 1;
                        let r = if serial.is_multiple_of(2) {
                            c.push("/VIID/Faces", face(&c.id, serial, &image)).await
                        } else {
                            c.push("/VIID/MotorVehicles", vehicle(&c.id, serial, &image)).await
                        };
                        if r.is_err() || last_keepalive.elapsed() > Duration::from_secs(30) {
                            if !c.keepalive().await.unwrap_or(false) {
                                let _ = c.register(&password).await;
                            }
                            last_keepalive = Instant::now();
                        }
                    }
                }));
            }
            println!("checkpoint: {} cameras pushing to {} (Ctrl-C stops)", tasks.len(), args.server);
            tokio::signal::ctrl_c().await?;
            for t in tasks {
                t.abort();
            }
        }
        Mode::Bench { faces, concurrency } => {
            let next = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..concurrency.max(1) {
                let (cams, image, next, failed) = (cams.clone(), image.clone(), next.clone(), failed.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= faces {
                            break;
                        }
                        let c = &cams[(n as usize + w) % cams.len()];
                        match c.push("/VIID/Faces", face(&c.id, n, &image)).await {
                            Ok(v) if v["ResponseStatusListObject"]["ResponseStatusObject"][0]["StatusCode"] == 0 => {}
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "checkpoint bench: {faces} faces with {} KB images, {concurrency} in flight: {secs:.2} s = {:.0} objects/s, {} failed",
                args.image_kb,
                faces as f64 / secs,
                failed.load(Ordering::Relaxed)
            );
        }
    }
    Ok(())
}
