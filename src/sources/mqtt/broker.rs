//! The embedded MQTT broker (`mqtt.mode = "embedded"`, the default), so `make run` and small
//! sites need no broker installed: rumqttd on a private loopback port, behind the gate
//! (`gate.rs`) that devices reach on `mqtt.listen`. Only the gate and vigil's own client know
//! the private port's credentials (made afresh at every start), so no device can connect
//! around the gate or take over vigil's session. It keeps sessions in memory only: for
//! persistence across restarts and for scale-out use an external broker (Mosquitto, EMQX)
//! with `mqtt.mode = "external"`. rumqttd runs on threads of its own; it lives as long as the
//! process.

use std::collections::HashMap;
use std::sync::Arc;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, Instrument};

use super::gate::{self, Gate};
use super::Error;

/// How vigil's own client reaches the embedded broker.
pub struct Embedded {
    pub url: String,
    pub username: String,
    pub password: String,
}

/// A secret of 148 random bits (two UUID v7s' random parts and times), hex.
fn secret() -> String {
    format!("{}{}", uuid::Uuid::now_v7().simple(), uuid::Uuid::now_v7().simple())
}

/// Starts the private broker and the gate in front of it (at most `cap` device connections;
/// each costs the process three descriptors) and answers how vigil's own client connects.
pub async fn start(
    cfg: &crate::config::Mqtt,
    deps: gate::Deps,
    cap: crate::net::ConnCap,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<Embedded, Error> {
    let front_addr = cfg.listen;
    let fail = |reason: String| Error::Broker { addr: front_addr, reason };
    let front = tokio::net::TcpListener::bind(front_addr).await.map_err(|e| fail(e.to_string()))?;
    let front_addr = front.local_addr().map_err(|e| fail(e.to_string()))?;
    // The private port: picked by the kernel, then handed to rumqttd (which binds it itself).
    let addr = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| fail(format!("no private port for the broker: {e}")))?;
    let max = usize::try_from(cfg.max_packet.as_u64()).unwrap_or(usize::MAX);
    let (own, gate_secret) = (secret(), secret());
    let auth = Some(HashMap::from([("vigil".to_owned(), own.clone()), ("gate".to_owned(), gate_secret.clone())]));
    let max_connections = cap.total() + 16;
    let server = ServerSettings {
        name: "v4".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max,
            max_inflight_count: 1024,
            auth,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections,
            max_outgoing_packet_count: 1024,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                error!(error = %e, "The embedded MQTT broker stopped.");
            }
        })
        .map_err(|e| fail(e.to_string()))?;
    // Wait (bounded) until it answers MQTT, so vigil's own client does not start with a
    // refusal. A real CONNECT / DISCONNECT: rumqttd logs an error for a connection that sends
    // none, which would greet every start-up.
    for _ in 0..100 {
        if probe(addr, "vigil", &own) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let gate = Gate::new(deps, addr, "gate".into(), gate_secret);
    gate::announce(front_addr, &cap, cfg.allow_anonymous);
    tracker.spawn(gate::serve(front, Arc::clone(&gate), cap, cancel).instrument(tracing::info_span!("mqtt_gate")));
    info!(private = %addr, "Embedded MQTT broker started behind the gate.");
    Ok(Embedded { url: format!("mqtt://127.0.0.1:{}", addr.port()), username: "vigil".into(), password: own })
}

/// One MQTT 3.1.1 CONNECT (clean session, our credentials), its CONNACK, then DISCONNECT.
fn probe(target: std::net::SocketAddr, user: &str, pass: &str) -> bool {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_millis(200);
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&target, timeout) else { return false };
    let _ = s.set_read_timeout(Some(timeout));
    let field = |b: &[u8]| -> Vec<u8> { [&(b.len() as u16).to_be_bytes()[..], b].concat() };
    let mut flags = 0x02u8;
    let mut payload = field(b"vigil-probe");
    if !user.is_empty() {
        flags |= 0xC0;
        payload.extend(field(user.as_bytes()));
        payload.extend(field(pass.as_bytes()));
    }
    let mut body = [&field(b"MQTT")[..], &[4, flags, 0, 10]].concat();
    body.extend(payload);
    if body.len() > 127 {
        return false; // credentials this long: skip the probe, the client backs off instead
    }
    let packet = [&[0x10, body.len() as u8][..], &body].concat();
    let mut ack = [0u8; 4];
    let ok = s.write_all(&packet).is_ok() && s.read_exact(&mut ack).is_ok() && ack[0] == 0x20;
    // A clean goodbye: DISCONNECT, then wait for the broker to close (bounded).
    let _ = s.write_all(&[0xE0, 0]);
    let _ = s.read(&mut ack);
    ok
}
