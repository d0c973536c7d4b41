//! The door in front of the embedded broker. Devices connect here (`mqtt.listen`); rumqttd
//! listens on a private loopback port that only this gate and vigil's own client know the
//! credentials of. Per connection the gate reads the CONNECT and lets it through only for a
//! device that authenticates — its registry id as the username and its own password (or
//! `mqtt.device_password` while it has none; an unknown device only when admission is not
//! closed) — with its client id put under its own name (`d:{id}:...`, so no one can take over
//! vigil's session or another device's), then relays the connection and reads every packet
//! the device sends: a PUBLISH must be on a topic a device profile maps to this device's own
//! key (or a device placed under it, `via`), a last will too; retained messages are capped in
//! size and number; SUBSCRIBE only to exact topics outside the profiles' routes that carry the
//! device's id (its downlink). Anything else closes the connection, counted
//! (`vigil_device_auth_refusals_total{port="mqtt"}`) and kept with its payload. A packet
//! begun must be whole, and what the broker sends must be taken, within
//! `mqtt.message_deadline`: a device too slow either way is closed and counted
//! (`vigil_connections_refused_total{listener="mqtt"}`), so it holds no slot for long.
//! Anonymous clients only with `mqtt.allow_anonymous` (a lab).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::net::{ConnCap, FailureLimit, SharedHush};
use crate::profiles::ProfileSet;
use crate::protocol::mqtt::{self as packet, Connect};
use crate::registry::{Admission, Protocol, Registry};

/// A client must send its whole CONNECT within this.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
/// The largest CONNECT read (ids, will and credentials; not a payload carrier).
const CONNECT_MAX: usize = 64 * 1024;
/// Largest payload a device may leave retained, and how many topics it may retain on.
pub const RETAINED_MAX_BYTES: usize = 4096;
pub const RETAINED_TOPICS: usize = 16;
/// Failed logins from one address within a minute before it is refused unheard.
const MAX_FAILURES: u32 = 5;
/// Topics a connection remembers the verdict for.
const VERDICTS_KEPT: usize = 1024;
/// Longest username and client id taken: the id put under the device's name must stay one
/// MQTT string (65,535 bytes) whatever the escaping, so two ids never meet by truncation.
const ID_MAX: usize = 256;
/// A connection's packet buffer is given back after a packet larger than this (one device
/// sending one 8 MiB picture must not keep 8 MiB for as long as it stays connected).
const BUFFER_KEPT: usize = 256 * 1024;

/// What the gate needs from the rest of vigil.
pub struct Deps {
    pub registry: Registry,
    pub profiles: Arc<ProfileSet>,
    pub metrics: crate::telemetry::Metrics,
    pub rejections: crate::rejections::Rejections,
    pub device_password: String,
    pub allow_anonymous: bool,
    pub max_packet: usize,
    /// `mqtt.message_deadline`: a packet begun must be whole within it, and what the gate
    /// writes to a device must be taken within it.
    pub message_deadline: Duration,
}

/// The gate: its dependencies, the private broker behind it and what it remembers.
pub struct Gate {
    deps: Deps,
    backend: SocketAddr,
    backend_user: String,
    backend_password: String,
    failures: Mutex<FailureLimit>,
    /// Topics each device has left a retained message on.
    retained: Mutex<HashMap<String, HashSet<String>>>,
    hush: SharedHush,
    /// The private broker not answering: one line per interval, however many devices try.
    backend_hush: SharedHush,
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Device(String),
    /// `mqtt.allow_anonymous`: a lab client, not checked.
    Anonymous,
}

/// Why a connection is refused or closed: the counted reason and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: &'static str,
    pub detail: String,
}

fn deny(reason: &'static str, detail: impl Into<String>) -> Denial {
    Denial { reason, detail: detail.into() }
}

/// Text as a part of a broker client id: the characters rumqttd refuses there (`+$#/`), the
/// separator and the escape itself percent-encoded, so two different ids never meet.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '+' | '$' | '#' | '/' | ':' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Two byte strings equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Gate {
    pub fn new(deps: Deps, backend: SocketAddr, backend_user: String, backend_password: String) -> Arc<Gate> {
        Arc::new(Gate {
            deps,
            backend,
            backend_user,
            backend_password,
            failures: Mutex::new(FailureLimit::new(MAX_FAILURES, 60_000)),
            retained: Mutex::default(),
            hush: SharedHush::new(10_000),
            backend_hush: SharedHush::new(10_000),
        })
    }

    /// A connection closed for holding the gate up (a packet not whole, or a device not
    /// reading, within `mqtt.message_deadline`): counted as a refused connection, not as an
    /// authentication refusal (nothing it sent was wrong, it was too slow).
    fn cut(&self, peer: SocketAddr, who: &str, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.deps.metrics.connections_refused.with_label_values(&["mqtt", reason]).inc();
        if let Some(held) = self.hush.tick(now_ms()) {
            warn!(%peer, client = %who, reason, %detail, held_back = held, "MQTT client closed.");
        }
    }

    fn refused(&self, peer: SocketAddr, who: &str, d: &Denial, raw: &[u8]) {
        self.deps.metrics.auth_refusals.with_label_values(&["mqtt", d.reason]).inc();
        self.deps.rejections.record(now_ms(), "mqtt", d.reason, format!("{peer}/{who}"), d.detail.clone(), raw);
        if let Some(held) = self.hush.tick(now_ms()) {
            warn!(%peer, client = %who, reason = d.reason, detail = %d.detail, held_back = held, "MQTT client refused.");
        }
    }

    /// Who the CONNECT authenticates, or why not (with the CONNACK code to answer).
    fn authenticate(&self, c: &Connect, ip: IpAddr) -> Result<Who, (u8, Denial)> {
        let now = now_ms();
        if self.failures.lock().unwrap_or_else(|p| p.into_inner()).limited(ip, now) {
            return Err((
                packet::NOT_AUTHORIZED,
                deny("too_many_failures", "too many failed logins from this address"),
            ));
        }
        let Some(user) = c.username.as_deref().filter(|u| !u.is_empty()) else {
            return if self.deps.allow_anonymous {
                Ok(Who::Anonymous)
            } else {
                Err((
                    packet::NOT_AUTHORIZED,
                    deny("anonymous", "no username: log in with the device id and its password"),
                ))
            };
        };
        let known = self.deps.registry.read().device(user);
        let expected = match &known {
            Some(d) if d.protocol != Protocol::Mqtt => {
                return Err((
                    packet::NOT_AUTHORIZED,
                    deny("other_protocol", format!("{user} is a {} device on this gateway", d.protocol.as_str())),
                ))
            }
            Some(d) if d.admission == Admission::Rejected || !d.enabled => {
                return Err((
                    packet::NOT_AUTHORIZED,
                    deny("device_rejected", format!("{user} is rejected or disabled")),
                ))
            }
            Some(d) => d.password.clone().unwrap_or_else(|| self.deps.device_password.clone()),
            None if self.deps.registry.admission_closed() => {
                return Err((packet::NOT_AUTHORIZED, deny("unknown_device", format!("{user} is not registered"))))
            }
            None => self.deps.device_password.clone(),
        };
        if !c.password.as_deref().is_some_and(|p| same(p, expected.as_bytes())) {
            self.failures.lock().unwrap_or_else(|p| p.into_inner()).failed(ip, now);
            return Err((packet::BAD_CREDENTIALS, deny("wrong_password", format!("wrong password for {user}"))));
        }
        Ok(Who::Device(user.to_owned()))
    }

    /// Whether `user` may publish on `topic`: a profile route maps it, and the key the route
    /// names is the device itself or a device placed under it.
    fn may_publish(&self, user: &str, topic: &str) -> Result<(), Denial> {
        let Some(sel) = self.deps.profiles.select_mqtt(topic, None) else {
            return Err(deny("unmapped_topic", format!("no device profile maps {topic:?}")));
        };
        let Some(key) = crate::profiles::identity_from_route(&sel.profile, &sel.captures) else {
            return Err(deny(
                "key_not_in_topic",
                format!("{topic:?} does not name its device (profile {})", sel.profile.id),
            ));
        };
        if key == user {
            return Ok(());
        }
        let carried = self.deps.registry.read().device(&key).is_some_and(|d| {
            d.protocol == Protocol::Mqtt && d.attrs.get("via").and_then(serde_json::Value::as_str) == Some(user)
        });
        if carried {
            Ok(())
        } else {
            Err(deny("not_own_topic", format!("{topic:?} is device {key}'s, not {user}'s")))
        }
    }

    /// Whether `user` may subscribe to `filter`: an exact topic (no wildcard) that no profile
    /// maps as a device's uplink and that carries the device's id as a level.
    fn may_subscribe(&self, user: &str, filter: &str) -> Result<(), Denial> {
        if filter.contains(['+', '#']) || filter.starts_with('$') {
            return Err(deny("acl_subscribe", format!("{filter:?}: devices subscribe to exact topics only")));
        }
        if self.deps.profiles.select_mqtt(filter, None).is_some() {
            return Err(deny("acl_subscribe", format!("{filter:?} is a device uplink: only vigil reads it")));
        }
        if !filter.split('/').any(|level| level == user) {
            return Err(deny("acl_subscribe", format!("{filter:?} does not carry {user}")));
        }
        Ok(())
    }

    /// Whether a retained message from `user` on `topic` fits the caps.
    fn may_retain(&self, user: &str, topic: &str, payload: &[u8]) -> Result<(), Denial> {
        if payload.is_empty() {
            // Clearing a retained message is always allowed.
            if let Some(set) = self.retained.lock().unwrap_or_else(|p| p.into_inner()).get_mut(user) {
                set.remove(topic);
            }
            return Ok(());
        }
        if payload.len() > RETAINED_MAX_BYTES {
            return Err(deny(
                "retained_too_large",
                format!("a retained message of {} bytes (at most {RETAINED_MAX_BYTES})", payload.len()),
            ));
        }
        let mut all = self.retained.lock().unwrap_or_else(|p| p.into_inner());
        let set = all.entry(user.to_owned()).or_default();
        if !set.contains(topic) && set.len() >= RETAINED_TOPICS {
            return Err(deny(
                "retained_limit",
                format!("{user} keeps retained messages on {RETAINED_TOPICS} topics already"),
            ));
        }
        set.insert(topic.to_owned());
        Ok(())
    }
}

/// Accepts device connections until `cancel`.
pub async fn serve(listener: TcpListener, gate: Arc<Gate>, cap: ConnCap, cancel: CancellationToken) {
    let conns = TaskTracker::new();
    let mut acceptor = crate::net::Acceptor::new(listener, cap);
    while let Some((stream, peer, slot)) = acceptor.next(&cancel).await {
        let gate = gate.clone();
        let cancel = cancel.clone();
        conns.spawn(async move {
            tokio::select! {
                _ = connection(&gate, stream, peer) => {}
                _ = cancel.cancelled() => {}
            }
            drop(slot);
        });
    }
    conns.close();
    conns.wait().await;
}

/// Why no packet was read.
enum Unread {
    /// What the device sent is refused (counted and kept).
    Denied(Denial),
    /// The packet was not whole within its deadline.
    Late(Duration),
}

/// Reads one packet's fixed header and body (at most `max` bytes of body); once its first
/// byte is in, the rest must come within `deadline`.
async fn read_packet<R: AsyncReadExt + Unpin>(
    r: &mut R,
    max: usize,
    deadline: Duration,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<Option<u8>, Unread> {
    head.clear();
    let first = match r.read_u8().await {
        Ok(b) => b,
        Err(_) => return Ok(None),
    };
    head.push(first);
    match tokio::time::timeout(deadline, read_rest(r, max, head, body)).await {
        Ok(r) => r.map(|()| Some(first)).map_err(Unread::Denied),
        Err(_) => Err(Unread::Late(deadline)),
    }
}

/// The rest of a packet whose first byte is `head[0]`.
async fn read_rest<R: AsyncReadExt + Unpin>(
    r: &mut R,
    max: usize,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
) -> Result<(), Denial> {
    let len = loop {
        let b = r.read_u8().await.map_err(|_| deny("bad_packet", "connection closed inside a header"))?;
        head.push(b);
        match packet::remaining_length(&head[1..]) {
            Ok(Some((len, _))) => break len,
            Ok(None) => {}
            Err(e) => return Err(deny("bad_packet", e.to_string())),
        }
    };
    if len > max {
        return Err(deny("too_large", packet::Error::TooLarge(len).to_string()));
    }
    body.clear();
    body.resize(len, 0);
    r.read_exact(body).await.map_err(|_| deny("bad_packet", "connection closed inside a packet"))?;
    Ok(())
}

async fn connection(gate: &Gate, mut client: TcpStream, peer: SocketAddr) {
    let (mut head, mut body) = (Vec::with_capacity(8), Vec::new());
    let first = match tokio::time::timeout(
        CONNECT_DEADLINE,
        read_packet(&mut client, CONNECT_MAX, CONNECT_DEADLINE, &mut head, &mut body),
    )
    .await
    {
        Err(_) | Ok(Err(Unread::Late(_))) => {
            gate.refused(peer, "", &deny("no_connect", "no CONNECT within 10 s"), b"");
            return;
        }
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return,
        Ok(Err(Unread::Denied(d))) => {
            gate.refused(peer, "", &d, &body);
            return;
        }
    };
    if first >> 4 != packet::CONNECT {
        gate.refused(peer, "", &deny("bad_packet", "the first packet is not a CONNECT"), &body);
        return;
    }
    let connect = match Connect::parse(&body) {
        Ok(c) => c,
        Err(e) => {
            let protocol = matches!(e, packet::Error::Protocol { .. });
            gate.refused(peer, "", &deny("bad_connect", e.to_string()), &body);
            if protocol {
                let _ = client.write_all(&packet::connack(packet::BAD_PROTOCOL)).await;
            }
            return;
        }
    };
    if connect.client_id.len() > ID_MAX || connect.username.as_ref().is_some_and(|u| u.len() > ID_MAX) {
        let d = deny("bad_connect", format!("a username or client id over {ID_MAX} bytes"));
        gate.refused(peer, "", &d, b"");
        let _ = client.write_all(&packet::connack(packet::IDENTIFIER_REJECTED)).await;
        return;
    }
    let who = match gate.authenticate(&connect, peer.ip()) {
        Ok(w) => w,
        Err((code, d)) => {
            gate.refused(peer, connect.username.as_deref().unwrap_or(""), &d, b"");
            let _ = client.write_all(&packet::connack(code)).await;
            return;
        }
    };
    let name = match &who {
        Who::Device(u) => u.clone(),
        Who::Anonymous => String::new(),
    };
    if let (Who::Device(user), Some((topic, payload, _, retain))) = (&who, &connect.will) {
        let checked = gate.may_publish(user, topic).and_then(|()| {
            if *retain {
                gate.may_retain(user, topic, payload)
            } else {
                Ok(())
            }
        });
        if let Err(d) = checked {
            gate.refused(peer, user, &Denial { reason: "acl_will", detail: d.detail }, payload);
            let _ = client.write_all(&packet::connack(packet::NOT_AUTHORIZED)).await;
            return;
        }
    }
    let mut upstream = match TcpStream::connect(gate.backend).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(held) = gate.backend_hush.tick(now_ms()) {
                warn!(error = %e, held_back = held, "The embedded broker does not answer the gate.");
            }
            let _ = client.write_all(&packet::connack(3)).await; // server unavailable
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut forwarded = connect.clone();
    forwarded.client_id = match &who {
        Who::Device(u) => format!("d:{}:{}", escape(u), escape(&connect.client_id)),
        Who::Anonymous => format!("a:{}", escape(&connect.client_id)),
    };
    if connect.client_id.is_empty() {
        forwarded.client_id.push_str(&uuid::Uuid::now_v7().simple().to_string());
    }
    forwarded.username = Some(gate.backend_user.clone());
    forwarded.password = Some(gate.backend_password.clone().into_bytes());
    if upstream.write_all(&forwarded.encode()).await.is_err() {
        return;
    }
    debug!(%peer, client = %name, "MQTT client through the gate.");
    let (cr, cw) = client.into_split();
    let (br, bw) = upstream.into_split();
    let down = relay_down(gate, &name, peer, br, cw);
    let up = relay_up(gate, &who, peer, cr, bw);
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

/// The broker's packets to the device, as they come; a device that does not take them within
/// `mqtt.message_deadline` (its receive window shut) is closed, so it holds no slot for long.
async fn relay_down(
    gate: &Gate,
    name: &str,
    peer: SocketAddr,
    mut br: tokio::net::tcp::OwnedReadHalf,
    mut cw: tokio::net::tcp::OwnedWriteHalf,
) {
    // 8 KiB, as `tokio::io::copy` had: one per connected device.
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match br.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match crate::net::frames::write_within(&mut cw, &buf[..n], gate.deps.message_deadline).await {
            Ok(()) => {}
            Err(e @ crate::net::frames::WriteEnd::Stalled(_)) => return gate.cut(peer, name, "unread", &e),
            Err(crate::net::frames::WriteEnd::Io(_)) => return,
        }
    }
}

/// The device's packets to the broker, each checked.
async fn relay_up(
    gate: &Gate,
    who: &Who,
    peer: SocketAddr,
    cr: tokio::net::tcp::OwnedReadHalf,
    bw: tokio::net::tcp::OwnedWriteHalf,
) {
    let mut rd = BufReader::with_capacity(64 * 1024, cr);
    let mut wr = BufWriter::with_capacity(64 * 1024, bw);
    let (mut head, mut body) = (Vec::with_capacity(8), Vec::new());
    let mut verdicts: HashMap<String, bool> = HashMap::new();
    let name = match who {
        Who::Device(u) => u.as_str(),
        Who::Anonymous => "",
    };
    loop {
        let first = match read_packet(&mut rd, gate.deps.max_packet, gate.deps.message_deadline, &mut head, &mut body)
            .await
        {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(Unread::Denied(d)) => {
                gate.refused(peer, name, &d, &body[..body.len().min(crate::rejections::RAW_MAX)]);
                break;
            }
            Err(Unread::Late(d)) => {
                gate.cut(peer, name, "deadline", &format_args!("a packet not whole within {d:?} of its first byte"));
                break;
            }
        };
        if let Who::Device(user) = who {
            let checked = match first >> 4 {
                packet::PUBLISH => match packet::publish(first & 0x0F, &body) {
                    Ok((topic, _, retain, payload)) => {
                        let known = verdicts.get(topic).copied();
                        let allowed = match known {
                            Some(true) => Ok(()),
                            _ => gate.may_publish(user, topic),
                        };
                        if known.is_none() && allowed.is_ok() {
                            if verdicts.len() >= VERDICTS_KEPT {
                                verdicts.clear();
                            }
                            verdicts.insert(topic.to_owned(), true);
                        }
                        allowed.and_then(|()| if retain { gate.may_retain(user, topic, payload) } else { Ok(()) })
                    }
                    Err(e) => Err(deny("bad_packet", e.to_string())),
                },
                packet::SUBSCRIBE => match packet::subscribe_filters(&body) {
                    Ok(filters) => filters.iter().try_for_each(|f| gate.may_subscribe(user, f)),
                    Err(e) => Err(deny("bad_packet", e.to_string())),
                },
                packet::CONNECT => Err(deny("bad_packet", "a second CONNECT")),
                _ => Ok(()),
            };
            if let Err(d) = checked {
                gate.refused(peer, user, &d, &body[..body.len().min(crate::rejections::RAW_MAX)]);
                break;
            }
        }
        if wr.write_all(&head).await.is_err() || wr.write_all(&body).await.is_err() {
            break;
        }
        if rd.buffer().is_empty() && wr.flush().await.is_err() {
            break;
        }
        if body.capacity() > BUFFER_KEPT {
            body = Vec::new();
        }
    }
    let _ = wr.flush().await;
}

/// Logs what the gate guards, once at start.
pub fn announce(listen: SocketAddr, cap: &ConnCap, allow_anonymous: bool) {
    info!(
        %listen, connections = cap.total(), per_address = cap.per_address(), anonymous = allow_anonymous,
        "MQTT devices connect here with their id and password; each may publish only on its own topics."
    );
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn client_ids_under_a_device_name_never_meet() {
        assert_eq!(escape("a/b+c#d$e:f%g"), "a%2Fb%2Bc%23d%24e%3Af%25g");
        assert_ne!(escape("a/b"), escape("a_b"));
        assert_ne!(format!("d:{}:{}", escape("a:b"), escape("c")), format!("d:{}:{}", escape("a"), escape("b:c")));
    }
}
