//! Logging setup and the metrics contract: every Prometheus name vigil exports is a const
//! here (API.md "Metrics"), labels are low-cardinality (never a device id), and `Metrics`
//! holds the registered collectors that the rest of the code updates.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub const DEVICES: &str = "vigil_devices";
pub const ONLINE_RATE: &str = "vigil_online_rate";
pub const ONLINE_TARGET: &str = "vigil_online_target";
pub const PRESENCE_TRANSITIONS: &str = "vigil_presence_transitions_total";
pub const OBSERVATIONS: &str = "vigil_observations_total";
pub const PRESENCE_PENDING: &str = "vigil_presence_pending_transitions";
pub const EVENTS: &str = "vigil_events_total";
pub const EVENTS_REJECTED: &str = "vigil_events_rejected_total";
pub const HTTP_REQUESTS: &str = "vigil_http_requests_total";
pub const DB_UP: &str = "vigil_database_up";
pub const SIP_MESSAGES: &str = "vigil_sip_messages_total";
pub const SIP_REGISTRATIONS: &str = "vigil_sip_registrations_total";
pub const SIP_TRANSACTIONS: &str = "vigil_sip_client_transactions_total";
pub const MQTT_MESSAGES: &str = "vigil_mqtt_messages_total";
pub const MQTT_CONNECTED: &str = "vigil_mqtt_connected";
pub const MQTT_INFLIGHT: &str = "vigil_mqtt_inflight";
pub const MQTT_CONNECTION_ERRORS: &str = "vigil_mqtt_connection_errors_total";
pub const PROFILE_OUTCOMES: &str = "vigil_profile_records_total";
pub const SEQUENCE_GAPS: &str = "vigil_event_sequence_gaps";
pub const RTSP_STREAMS: &str = "vigil_rtsp_streams";
pub const RTSP_FAILURES: &str = "vigil_rtsp_session_failures_total";
pub const RTSP_FIRST_FRAME: &str = "vigil_rtsp_time_to_first_frame_seconds";
pub const RTSP_FRAMES: &str = "vigil_rtsp_frames_total";
pub const RTSP_BYTES: &str = "vigil_rtsp_bytes_total";
pub const RTSP_DIAGNOSES: &str = "vigil_rtsp_diagnoses_total";
pub const GB_FIRST_FRAME: &str = "vigil_gb_time_to_first_frame_seconds";
pub const GB_MEDIA_DROPPED: &str = "vigil_gb_media_dropped_total";
pub const GB_PLAYS: &str = "vigil_gb_plays_total";
pub const GB_FRAMES: &str = "vigil_gb_frames_total";
pub const GB_BYTES: &str = "vigil_gb_bytes_total";
pub const GB_RTCP_REPORTS: &str = "vigil_gb_rtcp_reports_total";
pub const RELAY_RECORDS: &str = "vigil_relay_records_total";
pub const RELAY_BACKLOG: &str = "vigil_relay_backlog";
pub const RELAY_FAILURES: &str = "vigil_relay_failures_total";
pub const RELAY_OLDEST: &str = "vigil_relay_oldest_undelivered_seconds";
pub const OUTBOX_ACCEPTING: &str = "vigil_outbox_accepting";
pub const OUTBOX_FREE_DISK: &str = "vigil_outbox_free_disk_bytes";
pub const OUTBOX_HELD: &str = "vigil_outbox_held_submissions";
pub const PRESENCE_CHECKPOINT: &str = "vigil_presence_checkpoint_timestamp_seconds";
pub const CONNECTIONS: &str = "vigil_connections";
pub const CONNECTIONS_REFUSED: &str = "vigil_connections_refused_total";
pub const AUTH_REFUSALS: &str = "vigil_device_auth_refusals_total";
pub const RELAY_ALARM: &str = "vigil_relay_alarm";
pub const CASCADE_REGISTERED: &str = "vigil_cascade_registered";
pub const CASCADE_REQUESTS: &str = "vigil_cascade_requests_total";
pub const CASCADE_NOTIFIES: &str = "vigil_cascade_notifies_total";
pub const CASCADE_PLAYS: &str = "vigil_cascade_plays";
pub const ADMISSION_REFUSALS: &str = "vigil_admission_refusals_total";
pub const QUARANTINE_EXPIRED: &str = "vigil_quarantine_expired_total";

/// The collectors. Cheap to clone (the prometheus types are handles).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub devices: IntGaugeVec,
    pub online_rate: GaugeVec,
    pub online_target: Gauge,
    pub transitions: IntCounterVec,
    pub observations: IntCounter,
    pub presence_pending: IntGauge,
    pub events: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub db_up: IntGauge,
    pub sip_messages: IntCounterVec,
    pub sip_registrations: IntCounterVec,
    pub sip_transactions: IntCounterVec,
    pub mqtt_messages: IntCounterVec,
    pub mqtt_connected: IntGauge,
    pub mqtt_connection_errors: IntCounter,
    pub mqtt_inflight: IntGauge,
    pub profile_outcomes: IntCounterVec,
    pub sequence_gaps: IntGaugeVec,
    pub rtsp_streams: IntGaugeVec,
    pub rtsp_failures: IntCounterVec,
    pub rtsp_first_frame: Histogram,
    pub rtsp_frames: IntCounter,
    pub rtsp_bytes: IntCounter,
    pub rtsp_diagnoses: IntCounterVec,
    pub gb_first_frame: Histogram,
    pub gb_media_dropped: IntCounterVec,
    pub gb_plays: IntCounterVec,
    pub gb_frames: IntCounter,
    pub gb_bytes: IntCounter,
    pub gb_rtcp_reports: IntCounter,
    pub relay_records: IntCounterVec,
    pub relay_backlog: IntGaugeVec,
    pub relay_oldest: IntGaugeVec,
    pub outbox_accepting: IntGauge,
    pub relay_failures: IntCounterVec,
    pub outbox_held: IntGauge,
    pub presence_checkpoint: IntGauge,
    pub outbox_free_disk: IntGauge,
    pub connections: IntGaugeVec,
    pub connections_refused: IntCounterVec,
    pub auth_refusals: IntCounterVec,
    pub admission_refusals: IntCounterVec,
    pub relay_alarm: IntGaugeVec,
    pub quarantine_expired: IntCounter,
    pub cascade_registered: IntGaugeVec,
    pub cascade_requests: IntCounterVec,
    pub cascade_notifies: IntCounterVec,
    pub cascade_plays: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Metrics {
            devices: IntGaugeVec::new(Opts::new(DEVICES, "Devices by presence state, kind and protocol."), &["state", "kind", "protocol"])
                .expect("should be a valid metric"),
            online_rate: GaugeVec::new(
                Opts::new(ONLINE_RATE, "Online rate (0..1) by org node (kind=\"all\") and by device kind over the whole gateway (org=\"all\")."),
                &["org", "kind"],
            )
            .expect("should be a valid metric"),
            online_target: Gauge::new(ONLINE_TARGET, "The assessment's online-rate target (0..1).").expect("should be a valid metric"),
            transitions: IntCounterVec::new(Opts::new(PRESENCE_TRANSITIONS, "Presence transitions by new state and protocol."), &["to", "protocol"])
                .expect("should be a valid metric"),
            observations: IntCounter::new(OBSERVATIONS, "Observations handled by presence.").expect("should be a valid metric"),
            presence_pending: IntGauge::new(PRESENCE_PENDING, "Presence transitions waiting to be written.").expect("should be a valid metric"),
            events: IntCounterVec::new(Opts::new(EVENTS, "Events accepted by kind and source."), &["kind", "source"]).expect("should be a valid metric"),
            events_rejected: IntCounterVec::new(Opts::new(EVENTS_REJECTED, "Messages refused by source and reason."), &["source", "reason"])
                .expect("should be a valid metric"),
            http_requests: IntCounterVec::new(Opts::new(HTTP_REQUESTS, "API requests by status class."), &["class"]).expect("should be a valid metric"),
            db_up: IntGauge::new(DB_UP, "1 while the last database write succeeded.").expect("should be a valid metric"),
            sip_messages: IntCounterVec::new(Opts::new(SIP_MESSAGES, "SIP messages by method (or response code class) and direction."), &["method", "direction"])
                .expect("should be a valid metric"),
            sip_registrations: IntCounterVec::new(
                Opts::new(SIP_REGISTRATIONS, "GB/T 28181 REGISTER outcomes (challenged, registered, unregistered, forbidden, wrong_password, ...)."),
                &["outcome"],
            )
            .expect("should be a valid metric"),
            sip_transactions: IntCounterVec::new(
                Opts::new(SIP_TRANSACTIONS, "Requests vigil sent to GB/T 28181 devices by what they asked and how they ended (ok, refused, timeout, dropped)."),
                &["request", "outcome"],
            )
            .expect("should be a valid metric"),
            mqtt_messages: IntCounterVec::new(Opts::new(MQTT_MESSAGES, "MQTT messages received, by the profile that took them (\"none\": no profile matched)."), &["profile"])
                .expect("should be a valid metric"),
            mqtt_connected: IntGauge::new(MQTT_CONNECTED, "1 while vigil's MQTT client is connected to its broker.").expect("should be a valid metric"),
            mqtt_connection_errors: IntCounter::new(MQTT_CONNECTION_ERRORS, "Times vigil's MQTT connection was lost or a reconnect to the broker failed.")
                .expect("should be a valid metric"),
            mqtt_inflight: IntGauge::new(MQTT_INFLIGHT, "MQTT messages taken and not yet committed and acknowledged.").expect("should be a valid metric"),
            profile_outcomes: IntCounterVec::new(
                Opts::new(PROFILE_OUTCOMES, "Records through device profiles by profile and outcome (event, duplicate, heartbeat, dropped:<reason>, rejected:<reason>, not_admitted)."),
                &["profile", "outcome"],
            )
            .expect("should be a valid metric"),
            sequence_gaps: IntGaugeVec::new(Opts::new(SEQUENCE_GAPS, "Records missing from devices' sequence numbers (net of late arrivals), by profile."), &["profile"])
                .expect("should be a valid metric"),
            rtsp_streams: IntGaugeVec::new(Opts::new(RTSP_STREAMS, "RTSP streams by state (connecting, playing, stalled, backoff, auth_failed, refused, not_found, session_limit, bad_media) and device kind."), &["state", "kind"])
                .expect("should be a valid metric"),
            rtsp_failures: IntCounterVec::new(Opts::new(RTSP_FAILURES, "RTSP sessions or attempts that ended, by the state they left the stream in."), &["state"])
                .expect("should be a valid metric"),
            rtsp_first_frame: Histogram::with_opts(
                HistogramOpts::new(RTSP_FIRST_FRAME, "Time from connect to the first video frame of an RTSP session.")
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0]),
            )
            .expect("should be a valid metric"),
            rtsp_frames: IntCounter::new(RTSP_FRAMES, "Video frames received over RTSP.").expect("should be a valid metric"),
            rtsp_bytes: IntCounter::new(RTSP_BYTES, "Video bytes received over RTSP (frame payload).").expect("should be a valid metric"),
            rtsp_diagnoses: IntCounterVec::new(Opts::new(RTSP_DIAGNOSES, "Video quality diagnosis samples by outcome (good, bad, undecodable)."), &["outcome"])
                .expect("should be a valid metric"),
            gb_first_frame: Histogram::with_opts(
                HistogramOpts::new(GB_FIRST_FRAME, "Time from the INVITE to the first picture of a GB/T 28181 live session.")
                    .buckets(vec![0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 15.0]),
            )
            .expect("should be a valid metric"),
            gb_media_dropped: IntCounterVec::new(Opts::new(GB_MEDIA_DROPPED, "GB/T 28181 RTP packets dropped, by reason (foreign_source, ssrc, payload_type, malformed; on the single port also unknown_ssrc, queue_full, too_many_connections)."), &["reason"])
                .expect("should be a valid metric"),
            gb_plays: IntCounterVec::new(Opts::new(GB_PLAYS, "GB/T 28181 live sessions ended, by outcome (stopped, or the failure state)."), &["outcome"])
                .expect("should be a valid metric"),
            gb_frames: IntCounter::new(GB_FRAMES, "Video frames (access units) received from GB/T 28181 channels.").expect("should be a valid metric"),
            gb_bytes: IntCounter::new(GB_BYTES, "Video bytes (access units) received from GB/T 28181 channels.").expect("should be a valid metric"),
            gb_rtcp_reports: IntCounter::new(GB_RTCP_REPORTS, "RTCP receiver reports sent to GB/T 28181 devices sending RTP over UDP.").expect("should be a valid metric"),
            relay_records: IntCounterVec::new(Opts::new(RELAY_RECORDS, "Records handed to an upstream, by target and outcome (delivered, retry, dead)."), &["target", "outcome"])
                .expect("should be a valid metric"),
            relay_backlog: IntGaugeVec::new(Opts::new(RELAY_BACKLOG, "Records not yet delivered, by target."), &["target"]).expect("should be a valid metric"),
            relay_oldest: IntGaugeVec::new(Opts::new(RELAY_OLDEST, "Age of the oldest undelivered record, by target (0: none)."), &["target"])
                .expect("should be a valid metric"),
            relay_failures: IntCounterVec::new(Opts::new(RELAY_FAILURES, "Deliveries to an upstream that failed whole (nothing of the batch taken), by target and reason (unreachable, timeout, unauthorized, refused, subscription_lapsed, not_subscribed, local)."), &["target", "reason"])
                .expect("should be a valid metric"),
            outbox_accepting: IntGauge::new(OUTBOX_ACCEPTING, "1 while the outbox takes records; 0 while it is full (backlog or disk) and sources are slowed.")
                .expect("should be a valid metric"),
            presence_checkpoint: IntGauge::new(PRESENCE_CHECKPOINT, "When presence's state (last seen, open windows) was last written whole to the database (Unix seconds): what a restart resumes from.")
                .expect("should be a valid metric"),
            outbox_held: IntGauge::new(OUTBOX_HELD, "Device records held at the closed outbox (before their pictures are written), waiting for room.")
                .expect("should be a valid metric"),
            outbox_free_disk: IntGauge::new(OUTBOX_FREE_DISK, "Free bytes on the file system of the data directory.").expect("should be a valid metric"),
            connections: IntGaugeVec::new(Opts::new(CONNECTIONS, "Connections open on a listener (sip_tcp, gat1400, http)."), &["listener"])
                .expect("should be a valid metric"),
            connections_refused: IntCounterVec::new(
                Opts::new(CONNECTIONS_REFUSED, "Connections closed at accept: the listener's share of descriptors (listener_full) or the address's share (address_full) was taken, or a message did not complete in time (deadline)."),
                &["listener", "reason"],
            )
            .expect("should be a valid metric"),
            auth_refusals: IntCounterVec::new(
                Opts::new(AUTH_REFUSALS, "Requests on a device port refused before any state changed: no or wrong credentials, not registered, from another address than the registration, an object for a device the sender does not carry, too many failures from the address."),
                &["port", "reason"],
            )
            .expect("should be a valid metric"),
            admission_refusals: IntCounterVec::new(
                Opts::new(ADMISSION_REFUSALS, "Unknown devices not added: admission_closed, quarantine_full, origin_quarantine_full (one source address's share), origin_rate (new devices per address per minute)."),
                &["source", "reason"],
            )
            .expect("should be a valid metric"),
            relay_alarm: IntGaugeVec::new(Opts::new(RELAY_ALARM, "1 while an upstream needs an operator: an upper view library's subscription was cancelled or expired and records wait for it."), &["target"])
                .expect("should be a valid metric"),
            cascade_registered: IntGaugeVec::new(Opts::new(CASCADE_REGISTERED, "1 while vigil is registered to a GB/T 28181 upper platform (cascade), by target."), &["target"])
                .expect("should be a valid metric"),
            cascade_requests: IntCounterVec::new(
                Opts::new(CASCADE_REQUESTS, "Requests from a GB/T 28181 upper platform, by target, method and the answer's class (2xx, 4xx, ...; 1xx: an INVITE being set up)."),
                &["target", "method", "answer"],
            )
            .expect("should be a valid metric"),
            cascade_notifies: IntCounterVec::new(
                Opts::new(CASCADE_NOTIFIES, "Catalog status NOTIFYs to a GB/T 28181 upper platform, by target and outcome (answered, unanswered: the whole view goes again)."),
                &["target", "outcome"],
            )
            .expect("should be a valid metric"),
            cascade_plays: IntGaugeVec::new(Opts::new(CASCADE_PLAYS, "Videos a GB/T 28181 upper platform has open (or being set up), by target."), &["target"])
                .expect("should be a valid metric"),
            quarantine_expired: IntCounter::new(QUARANTINE_EXPIRED, "Quarantined devices deleted because no operator approved them within admission.quarantine_ttl.")
                .expect("should be a valid metric"),
            registry,
        };
        for c in [
            Box::new(m.devices.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.online_rate.clone()),
            Box::new(m.online_target.clone()),
            Box::new(m.transitions.clone()),
            Box::new(m.observations.clone()),
            Box::new(m.presence_pending.clone()),
            Box::new(m.events.clone()),
            Box::new(m.events_rejected.clone()),
            Box::new(m.http_requests.clone()),
            Box::new(m.db_up.clone()),
            Box::new(m.sip_messages.clone()),
            Box::new(m.sip_registrations.clone()),
            Box::new(m.sip_transactions.clone()),
            Box::new(m.mqtt_messages.clone()),
            Box::new(m.mqtt_connection_errors.clone()),
            Box::new(m.mqtt_connected.clone()),
            Box::new(m.mqtt_inflight.clone()),
            Box::new(m.profile_outcomes.clone()),
            Box::new(m.sequence_gaps.clone()),
            Box::new(m.rtsp_streams.clone()),
            Box::new(m.rtsp_failures.clone()),
            Box::new(m.rtsp_first_frame.clone()),
            Box::new(m.rtsp_frames.clone()),
            Box::new(m.rtsp_bytes.clone()),
            Box::new(m.rtsp_diagnoses.clone()),
            Box::new(m.gb_first_frame.clone()),
            Box::new(m.gb_media_dropped.clone()),
            Box::new(m.gb_plays.clone()),
            Box::new(m.gb_frames.clone()),
            Box::new(m.gb_bytes.clone()),
            Box::new(m.gb_rtcp_reports.clone()),
            Box::new(m.relay_records.clone()),
            Box::new(m.relay_backlog.clone()),
            Box::new(m.relay_oldest.clone()),
            Box::new(m.outbox_accepting.clone()),
            Box::new(m.relay_failures.clone()),
            Box::new(m.outbox_free_disk.clone()),
            Box::new(m.outbox_held.clone()),
            Box::new(m.presence_checkpoint.clone()),
            Box::new(m.connections.clone()),
            Box::new(m.connections_refused.clone()),
            Box::new(m.auth_refusals.clone()),
            Box::new(m.admission_refusals.clone()),
            Box::new(m.quarantine_expired.clone()),
            Box::new(m.relay_alarm.clone()),
            Box::new(m.cascade_registered.clone()),
            Box::new(m.cascade_requests.clone()),
            Box::new(m.cascade_notifies.clone()),
            Box::new(m.cascade_plays.clone()),
        ] {
            m.registry.register(c).expect("should register each metric once");
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets up tracing: human-readable by default, JSON lines with `json`. `RUST_LOG` filters
/// (default `info`).
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter =
        // rumqttd (the embedded broker) reports every client's disconnect, however clean, as
        // an error from these two targets; presence says what matters about devices. Its
        // start-up failures come through vigil's own log.
        EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new("info,sqlx=error,tower_http=warn,rumqttd::server::broker=off,rumqttd::router::routing=off")
        });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
