//! The embedded MQTT broker (`mqtt.mode = "embedded"`, the default): rumqttd on
//! `mqtt.listen`, so `make run` and small sites need no broker installed. It keeps
//! sessions in memory only: for persistence across restarts and for scale-out use an
//! external broker (Mosquitto, EMQX) with `mqtt.mode = "external"`. rumqttd runs on threads
//! of its own; it lives as long as the process.

use std::collections::HashMap;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

use super::Error;

/// Starts the broker (at most `max_connections` clients: its share of the descriptors) and
/// answers the URL vigil's own client connects to.
pub fn start(cfg: &crate::config::Mqtt, max_connections: usize) -> Result<String, Error> {
    let addr = cfg.listen;
    let fail = |reason: String| Error::Broker { addr, reason };
    // rumqttd reports a bind failure only in its own thread's log: find out here first.
    drop(std::net::TcpListener::bind(addr).map_err(|e| fail(e.to_string()))?);
    let max = crate::config::parse_bytes(&cfg.max_packet).map_err(fail)? as usize;
    let auth = (!cfg.username.is_empty()).then(|| HashMap::from([(cfg.username.clone(), cfg.password.clone())]));
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
    let target =
        if addr.ip().is_unspecified() { std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    for _ in 0..100 {
        if probe(target, &cfg.username, &cfg.password) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    info!(listen = %addr, "Embedded MQTT broker started; devices connect here.");
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
    // vigil's own client takes mqtt.username / mqtt.password from the config, as devices do.
    Ok(format!("mqtt://{host}:{}", addr.port()))
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
