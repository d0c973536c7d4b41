//! The MQTT source: community devices (access terminals, barriers, alarm panels, sensors)
//! over a broker, mapped by device profiles. `client.rs` owns the connection (rumqttc: stable
//! client id, persistent session, QoS 1, large packets, manual acks, reconnect with
//! exponential backoff and full jitter) and only forwards publishes into a bounded channel;
//! the worker here maps each message and acknowledges it, in receive order, only after its
//! records are committed. A full pipeline stops reading (the broker holds the rest).
//! `broker.rs` runs the embedded broker (rumqttd) for `mqtt.mode = "embedded"`.

mod broker;
mod client;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::ingest::{Ingest, Verdict};
use crate::clock::now_ms;
use crate::event::{Evidence, Observation};
use crate::profiles::{ProfileSet, Selected};
use crate::registry::Admission;

pub use broker::start as start_broker;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mqtt.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot start the embedded MQTT broker on {addr}: {reason}")]
    Broker { addr: std::net::SocketAddr, reason: String },
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Url { .. } => crate::error::ErrorKind::InvalidInput,
            Error::Broker { .. } => crate::error::ErrorKind::Unavailable,
        }
    }
}

/// Starts the client and the worker. Subscribes to every profile route's filter.
pub fn spawn(
    cfg: &crate::config::Mqtt,
    broker_url: &str,
    profiles: Arc<ProfileSet>,
    ingest: Ingest,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), Error> {
    let filters: Vec<String> = profiles
        .mqtt_filters()
        .into_iter()
        .map(|f| if cfg.shared_group.is_empty() { f } else { format!("$share/{}/{f}", cfg.shared_group) })
        .collect();
    if filters.is_empty() {
        warn!("No device profile has an MQTT route: the MQTT source subscribes to nothing.");
    }
    let (client, eventloop) = client::connect(cfg, broker_url)?;
    let (tx, rx) = mpsc::channel(cfg.inflight);
    let metrics = ingest.shared().metrics.clone();
    tracker.spawn(
        client::poll(
            eventloop,
            client.clone(),
            filters,
            tx,
            cfg.backoff_min,
            cfg.backoff_max,
            metrics,
            ingest.shared().rejections.clone(),
            cancel.clone(),
        )
        .instrument(tracing::info_span!("mqtt")),
    );
    tracker.spawn(worker(client, rx, profiles, ingest, cfg.inflight, cancel).instrument(tracing::info_span!("mqtt")));
    info!(broker = %client::redact(broker_url), client_id = %cfg.client_id, "MQTT source started.");
    Ok(())
}

/// Takes publishes in order, maps and commits them concurrently, acknowledges in order.
async fn worker(
    client: AsyncClient,
    mut rx: mpsc::Receiver<Publish>,
    profiles: Arc<ProfileSet>,
    ingest: Ingest,
    inflight: usize,
    cancel: CancellationToken,
) {
    let metrics = ingest.shared().metrics.clone();
    let mut pending = FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(finished) = pending.next(), if !pending.is_empty() => {
                metrics.mqtt_inflight.set(pending.len() as i64);
                // A message whose task failed stays unacknowledged: the broker redelivers it
                // after the next reconnect.
                let Some((publish, done)) = finished else { continue };
                if done {
                    // Acks go through the client's request channel; the poll task sends them.
                    if let Err(e) = client.ack(&publish).await {
                        warn!(error = %e, "Cannot acknowledge an MQTT message; the broker will send it again.");
                    }
                }
            }
            msg = rx.recv(), if open && pending.len() < inflight => match msg {
                Some(p) => {
                    // A task per message, so mapping and committing use every core; the
                    // ordered queue of their handles keeps the acks in receive order.
                    let task = tokio::spawn(take(p, profiles.clone(), ingest.clone(), cancel.clone()));
                    pending.push_back(async move {
                        match task.await {
                            Ok(done) => Some(done),
                            Err(e) => {
                                warn!(error = %e, "An MQTT message task failed; the broker will send it again.");
                                None
                            }
                        }
                    });
                    metrics.mqtt_inflight.set(pending.len() as i64);
                }
                None => open = false,
            },
            _ = cancel.cancelled(), if open => {
                // Stop taking new messages; finish (commit and ack) what was taken.
                open = false;
                rx.close();
            }
            else => break,
        }
        if !open && pending.is_empty() {
            break;
        }
    }
    let _ = client.try_disconnect();
    info!("MQTT worker stopped.");
}

/// Maps and commits one message. `true` when it may be acknowledged: committed, a
/// duplicate, or refused for good (a refusal is final: sending it again changes nothing).
async fn take(p: Publish, profiles: Arc<ProfileSet>, ingest: Ingest, cancel: CancellationToken) -> (Publish, bool) {
    let topic = p.topic.clone();
    let received_at = now_ms();
    let shared = ingest.shared();
    let Some(sel) = profiles.select_mqtt(&topic, None) else {
        shared.metrics.mqtt_messages.with_label_values(&["none"]).inc();
        shared.rejections.record(
            received_at,
            "mqtt",
            "no_profile",
            topic.clone(),
            "no device profile has a route for this topic".into(),
            &p.payload,
        );
        return (p, true);
    };
    shared.metrics.mqtt_messages.with_label_values(&[&sel.profile.id]).inc();
    if sel.lwt {
        last_will(&ingest, &sel, &p, &topic, received_at).await;
        return (p, true);
    }
    let mut delay = Duration::from_millis(200);
    loop {
        match ingest.message(&sel, &p.payload, &topic, received_at).await {
            Ok(verdicts) => {
                if verdicts.iter().any(|v| matches!(v, Verdict::Rejected { .. })) {
                    tracing::debug!(topic, ?verdicts, "MQTT message refused in part or whole.");
                }
                return (p, true);
            }
            Err(e) => {
                // The store is down: hold this message (and, behind it, the pipeline) and try
                // again; the broker keeps the rest. On shutdown it stays unacknowledged and
                // the broker sends it again after the restart.
                warn!(topic, error = %e, retry_in_ms = delay.as_millis() as u64, "Cannot commit an MQTT message; holding it.");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return (p, false),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A message on a profile's last-will topic: the offline payload is the device's last will;
/// the online payload is fresh evidence only when it is not a retained copy.
async fn last_will(ingest: &Ingest, sel: &Selected, p: &Publish, topic: &str, at: crate::clock::Millis) {
    let shared = ingest.shared();
    let Some(lwt) = &sel.profile.liveness.lwt else { return };
    let Some(id) = crate::profiles::identity_from_route(&sel.profile, &sel.captures) else {
        shared.rejections.record(
            at,
            "mqtt",
            "no_identity",
            topic.to_owned(),
            "last-will topic names no device".into(),
            &p.payload,
        );
        return;
    };
    let Some(d) = shared.registry.read().device(&id) else { return };
    if d.admission != Admission::Approved {
        return;
    }
    let text = String::from_utf8_lossy(&p.payload);
    let evidence = match text.trim() {
        t if t == lwt.offline => Evidence::MqttLastWill,
        t if t == lwt.online && !p.retain => {
            Evidence::MqttMessage { timeout_ms: sel.profile.liveness.timeout_ms, heartbeat: true }
        }
        t if t == lwt.online => return,
        _ => {
            shared.rejections.record(
                at,
                "mqtt",
                "bad_last_will",
                topic.to_owned(),
                format!("expected {:?} or {:?}", lwt.online, lwt.offline),
                &p.payload,
            );
            return;
        }
    };
    let _ = shared.presence.observe(Observation { device: d.key, at, evidence, detail: None }).await;
}

/// QoS used for every subscription: at least once, matched by committing before acking.
pub const QOS: QoS = QoS::AtLeastOnce;
