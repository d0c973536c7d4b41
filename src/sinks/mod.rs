//! Sinks: one module per upstream protocol. A sink speaks to one upstream platform and maps
//! records to it; the runner that claims delivery rows and retries is the outbox's
//! (`outbox::runner`), and a sink answers it with typed errors (`outbox::failure`). Sinks
//! read the outbox, the image store and the shared codecs of `protocol/`; they never import
//! a source (docs/architecture.md; the QUIC link's sink half is `link::sink`).

pub mod cascade;
pub mod gat1400;
