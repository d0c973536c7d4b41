//! Sources: one module per device protocol. A source turns wire traffic into
//! `Observation`s for presence (and, with the events-in work, `Event`s for the outbox). It
//! reaches the registry only through the `Registry` handle and never another source or sink.

pub mod gat1400;
pub mod gb28181;
pub mod ingest;
pub mod mqtt;
pub mod rtsp;

/// What every source is handed: the registry (admissions), presence (observations),
/// metrics, the rejections log and the event log.
#[derive(Clone)]
pub struct Shared {
    pub registry: crate::registry::Registry,
    pub presence: crate::presence::runner::PresenceHandle,
    pub metrics: crate::telemetry::Metrics,
    pub rejections: crate::rejections::Rejections,
    pub events: crate::events::EventLog,
}
