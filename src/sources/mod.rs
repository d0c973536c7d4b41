//! Sources: one module per device protocol. A source turns wire traffic into
//! `Observation`s for presence (and, with the events-in work, `Event`s for the outbox). It
//! reaches the registry only through the `Registry` handle and never another source or sink.

pub mod gb28181;
