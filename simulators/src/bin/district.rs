//! The demo district: registers a few hundred devices across the orgs vigil already has
//! (from config/examples/district.toml) and drives their presence through the
//! observations API, so the dashboard shows a living district: most devices healthy, some
//! flapping, some intermittently silent (their TTL expires), a few dead.
//!
//! `vigil-district --api http://127.0.0.1:8080 --token demo-admin-token --devices 400`

use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use serde_json::{json, Value};
use vigil_simulators::Api;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    #[arg(long, default_value = "demo-admin-token")]
    token: String,
    /// How many devices to register.
    #[arg(long, default_value_t = 400)]
    devices: usize,
    /// Seconds between rounds of evidence.
    #[arg(long, default_value_t = 5)]
    tick: u64,
    /// Stop after this many rounds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Healthy,
    Flapping,
    Intermittent,
    Dead,
}

/// A tiny deterministic PRNG (xorshift), so a demo run looks the same every time.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let api = Api::new(&args.api, &args.token)?;
    api.wait_healthy(Duration::from_secs(60)).await?;
    let orgs = api.get("/orgs?limit=1000").await?;
    let leaves: Vec<(String, String)> = orgs["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|o| o["kind"] == "community" || o["kind"] == "unit")
                .map(|o| {
                    (o["id"].as_str().unwrap_or_default().to_owned(), o["name"].as_str().unwrap_or_default().to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(
        !leaves.is_empty(),
        "vigil has no community or unit orgs: start it with config/examples/district.toml"
    );

    // Devices: cameras with GB/T 28181 ids (type 132 IPC), access control and barriers in
    // communities, vehicle and face checkpoints at units.
    let mut rng = Rng(0x5eed_1234_abcd);
    let mut csv = String::from("id,name,kind,protocol,org_id,rtsp_url,profile\n");
    let mut devices = Vec::new();
    for i in 0..args.devices {
        let (org, org_name) = &leaves[i % leaves.len()];
        let is_unit = org.starts_with("school") || org.starts_with("checkpoint");
        let (id, name, kind, protocol) = match (is_unit, i % 5) {
            (true, 0 | 1) if org.starts_with("checkpoint") => {
                (format!("42010400001210{i:06}"), format!("{org_name} 车辆卡口 {i}"), "vehicle_checkpoint", "gat1400")
            }
            (true, 0 | 1) => {
                (format!("42010400001240{i:06}"), format!("{org_name} 人脸卡口 {i}"), "face_checkpoint", "gat1400")
            }
            (_, 2) => (format!("ac-{i:05}"), format!("{org_name} 门禁 {i}"), "access_control", "mqtt"),
            (_, 3) if i % 3 == 0 => (format!("bar-{i:05}"), format!("{org_name} 道闸 {i}"), "barrier", "mqtt"),
            _ => (format!("42010400001320{i:06}"), format!("{org_name} 摄像机 {i}"), "camera", "gb28181"),
        };
        csv.push_str(&format!("{id},{name},{kind},{protocol},{org},,\n"));
        let behaviour = match rng.next() % 100 {
            0..=2 => Behaviour::Dead,
            3..=6 => Behaviour::Flapping,
            7..=9 => Behaviour::Intermittent,
            _ => Behaviour::Healthy,
        };
        devices.push((id, behaviour));
    }
    let r = api.import_csv(csv).await?;
    println!("district: {} devices registered ({r})", devices.len());
    let ttl = format!("{}s", args.tick * 3);
    let mut round = 0u64;
    let mut silent_until: Vec<u64> = vec![0; devices.len()];
    loop {
        round += 1;
        let mut batch: Vec<Value> = Vec::with_capacity(devices.len());
        for (i, (id, b)) in devices.iter().enumerate() {
            match b {
                Behaviour::Healthy => batch.push(json!({"device_id": id, "kind": "alive", "ttl": ttl})),
                Behaviour::Dead => {
                    if round == 1 {
                        batch.push(json!({"device_id": id, "kind": "dead", "reason": "设备断电 / power lost"}));
                    }
                }
                Behaviour::Flapping => {
                    if rng.chance(30) {
                        batch.push(json!({"device_id": id, "kind": "dead", "reason": "链路抖动 / link flapping"}));
                    } else {
                        batch.push(json!({"device_id": id, "kind": "alive", "ttl": ttl}));
                    }
                }
                Behaviour::Intermittent => {
                    if round >= silent_until[i] {
                        if rng.chance(10) {
                            silent_until[i] = round + 4 + rng.next() % 8; // goes quiet: its TTL expires
                        } else {
                            batch.push(json!({"device_id": id, "kind": "alive", "ttl": ttl}));
                        }
                    }
                }
            }
        }
        if let Err(e) = api.post("/observations", &Value::Array(batch)).await {
            eprintln!("district: round {round}: {e}");
        }
        if args.rounds > 0 && round >= args.rounds {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(args.tick)) => {}
        }
    }
    Ok(())
}
