//! `vigil-sim upper`: a GB/T 28181 upper platform (the district's or the city's) for vigil's
//! cascade, for load and long scenarios (SIPp plays it in the tests). It challenges the lower
//! platform's REGISTER with digest and checks the answer, answers keepalives, subscribes to
//! the catalog and queries it once registered, and keeps its own view of every channel from
//! the catalog and the NOTIFYs — what the city's platform would show. Every `--report-every`
//! it prints that view as a JSON line (`{"upper":..,"registered":..,"channels":..,"on":..,
//! "online_rate":..,"notifies":..,"alarms":..}`); with `--log-notifies` it prints each NOTIFY
//! item as it arrives (`notify <unix ms> <channel> <event>`) for the latency bench; `GET
//! /view` on `--http` answers the view with every channel's status. Loopback only.
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
}

#[derive(Default)]
struct View {
    registered: bool,
    /// The Call-ID of the lower's registration (a new one: it registered anew).
    call: String,
    lower: Option<String>,
    channels: BTreeMap<String, bool>,
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
    let mut nonces = Nonces::default();
    let mut buf = vec![0u8; 65_536];
    let mut cseq = 0u32;
    loop {
        let (n, from) = sock.recv_from(&mut buf).await?;
        let Ok(msg) = Message::parse(&buf[..n]) else { continue };
        let StartLine::Request { method, .. } = msg.start else { continue };
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
                            if !id.is_empty() {
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
                            match event.to_ascii_uppercase().as_str() {
                                "ON" => {
                                    g.channels.insert(id, true);
                                }
                                "OFF" | "VLOST" | "DEFECT" => {
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
