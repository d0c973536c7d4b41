//! The GA/T 1400 upstream: vigil as a lower platform pushing to an upper view library
//! (视图库) — the district's or the city's. `client` speaks the protocol (digest
//! registration, keepalive, list pushes answered per object).

pub mod client;
