//! The integration tests: one binary (cargo and zero2prod style). Each module tells one
//! operator's story against real peers (PostgreSQL, the vigil binary, headless Chromium).

mod support;

mod api;
mod cascade;
mod cascade_faults;
mod cascade_play;
mod cascade_view;
mod dashboard;
mod gat1400;
mod gb28181;
mod gb_fixtures;
mod gb_media;
mod gb_play;
mod gb_thirdparty;
mod layering;
mod link;
mod mqtt;
mod outage;
mod relay;
mod restart;
mod rtsp;
mod security;
mod store;
