//! Whole-process load driver for the API figures in BENCHMARKS.md.
//!
//! `vigil-load-api seed --devices 100000 --orgs 500` builds a district of that size through
//! the API (orgs, one CSV import, evidence for 96% of the devices);
//! `vigil-load-api rate --clients 50 --seconds 20` hammers `GET /api/v1/online-rate?group_by=org`
//! from N concurrent keep-alive clients and prints latency percentiles (HDR histogram).
//! Bounded in count and time; loopback only.

#![allow(clippy::disallowed_methods)] // a load driver measures real time

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use vigil_simulators::Api;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    #[arg(long, default_value = "bench-admin-token")]
    token: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create orgs and devices and make most of them online.
    Seed {
        #[arg(long, default_value_t = 100_000)]
        devices: usize,
        #[arg(long, default_value_t = 500)]
        orgs: usize,
    },
    /// Concurrent GETs of one path; prints p50/p90/p99/max and throughput.
    Rate {
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value = "/online-rate?group_by=org")]
        path: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let api = Api::new(&args.api, &args.token)?;
    api.wait_healthy(Duration::from_secs(60)).await?;
    match args.command {
        Cmd::Seed { devices, orgs } => seed(&api, devices, orgs).await,
        Cmd::Rate { clients, seconds, path } => rate(&api, clients, seconds.min(600), &path).await,
    }
}

async fn seed(api: &Api, devices: usize, orgs: usize) -> Result<()> {
    let streets = (orgs / 25).max(1);
    let t = Instant::now();
    api.post("/orgs", &json!({"id": "d", "name": "硚口区", "kind": "district", "gb_prefix": "420104"})).await?;
    for s in 0..streets {
        api.post(
            "/orgs",
            &json!({"id": format!("s{s}"), "name": format!("街道{s}"), "kind": "street", "parent_id": "d"}),
        )
        .await?;
    }
    let communities = orgs.saturating_sub(streets + 1).max(1);
    for c in 0..communities {
        api.post("/orgs", &json!({"id": format!("c{c}"), "name": format!("社区{c}"), "kind": "community", "parent_id": format!("s{}", c % streets)}))
            .await?;
    }
    println!("orgs: {} created in {:.2?}", 1 + streets + communities, t.elapsed());
    let kinds = [
        "camera",
        "camera",
        "camera",
        "nvr",
        "access_control",
        "barrier",
        "vehicle_checkpoint",
        "face_checkpoint",
        "sensor",
        "intercom",
    ];
    let mut csv = String::with_capacity(devices * 48);
    csv.push_str("id,name,kind,protocol,org_id,rtsp_url,profile\n");
    for i in 0..devices {
        csv.push_str(&format!("dev-{i:06},设备{i},{},external,c{},,\n", kinds[i % kinds.len()], i % communities));
    }
    let t = Instant::now();
    let r = api.import_csv(csv).await?;
    println!("import over the API: {r} in {:.2?}", t.elapsed());
    let t = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..devices {
        if i % 25 != 0 {
            batch.push(json!({"device_id": format!("dev-{i:06}"), "kind": "alive", "ttl": "24h"}));
        }
        if batch.len() == 10_000 || i + 1 == devices {
            api.post("/observations", &Value::Array(std::mem::take(&mut batch))).await?;
        }
    }
    println!("observations for 96% of the devices in {:.2?}", t.elapsed());
    Ok(())
}

async fn rate(api: &Api, clients: usize, seconds: u64, path: &str) -> Result<()> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let api = api.clone();
        let hist = hist.clone();
        let errors = errors.clone();
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds are valid");
            while Instant::now() < until {
                let t = Instant::now();
                match api.get_bytes(&path).await {
                    Ok(_) => {
                        let _ = local.record(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            let _ = hist.lock().await.add(&local);
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let h = hist.lock().await;
    println!(
        "GET {path}: {clients} clients, {seconds} s: {} requests, {:.0} req/s, errors {}; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
        h.len(),
        h.len() as f64 / elapsed,
        errors.load(std::sync::atomic::Ordering::Relaxed),
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.90) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
    Ok(())
}
