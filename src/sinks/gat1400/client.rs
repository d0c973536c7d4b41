//! A client for an upper GA/T 1400 view library: `register` (HTTP digest, MD5, qop=auth, as
//! the upper platforms ask), `keepalive`, `unregister`, and `push` of a list of objects
//! (`/VIID/Faces`, `/VIID/MotorVehicles`, ...) with `User-Identify` on every call, whose answer
//! is read per object from `ResponseStatusListObject`: each object is delivered, to be tried
//! again, or refused for good, by its own StatusCode (shared reference relay.md §1.4).
//!
//! No retry policy and no state beyond the HTTP connection pool: the sink runner decides
//! when to call what. Answers are read leniently (StatusCode as a number or a string, any of
//! the VIID content types); requests are written strictly.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::outbox::runner::{FailureKind, SinkError};
use crate::protocol::digest::{expected, parse_authorization};
use crate::protocol::gat1400::codec::{status_code, Status};

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read (a status per object of a list: a few hundred bytes each).
const MAX_ANSWER: usize = 4 << 20;
/// The most of an answer's body kept in an error.
const KEEP: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401: not (or no longer) registered, or the credentials are wrong.
    #[error("the view library refused our credentials or session (401): {0}")]
    Unauthorized(String),
    /// Another HTTP status.
    #[error("the view library answered {status}: {body}")]
    Status { status: u16, body: String },
    /// Could not reach it.
    #[error("cannot reach the view library: {0}")]
    Transport(String),
    /// No answer in time.
    #[error("the view library did not answer in time: {0}")]
    Timeout(String),
    /// An answer vigil cannot read.
    #[error("the view library's answer is not GA/T 1400: {0}")]
    BadAnswer(String),
    /// It answered the system call with a StatusCode other than 0.
    #[error("the view library refused {what}: StatusCode {code} {text}")]
    Refused { what: &'static str, code: u8, text: String },
}

impl Error {
    /// Whether trying again later may succeed (everything but a refusal of the request
    /// itself: a 4xx other than 401/408/429, or a non-retryable StatusCode).
    pub fn retryable(&self) -> bool {
        match self {
            Error::Unauthorized(_) | Error::Transport(_) | Error::Timeout(_) => true,
            Error::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Error::BadAnswer(_) => true,
            Error::Refused { code, .. } => Status::retryable(*code),
        }
    }

    /// What the runner makes of it when it fails a whole call.
    pub fn kind(&self) -> FailureKind {
        match self {
            Error::Unauthorized(_) => FailureKind::Unauthorized,
            Error::Status { status: 401 | 403, .. } => FailureKind::Unauthorized,
            Error::Status { status: 408 | 504, .. } | Error::Timeout(_) => FailureKind::Timeout,
            Error::Transport(_) => FailureKind::Unreachable,
            Error::Status { .. } | Error::BadAnswer(_) | Error::Refused { .. } => FailureKind::Refused,
        }
    }

    fn of_transport(e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(e.to_string())
        } else {
            Error::Transport(e.to_string())
        }
    }
}

impl From<Error> for SinkError {
    fn from(e: Error) -> SinkError {
        SinkError::new(e.kind(), e.to_string())
    }
}

/// What became of one pushed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// StatusCode 1, 2, 3 or 9, or no entry for it in the answer: send again later.
    Retry(String),
    /// StatusCode 4–8: the object itself is refused; sending it again will not help.
    Rejected(String),
}

/// One pushed object: what became of it, the object as sent and, for a refused object, the
/// upstream's entry for it.
#[derive(Debug, Clone)]
pub struct Answered {
    pub outcome: Outcome,
    pub object: Value,
    pub answer: Option<Value>,
}

/// The collections vigil pushes, with their list, object and id keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Collection {
    Faces,
    MotorVehicles,
    Persons,
    NonMotorVehicles,
    /// The extension path (records GA/T 1400 has no standard object for), under the
    /// upstream's `extension` prefix: door access records, alarms, device status changes,
    /// online-rate reports. Names as documented in docs/relay.md; the district's interface
    /// document decides the real ones.
    AccessRecords,
    AlarmRecords,
    DeviceStatuses,
    OnlineRates,
    /// Subscription mode: notifications to a subscriber's `ReceiveAddr`.
    SubscribeNotifications,
}

impl Collection {
    pub fn path(self) -> &'static str {
        match self {
            Collection::Faces => "/Faces",
            Collection::MotorVehicles => "/MotorVehicles",
            Collection::Persons => "/Persons",
            Collection::NonMotorVehicles => "/NonMotorVehicles",
            Collection::AccessRecords => "/AccessRecords",
            Collection::AlarmRecords => "/AlarmRecords",
            Collection::DeviceStatuses => "/DeviceStatuses",
            Collection::OnlineRates => "/OnlineRates",
            Collection::SubscribeNotifications => "/SubscribeNotifications",
        }
    }

    /// Whether it lives under the extension prefix rather than the standard collections.
    pub fn is_extension(self) -> bool {
        matches!(
            self,
            Collection::AccessRecords | Collection::AlarmRecords | Collection::DeviceStatuses | Collection::OnlineRates
        )
    }

    /// The extension collection named by the last segment of a path (`AccessRecords`, ...).
    pub fn extension_named(name: &str) -> Option<Collection> {
        [Collection::AccessRecords, Collection::AlarmRecords, Collection::DeviceStatuses, Collection::OnlineRates]
            .into_iter()
            .find(|c| &c.path()[1..] == name)
    }

    /// (list key, object key, id key)
    pub fn keys(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Collection::Faces => ("FaceListObject", "FaceObject", "FaceID"),
            Collection::MotorVehicles => ("MotorVehicleListObject", "MotorVehicleObject", "MotorVehicleID"),
            Collection::Persons => ("PersonListObject", "PersonObject", "PersonID"),
            Collection::NonMotorVehicles => ("NonMotorVehicleListObject", "NonMotorVehicleObject", "NonMotorVehicleID"),
            Collection::AccessRecords => ("AccessRecordListObject", "AccessRecordObject", "RecordID"),
            Collection::AlarmRecords => ("AlarmRecordListObject", "AlarmRecordObject", "RecordID"),
            Collection::DeviceStatuses => ("DeviceStatusListObject", "DeviceStatusObject", "RecordID"),
            Collection::OnlineRates => ("OnlineRateListObject", "OnlineRateObject", "RecordID"),
            Collection::SubscribeNotifications => {
                ("SubscribeNotificationListObject", "SubscribeNotificationObject", "NotificationID")
            }
        }
    }
}

/// One upper view library, as this gateway (`user_id`) knows it.
#[derive(Clone)]
pub struct Client {
    /// `http://host:port/VIID` (no trailing slash).
    base: String,
    user_id: String,
    password: String,
    http: reqwest::Client,
}

fn keep(s: &str) -> String {
    s.chars().take(KEEP).collect()
}

fn cnonce() -> String {
    uuid::Uuid::now_v7().simple().to_string()[16..].to_owned()
}

impl Client {
    pub fn new(base: &str, user_id: &str, password: &str) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            user_id: user_id.to_owned(),
            password: password.to_owned(),
            http,
        })
    }

    /// A path under the base URL, or a full URL (a subscription's `ReceiveAddr`) as it is.
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// The request path as the digest `uri` (the URL's path).
    fn uri(&self, path: &str) -> String {
        let full = self.url(path);
        url::Url::parse(&full).map(|u| u.path().to_owned()).unwrap_or(full)
    }

    async fn post(
        &self,
        path: &str,
        body: &Value,
        auth: Option<String>,
    ) -> Result<(u16, HashMap<String, String>, String), Error> {
        let mut req = self
            .http
            .post(self.url(path))
            .header("Content-Type", "application/VIID+JSON;charset=UTF-8")
            .header("User-Identify", &self.user_id)
            .body(body.to_string());
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.map_err(Error::of_transport)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_owned())))
            .collect();
        // An answer is a status list: read at most MAX_ANSWER of it, whatever the peer sends.
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(Error::of_transport)? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(Error::BadAnswer(format!("answer over {MAX_ANSWER} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }

    /// Reads a single `ResponseStatusObject` answer to a system call.
    fn system_answer(what: &'static str, status: u16, text: &str) -> Result<(), Error> {
        match status {
            200..=299 => {}
            401 => return Err(Error::Unauthorized(keep(text))),
            _ => return Err(Error::Status { status, body: keep(text) }),
        }
        let v: Value = serde_json::from_str(text).map_err(|e| Error::BadAnswer(format!("{e}: {}", keep(text))))?;
        let obj = v.get("ResponseStatusObject").unwrap_or(&v);
        match obj.get("StatusCode").and_then(status_code) {
            Some(0) => Ok(()),
            Some(code) => Err(Error::Refused {
                what,
                code,
                text: obj.get("StatusString").and_then(Value::as_str).unwrap_or("").to_owned(),
            }),
            // Some platforms answer 200 with an empty body.
            None if text.trim().is_empty() => Ok(()),
            None => Err(Error::BadAnswer(format!("no StatusCode: {}", keep(text)))),
        }
    }

    /// Registers: the first POST is answered 401 with a digest challenge, the second carries
    /// the credentials.
    pub async fn register(&self) -> Result<(), Error> {
        const PATH: &str = "/System/Register";
        let body = json!({"RegisterObject": {"DeviceID": self.user_id}});
        let (status, headers, text) = self.post(PATH, &body, None).await?;
        if status != 401 {
            return Self::system_answer("registration", status, &text);
        }
        let challenge = headers
            .get("www-authenticate")
            .and_then(|h| parse_authorization(h))
            .ok_or_else(|| Error::BadAnswer("401 without a Digest challenge".into()))?;
        let realm = challenge.get("realm").cloned().unwrap_or_default();
        let nonce = challenge.get("nonce").cloned().unwrap_or_default();
        let uri = self.uri(PATH);
        let qop = challenge.get("qop").is_some_and(|q| q.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")));
        let cn = cnonce();
        let response = if qop {
            expected(&self.user_id, &realm, &self.password, "POST", &uri, &nonce, Some(("00000001", &cn, "auth")))
        } else {
            expected(&self.user_id, &realm, &self.password, "POST", &uri, &nonce, None)
        };
        let mut auth = format!(
            "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5, response=\"{response}\"",
            self.user_id
        );
        if qop {
            auth.push_str(&format!(", qop=auth, nc=00000001, cnonce=\"{cn}\""));
        }
        if let Some(opaque) = challenge.get("opaque") {
            auth.push_str(&format!(", opaque=\"{opaque}\""));
        }
        let (status, _, text) = self.post(PATH, &body, Some(auth)).await?;
        Self::system_answer("registration", status, &text)
    }

    pub async fn keepalive(&self) -> Result<(), Error> {
        let body = json!({"KeepaliveObject": {"DeviceID": self.user_id}});
        let (status, _, text) = self.post("/System/Keepalive", &body, None).await?;
        Self::system_answer("keepalive", status, &text)
    }

    pub async fn unregister(&self) -> Result<(), Error> {
        let body = json!({"UnRegisterObject": {"DeviceID": self.user_id}});
        let (status, _, text) = self.post("/System/UnRegister", &body, None).await?;
        Self::system_answer("un-registration", status, &text)
    }

    /// Pushes `objects` (each carrying its id under the collection's id key) as one list and
    /// answers, in the same order, what became of each.
    pub async fn push(&self, collection: Collection, objects: Vec<Value>) -> Result<Vec<Outcome>, Error> {
        self.push_at(collection.path(), collection, objects).await
    }

    /// `push` to `path` (under the base URL): an extension collection under its prefix.
    pub async fn push_at(
        &self,
        path: &str,
        collection: Collection,
        objects: Vec<Value>,
    ) -> Result<Vec<Outcome>, Error> {
        Ok(self.push_answered(path, collection, objects).await?.into_iter().map(|a| a.outcome).collect())
    }

    /// `push_at`, answering per object what became of it together with the object as sent
    /// and the upstream's own entry for it (for a record parked as dead).
    pub async fn push_answered(
        &self,
        path: &str,
        collection: Collection,
        objects: Vec<Value>,
    ) -> Result<Vec<Answered>, Error> {
        let (list, object, id_key) = collection.keys();
        let ids: Vec<String> =
            objects.iter().map(|o| o.get(id_key).and_then(Value::as_str).unwrap_or("").to_owned()).collect();
        let mut body = json!({ list: { object: objects } });
        let (status, _, text) = self.post(path, &body, None).await?;
        let sent = match body.get_mut(list).and_then(|l| l.get_mut(object)).map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        match status {
            200..=299 => {}
            401 => return Err(Error::Unauthorized(keep(&text))),
            _ => return Err(Error::Status { status, body: keep(&text) }),
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::BadAnswer(format!("{e}: {}", keep(&text))))?;
        let entries =
            match crate::protocol::gat1400::codec::list_items(&v, "ResponseStatusListObject", "ResponseStatusObject") {
                Some(entries) => entries,
                None => match v.get("ResponseStatusObject") {
                    // One status for the whole list: it speaks for every object.
                    Some(o) => vec![o.clone(); 1],
                    None => return Err(Error::BadAnswer(format!("no ResponseStatusListObject: {}", keep(&text)))),
                },
            };
        let mut by_id: HashMap<String, (u8, String, &Value)> = HashMap::new();
        let mut whole: Option<(u8, String, &Value)> = None;
        for e in &entries {
            let code = e.get("StatusCode").and_then(status_code).unwrap_or(1);
            let text = e.get("StatusString").and_then(Value::as_str).unwrap_or("").to_owned();
            match e.get("Id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                Some(id) => {
                    by_id.insert(id.to_owned(), (code, text, e));
                }
                None => whole = Some((code, text, e)),
            }
        }
        let mut sent = sent.into_iter();
        Ok(ids
            .iter()
            .map(|id| {
                let entry = by_id.get(id).or(whole.as_ref());
                let outcome = match entry {
                    Some((0, _, _)) => Outcome::Delivered,
                    Some((code, text, _)) if Status::retryable(*code) => {
                        Outcome::Retry(format!("StatusCode {code} {text}"))
                    }
                    Some((code, text, _)) => Outcome::Rejected(format!("StatusCode {code} {text}")),
                    None => Outcome::Retry("the answer has no entry for this object".into()),
                };
                // The entry is copied only for a refused object (kept with its dead record).
                let answer = match outcome {
                    Outcome::Rejected(_) => entry.map(|(_, _, e)| (*e).clone()),
                    _ => None,
                };
                Answered { outcome, object: sent.next().unwrap_or(Value::Null), answer }
            })
            .collect())
    }
}
