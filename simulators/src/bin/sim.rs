//! `vigil-sim`: simulated devices. `gb-device`: N GB/T 28181 IPCs sharing one UDP socket
//! (demultiplexed by Call-ID and device id) that register with digest as fast as the server
//! answers (a registration storm), answer what vigil asks (DeviceInfo, ConfigDownload,
//! DeviceStatus, Catalog in GB2312 paged 20 items a message, SUBSCRIBE), keep alive, send
//! alarms, and misbehave on command. Also the load driver of BENCHMARKS.md. Prints what it
//! measured. Loopback only, bounded in count and time.
//!
//! `vigil-sim gb-device --server 127.0.0.1:5060 --count 10000 storm`
//! `vigil-sim gb-device --server 127.0.0.1:5060 --count 10000 flood --rate 30000 --seconds 10`
//! `vigil-sim gb-device --count 300 live --alarm-every 30` (stdin: `silence N`, `resume N`,
//! `alarm N`, `move N`, `wrongpass N`, `garbage`; N is the device's index)
//! `vigil-sim community --broker 127.0.0.1:1884 live --communities 4 --devices-per 12 --rate 5`
//! `vigil-sim community burst --count 100000` / `replay --count 50000` (MQTT load)
//! `vigil-sim checkpoint --server http://127.0.0.1:9100 live` / `bench --faces 10000`
//! `vigil-sim rtsp-camera --listen 127.0.0.1:8554` (paths /live/N, /stall/N, /black/N, ...)
//! `vigil-sim platform --listen 127.0.0.1:9101` (an upper GA/T 1400 view library)
#![allow(clippy::disallowed_methods)] // a load driver measures real time

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use tokio::net::UdpSocket;
use vigil::protocol::digest::{expected, parse_authorization};
use vigil::protocol::sip::message::{Message, StartLine};

#[derive(Parser)]
#[command(name = "vigil-sim", about = "Simulated devices for vigil: load and scenarios no real peer plays")]
enum Sim {
    /// GB/T 28181 devices (IPCs, or one NVR for the catalog load).
    GbDevice(Args),
    /// Smart-community devices over MQTT (access terminals, plate cameras, alarm panels).
    Community(vigil_simulators::community::Args),
    /// GA/T 1400 checkpoint cameras pushing faces and vehicles.
    Checkpoint(vigil_simulators::checkpoint::Args),
    /// Many synthetic RTSP cameras (H.264 over TCP), healthy or with a fault by path.
    RtspCamera(vigil_simulators::rtsp_camera::Args),
    /// An upper GA/T 1400 view library that vigil's relay pushes to (digest registration,
    /// per-object answers, counts of what arrived, faults on command).
    Platform(vigil_simulators::platform::Args),
    /// A GB/T 28181 upper platform for vigil's cascade: digest registration, keepalives, a
    /// catalog subscription and query, its own view of every channel's status.
    Upper(vigil_simulators::upper::Args),
}

#[derive(clap::Args)]
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
    /// `udp` (one shared socket) or `tcp` (a connection per device; live mode only).
    #[arg(long, default_value = "udp")]
    transport: String,
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
    /// approves come online), keep alive every `keepalive` seconds, answer queries (catalogs
    /// of `channels` channels each, GB2312), send an alarm every `alarm_every` seconds (0:
    /// never), and take commands on stdin. For `make demo` and by hand.
    Live {
        #[arg(long, default_value_t = 20)]
        keepalive: u64,
        #[arg(long, default_value_t = 4)]
        channels: usize,
        #[arg(long, default_value_t = 0)]
        alarm_every: u64,
        /// The last `silent` devices register but never keep alive (they go offline).
        #[arg(long, default_value_t = 0)]
        silent: u32,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// No SIP: send `frames` frames of PS over RTP to `to` (UDP, or TCP by connecting with the
    /// RFC 4571 length), for checking the simulator's media with other tools (GStreamer).
    Push {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "udp")]
        media_transport: String,
        #[arg(long, default_value = "healthy")]
        fault: String,
        #[arg(long, default_value_t = 50)]
        frames: u64,
        #[arg(long, default_value = "target/sim-clips")]
        clips: std::path::PathBuf,
    },
    /// Register, then send keepalives at `rate` per second for `seconds`; count answers.
    Flood {
        #[arg(long, default_value_t = 30_000)]
        rate: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// How the devices' channels answer INVITE (see `vigil_simulators::gb_media`).
#[derive(clap::Args, Clone)]
struct MediaArgs {
    /// Faults by channel index, e.g. `1=black,2=no-rtp,3=h265` (the device's own id is index 0).
    #[arg(long, default_value = "")]
    media_faults: String,
    /// 503 to an INVITE past this many sessions of one device at once.
    #[arg(long, default_value_t = 64)]
    max_sessions: usize,
    /// RTP packets dropped per thousand (spread evenly).
    #[arg(long, default_value_t = 0)]
    drop_permille: u32,
    /// Where the generated clips are kept between runs.
    #[arg(long, default_value = "target/sim-clips")]
    clips: std::path::PathBuf,
    #[arg(long, default_value_t = 2000)]
    bitrate_kbps: u32,
}

/// The keepalive interval the devices report in BasicParam (and keep, in live mode).
fn heartbeat(args: &Args) -> u64 {
    match args.mode {
        Mode::Live { keepalive, .. } => keepalive,
        _ => 60,
    }
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

/// The Authorization header answering a 401's Digest challenge (MD5, qop=auth); `None`
/// when the 401 carries no usable challenge.
fn authorization(challenge: &Message<'_>, dev: &str, password: &str) -> Option<String> {
    let www = challenge.header("WWW-Authenticate").and_then(parse_authorization)?;
    let (realm, nonce) = (www.get("realm")?, www.get("nonce")?);
    let uri = "sip:42010400002000000001@4201040000";
    let resp = expected(dev, realm, password, "REGISTER", uri, nonce, Some(("00000001", "abcdef01", "auth")));
    Some(format!("Authorization: Digest username=\"{dev}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abcdef01\"\r\n"))
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
/// A registration storm's outcome: registered, refused, how long, the catalog queries seen,
/// and the media requests (INVITE, ACK, BYE, IFameCmd) that arrived meanwhile, for the live
/// loop to handle (a storm every 30 s must not swallow a play's ACK).
type Stormed = (u32, u32, Duration, Queries, Vec<Vec<u8>>);

/// Whether a request belongs to the media side (the live loop's `Media`).
fn is_media_request(msg: &Message<'_>) -> bool {
    match msg.method() {
        Some("INVITE" | "ACK" | "BYE") => true,
        Some("MESSAGE") => String::from_utf8_lossy(msg.body).contains("IFameCmd"),
        _ => false,
    }
}

async fn storm(sock: &Arc<UdpSocket>, args: &Args) -> Result<Stormed> {
    let mut queries = Vec::new();
    let mut deferred = Vec::new();
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
            if is_media_request(&msg) {
                deferred.push(buf[..n].to_vec());
                continue;
            }
            if let Some(catalog) = serve(sock, args.server, &msg, heartbeat(args)).await? {
                queries.push(catalog);
            }
            continue;
        };
        let Some(call) = msg.header("Call-ID").map(str::to_owned) else { continue };
        let Some((dev_n, _)) = in_flight.get(&call).copied() else { continue };
        let dev = id(args.first + dev_n);
        match code {
            401 => {
                let Some(auth) = authorization(&msg, &dev, &args.password) else { continue };
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
    Ok((ok, failed, started.elapsed(), queries, deferred))
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

/// A 200 OK to one of vigil's requests (Via, From, To, Call-ID, CSeq copied).
fn ok_answer(msg: &Message<'_>) -> String {
    let mut a = String::from("SIP/2.0 200 OK\r\n");
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        a += &format!("{h}: {}\r\n", msg.header(h).unwrap_or(""));
    }
    if msg.method() == Some("SUBSCRIBE") {
        a += "Expires: 3600\r\n";
    }
    a + "User-Agent: vigil-sim\r\nContent-Length: 0\r\n\r\n"
}

/// A MESSAGE from `dev` carrying a MANSCDP body in GB2312.
fn manscdp_message(dev: &str, local: SocketAddr, call: &str, body: &str) -> Vec<u8> {
    let (gb, _, _) = encoding_rs::GB18030.encode(body);
    let mut raw = format!(
        "MESSAGE sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{call}\r\n\
From: <sip:{dev}@4201040000>;tag={call}\r\nTo: <sip:42010400002000000001@4201040000>\r\nCall-ID: {call}\r\nCSeq: 1 MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\nMax-Forwards: 70\r\nContent-Length: {}\r\n\r\n",
        gb.len()
    )
    .into_bytes();
    raw.extend_from_slice(&gb);
    raw
}

/// What a device sends back for a request of vigil's: 200 at once, then the MANSCDP answer
/// for DeviceInfo, DeviceStatus and ConfigDownload. A catalog query is answered 200 and
/// returned (device, SN) for the caller to send the parts.
fn answers(msg: &Message<'_>, heartbeat_s: u64, local: SocketAddr) -> (Vec<Vec<u8>>, Option<(String, u64)>) {
    if !matches!(msg.method(), Some("MESSAGE" | "SUBSCRIBE" | "NOTIFY" | "OPTIONS")) {
        return (Vec::new(), None);
    }
    let mut out = vec![ok_answer(msg).into_bytes()];
    if msg.method() != Some("MESSAGE") {
        return (out, None);
    }
    let (text, _) = vigil::protocol::manscdp::decode(msg.body);
    let Ok(env) = vigil::protocol::manscdp::envelope(&text) else { return (out, None) };
    if env.root != "Query" || env.device_id.len() < 20 {
        return (out, None);
    }
    let (dev, sn) = (env.device_id.clone(), env.sn.unwrap_or(0));
    let inner = match env.cmd_type.as_str() {
        "Catalog" => return (out, Some((dev, sn))),
        "DeviceInfo" => format!("<DeviceName>模拟摄像机 {}</DeviceName>\r\n<Result>OK</Result>\r\n<Manufacturer>vigil-sim</Manufacturer>\r\n<Model>SIM-IPC-2</Model>\r\n<Firmware>V1.0.0</Firmware>\r\n<Channel>1</Channel>\r\n", &dev[14..]),
        "DeviceStatus" => "<Result>OK</Result>\r\n<Online>ONLINE</Online>\r\n<Status>OK</Status>\r\n<Encode>ON</Encode>\r\n<Record>OFF</Record>\r\n".to_owned(),
        "ConfigDownload" => format!("<Result>OK</Result>\r\n<BasicParam>\r\n<Name>IPC</Name>\r\n<Expiration>3600</Expiration>\r\n<HeartBeatInterval>{heartbeat_s}</HeartBeatInterval>\r\n<HeartBeatCount>3</HeartBeatCount>\r\n</BasicParam>\r\n"),
        _ => return (out, None),
    };
    let body = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>{}</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{dev}</DeviceID>\r\n{inner}</Response>\r\n", env.cmd_type);
    out.push(manscdp_message(&dev, local, &format!("a{}{dev}{sn}", run_token()), &body));
    (out, None)
}

/// Answers a request of vigil's over the shared UDP socket (see `answers`).
async fn serve(
    sock: &UdpSocket,
    server: SocketAddr,
    msg: &Message<'_>,
    heartbeat_s: u64,
) -> Result<Option<(String, u64)>> {
    let (out, catalog) = answers(msg, heartbeat_s, sock.local_addr()?);
    for bytes in out {
        sock.send_to(&bytes, server).await?;
    }
    Ok(catalog)
}

/// One device over TCP (`--transport tcp`): connects, registers with digest, keeps alive,
/// answers vigil's requests on the same connection, and reconnects after 5 s if it drops.
async fn tcp_device(dev: String, server: SocketAddr, password: String, keepalive_s: u64, channels: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use vigil::protocol::sip::message::frame_len;
    let mut sn = 0u64;
    loop {
        let run = async {
            let mut stream = tokio::net::TcpStream::connect(server).await?;
            let local = stream.local_addr()?;
            let tcp = |s: String| s.replace("SIP/2.0/UDP", "SIP/2.0/TCP");
            stream.write_all(tcp(register(&dev, local, 1, "")).as_bytes()).await?;
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            let mut registered = false;
            let mut next_keepalive = Instant::now();
            loop {
                // Frames already buffered first, then the socket or the keepalive timer.
                while let Ok(Some(len)) = frame_len(&buf) {
                    let frame: Vec<u8> = buf.drain(..len).collect();
                    let Ok(msg) = Message::parse(&frame) else { continue };
                    match msg.start {
                        StartLine::Response { code: 401, .. } => {
                            let Some(auth) = authorization(&msg, &dev, &password) else {
                                bail!("401 without a challenge")
                            };
                            stream.write_all(tcp(register(&dev, local, 2, &auth)).as_bytes()).await?;
                        }
                        StartLine::Response { code, .. } if msg.cseq().is_some_and(|c| c.1 == "REGISTER") => {
                            if code != 200 {
                                bail!("REGISTER over TCP answered {code}");
                            }
                            registered = true;
                        }
                        StartLine::Response { .. } => {}
                        StartLine::Request { .. } => {
                            let (out, catalog) = answers(&msg, keepalive_s, local);
                            for bytes in out {
                                stream.write_all(&bytes).await?;
                            }
                            if let Some((d, qsn)) = catalog {
                                for part in catalog_parts(&d, qsn, channels, local, run_token()) {
                                    stream.write_all(&part).await?;
                                }
                            }
                        }
                    }
                }
                if registered && Instant::now() >= next_keepalive {
                    sn += 1;
                    stream.write_all(tcp(keepalive(&dev, local, sn)).as_bytes()).await?;
                    next_keepalive = Instant::now() + Duration::from_secs(keepalive_s);
                }
                let n = match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut chunk)).await {
                    Ok(Ok(0)) => bail!("connection closed"),
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => continue,
                };
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 1 << 20 {
                    bail!("more than 1 MiB buffered without a complete message");
                }
            }
        };
        let r: Result<()> = run.await;
        if let Err(e) = r {
            eprintln!("{dev} over TCP: {e}; reconnecting in 5 s");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// A GB2312 `Notify/Alarm` (video alarm, intrusion) from `dev`.
fn alarm(dev: &str, local: SocketAddr, sn: u64) -> Vec<u8> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) + 8 * 3600;
    let (days, secs) = (now / 86_400, now % 86_400);
    // Civil date from days since 1970 (Howard Hinnant's algorithm), local time UTC+8.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let time = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let body = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Alarm</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{dev}</DeviceID>\r\n<AlarmPriority>2</AlarmPriority>\r\n<AlarmMethod>5</AlarmMethod>\r\n<AlarmTime>{time}</AlarmTime>\r\n<AlarmDescription>区域入侵</AlarmDescription>\r\n<Info>\r\n<AlarmType>6</AlarmType>\r\n</Info>\r\n</Notify>\r\n");
    manscdp_message(dev, local, &format!("al{}{dev}{sn}", run_token()), &body)
}

/// One REGISTER exchange for device `n` from `sock` with `password`; returns the final code.
async fn register_one(
    sock: &UdpSocket,
    server: SocketAddr,
    dev: &str,
    password: &str,
    heartbeat_s: u64,
) -> Result<u16> {
    let local = sock.local_addr()?;
    let mut buf = vec![0u8; 65_535];
    sock.send_to(register(dev, local, 11, "").as_bytes(), server).await?;
    for _ in 0..20 {
        let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await else {
            break;
        };
        let Ok(msg) = Message::parse(&buf[..n]) else { continue };
        let StartLine::Response { code, .. } = msg.start else {
            serve(sock, server, &msg, heartbeat_s).await?;
            continue;
        };
        if code != 401 {
            return Ok(code);
        }
        let Some(auth) = authorization(&msg, dev, password) else { bail!("401 without a challenge") };
        sock.send_to(register(dev, local, 12, &auth).as_bytes(), server).await?;
    }
    bail!("no final answer to REGISTER for {dev}")
}

/// Live devices (see `Mode::Live`).
async fn live(
    sock: &Arc<UdpSocket>,
    args: &Args,
    keepalive_s: u64,
    channels: usize,
    alarm_every: u64,
    silent: u32,
    media_args: &MediaArgs,
) -> Result<()> {
    let local = sock.local_addr()?;
    let mut media = Media::new(media_args)?;
    let mut sn = 0u64;
    let mut buf = vec![0u8; 65_535];
    let mut next_register = Instant::now();
    let mut next_keepalive = Instant::now() + Duration::from_secs(keepalive_s);
    let mut next_alarm = Instant::now() + Duration::from_secs(alarm_every.max(1));
    let mut silenced: std::collections::HashSet<u32> = (args.count.saturating_sub(silent)..args.count).collect();
    // Devices moved to their own socket (`move N`): their keepalives leave from there.
    let mut moved: HashMap<u32, Arc<UdpSocket>> = HashMap::new();
    let (cmd_tx, mut commands) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if cmd_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        if Instant::now() >= next_register {
            // A short storm: registers the approved, is told 403 for the quarantined.
            let (ok, failed, _, queries, deferred) = storm(sock, args).await?;
            println!("live: {ok} registered, {failed} refused (awaiting approval?)");
            for raw in deferred {
                if let Ok(msg) = Message::parse(&raw) {
                    for bytes in media.request(&msg, local).await {
                        sock.send_to(&bytes, args.server).await?;
                    }
                }
            }
            for (dev, qsn) in queries {
                for part in catalog_parts(&dev, qsn, channels, local, run_token()) {
                    sock.send_to(&part, args.server).await?;
                }
            }
            next_register = Instant::now() + Duration::from_secs(30);
        }
        if Instant::now() >= next_keepalive {
            for n in (0..args.count).filter(|n| !silenced.contains(n)) {
                sn += 1;
                let from = moved.get(&n).unwrap_or(sock);
                from.send_to(keepalive(&id(args.first + n), from.local_addr()?, sn).as_bytes(), args.server).await?;
            }
            next_keepalive = Instant::now() + Duration::from_secs(keepalive_s);
        }
        if alarm_every > 0 && Instant::now() >= next_alarm {
            sn += 1;
            let n = (sn % u64::from(args.count.max(1))) as u32;
            sock.send_to(&alarm(&id(args.first + n), local, sn), args.server).await?;
            next_alarm = Instant::now() + Duration::from_secs(alarm_every);
        }
        let got = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some(line) = commands.recv() => {
                let mut words = line.split_whitespace();
                let (cmd, n) = (words.next().unwrap_or(""), words.next().and_then(|w| w.parse::<u32>().ok()));
                match (cmd, n) {
                    ("silence", Some(n)) => { silenced.insert(n); println!("device {n} stops keeping alive"); }
                    ("resume", Some(n)) => { silenced.remove(&n); println!("device {n} keeps alive again"); }
                    ("alarm", Some(n)) => {
                        sn += 1;
                        sock.send_to(&alarm(&id(args.first + n), local, sn), args.server).await?;
                        println!("device {n} sent alarm SN {sn}");
                    }
                    ("move", Some(n)) => {
                        let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
                        let code = register_one(&s, args.server, &id(args.first + n), &args.password, keepalive_s).await?;
                        println!("device {n} re-registered from {}: {code}", s.local_addr()?);
                        let reader = s.clone();
                        let server = args.server;
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_535];
                            while let Ok((len, _)) = reader.recv_from(&mut buf).await {
                                if let Ok(msg) = Message::parse(&buf[..len]) {
                                    let _ = serve(&reader, server, &msg, keepalive_s).await;
                                }
                            }
                        });
                        moved.insert(n, s);
                    }
                    ("wrongpass", Some(n)) => {
                        let s = UdpSocket::bind("127.0.0.1:0").await?;
                        let code = register_one(&s, args.server, &id(args.first + n), "wrong-password", keepalive_s).await?;
                        println!("device {n} with a wrong password: {code}");
                    }
                    ("garbage", _) => {
                        let junk: Vec<u8> = (0..512u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
                        sock.send_to(&junk, args.server).await?;
                        sock.send_to(b"REGISTER sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n", args.server).await?;
                        println!("sent garbage");
                    }
                    _ => println!("commands: silence N | resume N | alarm N | move N | wrongpass N | garbage"),
                }
                continue;
            }
            Some(call_id) = media.byes.recv() => {
                if let Some(bye) = media.bye_from_device(&call_id, local) {
                    sock.send_to(&bye, args.server).await?;
                }
                continue;
            }
            r = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)) => r,
        };
        let Ok(Ok((n, _))) = got else { continue };
        let Ok(msg) = Message::parse(&buf[..n]) else { continue };
        if matches!(msg.start, StartLine::Request { .. }) && is_media_request(&msg) {
            for bytes in media.request(&msg, local).await {
                sock.send_to(&bytes, args.server).await?;
            }
            continue;
        }
        if let Some((dev, qsn)) = serve(sock, args.server, &msg, keepalive_s).await? {
            for part in catalog_parts(&dev, qsn, channels, local, run_token()) {
                sock.send_to(&part, args.server).await?;
            }
        }
    }
}

/// The devices' media dialogs: INVITE answered (100, then 200 with SDP or a refusal), media
/// played from ACK, BYE both ways.
struct Media {
    clips: Option<Arc<vigil_simulators::gb_media::Clips>>,
    args: MediaArgs,
    faults: HashMap<u32, vigil_simulators::gb_media::Fault>,
    /// By Call-ID: the INVITE's From and To (with the device's tag), the device, the session
    /// waiting for its ACK, and the stop of a session playing.
    dialogs: HashMap<String, Dialog>,
    bye_tx: tokio::sync::mpsc::Sender<String>,
    byes: tokio::sync::mpsc::Receiver<String>,
}

struct Dialog {
    from: String,
    to: String,
    device: String,
    channel: String,
    /// Raised by the platform's `IFameCmd` for this channel.
    keyframe: Arc<std::sync::atomic::AtomicBool>,
    session: Option<vigil_simulators::gb_media::Session>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The device a channel id belongs to (`catalog_parts` numbers channels after their device).
fn device_of(channel: &str) -> String {
    match (channel.get(..10), channel.get(10..13), channel.get(13..17)) {
        (Some(a), Some("131"), Some(b)) => format!("{a}132000{b}"),
        _ => channel.to_owned(),
    }
}

impl Media {
    fn new(args: &MediaArgs) -> Result<Media> {
        let (bye_tx, byes) = tokio::sync::mpsc::channel(64);
        // Made (once, then cached) before the devices register, so the first INVITE is not
        // answered late.
        let clips = match vigil_simulators::gb_media::Clips::load(&args.clips, args.bitrate_kbps) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                eprintln!("gb-device: no clips, INVITEs will be answered 500: {e:#}");
                None
            }
        };
        Ok(Media {
            clips,
            faults: vigil_simulators::gb_media::parse_faults(&args.media_faults)?,
            args: args.clone(),
            dialogs: HashMap::new(),
            bye_tx,
            byes,
        })
    }

    /// What to send back for an INVITE, ACK or BYE.
    async fn handle(&mut self, msg: &Message<'_>, local: SocketAddr) -> Vec<Vec<u8>> {
        use vigil_simulators::gb_media::{answer, play, Answered, Fault};
        let call_id = msg.header("Call-ID").unwrap_or("").to_owned();
        match msg.method() {
            Some("INVITE") => {
                if self.dialogs.contains_key(&call_id) {
                    return Vec::new(); // a retransmission; the answer already left
                }
                let channel =
                    msg.header("To").and_then(vigil::protocol::sip::message::uri_user).unwrap_or("").to_owned();
                let device = device_of(&channel);
                let index = if channel.get(10..13) == Some("131") {
                    channel.get(17..20).and_then(|i| i.parse().ok()).unwrap_or(0)
                } else {
                    0
                };
                let fault = self.faults.get(&index).copied().unwrap_or(Fault::Healthy);
                let mut out: Vec<Vec<u8>> = vec![reply(msg, 100, "Trying", None, local, None).into()];
                let busy = self.dialogs.values().filter(|d| d.device == device).count();
                if busy >= self.args.max_sessions {
                    out.push(reply(msg, 503, "Service Unavailable", None, local, Some("preview links limit")).into());
                    return out;
                }
                if self.clips.is_none() {
                    out.push(reply(msg, 500, "Server Internal Error", None, local, None).into());
                    return out;
                }
                match answer(msg, &channel, fault, self.args.drop_permille).await {
                    Answered::Ok { sdp, session } => {
                        let tag = format!(
                            "d{}",
                            &call_id.chars().filter(char::is_ascii_alphanumeric).take(12).collect::<String>()
                        );
                        out.push(reply(msg, 200, "OK", Some(&sdp), local, None).replace_tag(&tag));
                        self.dialogs.insert(
                            call_id,
                            Dialog {
                                from: msg.header("From").unwrap_or("").to_owned(),
                                to: format!("{};tag={tag}", msg.header("To").unwrap_or("")),
                                device,
                                channel,
                                keyframe: Arc::default(),
                                session: Some(session),
                                stop: None,
                            },
                        );
                    }
                    Answered::Refused(code, why) => out.push(reply(msg, code, why, None, local, None).into()),
                }
                out
            }
            Some("ACK") => {
                if let (Some(d), Some(clips)) = (self.dialogs.get_mut(&call_id), self.clips.clone()) {
                    if let Some(session) = d.session.take() {
                        let (stop, stopped) = tokio::sync::oneshot::channel();
                        d.stop = Some(stop);
                        tokio::spawn(play(clips, session, stopped, self.bye_tx.clone(), d.keyframe.clone()));
                    }
                }
                Vec::new()
            }
            Some("BYE") => {
                let known = self.dialogs.remove(&call_id);
                let code = if known.is_some() { 200 } else { 481 };
                if let Some(stop) = known.and_then(|d| d.stop) {
                    let _ = stop.send(());
                }
                vec![reply(
                    msg,
                    code,
                    if code == 200 { "OK" } else { "Call/Transaction Does Not Exist" },
                    None,
                    local,
                    None,
                )
                .into()]
            }
            _ => Vec::new(),
        }
    }

    /// A media request (see `is_media_request`): the answers to send.
    async fn request(&mut self, msg: &Message<'_>, local: SocketAddr) -> Vec<Vec<u8>> {
        if msg.method() == Some("MESSAGE") {
            self.keyframe_request(msg);
            return vec![ok_answer(msg).into_bytes()];
        }
        self.handle(msg, local).await
    }

    /// A `DeviceControl` with `IFameCmd` for a channel: its sessions send a keyframe next.
    /// True when the message was one.
    fn keyframe_request(&self, msg: &Message<'_>) -> bool {
        let (text, _) = vigil::protocol::manscdp::decode(msg.body);
        if !text.contains("IFameCmd") {
            return false;
        }
        let Ok(env) = vigil::protocol::manscdp::envelope(&text) else { return false };
        for d in self.dialogs.values().filter(|d| d.channel == env.device_id) {
            d.keyframe.store(true, std::sync::atomic::Ordering::Release);
        }
        true
    }

    /// The device hangs up a session (`bye` fault): the BYE to send.
    fn bye_from_device(&mut self, call_id: &str, local: SocketAddr) -> Option<Vec<u8>> {
        let d = self.dialogs.remove(call_id)?;
        let target = vigil::protocol::sip::message::uri_user(&d.from).unwrap_or("");
        Some(
            format!(
                "BYE sip:{target}@4201040000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKbye{run}{n}\r\n\
From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                run = run_token(),
                n = call_id.len(),
                from = d.to,
                to = d.from,
            )
            .into_bytes(),
        )
    }
}

/// A response to an INVITE or BYE (Via, From, To, Call-ID, CSeq copied; a Contact on 200).
fn reply(
    msg: &Message<'_>,
    code: u16,
    reason: &str,
    sdp: Option<&str>,
    local: SocketAddr,
    warning: Option<&str>,
) -> Reply {
    let mut a = format!("SIP/2.0 {code} {reason}\r\n");
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        a += &format!("{h}: {}\r\n", msg.header(h).unwrap_or(""));
    }
    if let Some(w) = warning {
        a += &format!("Warning: 399 vigil-sim \"{w}\"\r\n");
    }
    if code == 200 {
        let user = msg.header("To").and_then(vigil::protocol::sip::message::uri_user).unwrap_or("");
        a += &format!("Contact: <sip:{user}@{local}>\r\n");
    }
    match sdp {
        Some(body) => {
            a += &format!(
                "Content-Type: APPLICATION/SDP\r\nUser-Agent: vigil-sim\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => a += "User-Agent: vigil-sim\r\nContent-Length: 0\r\n\r\n",
    }
    Reply(a)
}

/// A response being built (the To tag is added to a 200).
struct Reply(String);

impl Reply {
    fn replace_tag(self, tag: &str) -> Vec<u8> {
        let mut out = String::with_capacity(self.0.len() + 16);
        for line in self.0.split_inclusive("\r\n") {
            if line.starts_with("To:") && !line.contains(";tag=") {
                out += line.trim_end();
                out += &format!(";tag={tag}\r\n");
            } else {
                out += line;
            }
        }
        out.into_bytes()
    }
}

impl From<Reply> for Vec<u8> {
    fn from(r: Reply) -> Vec<u8> {
        r.0.into_bytes()
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
        let (text, _) = vigil::protocol::manscdp::decode(msg.body);
        if let Ok(env) = vigil::protocol::manscdp::envelope(&text) {
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
    let args = match Sim::parse() {
        Sim::GbDevice(args) => args,
        Sim::Community(args) => return vigil_simulators::community::run(args).await,
        Sim::Checkpoint(args) => return vigil_simulators::checkpoint::run(args).await,
        Sim::RtspCamera(args) => return vigil_simulators::rtsp_camera::run(args).await,
        Sim::Platform(args) => return vigil_simulators::platform::run(args).await,
        Sim::Upper(args) => return vigil_simulators::upper::run(args).await,
    };
    if !args.server.ip().is_loopback() {
        bail!("this load driver only targets loopback addresses");
    }
    if let Mode::Push { to, ref media_transport, ref fault, frames, ref clips } = args.mode {
        use vigil_simulators::gb_media;
        if !to.ip().is_loopback() {
            bail!("the simulator sends to loopback only");
        }
        let clips = Arc::new(gb_media::Clips::load(clips, 2000)?);
        let session = gb_media::push_session(to, media_transport == "tcp", 0x0104_0000, fault.parse()?, frames)?;
        let (_stop, stopped) = tokio::sync::oneshot::channel();
        let (byes, _) = tokio::sync::mpsc::channel(1);
        gb_media::play(clips, session, stopped, byes, Arc::default()).await;
        println!("push: {frames} frames sent to {to} over {media_transport}");
        return Ok(());
    }
    let std_sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    std_sock.set_nonblocking(true)?;
    let sock2 = socket2::Socket::from(std_sock);
    let _ = sock2.set_recv_buffer_size(4 * 1024 * 1024);
    let sock = Arc::new(UdpSocket::from_std(sock2.into())?);
    if let Mode::Live { keepalive, channels, alarm_every, silent, ref media } = args.mode {
        if args.transport == "tcp" {
            for n in 0..args.count.saturating_sub(silent) {
                tokio::spawn(tcp_device(id(args.first + n), args.server, args.password.clone(), keepalive, channels));
            }
            println!("live: {} devices over TCP; Ctrl-C stops them", args.count.saturating_sub(silent));
            tokio::signal::ctrl_c().await?;
            return Ok(());
        }
        return live(&sock, &args, keepalive, channels, alarm_every, silent, &media.clone()).await;
    }
    if args.transport != "udp" {
        bail!("--transport tcp is for live mode; the load modes use one UDP socket");
    }
    let (ok, failed, took, queries, _) = storm(&sock, &args).await?;
    println!(
        "registration storm: {ok} registered, {failed} failed, {} devices in {:.3} s ({:.0} registrations/s)",
        args.count,
        took.as_secs_f64(),
        f64::from(ok) / took.as_secs_f64()
    );
    match &args.mode {
        Mode::Flood { rate, seconds } => flood(&sock, &args, *rate, *seconds).await?,
        Mode::Catalog { channels, api } => catalog(&sock, &args, *channels, api, queries).await?,
        Mode::Storm | Mode::Live { .. } | Mode::Push { .. } => {}
    }
    Ok(())
}
