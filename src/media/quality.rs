//! The diagnosis job of one stream, whoever pulls it (an RTSP camera, a GB/T 28181 channel):
//! decodes its two latest keyframes on the decode pool, scores the newer against the older
//! (`diagnosis`), judges the result against the stream's baseline, publishes it in the
//! stream's health and in the impaired set the intact rate reads, and raises (and clears) an
//! `alarm` event with the scores when a fault persists.
//!
//! Started by the pull at most once per its diagnosis interval and never twice at once for a
//! stream; it waits its turn on the decode pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

use super::diagnosis::{self, Judge, Verdict};
use super::health::{Health, Keyframe, Quality};
use super::snapshot;
use crate::clock::now_ms;
use crate::domain::DeviceKey;
use crate::event::{AlarmBody, Event, EventBody, TimeSource};

/// Width diagnosis scores at: enough for the statistics, cheap to compute.
const DIAGNOSIS_WIDTH: u32 = 320;

/// What every diagnosis shares: the decode pool, where verdicts go, and the alarm limit.
pub struct Diagnoser {
    pub pool: snapshot::Pool,
    pub metrics: crate::telemetry::Metrics,
    pub events: crate::events::EventLog,
    pub impaired: crate::rate::Impaired,
    /// Consecutive bad samples before an alarm.
    pub alarm_after: u32,
}

/// The stream diagnosed: whose it is, for the intact rate and the alarm.
#[derive(Clone)]
pub struct Subject {
    pub device_id: Arc<str>,
    pub key: DeviceKey,
    /// The GB/T 28181 channel, when the stream is one of a device's channels.
    pub channel: Option<Arc<str>>,
    pub org_id: Option<String>,
    /// The event source the alarm is filed under (`rtsp`, `gb28181`).
    pub source: &'static str,
}

pub struct Job {
    pub subject: Subject,
    pub health: Arc<Health>,
    pub judge: Arc<Mutex<Judge>>,
    /// Cleared when the job ends, so the pull may start the next one.
    pub busy: Arc<AtomicBool>,
}

/// Decodes and scores `latest` (with `previous` for the frozen check).
pub fn score_keyframes(latest: &Keyframe, previous: Option<&Keyframe>) -> Result<diagnosis::Scores, snapshot::Error> {
    let now = snapshot::planes(&snapshot::decode(latest.codec, &latest.data)?, DIAGNOSIS_WIDTH)?;
    // Only keyframes whose timestamps differ say anything about a frozen picture.
    let before = match previous.filter(|p| p.pts != latest.pts && p.codec == latest.codec) {
        Some(p) => Some(snapshot::planes(&snapshot::decode(p.codec, &p.data)?, DIAGNOSIS_WIDTH)?),
        None => None,
    };
    Ok(diagnosis::score(&now, before.as_ref()))
}

pub async fn diagnose(ctx: Arc<Diagnoser>, job: Job) {
    let Job { subject: cam, health, judge, busy } = job;
    let stream = cam.channel.clone().unwrap_or_else(|| cam.device_id.clone());
    let (latest, previous) = health.keyframes();
    let Some(latest) = latest else {
        busy.store(false, Ordering::Release);
        return;
    };
    // Waits for a decode thread: each camera has at most one job queued (`busy`), so the
    // queue is bounded by the number of cameras and every camera gets its turn.
    let scored = ctx.pool.run(move || score_keyframes(&latest, previous.as_ref())).await;
    busy.store(false, Ordering::Release);
    let scores = match scored {
        Err(e) | Ok(Err(e)) => {
            debug!(device = %cam.device_id, stream = %stream, error = %e, "Diagnosis could not decode the keyframe.");
            ctx.metrics.rtsp_diagnoses.with_label_values(&["undecodable"]).inc();
            return;
        }
        Ok(Ok(s)) => s,
    };
    let at = now_ms();
    let (faults, verdict, consecutive_bad, alarmed, baseline_ready) = {
        let mut j = judge.lock().unwrap_or_else(|p| p.into_inner());
        let (faults, verdict) = j.judge(&scores, ctx.alarm_after);
        (faults, verdict, j.consecutive_bad, j.alarmed, j.baseline.ready())
    };
    ctx.metrics.rtsp_diagnoses.with_label_values(&[if faults.is_empty() { "good" } else { "bad" }]).inc();
    health.set_quality(Quality { at, scores, faults: faults.clone(), consecutive_bad, alarmed, baseline_ready });
    ctx.impaired.set(cam.key, cam.channel.as_deref(), alarmed);
    let state = match verdict {
        Verdict::Alarm => "start",
        Verdict::Recovered => "stop",
        Verdict::Good | Verdict::Bad => return,
    };
    if state == "start" {
        warn!(device = %cam.device_id, stream = %stream, faults = ?faults, "Video quality alarm: the picture is not usable.");
    } else {
        info!(device = %cam.device_id, stream = %stream, "Video quality recovered.");
    }
    let description = if state == "start" {
        format!("视频质量诊断异常 video quality fault: {}", faults.join(", "))
    } else {
        "视频质量恢复 video quality recovered".to_owned()
    };
    let event = Event {
        id: Event::new_id(),
        dedup_key: format!("{}:{stream}:vqd:{state}:{at}", cam.source),
        source: cam.source.into(),
        device_id: cam.device_id.to_string(),
        org_id: cam.org_id.clone(),
        occurred_at: at,
        occurred_at_raw: None,
        time_source: TimeSource::Gateway,
        received_at: at,
        seq: None,
        offline_replay: false,
        profile: None,
        media: Vec::new(),
        body: EventBody::Alarm(AlarmBody {
            source_id: stream.to_string(),
            // GB/T 28181 alarm method 5 (video), type 11 (video anomaly detection).
            method: Some(5),
            alarm_type: Some(11),
            priority: Some(3),
            category: Some("video_quality".into()),
            state: Some(state.into()),
            description,
            details: Some(serde_json::json!({ "faults": faults, "scores": scores })),
            ..AlarmBody::default()
        }),
    };
    if let Err(e) = ctx.events.submit(event).await {
        warn!(device = %cam.device_id, stream = %stream, error = %e, "The video quality alarm could not be stored.");
    }
}
