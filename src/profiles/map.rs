//! Applying a profile to one message: charset → JSON → decode steps (unwrap, base64 and JSON
//! text in place, one fan-out) → per record: identity, rule, time, sequence, body, privacy,
//! dedup key, images. The message is parsed once; records are paths into it, never copies.
//! A message that cannot be decoded is refused whole (`Refusal`); a record that cannot be
//! mapped is refused alone (`Outcome::Rejected`), so the good records of a batch are kept.

use serde_json::{Map, Value};

use super::expr::{as_text, base64_bytes, base64_text, sha256_hex, truthy, walk, walk_mut, Expr, Scope, Step};
use super::{time, Action, Charset, Decode, Profile};
use crate::clock::Millis;
use crate::event::{EventBody, TimeSource};

/// Most records one message may fan out to.
pub const MAX_RECORDS: usize = 10_000;
/// Most images one record may carry.
pub const MAX_IMAGES: usize = 16;

/// Why a message or a record was refused: `reason` is a short counted word, `detail` says
/// exactly what, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub detail: String,
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal { reason, detail: detail.into() }
}

/// An image a record carries, decoded, not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub role: String,
    pub bytes: Vec<u8>,
}

/// What a rule made of one record. (Always inside a boxed `Mapped`, so the size gap between
/// the variants costs nothing.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Made {
    Event(EventBody),
    /// Liveness only: presence is fed, nothing is stored (attributes may be kept).
    Heartbeat,
}

/// One record mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// The record's own id (`identity.object`), when the profile names one.
    pub object_id: Option<String>,
    pub device: String,
    pub site: Option<String>,
    pub name: Option<String>,
    pub model: Option<String>,
    pub firmware: Option<String>,
    pub made: Made,
    pub occurred_at: Millis,
    pub occurred_at_raw: Option<String>,
    pub time_source: TimeSource,
    pub clock_reset: bool,
    pub seq: Option<i64>,
    pub dedup_key: String,
    pub offline_replay: bool,
    pub images: Vec<Image>,
    /// Device attributes a heartbeat rule keeps (firmware, ip, …).
    pub attrs: Map<String, Value>,
    /// Problems that did not cost the record (an oversized image, an unreadable time).
    pub warnings: Vec<Refusal>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Record(Box<Mapped>),
    /// A rule said to drop it (counted, not kept).
    Dropped {
        reason: String,
    },
    Rejected {
        object_id: Option<String>,
        device: Option<String>,
        refusal: Refusal,
    },
}

/// Maps one message that arrived on a route of `p` with `captures`.
pub fn map(
    p: &Profile,
    captures: &[(String, String)],
    payload: &[u8],
    received_at: Millis,
) -> Result<Vec<Outcome>, Refusal> {
    let text = match p.charset {
        Charset::Utf8 => std::borrow::Cow::Borrowed(
            std::str::from_utf8(payload).map_err(|e| refuse("bad_charset", format!("not UTF-8: {e}")))?,
        ),
        Charset::Auto => match std::str::from_utf8(payload) {
            Ok(t) => std::borrow::Cow::Borrowed(t),
            Err(_) => encoding_rs::GB18030.decode(payload).0,
        },
        Charset::Gbk => encoding_rs::GB18030.decode(payload).0,
    };
    // Only what the profile reads is built; the rest is checked and skipped.
    let mut message: Value = super::sparse::parse(&text, &p.need).map_err(|e| refuse("bad_json", e.to_string()))?;
    let mut records: Vec<Vec<Step>> = vec![Vec::new()];
    for step in p.decode.iter().skip(1) {
        match step {
            Decode::Json => {}
            Decode::Unwrap(path) => {
                for r in &mut records {
                    r.extend(path.iter().cloned());
                    if walk(&message, r).is_none() {
                        return Err(refuse("bad_envelope", format!("nothing at {} to unwrap", show(r))));
                    }
                }
            }
            Decode::Base64(path) | Decode::JsonText(path) => {
                for r in &records {
                    let full: Vec<Step> = r.iter().chain(path).cloned().collect();
                    let Some(slot) = walk_mut(&mut message, &full) else { continue };
                    let Some(s) = slot.as_str() else { continue };
                    let new = if matches!(step, Decode::Base64(_)) {
                        Value::String(
                            base64_text(s)
                                .ok_or_else(|| refuse("bad_base64", format!("{} is not base64", show(&full))))?,
                        )
                    } else {
                        serde_json::from_str(s).map_err(|e| refuse("bad_json", format!("{}: {e}", show(&full))))?
                    };
                    *slot = new;
                }
            }
            Decode::Each(path) => {
                let mut next = Vec::new();
                for r in &records {
                    let full: Vec<Step> = r.iter().chain(path).cloned().collect();
                    match walk(&message, &full) {
                        Some(Value::Array(a)) => {
                            if next.len() + a.len() > MAX_RECORDS {
                                return Err(refuse("too_many_records", format!("more than {MAX_RECORDS} records")));
                            }
                            next.extend((0..a.len()).map(|i| {
                                let mut x = full.clone();
                                x.push(Step::Index(i));
                                x
                            }));
                        }
                        // One object where a list was expected: a list of one.
                        Some(Value::Object(_)) => next.push(full),
                        _ => return Err(refuse("bad_envelope", format!("no list at {}", show(&full)))),
                    }
                }
                records = next;
            }
        }
    }
    Ok(records
        .iter()
        .map(|path| {
            let record = walk(&message, path).unwrap_or(&Value::Null);
            let scope = Scope { record, message: &message, captures, tables: &p.tables };
            map_record(p, &scope, received_at)
        })
        .collect())
}

fn show(path: &[Step]) -> String {
    let mut s = String::from("$");
    for st in path {
        match st {
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn text(e: &Expr, s: &Scope<'_>) -> Option<String> {
    let v = e.eval(s);
    as_text(&v).map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

fn map_record(p: &Profile, s: &Scope<'_>, received_at: Millis) -> Outcome {
    let object_id = p.identity.object.as_ref().and_then(|e| text(e, s));
    let Some(device) = text(&p.identity.key, s) else {
        let refusal = refuse("no_identity", "the identity key is empty or missing");
        return Outcome::Rejected { object_id, device: None, refusal };
    };
    if let Err(e) = crate::ids::check_plain_id("device id", &device, crate::ids::DeviceId::MAX_LEN) {
        return Outcome::Rejected { object_id, device: None, refusal: refuse("bad_identity", e.to_string()) };
    }
    let reject =
        |refusal: Refusal| Outcome::Rejected { object_id: object_id.clone(), device: Some(device.clone()), refusal };
    let Some(rule) = p.rules.iter().find(|r| r.when.as_ref().is_none_or(|w| truthy(&w.eval(s)))) else {
        return reject(refuse("no_rule", "no emit rule matches this message"));
    };
    if let Action::Drop(reason) = &rule.action {
        return Outcome::Dropped { reason: reason.clone() };
    }

    let mut warnings = Vec::new();
    let (device_time, raw) = match &p.time {
        None => (None, None),
        Some(t) => {
            let v = t.field.eval(s);
            if v.is_null() {
                (None, None)
            } else {
                let raw = as_text(&v).map_or_else(|| v.to_string(), |t| t.into_owned());
                match time::read(&v, &t.format, &t.zone) {
                    Ok(ms) => (Some(ms), Some(raw)),
                    Err(e) => {
                        warnings.push(refuse("bad_time", e));
                        (None, Some(raw))
                    }
                }
            }
        }
    };
    let mut judged = time::judge(device_time, received_at, &p.time_rules);
    if device_time.is_none() && raw.is_some() {
        judged.source = TimeSource::Corrected;
    }
    if judged.clock_reset {
        warnings.push(refuse(
            "clock_reset",
            format!("device time {} is before the clock-reset line", raw.clone().unwrap_or_default()),
        ));
    }
    let seq = p.sequence.as_ref().and_then(|e| {
        let v = e.eval(s);
        super::expr::as_text(&v).and_then(|t| t.trim().parse::<f64>().ok()).filter(|f| f.is_finite()).map(|f| f as i64)
    });

    let (made, kind_word, attrs) = match &rule.action {
        Action::Emit(kind) => {
            let mut body = Map::new();
            for (path, e) in &rule.map {
                let v = e.eval(s);
                if !v.is_null() {
                    set_path(&mut body, path, v.into_owned());
                }
            }
            for path in &p.privacy_drop {
                remove_path(&mut body, path);
            }
            for path in &p.privacy_hash {
                hash_path(&mut body, path);
            }
            match EventBody::from_fields(*kind, body) {
                Ok(b) => (Made::Event(b), kind.as_str(), Map::new()),
                Err(e) => return reject(refuse("bad_mapping", e.to_string())),
            }
        }
        _ => {
            let mut attrs = Map::new();
            for (path, e) in &rule.map {
                let v = e.eval(s);
                if !v.is_null() {
                    attrs.insert(path.join("."), v.into_owned());
                }
            }
            (Made::Heartbeat, "heartbeat", attrs)
        }
    };

    let dedup_key = if p.dedup.is_empty() {
        let bytes = serde_json::to_vec(s.record).unwrap_or_default();
        format!("{kind_word}:{device}:h{}", &sha256_hex(&bytes)[..32])
    } else {
        let parts: Vec<String> =
            p.dedup.iter().map(|e| as_text(&e.eval(s)).map(|t| t.into_owned()).unwrap_or_default()).collect();
        format!("{kind_word}:{device}:{}", parts.join("|"))
    };
    let offline_replay = judged.late || rule.offline_replay.as_ref().is_some_and(|e| truthy(&e.eval(s)));

    let mut images = Vec::new();
    for m in &rule.media {
        let items: Vec<&Value> = match &m.each {
            None => vec![s.record],
            Some(path) => match walk(s.record, path) {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(v @ Value::Object(_)) => vec![v],
                _ => Vec::new(),
            },
        };
        for item in items {
            let sub = Scope { record: item, message: s.message, captures: s.captures, tables: s.tables };
            let data = m.data.eval(&sub);
            let Some(b64) = data.as_str().filter(|d| !d.is_empty()) else { continue };
            let role = text(&m.role, &sub).unwrap_or_else(|| "snapshot".into());
            // The base64 text is 4/3 of the bytes: refuse before decoding something huge.
            if (b64.len() as u64) / 4 * 3 > m.max_bytes + 3 {
                warnings.push(refuse(
                    "image_too_large",
                    format!("{role} image of ~{} bytes over the {} limit", b64.len() / 4 * 3, m.max_bytes),
                ));
                continue;
            }
            match base64_bytes(b64) {
                Some(bytes) if bytes.len() as u64 <= m.max_bytes => {
                    if images.len() == MAX_IMAGES {
                        warnings.push(refuse("too_many_images", format!("more than {MAX_IMAGES} images")));
                        break;
                    }
                    images.push(Image { role, bytes });
                }
                Some(bytes) => warnings.push(refuse(
                    "image_too_large",
                    format!("{role} image of {} bytes over the {} limit", bytes.len(), m.max_bytes),
                )),
                None => warnings.push(refuse("bad_image", format!("{role} image is not base64"))),
            }
        }
    }

    Outcome::Record(Box::new(Mapped {
        object_id: object_id.clone(),
        site: p.identity.site.as_ref().and_then(|e| text(e, s)),
        name: p.identity.name.as_ref().and_then(|e| text(e, s)),
        model: p.identity.model.as_ref().and_then(|e| text(e, s)),
        firmware: p.identity.firmware.as_ref().and_then(|e| text(e, s)),
        device,
        made,
        occurred_at: judged.occurred_at,
        occurred_at_raw: raw,
        time_source: judged.source,
        clock_reset: judged.clock_reset,
        seq,
        dedup_key,
        offline_replay,
        images,
        attrs,
        warnings,
    }))
}

/// Sets `path` (nested keys) in `map`, making objects on the way; a scalar in the way is
/// replaced.
pub fn set_path(map: &mut Map<String, Value>, path: &[String], v: Value) {
    let Some((last, head)) = path.split_last() else { return };
    let mut cur = map;
    for k in head {
        let slot = cur.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(m) = slot else { return };
        cur = m;
    }
    cur.insert(last.clone(), v);
}

/// The object holding the last key of `path`, and that key; `None` when the way is not there.
fn parent<'m>(map: &'m mut Map<String, Value>, path: &'m [String]) -> Option<(&'m mut Map<String, Value>, &'m str)> {
    let (last, head) = path.split_last()?;
    let mut cur = map;
    for k in head {
        match cur.get_mut(k) {
            Some(Value::Object(m)) => cur = m,
            _ => return None,
        }
    }
    Some((cur, last.as_str()))
}

fn remove_path(map: &mut Map<String, Value>, path: &[String]) {
    if let Some((obj, key)) = parent(map, path) {
        obj.remove(key);
    }
}

/// Replaces the value at `path` by its SHA-256. An empty (or blank) value is removed, not
/// hashed: absent and empty stay absent, so records without a card number do not all share
/// the digest of "".
fn hash_path(map: &mut Map<String, Value>, path: &[String]) {
    let Some((obj, key)) = parent(map, path) else { return };
    let Some(v) = obj.get_mut(key) else { return };
    match as_text(v) {
        Some(t) if t.trim().is_empty() => {
            obj.remove(key);
        }
        Some(t) => {
            // Built at its final size (`format!` measured at half the cost of the digest).
            let mut hashed = String::with_capacity(71);
            hashed.push_str("sha256:");
            hashed.push_str(&sha256_hex(t.as_bytes()));
            *v = Value::String(hashed);
        }
        None => {}
    }
}
