//! GB/T 28181 devices for load: N IPCs sharing one UDP socket (demultiplexed by Call-ID)
//! that register with digest as fast as the server answers (a registration storm), then
//! optionally flood keepalives at a target rate. Prints what it measured. Loopback only,
//! bounded in count and time. (Catalog answers, alarms and misbehaviour come next.)
//!
//! `vigil-gb-device --server 127.0.0.1:5060 --count 10000 storm`
//! `vigil-gb-device --server 127.0.0.1:5060 --count 10000 flood --rate 30000 --seconds 10`
#![allow(clippy::disallowed_methods)] // a load driver measures real time

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use tokio::net::UdpSocket;
use vigil::sources::gb28181::digest::{expected, parse_authorization};
use vigil::sources::gb28181::message::{Message, StartLine};

#[derive(Parser)]
struct Args {
    /// The gateway's SIP address.
    #[arg(long, default_value = "127.0.0.1:5060")]
    server: SocketAddr,
    /// How many devices.
    #[arg(long, default_value_t = 1000)]
    count: u32,
    /// Ids are 4201040000132 + a 7-digit serial starting here.
    #[arg(long, default_value_t = 0)]
    first: u32,
    #[arg(long, default_value = "12345678")]
    password: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 512)]
    window: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Register every device (401 challenge + authenticated REGISTER) and report the time.
    Storm,
    /// Register the first device, answer vigil's catalog query with `channels` channels
    /// (GB2312, 20 per message) and report how long until the API lists them all.
    Catalog {
        #[arg(long, default_value_t = 10_000)]
        channels: usize,
        /// vigil's HTTP API, to see when the catalog is stored.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        api: String,
    },
    /// Run as live devices until Ctrl-C: re-register every 30 s (so devices an operator
    /// approves come online), keep alive every `keepalive` seconds, and answer catalog
    /// queries with `channels` channels each (GB2312). For `make demo`.
    Live {
        #[arg(long, default_value_t = 20)]
        keepalive: u64,
        #[arg(long, default_value_t = 4)]
        channels: usize,
    },
    /// Register, then send keepalives at `rate` per second for `seconds`; count answers.
    Flood {
        #[arg(long, default_value_t = 30_000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

fn id(n: u32) -> String {
    format!("4201040000132{n:07}")
}

/// A per-run token so every run's transactions are new ones (not retransmissions).
fn run_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        format!(
            "{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
        )
    })
}

fn register(dev: &str, local: SocketAddr, cseq: u32, auth: &str) -> String {
    let run = run_token();
    format!(
        "REGISTER sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{run}{dev}{cseq}\r\n\
From: <sip:{dev}@4201040000>;tag={cseq}\r\nTo: <sip:{dev}@4201040000>\r\nCall-ID: r{dev}\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:{dev}@{local}>\r\nMax-Forwards: 70\r\nExpires: 3600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

fn keepalive(dev: &str, local: SocketAddr, sn: u64) -> String {
    let body = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{dev}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n");
    format!(
        "MESSAGE sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKk{sn}\r\n\
From: <sip:{dev}@4201040000>;tag=k{sn}\r\nTo: <sip:42010400002000000001@4201040000>\r\nCall-ID: k{sn}\r\nCSeq: {sn} MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\nMax-Forwards: 70\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Catalog queries vigil sent while the driver was busy: (device id, SN).
type Queries = Vec<(String, u64)>;

/// Registers `devices` and returns (registered, failed, elapsed, catalog queries seen).
async fn storm(sock: &Arc<UdpSocket>, args: &Args) -> Result<(u32, u32, Duration, Queries)> {
    let mut queries = Vec::new();
    let local = sock.local_addr()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let mut next = 0u32;
    let mut in_flight: HashMap<String, (u32, Instant)> = HashMap::new(); // call-id -> (device, sent at)
    let (mut ok, mut failed) = (0u32, 0u32);
    let mut buf = vec![0u8; 65_535];
    while ok + failed < args.count {
        while in_flight.len() < args.window && next < args.count {
            let dev = id(args.first + next);
            sock.send_to(register(&dev, local, 1, "").as_bytes(), args.server).await?;
            in_flight.insert(format!("r{dev}"), (next, Instant::now()));
            next += 1;
        }
        if Instant::now() > deadline {
            bail!("storm did not finish in 60 s: {ok} registered, {failed} failed, {} in flight", in_flight.len());
        }
        let got = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await;
        let Ok(Ok((n, _))) = got else {
            // Retransmit what has waited too long (UDP may drop under load).
            let now = Instant::now();
            for (call, (dev_n, at)) in in_flight.iter_mut() {
                if now.duration_since(*at) > Duration::from_millis(500) {
                    let _ = call;
                    sock.send_to(register(&id(args.first + *dev_n), local, 1, "").as_bytes(), args.server).await?;
                    *at = now;
                }
            }
            continue;
        };
        let Ok(msg) = Message::parse(&buf[..n]) else { continue };
        let StartLine::Response { code, .. } = msg.start else {
            if msg.method() == Some("MESSAGE") {
                let (text, _) = vigil::sources::gb28181::manscdp::decode(msg.body);
                if let Ok(env) = vigil::sources::gb28181::manscdp::envelope(&text) {
                    if env.cmd_type == "Catalog" {
                        queries.push((env.device_id, env.sn.unwrap_or(0)));
                    }
                }
            }
            continue;
        };
        let Some(call) = msg.header("Call-ID").map(str::to_owned) else { continue };
        let Some((dev_n, _)) = in_flight.get(&call).copied() else { continue };
        let dev = id(args.first + dev_n);
        match code {
            401 => {
                let www = msg.header("WWW-Authenticate").and_then(parse_authorization).unwrap_or_default();
                let (Some(realm), Some(nonce)) = (www.get("realm"), www.get("nonce")) else { continue };
                let uri = "sip:42010400002000000001@4201040000";
                let resp = expected(
                    &dev,
                    realm,
                    &args.password,
                    "REGISTER",
                    uri,
                    nonce,
                    Some(("00000001", "abcdef01", "auth")),
                );
                let auth = format!("Authorization: Digest username=\"{dev}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abcdef01\"\r\n");
                sock.send_to(register(&dev, local, 2, &auth).as_bytes(), args.server).await?;
            }
            200 => {
                in_flight.remove(&call);
                ok += 1;
            }
            _ => {
                in_flight.remove(&call);
                failed += 1;
            }
        }
    }
    Ok((ok, failed, started.elapsed(), queries))
}

async fn flood(sock: &Arc<UdpSocket>, args: &Args, rate: u32, seconds: u64) -> Result<()> {
    let local = sock.local_addr()?;
    let total = u64::from(rate) * seconds.min(300);
    let receiver = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            let mut answered = 0u64;
            while let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf)).await {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    answered += 1;
                }
            }
            answered
        })
    };
    let started = Instant::now();
    let batch = (rate / 1000).max(1) as u64; // send in 1 ms slices
    let mut sent = 0u64;
    while sent < total {
        for _ in 0..batch.min(total - sent) {
            let dev = id(args.first + (sent % u64::from(args.count)) as u32);
            sock.send_to(keepalive(&dev, local, sent + 1).as_bytes(), args.server).await?;
            sent += 1;
        }
        let due = started + Duration::from_secs_f64(sent as f64 / f64::from(rate));
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
    }
    let send_s = started.elapsed().as_secs_f64();
    let answered = receiver.await?;
    println!(
        "keepalive flood: {sent} sent in {send_s:.2} s ({:.0}/s offered), {answered} answered 200 ({:.2}% lost)",
        sent as f64 / send_s,
        100.0 * (sent - answered.min(sent)) as f64 / sent as f64
    );
    Ok(())
}

/// The Response/Catalog parts for a device's `channels` channels, 20 items a message.
fn catalog_parts(dev: &str, sn: u64, channels: usize, local: SocketAddr, tag: &str) -> Vec<Vec<u8>> {
    (0..channels)
        .collect::<Vec<_>>()
        .chunks(20)
        .enumerate()
        .map(|(p, chunk)| {
            let items: String = chunk
                .iter()
                .map(|i| {
                    let ch = format!("{}131{}{i:03}", &dev[..10], &dev[16..20]);
                    format!("<Item>\r\n<DeviceID>{ch}</DeviceID>\r\n<Name>硚口 {} 号通道 {i}</Name>\r\n<Manufacturer>海康威视</Manufacturer>\r\n<Status>ON</Status>\r\n<ParentID>{dev}</ParentID>\r\n</Item>\r\n", &dev[14..])
                })
                .collect();
            let body = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{dev}</DeviceID>\r\n<SumNum>{channels}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n{items}</DeviceList>\r\n</Response>\r\n", chunk.len());
            let (gb, _, _) = encoding_rs::GB18030.encode(&body);
            let mut raw = format!(
                "MESSAGE sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKc{tag}{dev}{p}\r\n\
From: <sip:{dev}@4201040000>;tag=c{p}\r\nTo: <sip:42010400002000000001@4201040000>\r\nCall-ID: c{tag}{dev}{p}\r\nCSeq: {p} MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n",
                gb.len()
            )
            .into_bytes();
            raw.extend_from_slice(&gb);
            raw
        })
        .collect()
}

/// Live devices for the demo (see `Mode::Live`).
async fn live(sock: &Arc<UdpSocket>, args: &Args, keepalive_s: u64, channels: usize) -> Result<()> {
    let local = sock.local_addr()?;
    let mut sn = 0u64;
    let mut buf = vec![0u8; 65_535];
    let mut next_register = Instant::now();
    let mut next_keepalive = Instant::now() + Duration::from_secs(keepalive_s);
    loop {
        if Instant::now() >= next_register {
            // A short storm: registers the approved, is told 403 for the quarantined.
            let (ok, failed, _, queries) = storm(sock, args).await?;
            println!("live: {ok} registered, {failed} refused (awaiting approval?)");
            for (dev, qsn) in queries {
                if channels > 0 {
                    for part in catalog_parts(&dev, qsn, channels, local, run_token()) {
                        sock.send_to(&part, args.server).await?;
                    }
                }
            }
            next_register = Instant::now() + Duration::from_secs(30);
        }
        if Instant::now() >= next_keepalive {
            for n in 0..args.count {
                sn += 1;
                sock.send_to(keepalive(&id(args.first + n), local, sn).as_bytes(), args.server).await?;
            }
            next_keepalive = Instant::now() + Duration::from_secs(keepalive_s);
        }
        let got = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            r = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)) => r,
        };
        let Ok(Ok((n, _))) = got else { continue };
        let Ok(msg) = Message::parse(&buf[..n]) else { continue };
        if msg.method() != Some("MESSAGE") {
            continue;
        }
        let (text, _) = vigil::sources::gb28181::manscdp::decode(msg.body);
        let Ok(env) = vigil::sources::gb28181::manscdp::envelope(&text) else { continue };
        if env.cmd_type == "Catalog" && channels > 0 {
            for part in catalog_parts(&env.device_id, env.sn.unwrap_or(0), channels, local, run_token()) {
                sock.send_to(&part, args.server).await?;
            }
        }
    }
}

/// Answers the catalog query that follows a registration with `channels` items.
async fn catalog(sock: &Arc<UdpSocket>, args: &Args, channels: usize, api: &str, seen: Queries) -> Result<()> {
    let local = sock.local_addr()?;
    let dev = id(args.first);
    let mut buf = vec![0u8; 65_535];
    let deadline = Instant::now() + Duration::from_secs(10);
    let already = seen.into_iter().find(|(d, _)| d == &dev).map(|(_, sn)| sn);
    let sn = loop {
        if let Some(sn) = already {
            break sn;
        }
        if Instant::now() > deadline {
            bail!("no catalog query from vigil within 10 s");
        }
        let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await else {
            continue;
        };
        let Ok(msg) = Message::parse(&buf[..n]) else { continue };
        if msg.method() != Some("MESSAGE") || !msg.header("To").is_some_and(|t| t.contains(&dev)) {
            continue;
        }
        let (text, _) = vigil::sources::gb28181::manscdp::decode(msg.body);
        if let Ok(env) = vigil::sources::gb28181::manscdp::envelope(&text) {
            if env.cmd_type == "Catalog" {
                break env.sn.unwrap_or(0);
            }
        }
    };
    let started = Instant::now();
    for (p, chunk) in (0..channels).collect::<Vec<_>>().chunks(20).enumerate() {
        let items: String = chunk
            .iter()
            .map(|i| format!("<Item>\r\n<DeviceID>4201040000131{i:07}</DeviceID>\r\n<Name>硚口 {i} 号通道</Name>\r\n<Manufacturer>海康威视</Manufacturer>\r\n<Status>ON</Status>\r\n<ParentID>{dev}</ParentID>\r\n</Item>\r\n"))
            .collect();
        let body = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{dev}</DeviceID>\r\n<SumNum>{channels}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n{items}</DeviceList>\r\n</Response>\r\n", chunk.len());
        let (gb, _, _) = encoding_rs::GB18030.encode(&body);
        let mut raw = format!(
            "MESSAGE sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKc{}{p}\r\n\
From: <sip:{dev}@4201040000>;tag=c{p}\r\nTo: <sip:42010400002000000001@4201040000>\r\nCall-ID: c{}{p}\r\nCSeq: {p} MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n",
            run_token(),
            run_token(),
            gb.len()
        )
        .into_bytes();
        raw.extend_from_slice(&gb);
        sock.send_to(&raw, args.server).await?;
        // Pace like a device: wait for the 200 before the next part.
        let _ = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await;
    }
    let sent = started.elapsed();
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/devices/{dev}/channels", api.trim_end_matches('/'));
    loop {
        let n = http.get(&url).send().await?.json::<serde_json::Value>().await?["items"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        if n >= channels {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("only {n} of {channels} channels stored after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "catalog: {channels} channels in {} messages sent in {:.3} s; all stored and listed by the API {:.3} s after the query",
        channels.div_ceil(20),
        sent.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !args.server.ip().is_loopback() {
        bail!("this load driver only targets loopback addresses");
    }
    let std_sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    std_sock.set_nonblocking(true)?;
    let sock2 = socket2::Socket::from(std_sock);
    let _ = sock2.set_recv_buffer_size(4 * 1024 * 1024);
    let sock = Arc::new(UdpSocket::from_std(sock2.into())?);
    if let Mode::Live { keepalive, channels } = args.mode {
        return live(&sock, &args, keepalive, channels).await;
    }
    let (ok, failed, took, queries) = storm(&sock, &args).await?;
    println!(
        "registration storm: {ok} registered, {failed} failed, {} devices in {:.3} s ({:.0} registrations/s)",
        args.count,
        took.as_secs_f64(),
        f64::from(ok) / took.as_secs_f64()
    );
    match &args.mode {
        Mode::Flood { rate, seconds } => flood(&sock, &args, *rate, *seconds).await?,
        Mode::Catalog { channels, api } => catalog(&sock, &args, *channels, api, queries).await?,
        Mode::Storm | Mode::Live { .. } => {}
    }
    Ok(())
}
