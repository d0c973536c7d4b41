//! The MQTT source: community devices (access terminals, barriers, alarm panels, sensors)
//! over a broker, mapped by device profiles. `client.rs` owns the connection (rumqttc: stable
//! client id, persistent session, QoS 1, large packets, manual acks, reconnect with
//! exponential backoff and full jitter) and only forwards publishes into a bounded channel;
//! the worker here maps each message and acknowledges it, in receive order, only after its
//! records are committed. A full pipeline stops reading (the broker holds the rest).
//! `broker.rs` runs the embedded broker (rumqttd) for `mqtt.mode = "embedded"`, behind the
//! gate (`gate.rs`, reading packets with `protocol::mqtt`) that authenticates devices and
//! checks their topics.

pub mod acl;
mod broker;
mod client;
pub mod gate;

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::ingest::{Arrived, Ingest, Verdict};
use crate::clock::now_ms;
use crate::event::{Evidence, Observation};
use crate::profiles::{ProfileSet, Selected};
use crate::registry::Admission;

pub use broker::{start as start_broker, Embedded};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mqtt.url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot start the embedded MQTT broker on {addr}: {reason}")]
    Broker { addr: std::net::SocketAddr, reason: String },
    #[error("mqtts:// to the external broker: {0}")]
    Tls(#[from] crate::net::tls::Error),
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::Url { .. } => crate::error::ErrorKind::InvalidInput,
            Error::Broker { .. } => crate::error::ErrorKind::Unavailable,
            Error::Tls(_) => crate::error::ErrorKind::InvalidInput,
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

/// Most messages handled together (mapped, committed in one submission, acknowledged).
const BATCH: usize = 256;

/// Takes publishes in order, in batches of what has arrived (up to `BATCH`); maps and commits
/// each batch as one submission while the next is taken; acknowledges in receive order.
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
    let mut taken = 0usize;
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(finished) = pending.next(), if !pending.is_empty() => {
                let (n, finished): (usize, Vec<(Publish, bool)>) = finished;
                taken -= n;
                metrics.mqtt_inflight.set(taken as i64);
                // A message not done stays unacknowledged: the broker sends it again after
                // the next reconnect.
                for (publish, done) in finished {
                    if done {
                        // Acks go through the client's request channel; the poll task sends them.
                        if let Err(e) = client.ack(&publish).await {
                            warn!(error = %e, "Cannot acknowledge an MQTT message; the broker will send it again.");
                        }
                    }
                }
            }
            msg = rx.recv(), if open && taken < inflight => match msg {
                Some(first) => {
                    let mut batch = vec![first];
                    while batch.len() < BATCH && taken + batch.len() < inflight {
                        match rx.try_recv() {
                            Ok(p) => batch.push(p),
                            Err(_) => break,
                        }
                    }
                    taken += batch.len();
                    metrics.mqtt_inflight.set(taken as i64);
                    // A batch is a future polled here, not a task: mapping takes a few
                    // microseconds a message, the commit runs on the event writer's thread,
                    // and one future per batch costs far less than a task and a wake per
                    // message (BENCHMARKS.md, MQTT). Boxed where it is made (it is a few KB).
                    // A panic is caught; its messages stay unacknowledged.
                    let n = batch.len();
                    let fut = Box::pin(take(batch, profiles.clone(), ingest.clone(), cancel.clone()));
                    pending.push_back(async move {
                        match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
                            Ok(done) => (n, done),
                            Err(_) => {
                                warn!(messages = n, "Handling MQTT messages panicked; the broker will send them again.");
                                (n, Vec::new())
                            }
                        }
                    });
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

/// Maps and commits a batch of messages. Each comes back with `true` when it may be
/// acknowledged: committed, a duplicate, or refused for good (a refusal is final: sending it
/// again changes nothing).
async fn take(
    batch: Vec<Publish>,
    profiles: Arc<ProfileSet>,
    ingest: Ingest,
    cancel: CancellationToken,
) -> Vec<(Publish, bool)> {
    let received_at = now_ms();
    let shared = ingest.shared();
    let mut done = vec![true; batch.len()];
    let mut selected: Vec<(usize, Selected)> = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        let Some(sel) = profiles.select_mqtt(&p.topic, None) else {
            shared.metrics.mqtt_messages.with_label_values(&["none"]).inc();
            shared.rejections.record(
                received_at,
                "mqtt",
                "no_profile",
                p.topic.clone(),
                "no device profile has a route for this topic".into(),
                &p.payload,
            );
            continue;
        };
        shared.metrics.mqtt_messages.with_label_values(&[&sel.profile.id]).inc();
        if sel.lwt {
            last_will(&ingest, &sel, p, &p.topic, received_at).await;
            continue;
        }
        selected.push((i, sel));
    }
    let arrived: Vec<Arrived<'_>> = selected
        .iter()
        .map(|(i, sel)| Arrived {
            sel,
            payload: &batch[*i].payload,
            peer: &batch[*i].topic,
            speaker: None,
            origin: None,
            received_at,
        })
        .collect();
    let mut delay = Duration::from_millis(200);
    while !arrived.is_empty() {
        match ingest.messages(&arrived).await {
            Ok(verdicts) => {
                for ((_, a), v) in selected.iter().zip(&arrived).zip(&verdicts) {
                    if v.iter().any(|v| matches!(v, Verdict::Rejected { .. })) {
                        tracing::debug!(topic = a.peer, verdicts = ?v, "MQTT message refused in part or whole.");
                    }
                }
                break;
            }
            Err(e) => {
                // The store is down: hold these messages (and, behind them, the pipeline) and
                // try again; the broker keeps the rest. On shutdown they stay unacknowledged
                // and the broker sends them again after the restart.
                warn!(messages = arrived.len(), error = %e, retry_in_ms = delay.as_millis() as u64, "Cannot commit MQTT messages; holding them.");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => {
                        for (i, _) in &selected {
                            done[*i] = false;
                        }
                        break;
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    drop(arrived);
    batch.into_iter().zip(done).collect()
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
    ingest.forget_liveness(d.key);
    let _ = shared.presence.observe(Observation { device: d.key, at, evidence, detail: None }).await;
}

/// QoS used for every subscription: at least once, matched by committing before acking.
pub const QOS: QoS = QoS::AtLeastOnce;
