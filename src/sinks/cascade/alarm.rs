//! Alarms upward: device alarms and video-quality alarms reach an upper platform as MANSCDP
//! `Notify/Alarm` MESSAGEs (GB/T 28181 A.2.5.1). They come from the outbox like every record
//! relayed (so none is lost across an outage or a restart): the runner hands a batch to
//! `AlarmSink`, which gives each to the upstream's user agent and waits for the upper's answer:
//! 2xx delivered, 4xx refused for good (parked as dead with the code), no answer or 5xx tried
//! again. An alarm whose source has no GB/T 28181 id is refused with that reason (the upper
//! could not place it). While vigil is not registered the batch waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::event::{Event, EventBody};
use crate::outbox::runner::{Delivery, FailureKind, Sink, SinkError};
use crate::outbox::store::Claimed;
use crate::protocol::manscdp::{self, Charset};

/// How long an alarm waits for the upper's answer (beyond Timer F's 32 s).
const ANSWER: Duration = Duration::from_secs(40);

/// One alarm for the user agent to send; it answers with the upper's final code (`None`: not
/// sent, or unanswered).
pub struct Job {
    pub body: Vec<u8>,
    pub answer: oneshot::Sender<Option<u16>>,
}

/// The outbox side of an upstream's alarms.
pub struct AlarmSink {
    jobs: mpsc::Sender<Job>,
    /// The ids vigil gave devices without one (an alarm of theirs goes up under it).
    given: Option<Arc<super::ids::Ids>>,
    registered: Arc<AtomicBool>,
    tz: chrono_tz::Tz,
    platform_id: String,
    sn: u64,
}

impl AlarmSink {
    pub fn new(
        jobs: mpsc::Sender<Job>,
        registered: Arc<AtomicBool>,
        tz: chrono_tz::Tz,
        platform_id: String,
        given: Option<Arc<super::ids::Ids>>,
    ) -> Self {
        AlarmSink { jobs, given, registered, tz, platform_id, sn: 0 }
    }
}

/// The `Notify/Alarm` body for an alarm event: `DeviceID` the alarm's source (a channel) when
/// it is a GB/T 28181 code, else its device's, else the id vigil gave the device (`given`);
/// `None` when there is none.
pub fn body(sn: u64, event: &Event, tz: &chrono_tz::Tz, given: impl Fn(&str) -> Option<String>) -> Option<Vec<u8>> {
    let EventBody::Alarm(a) = &event.body else { return None };
    let is_gb = |id: &str| crate::ids::GbCode::parse(id).is_ok();
    let id = [a.source_id.as_str(), event.device_id.as_str()]
        .into_iter()
        .find(|id| is_gb(id))
        .map(str::to_owned)
        .or_else(|| given(&event.device_id))?;
    let time = crate::clock::to_datetime(event.occurred_at, tz).format("%Y-%m-%dT%H:%M:%S");
    let mut text = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Alarm</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{id}</DeviceID>\r\n<AlarmPriority>{}</AlarmPriority>\r\n<AlarmMethod>{}</AlarmMethod>\r\n<AlarmTime>{time}</AlarmTime>\r\n<AlarmDescription>{}</AlarmDescription>\r\n",
        a.priority.unwrap_or(4),
        a.method.unwrap_or(7),
        super::catalog::escape(&a.description)
    );
    if let (Some(lon), Some(lat)) = (a.longitude, a.latitude) {
        text.push_str(&format!("<Longitude>{lon}</Longitude>\r\n<Latitude>{lat}</Latitude>\r\n"));
    }
    if let Some(t) = a.alarm_type {
        text.push_str(&format!("<Info>\r\n<AlarmType>{t}</AlarmType>\r\n</Info>\r\n"));
    }
    text.push_str("</Notify>\r\n");
    Some(manscdp::encode(&text, Charset::Gb18030))
}

impl Sink for AlarmSink {
    fn batch_size(&self) -> i64 {
        8
    }

    async fn deliver(&mut self, batch: &[Claimed]) -> Result<Vec<Delivery>, SinkError> {
        if !self.registered.load(Ordering::Acquire) {
            return Err(SinkError::new(FailureKind::Unreachable, "not registered to the upper platform"));
        }
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            self.sn += 1;
            let given = |d: &str| self.given.as_ref().and_then(|g| g.get(d));
            let Some(body) = body(self.sn, &c.event, &self.tz, given) else {
                out.push(Delivery::Rejected(
                    format!("the alarm's source {:?} has no GB/T 28181 id the upper could place", c.event.device_id)
                        .into(),
                ));
                continue;
            };
            let (tx, rx) = oneshot::channel();
            if self.jobs.send(Job { body, answer: tx }).await.is_err() {
                return Err(SinkError::new(FailureKind::Local, "the upstream's user agent stopped"));
            }
            let code = tokio::time::timeout(ANSWER, rx).await.ok().and_then(Result::ok).flatten();
            out.push(match code {
                Some(200..=299) => Delivery::Delivered,
                Some(code @ 400..=499) => Delivery::Rejected(
                    format!("the upper platform ({}) refused the alarm with {code}", self.platform_id).into(),
                ),
                Some(code) => Delivery::Retry(format!("the upper platform answered {code}")),
                None => Delivery::Retry("the upper platform did not answer the alarm".into()),
            });
        }
        Ok(out)
    }

    async fn tick(&mut self) -> Result<bool, SinkError> {
        Ok(self.registered.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_goes_up_under_its_channel_in_the_districts_time() {
        let json = serde_json::json!({
            "id": "0190", "dedup_key": "k", "source": "gb28181", "device_id": "42010400001320000077",
            "org_id": null, "occurred_at": 1_796_572_800_000i64, "occurred_at_raw": null, "time_source": "device",
            "received_at": 1_796_572_800_000i64, "seq": 88, "offline_replay": false, "profile": null, "media": [],
            "body": {"kind": "alarm", "source_id": "42010400001310000001", "priority": 1, "method": 5, "alarm_type": 6,
            "description": "区域入侵 <东门>"}
        });
        let e: Event = serde_json::from_value(json).expect("an alarm event");
        let b = body(3, &e, &chrono_tz::Asia::Shanghai, |_| None).expect("a GB channel");
        let (text, _) = manscdp::decode(&b);
        let a = manscdp::alarm(&text).expect("vigil's own alarm reader reads what goes up");
        assert_eq!(a.device_id, "42010400001310000001");
        assert_eq!(a.time, "2026-12-07T00:00:00", "local time in the district's zone, no offset: {text}");
        assert!(text.contains("<AlarmType>6</AlarmType>") && text.contains("&lt;东门&gt;"), "{text}");
        let mut community = e.clone();
        community.device_id = "gate-01".into();
        if let EventBody::Alarm(a) = &mut community.body {
            a.source_id = "zone-3".into();
        }
        assert!(body(4, &community, &chrono_tz::Asia::Shanghai, |_| None).is_none(), "no GB id: not sent");
        let given = |d: &str| (d == community.device_id).then(|| "42010400001320900007".to_owned());
        let b = body(5, &community, &chrono_tz::Asia::Shanghai, given).expect("the id vigil gave it");
        let (text, _) = manscdp::decode(&b);
        assert!(text.contains("<DeviceID>42010400001320900007</DeviceID>"), "{text}");
    }
}
