//! `vigil-sim community`: smart-community devices over MQTT in the shapes the shipped
//! profiles map: Hikvision access terminals (ISAPI AccessControllerEvent), Vzenith plate
//! cameras at barriers (base64 plates, Timeval), alarm panels (cidEvent) and generic JSON
//! sensors; with heartbeats, announced offline devices (the payload their last will
//! carries), offline-cache replays and a share of malformed messages. Also the MQTT load
//! driver: `burst` publishes N access records as fast as QoS 1 allows, `replay` one
//! device's offline cache of N records. Live devices connect one by one as themselves
//! (their id and `--password`: vigil's embedded broker lets each publish only on its own
//! topics); the load drivers share a few anonymous connections. Loopback brokers only.
#![allow(clippy::disallowed_methods)] // a load driver measures real time

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The broker (vigil's embedded one is 127.0.0.1:1884).
    #[arg(long, default_value = "127.0.0.1:1884")]
    pub broker: String,
    /// Topic prefix before each profile's own topic (tests use one; devices use none).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// The password devices log in with (their id is the username), as vigil's embedded
    /// broker wants; empty: connect anonymously (a broker that allows it).
    #[arg(long, default_value = "12345678")]
    pub password: String,
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(clap::Subcommand, Clone)]
pub enum Mode {
    /// Live communities until Ctrl-C: each device sends heartbeats and events.
    Live {
        #[arg(long, default_value_t = 4)]
        communities: u32,
        #[arg(long, default_value_t = 12)]
        devices_per: u32,
        /// Events per second over all devices.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Share of messages that are malformed (refused and kept by vigil).
        #[arg(long, default_value_t = 0.01)]
        malformed: f64,
        /// Devices (by index) that announce themselves offline once, 30 s in.
        #[arg(long, default_value_t = 1)]
        offline: u32,
        /// Community site codes (comma-separated; they are vigil org ids when those exist).
        /// Default XQ001, XQ002, ...
        #[arg(long, default_value = "")]
        sites: String,
    },
    /// Publish `count` access records from `devices` generic devices as fast as QoS 1 allows.
    Burst {
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 100)]
        devices: u32,
        /// Publishing connections.
        #[arg(long, default_value_t = 4)]
        connections: u32,
    },
    /// One access terminal replays its offline cache: `count` records, oldest first.
    Replay {
        #[arg(long, default_value_t = 50_000)]
        count: u64,
        #[arg(long, default_value = "XQ001-AC9999")]
        device: String,
    },
}

/// The shared rumqttc connection with a background poll; counts PUBACKs.
struct Conn {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
}

/// Connects as client `id`, logging in as `login` (username = a device id) with `password`
/// when both are given.
async fn connect(broker: &str, id: &str, login: Option<(&str, &str)>) -> Result<Conn> {
    let (host, port) = broker.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("--broker is host:port"))?;
    if !(host == "127.0.0.1" || host == "localhost" || host == "::1") {
        bail!("this simulator only targets loopback brokers");
    }
    let mut o = MqttOptions::new(id, host, port.parse()?);
    o.set_max_packet_size(16 << 20, 16 << 20);
    o.set_inflight(1000);
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((user, password)) = login.filter(|(_, p)| !p.is_empty()) {
        o.set_credentials(user, password);
    }
    let (client, mut ev) = AsyncClient::new(o, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    a.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("mqtt: {e}; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(Conn { client, acked })
}

use vigil::clock::now_ms;

/// Device time as the terminals send it: RFC 3339 at +08:00.
pub fn rfc3339(ms: i64) -> String {
    vigil::clock::rfc3339(ms, &chrono_tz::Asia::Shanghai)
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// What kind of device, by index within a community.
#[derive(Clone, Copy)]
enum Kind {
    Access,
    Plate,
    Alarm,
    Generic,
}

fn kind(i: u32) -> Kind {
    match i % 6 {
        0..=2 => Kind::Access,
        3 => Kind::Plate,
        4 => Kind::Alarm,
        _ => Kind::Generic,
    }
}

struct Device {
    site: String,
    sn: String,
    kind: Kind,
    seq: u64,
}

impl Device {
    fn event_topic(&self, prefix: &str) -> String {
        let t = match self.kind {
            Kind::Access => format!("hik/{}/{}/event", self.site, self.sn),
            Kind::Plate => format!("device/{}/message/up/ivs_result", self.sn),
            Kind::Alarm => format!("alarm/{}/{}/event", self.site, self.sn),
            Kind::Generic => format!("vigil/{}/{}/access", self.site, self.sn),
        };
        with_prefix(prefix, t)
    }

    fn heartbeat(&self, prefix: &str) -> (String, String) {
        let now = now_ms();
        match self.kind {
            Kind::Access => (self.event_topic(prefix), json!({"ipAddress": "10.21.3.41", "dateTime": rfc3339(now), "eventType": "heartBeat"}).to_string()),
            Kind::Plate => (
                with_prefix(prefix, format!("device/{}/message/up/keep_alive", self.sn)),
                json!({"sn": self.sn, "name": "keep_alive", "timestamp": now / 1000, "payload": {"ipaddr": "10.21.9.12"}}).to_string(),
            ),
            Kind::Alarm => (self.event_topic(prefix), json!({"ipAddress": "10.21.5.7", "dateTime": rfc3339(now), "eventType": "heartBeat"}).to_string()),
            Kind::Generic => (
                with_prefix(prefix, format!("vigil/{}/{}/heartbeat", self.site, self.sn)),
                json!({"ts": now, "model": "vigil-sim-acs", "fw": "1.2.0"}).to_string(),
            ),
        }
    }

    fn event(&mut self, at: i64, offline: bool) -> String {
        self.seq += 1;
        let seq = self.seq;
        let minor = [75, 1, 75, 76, 9][(seq % 5) as usize];
        match self.kind {
            Kind::Access => json!({
                "ipAddress": "10.21.3.41", "macAddress": "c0:56:e3:12:ab:9f", "dateTime": rfc3339(at),
                "eventType": "AccessControllerEvent", "eventState": "active",
                "AccessControllerEvent": {"deviceName": format!("{} 单元门口机", self.sn), "majorEventType": 5,
                    "subEventType": minor, "cardNo": format!("06959{:05}", seq % 100_000),
                    "cardReaderNo": 1, "employeeNoString": format!("R{:07}", seq % 5000), "serialNo": seq,
                    "userType": "normal", "currentEvent": !offline, "mask": "no"}
            })
            .to_string(),
            Kind::Plate => json!({
                "id": format!("m{seq}"), "sn": self.sn, "name": "ivs_result", "timestamp": at / 1000,
                "payload": {"AlarmInfoPlate": {"deviceName": "南门入口", "result": {"PlateResult": {
                    "license": b64(&format!("鄂A{:05}", seq % 100_000)), "colorType": 1 + seq % 2, "confidence": 95,
                    "plateid": seq, "isoffline": u8::from(offline),
                    "timeStamp": {"Timeval": {"sec": at / 1000, "usec": (at % 1000) * 1000}}}}}}
            })
            .to_string(),
            Kind::Alarm => json!({
                "dateTime": rfc3339(at), "eventType": "cidEvent", "uuid": format!("{}-{seq}", self.sn),
                "CIDEvent": {"code": if seq % 2 == 1 { 1111 } else { 3111 }, "zone": 1 + seq % 8, "name": "烟感报警", "trigger": rfc3339(at)}
            })
            .to_string(),
            Kind::Generic => json!({
                "ts": at, "seq": seq, "credential": "card", "card": format!("{:010}", seq), "person": format!("R{}", seq % 300),
                "door": "east-gate", "direction": if seq.is_multiple_of(2) { "in" } else { "out" }, "offline": offline
            })
            .to_string(),
        }
    }
}

fn with_prefix(prefix: &str, t: String) -> String {
    if prefix.is_empty() {
        t
    } else {
        format!("{prefix}/{t}")
    }
}

pub async fn run(args: Args) -> Result<()> {
    match args.mode.clone() {
        Mode::Live { communities, devices_per, rate, malformed, offline, sites } => {
            let sites: Vec<String> = if sites.is_empty() {
                (1..=communities).map(|c| format!("XQ{c:03}")).collect()
            } else {
                sites.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
            };
            live(&args, &sites, devices_per, rate, malformed, offline).await
        }
        Mode::Burst { count, devices, connections } => burst(&args, count, devices, connections).await,
        Mode::Replay { count, device } => replay(&args, count, &device).await,
    }
}

/// The id of device `i` (from 0) of `site`: what `make demo` imports.
pub fn device_id(site: &str, i: u32) -> String {
    format!("{site}-{:04}", i + 1)
}

/// The registry kind and profile of device `i`, as `make demo` imports them.
pub fn device_kind(i: u32) -> (&'static str, &'static str) {
    match kind(i) {
        Kind::Access => ("access_control", "hikvision.acs-event"),
        Kind::Plate => ("barrier", "vzenith.ivs-plate"),
        Kind::Alarm => ("sensor", "hikvision.alarm-panel"),
        Kind::Generic => ("access_control", "generic.json"),
    }
}

async fn live(args: &Args, sites: &[String], devices_per: u32, rate: f64, malformed: f64, offline: u32) -> Result<()> {
    let mut tasks = Vec::new();
    let communities = sites.len() as u32;
    let per_device = rate / f64::from((communities * devices_per).max(1));
    for (c, site) in sites.iter().enumerate() {
        let c = c as u32;
        let prefix = args.prefix.clone();
        let mut devices: Vec<Device> = (0..devices_per)
            .map(|i| Device { site: site.clone(), sn: device_id(site, i), kind: kind(i), seq: 0 })
            .collect();
        let mut conns = Vec::with_capacity(devices.len());
        for d in &devices {
            conns.push(
                connect(&args.broker, &format!("{}-{}", d.sn, std::process::id()), Some((&d.sn, &args.password)))
                    .await?,
            );
        }
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut n: u64 = 0;
            let mut announced = false;
            loop {
                tick.tick().await;
                n += 1;
                for (i, d) in devices.iter_mut().enumerate() {
                    let conn = &conns[i];
                    let silent = (i as u32) < offline && c == 0 && start.elapsed() > Duration::from_secs(30);
                    if silent {
                        if !announced {
                            // What the broker publishes for a device whose connection died.
                            let status = match d.kind {
                                Kind::Access => format!("hik/{}/{}/status", d.site, d.sn),
                                Kind::Alarm => format!("alarm/{}/{}/status", d.site, d.sn),
                                _ => format!("vigil/{}/{}/status", d.site, d.sn),
                            };
                            let _ = conn
                                .client
                                .publish(with_prefix(&prefix, status), QoS::AtLeastOnce, false, "offline")
                                .await;
                        }
                        continue;
                    }
                    // Heartbeats every 20 s, staggered.
                    if (n + i as u64 * 7).is_multiple_of(200) || n == 1 {
                        let (t, p) = d.heartbeat(&prefix);
                        let _ = conn.client.publish(t, QoS::AtLeastOnce, false, p).await;
                    }
                    if rand01(n, i as u64) < per_device / 10.0 {
                        let bad = rand01(n + 13, i as u64) < malformed;
                        let payload = if bad {
                            "{\"eventType\": \"AccessControllerEvent\", \"Acc".to_owned()
                        } else {
                            d.event(now_ms(), false)
                        };
                        let _ = conn.client.publish(d.event_topic(&prefix), QoS::AtLeastOnce, false, payload).await;
                    }
                }
                if start.elapsed() > Duration::from_secs(30) {
                    announced = true;
                }
                // Every 10 minutes the first plate camera of each community flushes a small
                // offline cache (records from the last hour, marked offline).
                if n % 6000 == 3000 {
                    if let Some((i, d)) = devices.iter_mut().enumerate().find(|(_, d)| matches!(d.kind, Kind::Plate)) {
                        let conn = &conns[i];
                        for k in 0..20 {
                            let at = now_ms() - 3_600_000 + k * 60_000;
                            let p = d.event(at, true);
                            let _ = conn.client.publish(d.event_topic(&prefix), QoS::AtLeastOnce, false, p).await;
                        }
                    }
                }
            }
        }));
    }
    println!(
        "community: {communities} communities × {devices_per} devices publishing to {} (Ctrl-C stops)",
        args.broker
    );
    tokio::signal::ctrl_c().await?;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// A cheap deterministic pseudo-random number in [0, 1).
fn rand01(a: u64, b: u64) -> f64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

async fn burst(args: &Args, count: u64, devices: u32, connections: u32) -> Result<()> {
    let mut conns = Vec::new();
    for c in 0..connections.max(1) {
        conns.push(connect(&args.broker, &format!("vigil-sim-burst-{c}-{}", std::process::id()), None).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let per = count / u64::from(connections.max(1));
    let base = now_ms() - 60_000;
    let mut tasks = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        let client = conn.client.clone();
        let prefix = args.prefix.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..per {
                let n = c as u64 * per + k;
                let dev = n % u64::from(devices);
                let seq = n / u64::from(devices) + 1;
                let topic = with_prefix(&prefix, format!("vigil/XQ001/BU-{dev:05}/access"));
                // ~1 KB, like a real access record with its extras.
                let payload =
                    json!({"ts": base + seq as i64, "seq": seq, "credential": "card", "card": format!("{:010}", n),
                    "person": format!("R{:07}", n % 100_000), "door": "east-gate", "direction": "in",
                    "note": "x".repeat(800)})
                    .to_string();
                if client.publish(topic, QoS::AtLeastOnce, false, payload).await.is_err() {
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let total = per * u64::from(connections.max(1));
    while conns.iter().map(|c| c.acked.load(Ordering::Relaxed)).sum::<u64>() < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("burst: {total} QoS 1 publishes acknowledged by the broker in {secs:.2} s = {:.0}/s", total as f64 / secs);
    Ok(())
}

async fn replay(args: &Args, count: u64, device: &str) -> Result<()> {
    let conn =
        connect(&args.broker, &format!("vigil-sim-replay-{}", std::process::id()), Some((device, &args.password)))
            .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut d = Device { site: "XQ001".into(), sn: device.to_owned(), kind: Kind::Generic, seq: 0 };
    let topic = d.event_topic(&args.prefix);
    let start = Instant::now();
    // Records from two days ago, oldest first, as a terminal flushes its cache (the same
    // records on every run of the day, so a second run is all duplicates).
    let first = now_ms() / 86_400_000 * 86_400_000 - 2 * 86_400_000;
    for k in 0..count {
        let p = d.event(first + k as i64 * 1000, true);
        conn.client.publish(topic.clone(), QoS::AtLeastOnce, false, p).await?;
    }
    while conn.acked.load(Ordering::Relaxed) < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "replay: {count} records of {device} acknowledged by the broker in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(b64("鄂AB7553"), "6YSCQUI3NTUz");
        assert_eq!(rfc3339(1_716_001_203_000), "2024-05-18T11:00:03+08:00");
        assert!((0.0..1.0).contains(&rand01(1, 2)));
    }
}
