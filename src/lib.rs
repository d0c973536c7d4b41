//! vigil: an edge gateway for a district's public-security video network and its smart
//! safe communities. This file lists the modules and exposes `run`; `app/` wires them.

pub mod api;
pub mod app;
pub mod backoff;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod event;
pub mod events;
pub mod ids;
pub mod images;
pub mod link;
pub mod media;
pub mod net;
pub mod outbox;
pub mod patrol;
pub mod presence;
pub mod profiles;
pub mod protocol;
pub mod rate;
pub mod registry;
pub mod rejections;
pub mod sessions;
pub mod sinks;
pub mod sources;
pub mod telemetry;

pub use app::{run, start, Running};
pub use config::Config;
