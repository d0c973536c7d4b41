//! Sources: one module per device protocol. A source turns wire traffic into `Observation`s
//! for presence and `Event`s for the outbox (through `ingest`, which the record-carrying
//! sources and the QUIC hub share), and publishes what the API shows on boards outside the
//! source (`sessions`, `media::StreamBoard`). It reaches the registry only through the
//! `Registry` handle and never another source or a sink (docs/architecture.md).

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
