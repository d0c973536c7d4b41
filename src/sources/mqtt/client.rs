//! vigil's MQTT connection: options from config (stable client id, persistent session,
//! manual acks, large packets, TLS for mqtts:// with a private CA and a client certificate
//! when configured), and the poll task, which does nothing but drive the event loop, forward
//! publishes into the bounded channel without ever blocking the loop (acks need it),
//! subscribe after each connect (from another task: requesting from the polling task can
//! deadlock rumqttc) and back off with full jitter when the broker is away.

use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, SubscribeFilter, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Error, QOS};
use crate::telemetry::Metrics;

/// The broker URL without credentials, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string()
        }
        Err(_) => "<unparsable url>".into(),
    }
}

pub fn connect(cfg: &crate::config::Mqtt, broker_url: &str) -> Result<(AsyncClient, EventLoop), Error> {
    let bad = |reason: String| Error::Url { url: redact(broker_url), reason };
    let u = url::Url::parse(broker_url).map_err(|e| bad(e.to_string()))?;
    let host = u.host_str().ok_or_else(|| bad("no host".into()))?.to_owned();
    let tls = matches!(u.scheme(), "mqtts" | "ssl");
    let port = u.port().unwrap_or(if tls { 8883 } else { 1883 });
    let mut o = MqttOptions::new(cfg.client_id.clone(), host, port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(5)));
    // A persistent session: the broker keeps our subscriptions and queues QoS 1 messages
    // while vigil is away, and sends again what was not acknowledged.
    o.set_clean_session(false);
    o.set_manual_acks(true);
    let max = usize::try_from(cfg.max_packet.as_u64()).unwrap_or(usize::MAX);
    o.set_max_packet_size(max, 64 * 1024);
    o.set_inflight(100);
    let user = if cfg.username.is_empty() { u.username().to_owned() } else { cfg.username.clone() };
    let pass = if cfg.password.is_empty() { u.password().unwrap_or("").to_owned() } else { cfg.password.clone() };
    if !user.is_empty() {
        o.set_credentials(user, pass);
    }
    if tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls_config(cfg)?)));
    }
    Ok(AsyncClient::new(o, cfg.inflight.saturating_mul(2).max(16)))
}

/// The TLS client configuration for mqtts://: the broker's certificate checked against
/// `mqtt.ca` (or the system's roots; an unreadable system certificate is skipped and logged,
/// where rumqttc's default configuration would panic), and vigil's own certificate when
/// `mqtt.cert` and `mqtt.key` are set. ring, the process's one provider.
fn tls_config(cfg: &crate::config::Mqtt) -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
    use crate::net::tls::Error as TlsError;
    let roots = if cfg.ca.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            warn!(error = %e, "A system CA certificate cannot be read; it is skipped.");
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(native.certs);
        roots
    } else {
        crate::net::tls::load_roots(std::path::Path::new(&cfg.ca))?
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::net::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = if cfg.cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let (chain, key) = crate::net::tls::load_pem(std::path::Path::new(&cfg.cert), std::path::Path::new(&cfg.key))?;
        builder.with_client_auth_cert(chain, key).map_err(|e| TlsError::Tls(format!("mqtt.cert and mqtt.key: {e}")))?
    };
    Ok(std::sync::Arc::new(config))
}

/// Most publishes held here while the worker's channel is full. QoS 1 deliveries are bounded
/// anyway by the broker's in-flight window (vigil acknowledges only after commit); past this,
/// QoS 0 deliveries (at most once, by their sender's choice) are refused and counted.
const HOLD_MAX: usize = 65_536;

/// Drives the event loop until cancelled. It never stops polling to wait for the worker:
/// acknowledgements travel through the event loop, so a poll task blocked on a full channel
/// would stop them and deadlock with a worker waiting to acknowledge (rumqtt #1025).
#[allow(clippy::too_many_arguments)]
pub async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    tx: mpsc::Sender<Publish>,
    backoff_min: Duration,
    backoff_max: Duration,
    metrics: Metrics,
    rejections: crate::rejections::Rejections,
    cancel: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut held: std::collections::VecDeque<Publish> = std::collections::VecDeque::new();
    loop {
        // Hand over what is held, as far as the channel takes it.
        while let Some(p) = held.pop_front() {
            match tx.try_send(p) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(p)) => {
                    held.push_front(p);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            permit = tx.reserve(), if !held.is_empty() => {
                match (permit, held.pop_front()) {
                    (Ok(permit), Some(p)) => permit.send(p),
                    (Err(_), _) => return,
                    (Ok(_), None) => {}
                }
                continue;
            }
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                metrics.mqtt_connected.set(1);
                info!(
                    session_present = ack.session_present,
                    after_failures = failures,
                    "Connected to the MQTT broker."
                );
                failures = 0;
                // Subscribing is idempotent; after a broker that lost its state it is needed.
                let c = client.clone();
                let subs: Vec<SubscribeFilter> = filters.iter().map(|f| SubscribeFilter::new(f.clone(), QOS)).collect();
                if !subs.is_empty() {
                    tokio::spawn(async move {
                        if let Err(e) = c.subscribe_many(subs).await {
                            warn!(error = %e, "Cannot subscribe.");
                        }
                    });
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused =
                    ack.return_codes.iter().filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)).count();
                if refused > 0 {
                    warn!(refused, "The broker refused some subscriptions (check its ACL).");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if held.len() >= HOLD_MAX && p.qos == rumqttc::QoS::AtMostOnce {
                    rejections.record(
                        crate::clock::now_ms(),
                        "mqtt",
                        "overload_qos0",
                        p.topic.clone(),
                        "vigil is behind and the message was sent at QoS 0 (at most once)".into(),
                        &p.payload,
                    );
                    continue;
                }
                held.push_back(p);
            }
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected.set(0);
                metrics.mqtt_connection_errors.inc();
                failures = failures.saturating_add(1);
                let delay = crate::backoff::backoff(failures, backoff_min, backoff_max);
                warn!(error = %e, failures, retry_in_ms = delay.as_millis() as u64, "MQTT connection lost or refused; reconnecting.");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    metrics.mqtt_connected.set(0);
    // Let the worker's final acks and the DISCONNECT out (bounded).
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(ev) = eventloop.poll().await {
            if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = ev {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_redacted() {
        assert_eq!(redact("mqtt://user:secret@broker:1883"), "mqtt://broker:1883");
    }
}
