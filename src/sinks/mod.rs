//! Sinks: one module per upstream protocol. A sink speaks to one upstream platform and maps
//! events to it; the runner that claims delivery rows from the outbox and retries comes with
//! the relay's outbox. Sinks read the outbox and the image store; they never reach a source.

pub mod gat1400;
