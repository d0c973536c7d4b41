//! The pipeline's start: everything between the inputs and the upstreams, stopped after the
//! inputs so it drains what they handed over — the rejections log, the image store, the
//! outbox's bound, the event writer (which commits each record with its delivery rows), the
//! reports that turn presence transitions and rate samples into records, presence, the expiry
//! of quarantined devices, rate sampling, and one relay runner per upstream.

use std::sync::{Arc, Mutex};

use super::{core, relay, Error};
use crate::config::Config;
use crate::db::Db;
use crate::event::EventKind;
use crate::presence::runner::{PresenceHandle, WriterHealth};
use crate::presence::{PresenceTable, Transition};
use crate::registry::Registry;
use crate::telemetry::Metrics;

/// The started pipeline: what sources feed and the API reads.
pub struct Pipeline {
    pub rejections: crate::rejections::Rejections,
    pub media: crate::images::ImageStore,
    pub events: crate::events::EventLog,
    pub presence: PresenceHandle,
    pub writer: Arc<WriterHealth>,
    pub rate: crate::rate::sampling::RateView,
    pub impaired: crate::rate::Impaired,
    pub targets: Vec<Arc<Mutex<crate::outbox::runner::TargetStatus>>>,
    pub outbox_gate: crate::outbox::gate::Gate,
}

/// Starts the pipeline on `stage` (its tracker, stopped by its token).
pub async fn spawn_pipeline(
    config: &Config,
    db: &Db,
    registry: &Registry,
    (table, restored): (PresenceTable, Vec<Transition>),
    metrics: &Metrics,
    streams: &crate::media::StreamBoard,
    stage: &super::Stage,
) -> Result<Pipeline, Error> {
    let (cancel, tracker) = (&stage.cancel, &stage.tracker);
    let rejections = crate::rejections::Rejections::new(metrics.clone());
    rejections.persist(db.clone(), cancel.child_token(), tracker);
    let media = crate::images::ImageStore::new(&config.gateway.data_dir, config.media.max_image.as_u64());
    // Which upstream takes which record (delivery rows are committed with the records).
    // GB/T 28181 ids for devices without one, when an upper platform is to see them.
    let cascades = config.upstreams.iter().any(|u| u.protocol == Some(crate::config::UpstreamProtocol::Gb28181));
    let ids = match cascades {
        true => {
            let serials = crate::config::parse_serials(&config.gb28181.id_serials).unwrap_or(900_000..=999_999);
            let ids = crate::sinks::cascade::ids::Ids::load(db.clone(), serials, &config.gateway.id)
                .await
                .map_err(Error::CascadeIds)?;
            Some(Arc::new(ids))
        }
        false => None,
    };
    let (mut plan, sinks) = relay::relay_plan(config, &media, streams, ids.as_ref(), db)?;
    // The outbox's bound: backlog and free disk, looked at every 2 s.
    let limits = crate::outbox::gate::Limits {
        max_backlog: config.relay.max_backlog,
        min_free_disk: config.relay.min_free_disk.as_u64(),
        targets: plan.routes.names(),
    };
    plan.gate = crate::outbox::gate::spawn(
        db.clone(),
        config.gateway.data_dir.clone(),
        limits,
        metrics.clone(),
        cancel.child_token(),
        tracker,
    );
    let outbox_gate = plan.gate.clone();
    let events = crate::events::spawn(db.clone(), plan.clone(), metrics.clone(), cancel.child_token(), tracker);
    // Presence transitions, once committed, become status records, and rate samples
    // online-rate records, when an upstream takes them (the presence history and the rate
    // samples already serve everything local).
    let routed = |k: EventKind| plan.routes.0.iter().any(|(_, kinds)| kinds.contains(&k));
    let status_tx = routed(EventKind::Status).then(|| {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::events::reports::QUEUE);
        crate::events::reports::spawn_status(rx, events.clone(), registry.clone(), tracker);
        tx
    });
    let rate_reports = routed(EventKind::OnlineRate).then(|| (events.clone(), config.gateway.id.clone()));
    let writer = Arc::new(WriterHealth::default());
    let presence = crate::presence::runner::spawn(
        table,
        restored,
        &config.presence,
        &config.tuning,
        db.clone(),
        metrics.clone(),
        writer.clone(),
        status_tx,
        cancel.child_token(),
        tracker,
    );
    tracker.spawn(core::expire_quarantine(
        registry.clone(),
        presence.clone(),
        metrics.clone(),
        config.admission.quarantine_ttl,
        cancel.child_token(),
    ));
    let impaired = crate::rate::Impaired::default();
    let inputs = crate::rate::sampling::Inputs {
        registry: registry.clone(),
        presence: presence.clone(),
        impaired: impaired.clone(),
        reports: rate_reports,
    };
    let rate = crate::rate::sampling::spawn(
        inputs,
        config.assessment.clone(),
        config.tuning.rate_refresh,
        metrics.clone(),
        cancel.child_token(),
        tracker,
    );
    let context = || crate::outbox::runner::Context {
        db: db.clone(),
        metrics: metrics.clone(),
        added: plan.added.clone(),
        keep_delivered: config.relay.keep_delivered,
    };
    let catalog = relay::cascade_catalog(registry.clone(), presence.clone(), ids, streams.clone());
    let targets = relay::spawn_runners(sinks, catalog, context, cancel, tracker);
    Ok(Pipeline { rejections, media, events, presence, writer, rate, impaired, targets, outbox_gate })
}
