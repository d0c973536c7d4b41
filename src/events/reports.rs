//! Reports upward as events: presence transitions become `status` events and each sampled
//! online rate an `online_rate` event, committed like any record so the upstreams whose
//! routes take them receive them (GA/T 1400 extension path, subscriptions, the QUIC hub).
//! Made only when some upstream takes them. Status events
//! come from transitions the presence writer has committed; the restart bookkeeping
//! (`gateway_down`, `window_still_open`) and moves to or from `unknown` are not reported.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::EventLog;
use crate::clock::{now_ms, Millis};
use crate::event::{Event, EventBody, OnlineRateBody, TimeSource};
use crate::presence::{Reason, State, Transition};
use crate::registry::Registry;

/// Batches of committed transitions queued for the status task.
pub const QUEUE: usize = 1024;

/// Whether a transition is worth telling upstream.
fn reported(t: &Transition) -> bool {
    t.from != t.to
        && matches!(t.to, State::Online | State::Offline)
        && !matches!(t.reason, Reason::GatewayDown | Reason::WindowStillOpen | Reason::Added)
}

/// An event the gateway itself reports (its own clock, no device sequence, no pictures).
fn gateway_event(
    dedup_key: String,
    source: &str,
    device_id: String,
    org_id: Option<String>,
    at: Millis,
    now: Millis,
    body: EventBody,
) -> Event {
    Event {
        id: Event::new_id(),
        dedup_key,
        source: source.into(),
        device_id,
        org_id,
        occurred_at: at,
        occurred_at_raw: None,
        time_source: TimeSource::Gateway,
        received_at: now,
        seq: None,
        offline_replay: false,
        profile: None,
        media: Vec::new(),
        body,
    }
}

/// The status event of a transition.
pub fn status_event(t: &Transition, org_id: Option<String>, now: Millis) -> Event {
    let body = EventBody::Status {
        online: t.to == State::Online,
        reason: t.reason.as_str().to_owned(),
        detail: t.detail.as_deref().map(str::to_owned),
    };
    let key = format!("status:{}:{}:{}", t.device_id, t.at, t.to.as_str());
    gateway_event(key, "presence", t.device_id.to_string(), org_id, t.at, now, body)
}

/// The event of one online-rate sample, named by the gateway and the instant (a sample
/// taken again for the same instant is the same record).
pub fn online_rate_event(gateway_id: &str, body: OnlineRateBody, now: Millis) -> Event {
    let (key, at) = (format!("online_rate:{gateway_id}:{}", body.sampled_at), body.sampled_at);
    gateway_event(key, "rate", gateway_id.to_owned(), None, at, now, EventBody::OnlineRate(body))
}

/// Starts the status task: it turns committed transitions into status events.
pub fn spawn_status(
    mut rx: mpsc::Receiver<Arc<Vec<Transition>>>,
    events: EventLog,
    registry: Registry,
    tracker: &TaskTracker,
) {
    tracker.spawn(
        async move {
            loop {
                // Ends when the presence writer, the sender, has written its last batch.
                let Some(batch) = rx.recv().await else { break };
                let now = now_ms();
                let list: Vec<(Event, Option<String>)> = {
                    let cache = registry.read();
                    batch
                        .iter()
                        .filter(|t| reported(t))
                        .map(|t| {
                            let org = cache.device(&t.device_id).and_then(|d| d.org_id.clone());
                            (status_event(t, org, now), None)
                        })
                        .collect()
                };
                for chunk in list.chunks(1000) {
                    if let Err(e) = events.submit_many(chunk.to_vec()).await {
                        if matches!(e, super::Error::Closed) {
                            info!(events = chunk.len(), "Shutting down: the last status changes are not reported.");
                            continue;
                        }
                        warn!(error = %e, events = chunk.len(), "Status events not stored; upstreams miss these transitions (the presence history has them).");
                    }
                }
            }
            info!("Status reports stopped.");
        }
        .instrument(tracing::info_span!("status_reports")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(from: State, to: State, reason: Reason) -> Transition {
        Transition {
            device: 1,
            device_id: Arc::from("34020000001320000001"),
            protocol: "gb28181",
            at: 1_000,
            from,
            to,
            reason,
            detail: Some(Arc::from("keepalive missed 3 times")),
        }
    }

    #[test]
    fn real_changes_are_reported_and_restart_bookkeeping_is_not() {
        assert!(reported(&t(State::Online, State::Offline, Reason::KeepaliveTimeout)));
        assert!(reported(&t(State::Unknown, State::Online, Reason::Register)));
        assert!(!reported(&t(State::Online, State::Unknown, Reason::GatewayDown)));
        assert!(!reported(&t(State::Unknown, State::Online, Reason::WindowStillOpen)));
        let e = status_event(&t(State::Online, State::Offline, Reason::KeepaliveTimeout), Some("gutian".into()), 5);
        assert_eq!(e.dedup_key, "status:34020000001320000001:1000:offline");
        assert_eq!(
            e.body,
            EventBody::Status {
                online: false,
                reason: "keepalive_timeout".into(),
                detail: Some("keepalive missed 3 times".into())
            }
        );
        assert_eq!(e.org_id.as_deref(), Some("gutian"));
    }
}
