//! `vigil-sim upper`: a GB/T 28181 upper platform (the district's or the city's) for vigil's
//! cascade, for load and long scenarios (SIPp plays it in the tests). It challenges the lower
//! platform's REGISTER with digest and checks the answer, answers keepalives, subscribes to
//! the catalog and queries it once registered, and keeps its own view of every channel from
//! the catalog and the NOTIFYs — what the city's platform would show. Every `--report-every`
//! it prints that view as a JSON line (`{"upper":..,"registered":..,"channels":..,"on":..,
//! "online_rate":..,"notifies":..,"alarms":..}`); with `--log-notifies` it prints each NOTIFY
//! item as it arrives (`notify <unix ms> <channel> <event>`) for the latency bench; `GET
//! /view` on `--http` answers the view with every channel's status. With `--play N` it
//! INVITEs the first N channels that are ON (PS over RTP to a UDP port of its own each, its
//! own SSRC in `y=`), ACKs the 200s, and counts what arrives: the report lines then carry
//! `plays`, `mbit_s` and the time from ACK to the first keyframe pack (a PS system header)
//! per play (`first_key_ms` p50/p99/max). Loopback only.
#![allow(clippy::disallowed_methods)] // a simulator reads real time

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;
use tokio::net::UdpSocket;
use vigil::clock::now_ms;
use vigil::protocol::digest::{parse_authorization, Nonces, Verdict};
use vigil::protocol::manscdp;
use vigil::protocol::sip::message::{self, Message, StartLine};

#[derive(clap::Args)]
pub struct Args {
    /// Where to listen for SIP (UDP, loopback).
    #[arg(long, default_value = "127.0.0.1:15060")]
    pub listen: SocketAddr,
    /// This platform's 20-digit id.
    #[arg(long, default_value = "42010000002000000001")]
    pub id: String,
    /// The password lower platforms register with.
    #[arg(long, default_value = "12345678")]
    pub password: String,
    /// Name in the report lines (e.g. district, city).
    #[arg(long, default_value = "upper")]
    pub name: String,
    /// Print the view every this many seconds (0: never).
    #[arg(long, default_value_t = 5)]
    pub report_every: u64,
    /// Print every NOTIFY item as it arrives.
    #[arg(long)]
    pub log_notifies: bool,
    /// Serve `GET /view` here (loopback).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Play this many ON channels once the catalog is in (0: none).
    #[arg(long, default_value_t = 0)]
    pub play: usize,
    /// Seconds after the first registration before the plays start.
    #[arg(long, default_value_t = 5)]
    pub play_after: u64,
}

/// What the plays received.
#[derive(Default)]
struct Plays {
    /// INVITEs sent, by Call-ID: the channel and the media socket's port.
    pending: std::collections::HashMap<String, (String, u16)>,
    /// When each play was ACKed, by media port.
    acked: std::collections::HashMap<u16, std::time::Instant>,
    /// ACK to first keyframe pack, ms, per play.
    first_key_ms: Vec<u64>,
    bytes: u64,
    since: Option<std::time::Instant>,
    answered: usize,
    refused: usize,
}

#[derive(Default)]
struct View {
    plays: Plays,
    lower_addr: Option<SocketAddr>,
    registered: bool,
    /// The Call-ID of the lower's registration (a new one: it registered anew).
    call: String,
    lower: Option<String>,
    channels: BTreeMap<String, bool>,
    /// The last NOTIFY event per channel (ON, OFF, VLOST, DEFECT, ADD, DEL).
    events: BTreeMap<String, String>,
    notifies: u64,
    alarms: u64,
    keepalives: u64,
}

impl View {
    fn json(&self, name: &str, whole: bool) -> serde_json::Value {
        let on = self.channels.values().filter(|v| **v).count();
        let n = self.channels.len();
        let mut v = json!({
            "upper": name, "registered": self.registered, "lower": self.lower, "channels": n, "on": on,
            "online_rate": if n == 0 { 0.0 } else { on as f64 / n as f64 },
            "notifies": self.notifies, "alarms": self.alarms, "keepalives": self.keepalives,
        });
        if whole {
            v["status"] = json!(self.channels);
            v["events"] = json!(self.events);
        }
        let p = &self.plays;
        if p.answered + p.refused > 0 {
            let mut k = p.first_key_ms.clone();
            k.sort_unstable();
            let q = |f: f64| k.get(((k.len() as f64 * f) as usize).min(k.len().saturating_sub(1))).copied();
            let secs = p.since.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0).max(0.001);
            v["plays"] = json!({"answered": p.answered, "refused": p.refused, "keyframes": k.len(),
                "mbit_s": p.bytes as f64 * 8.0 / secs / 1e6,
                "first_key_ms": {"p50": q(0.5), "p99": q(0.99), "max": k.last()}});
        }
        v
    }
}

pub async fn run(a: Args) -> Result<()> {
    if !a.listen.ip().is_loopback() {
        bail!("vigil-sim upper listens on loopback only");
    }
    let sock = Arc::new(UdpSocket::bind(a.listen).await?);
    println!("sip:{}@{}", a.id, sock.local_addr()?);
    let view = Arc::new(Mutex::new(View::default()));
    if let Some(addr) = a.http {
        if !addr.ip().is_loopback() {
            bail!("--http is loopback only");
        }
        let (v, name) = (view.clone(), a.name.clone());
        let app = axum::Router::new().route(
            "/view",
            axum::routing::get(move || {
                let body = v.lock().map(|g| g.json(&name, true)).unwrap_or_default();
                async move { axum::Json(body) }
            }),
        );
        let l = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(async move { axum::serve(l, app).await });
    }
    if a.report_every > 0 {
        let (v, name, every) = (view.clone(), a.name.clone(), Duration::from_secs(a.report_every));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let line = v.lock().map(|g| g.json(&name, false).to_string()).unwrap_or_default();
                println!("{line}");
            }
        });
    }
    let realm = a.id.get(..10).unwrap_or(&a.id).to_owned();
    if a.play > 0 {
        let (v, sock, me, realm, n, after) =
            (view.clone(), sock.clone(), a.id.clone(), realm.clone(), a.play, a.play_after);
        tokio::spawn(async move {
            if let Err(e) = plays(v, sock, me, realm, n, after).await {
                eprintln!("upper: plays stopped: {e}");
            }
        });
    }
    let mut nonces = Nonces::default();
    let mut buf = vec![0u8; 65_536];
    let mut cseq = 0u32;
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        let Ok(msg) = Message::parse(&buf[..n]) else { continue };
        let StartLine::Request { method, .. } = msg.start else {
            if let StartLine::Response { code, .. } = msg.start {
                if msg.cseq().is_some_and(|(_, m)| m.eq_ignore_ascii_case("INVITE")) && code >= 200 {
                    if let Some(ack) = invite_answered(&view, &msg, code, sock.local_addr()?) {
                        sock.send_to(&ack, from).await?;
                    }
                }
            }
            continue;
        };
        let tag = "upper";
        let ok = |extra: &[(&str, String)]| message::response(&msg, 200, "OK", from, tag, extra, b"");
        let answer = match method.to_ascii_uppercase().as_str() {
            "REGISTER" => {
                let params = msg.header("Authorization").and_then(parse_authorization);
                let verdict = params.as_ref().map(|p| nonces.check(now_ms(), p, "REGISTER", &a.password));
                let expires = msg.header("Expires").and_then(|e| e.trim().parse::<u64>().ok()).unwrap_or(3600);
                match verdict {
                    Some(Verdict::Ok) => {
                        let lower = msg.header("From").and_then(message::uri_user).unwrap_or("").to_owned();
                        let call = msg.header("Call-ID").unwrap_or("").to_owned();
                        let fresh = {
                            let mut g = view.lock().map_err(|_| anyhow::anyhow!("view lock"))?;
                            // A registration anew (not a refresh on the same call): the lower
                            // restarted or came back.
                            let fresh = !g.registered || g.call != call;
                            g.call = call;
                            g.registered = expires > 0;
                            g.lower = Some(lower.clone());
                            g.lower_addr = Some(from);
                            fresh
                        };
                        let answer = ok(&[("Expires", expires.to_string())]);
                        sock.send_to(&answer, from).await?;
                        if fresh && expires > 0 {
                            // As WVP does when a lower platform comes online: subscribe to its
                            // catalog and query it.
                            cseq += 1;
                            sock.send_to(&subscribe(&a.id, &realm, &lower, from, sock.local_addr()?, cseq), from)
                                .await?;
                            cseq += 1;
                            sock.send_to(&query(&a.id, &realm, &lower, from, sock.local_addr()?, cseq), from).await?;
                        }
                        continue;
                    }
                    Some(Verdict::Wrong) => message::response(&msg, 403, "Forbidden", from, tag, &[], b""),
                    _ => {
                        let c = nonces.challenge(&realm, now_ms(), matches!(verdict, Some(Verdict::Stale)));
                        message::response(&msg, 401, "Unauthorized", from, tag, &[("WWW-Authenticate", c)], b"")
                    }
                }
            }
            "MESSAGE" | "NOTIFY" => {
                let (text, _) = manscdp::decode(msg.body);
                let cmd = manscdp::envelope(&text).map(|e| (e.root, e.cmd_type)).unwrap_or_default();
                if !view.lock().map(|g| g.registered).unwrap_or(false) {
                    // As WVP: a lower platform it does not know (this upper restarted) is
                    // refused, and registers again.
                    sock.send_to(&message::response(&msg, 403, "Forbidden", from, tag, &[], b""), from).await?;
                    continue;
                }
                let mut g = view.lock().map_err(|_| anyhow::anyhow!("view lock"))?;
                match (cmd.0.as_str(), cmd.1.as_str()) {
                    ("Notify", "Keepalive") => g.keepalives += 1,
                    ("Notify", "Alarm") => g.alarms += 1,
                    ("Response", "Catalog") => {
                        for item in text.split("<Item>").skip(1) {
                            let id = field(item, "DeviceID");
                            // Org tree nodes (regions, groups) carry no status: not channels.
                            if !id.is_empty() && item.contains("<Status>") {
                                g.channels.insert(id, field(item, "Status").eq_ignore_ascii_case("ON"));
                            }
                        }
                    }
                    ("Notify", "Catalog") => {
                        g.notifies += 1;
                        let at = now_ms();
                        for item in text.split("<Item>").skip(1) {
                            let (id, event) = (field(item, "DeviceID"), field(item, "Event"));
                            if a.log_notifies {
                                println!("notify {at} {id} {event}");
                            }
                            g.events.insert(id.clone(), event.to_ascii_uppercase());
                            match event.to_ascii_uppercase().as_str() {
                                "ADD" | "UPDATE" => {
                                    g.channels.insert(id, field(item, "Status").eq_ignore_ascii_case("ON"));
                                }
                                "ON" => {
                                    g.channels.insert(id, true);
                                }
                                // Online with a lost or defective picture: kept in `events`.
                                "VLOST" | "DEFECT" => {
                                    g.channels.insert(id.clone(), true);
                                }
                                "OFF" => {
                                    g.channels.insert(id, false);
                                }
                                "DEL" => {
                                    g.channels.remove(&id);
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
                ok(&[])
            }
            "BYE" | "OPTIONS" => ok(&[]),
            "ACK" => continue,
            _ => message::response(&msg, 501, "Not Implemented", from, tag, &[], b""),
        };
        sock.send_to(&answer, from).await?;
    }
}

/// The text of `<name>` in an XML fragment.
fn field(s: &str, name: &str) -> String {
    let open = format!("<{name}>");
    s.split(&open).nth(1).and_then(|r| r.split('<').next()).unwrap_or("").trim().to_owned()
}

#[allow(clippy::too_many_arguments)]
fn request(
    method: &str,
    me: &str,
    realm: &str,
    lower: &str,
    to: SocketAddr,
    local: SocketAddr,
    cseq: u32,
    extra: &str,
    body: &str,
) -> Vec<u8> {
    let call = format!("{}{}{cseq}", std::process::id(), now_ms());
    format!(
        "{method} sip:{lower}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{call}\r\nFrom: <sip:{me}@{realm}>;tag=u{cseq}\r\n\
To: <sip:{lower}@{to}>\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\nContact: <sip:{me}@{local}>\r\nMax-Forwards: 70\r\n{extra}\
Content-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn subscribe(me: &str, realm: &str, lower: &str, to: SocketAddr, local: SocketAddr, cseq: u32) -> Vec<u8> {
    let body = format!("<?xml version=\"1.0\"?>\r\n<Query>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{cseq}</SN>\r\n<DeviceID>{lower}</DeviceID>\r\n</Query>\r\n");
    request("SUBSCRIBE", me, realm, lower, to, local, cseq, "Event: Catalog;id=1\r\nExpires: 3600\r\n", &body)
}

fn query(me: &str, realm: &str, lower: &str, to: SocketAddr, local: SocketAddr, cseq: u32) -> Vec<u8> {
    let body = format!("<?xml version=\"1.0\"?>\r\n<Query>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{cseq}</SN>\r\n<DeviceID>{lower}</DeviceID>\r\n</Query>\r\n");
    request("MESSAGE", me, realm, lower, to, local, cseq, "", &body)
}

/// A final answer to one of the plays' INVITEs: the ACK to send for a 200 (the play counts
/// from now).
fn invite_answered(view: &Mutex<View>, msg: &Message<'_>, code: u16, local: SocketAddr) -> Option<Vec<u8>> {
    let call = msg.header("Call-ID")?;
    let mut g = view.lock().ok()?;
    let (channel, port) = g.plays.pending.remove(call)?;
    if code >= 300 {
        g.plays.refused += 1;
        return None;
    }
    g.plays.answered += 1;
    g.plays.acked.insert(port, std::time::Instant::now());
    g.plays.since.get_or_insert_with(std::time::Instant::now);
    let (from, to) = (msg.header("From")?, msg.header("To")?);
    Some(
        format!(
            "ACK sip:{channel}@{local} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKack{port}\r\nFrom: {from}\r\nTo: {to}\r\n\
Call-ID: {call}\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes(),
    )
}

/// After `after` seconds, INVITEs the first `n` ON channels, each to a UDP port of its own, and
/// counts what arrives.
async fn plays(
    view: Arc<Mutex<View>>,
    sock: Arc<UdpSocket>,
    me: String,
    realm: String,
    n: usize,
    after: u64,
) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(after)).await;
    let (lower, channels) = {
        let g = view.lock().map_err(|_| anyhow::anyhow!("view lock"))?;
        let Some(lower) = g.lower_addr else { bail!("no lower platform registered") };
        (lower, g.channels.iter().filter(|(_, on)| **on).map(|(c, _)| c.clone()).take(n).collect::<Vec<_>>())
    };
    let local = sock.local_addr()?;
    for (i, channel) in channels.into_iter().enumerate() {
        let media = UdpSocket::bind("127.0.0.1:0").await?;
        let port = media.local_addr()?.port();
        let _ = socket2::SockRef::from(&media).set_recv_buffer_size(1 << 20);
        let call = format!("play{}-{i}@upper", std::process::id());
        let ssrc = 100_000_000 + i as u32;
        let sdp = format!(
            "v=0\r\no={me} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video {port} RTP/AVP 96\r\n\
a=recvonly\r\na=rtpmap:96 PS/90000\r\ny=0{ssrc}\r\n"
        );
        let invite = format!(
            "INVITE sip:{channel}@{lower} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKinv{port}\r\n\
From: <sip:{me}@{realm}>;tag=p{i}\r\nTo: <sip:{channel}@{realm}>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:{me}@{local}>\r\nSubject: {channel}:0{ssrc},{me}:0\r\nMax-Forwards: 70\r\n\
Content-Type: APPLICATION/SDP\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        view.lock().map_err(|_| anyhow::anyhow!("view lock"))?.plays.pending.insert(call, (channel, port));
        sock.send_to(invite.as_bytes(), lower).await?;
        let v = view.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut keyed = false;
            while let Ok(n) = media.recv(&mut buf).await {
                let payload = buf.get(12..n).unwrap_or(&[]);
                let key = !keyed && payload.windows(4).any(|w| w == [0, 0, 1, 0xBB]);
                if let Ok(mut g) = v.lock() {
                    g.plays.bytes += n as u64;
                    if key {
                        keyed = true;
                        if let Some(t) = g.plays.acked.get(&port).copied() {
                            g.plays.first_key_ms.push(t.elapsed().as_millis() as u64);
                        }
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
