//! Device profiles: declarative files (`device-profiles/*.toml`) that turn one vendor's
//! messages into normalized events without Rust code. A profile is compiled once
//! (`compile`), checked against its own test vectors (`vectors.rs`), and then applied to
//! each message (`map.rs`: ingress → decode → identity → time → rules → event). Pure: no
//! sockets, no database, time comes in as an argument; `set.rs` reads the directory.
//! docs/profiles.md is the integrator's guide.

pub mod expr;
mod map;
pub mod route;
pub mod set;
pub mod sparse;
pub mod spec;
pub mod time;
mod vectors;

use std::collections::HashMap;

use serde_json::Value;

use crate::event::EventKind;
use crate::registry::DeviceKind;
use expr::{Expr, Root, Step, Tables};
use route::Pattern;

pub use map::{map, Image, Made, Mapped, Outcome, Refusal};
pub use set::{LoadReport, ProfileSet, Selected};
pub use vectors::{run_vectors, VectorFailure};

/// Why a profile cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("profile {profile}: {key}: {message}")]
pub struct ProfileError {
    pub profile: String,
    pub key: String,
    pub message: String,
}

/// Where messages for a profile arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Mqtt,
    Http,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub ingress: Ingress,
    pub pattern: Pattern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Auto,
    Utf8,
    Gbk,
}

#[derive(Debug, Clone)]
pub enum Decode {
    Json,
    Unwrap(Vec<Step>),
    Base64(Vec<Step>),
    JsonText(Vec<Step>),
    Each(Vec<Step>),
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub key: Expr,
    pub site: Option<Expr>,
    pub name: Option<Expr>,
    pub model: Option<Expr>,
    pub firmware: Option<Expr>,
    pub object: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct TimeRule {
    pub field: Expr,
    pub format: time::Format,
    pub zone: time::Zone,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Emit(EventKind),
    Heartbeat,
    Drop(String),
}

#[derive(Debug, Clone)]
pub struct MediaRule {
    pub each: Option<Vec<Step>>,
    pub data: Expr,
    pub role: Expr,
    pub max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub when: Option<Expr>,
    pub action: Action,
    pub offline_replay: Option<Expr>,
    /// (dotted field path, expression), in file order.
    pub map: Vec<(Vec<String>, Expr)>,
    pub media: Vec<MediaRule>,
}

#[derive(Debug, Clone)]
pub struct Lwt {
    pub pattern: Pattern,
    pub online: String,
    pub offline: String,
}

#[derive(Debug, Clone)]
pub struct Liveness {
    /// Silent this long (interval × misses) means offline.
    pub timeout_ms: i64,
    pub lwt: Option<Lwt>,
}

/// A compiled, checked profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub version: u32,
    /// `name@version`, stored with every event it maps.
    pub id: String,
    pub vendor: String,
    pub description: String,
    pub kind: DeviceKind,
    pub models: Vec<String>,
    pub routes: Vec<Route>,
    pub identity: Identity,
    pub charset: Charset,
    pub decode: Vec<Decode>,
    pub time: Option<TimeRule>,
    pub time_rules: time::Rules,
    pub sequence: Option<Expr>,
    pub dedup: Vec<Expr>,
    pub tables: Tables,
    pub rules: Vec<Rule>,
    pub liveness: Liveness,
    pub privacy_hash: Vec<Vec<String>>,
    pub privacy_drop: Vec<Vec<String>>,
    pub tests: Vec<spec::TestSpec>,
    /// What of a message the profile reads (the rest is skipped when parsing).
    pub need: sparse::Need,
}

/// Largest image a profile takes unless it says otherwise.
pub const DEFAULT_MEDIA_MAX: u64 = 4 << 20;

impl Profile {
    /// Whether `model` matches one of the profile's model globs (`*` and `?`).
    pub fn fits_model(&self, model: &str) -> bool {
        self.models.iter().any(|g| glob(g, model))
    }
}

/// The device a route names by itself (a last-will topic carries no body): the identity key
/// evaluated with the captures only.
pub fn identity_from_route(p: &Profile, captures: &[(String, String)]) -> Option<String> {
    let empty = Value::Null;
    let scope = expr::Scope { record: &empty, message: &empty, captures, tables: &p.tables };
    let v = p.identity.key.eval(&scope);
    expr::as_text(&v).map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with one star backtrack point: linear-ish, no recursion.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi].eq_ignore_ascii_case(&t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Compiles and checks a profile file. Every problem names its key.
pub fn compile(f: spec::ProfileFile) -> Result<Profile, ProfileError> {
    let name = f.profile.clone();
    let err = |key: &str, message: String| ProfileError { profile: name.clone(), key: key.to_owned(), message };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(err("profile", format!("{name:?}: use letters, digits, '.', '-' and '_'")));
    }
    let kind = DeviceKind::parse(&f.kind)
        .ok_or_else(|| err("kind", format!("{:?} is not one of {}", f.kind, DeviceKind::names())))?;
    let ex = |key: &str, text: &str| expr::parse(text).map_err(|e| err(key, e.to_string()));
    let path = |key: &str, text: &str| match expr::parse(text) {
        Ok(Expr::Path(Root::Record, steps)) => Ok(steps),
        Ok(_) => Err(err(key, format!("`{text}` must be a `$.` path"))),
        Err(e) => Err(err(key, e.to_string())),
    };

    if f.routes.is_empty() {
        return Err(err("routes", "at least one route (mqtt = \"...\" or http = \"...\")".into()));
    }
    let mut routes = Vec::new();
    for (i, r) in f.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let (ingress, text) = match (&r.mqtt, &r.http) {
            (Some(t), None) => (Ingress::Mqtt, t),
            (None, Some(t)) => (Ingress::Http, t),
            _ => return Err(err(&key, "give exactly one of mqtt or http".into())),
        };
        let pattern = Pattern::parse(text).map_err(|m| err(&key, m))?;
        routes.push(Route { ingress, pattern });
    }

    let identity = Identity {
        key: ex("identity.key", &f.identity.key)?,
        site: f.identity.site.as_deref().map(|t| ex("identity.site", t)).transpose()?,
        name: f.identity.name.as_deref().map(|t| ex("identity.name", t)).transpose()?,
        model: f.identity.model.as_deref().map(|t| ex("identity.model", t)).transpose()?,
        firmware: f.identity.firmware.as_deref().map(|t| ex("identity.firmware", t)).transpose()?,
        object: f.identity.object.as_deref().map(|t| ex("identity.object", t)).transpose()?,
    };
    let charset = match f.charset.as_deref().unwrap_or("auto") {
        "auto" => Charset::Auto,
        "utf-8" | "utf8" => Charset::Utf8,
        "gbk" | "gb2312" | "gb18030" => Charset::Gbk,
        other => return Err(err("charset", format!("{other:?} is not auto, utf-8 or gbk"))),
    };

    let mut decode = Vec::new();
    let mut each_seen = false;
    for (i, d) in f.decode.iter().enumerate() {
        let key = format!("decode[{i}]");
        let step = match d {
            spec::DecodeSpec::Word(w) if w == "json" => Decode::Json,
            spec::DecodeSpec::Word(w) => {
                return Err(err(
                    &key,
                    format!("unknown step {w:?} (json, or a table: unwrap, base64, json_text, each)"),
                ))
            }
            spec::DecodeSpec::Step(s) => {
                let given = [&s.unwrap, &s.base64, &s.json_text, &s.each].iter().filter(|x| x.is_some()).count();
                if given != 1 {
                    return Err(err(&key, "give exactly one of unwrap, base64, json_text, each".into()));
                }
                if let Some(p) = &s.unwrap {
                    Decode::Unwrap(path(&key, p)?)
                } else if let Some(p) = &s.base64 {
                    Decode::Base64(path(&key, p)?)
                } else if let Some(p) = &s.json_text {
                    Decode::JsonText(path(&key, p)?)
                } else if let Some(p) = &s.each {
                    if each_seen {
                        return Err(err(&key, "only one `each` (fan-out) per profile".into()));
                    }
                    each_seen = true;
                    Decode::Each(path(&key, p)?)
                } else {
                    return Err(err(&key, "empty step".into()));
                }
            }
        };
        decode.push(step);
    }
    if !matches!(decode.first(), Some(Decode::Json)) {
        decode.insert(0, Decode::Json);
    }

    let mut time_rules = time::Rules::default();
    let time = match &f.time {
        None => None,
        Some(t) => {
            let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if let Some(d) = t.max_future {
                time_rules.max_future_ms = ms(d);
            }
            if let Some(d) = t.max_past {
                time_rules.max_past_ms = ms(d);
            }
            if let Some(d) = t.replay_after {
                time_rules.replay_after_ms = ms(d);
            }
            if let Some(c) = &t.clock_reset_before {
                let day = chrono::NaiveDate::parse_from_str(c, "%Y-%m-%d")
                    .map_err(|e| err("time.clock_reset_before", format!("{c:?}: {e} (YYYY-MM-DD)")))?;
                time_rules.clock_reset_before_ms =
                    day.and_hms_opt(0, 0, 0).map_or(0, |d| d.and_utc().timestamp_millis());
            }
            Some(TimeRule {
                field: ex("time.field", &t.field)?,
                format: time::Format::parse(&t.format).map_err(|m| err("time.format", m))?,
                zone: time::Zone::parse(&t.zone).map_err(|m| err("time.zone", m))?,
            })
        }
    };

    let mut tables: Tables = HashMap::new();
    for (tname, rows) in &f.tables {
        let mut t = HashMap::new();
        for (k, v) in rows {
            let key = expr::table_key(&Value::String(k.clone())).unwrap_or_else(|| k.clone());
            let v = serde_json::to_value(v).map_err(|e| err(&format!("tables.{tname}.{k}"), e.to_string()))?;
            t.insert(key, v);
        }
        tables.insert(tname.clone(), t);
    }

    let mut rules = Vec::new();
    for (i, e) in f.emit.iter().enumerate() {
        let key = format!("emit[{i}]");
        let action = match e.event.as_str() {
            "heartbeat" => Action::Heartbeat,
            "drop" => Action::Drop(e.reason.clone().unwrap_or_else(|| "dropped_by_profile".into())),
            k => Action::Emit(
                EventKind::parse(k).filter(|k| !matches!(k, EventKind::Status | EventKind::OnlineRate)).ok_or_else(
                    || {
                        err(
                            &format!("{key}.event"),
                            format!("{k:?} is not access, vehicle_pass, face_capture, alarm, heartbeat or drop"),
                        )
                    },
                )?,
            ),
        };
        let mut map = Vec::new();
        for (field, text) in &e.map {
            let fpath: Vec<String> = field.split('.').map(str::to_owned).collect();
            if fpath.iter().any(String::is_empty) || field == "kind" {
                return Err(err(&format!("{key}.map.{field}"), "not a body field".into()));
            }
            map.push((fpath, ex(&format!("{key}.map.{field}"), text)?));
        }
        let default_max = f
            .media
            .max_bytes
            .as_deref()
            .map(crate::config::parse_bytes)
            .transpose()
            .map_err(|m| err("media.max_bytes", m))?
            .unwrap_or(DEFAULT_MEDIA_MAX);
        let mut media = Vec::new();
        for (j, m) in e.media.iter().enumerate() {
            let mkey = format!("{key}.media[{j}]");
            let role_text = if m.role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                format!("'{}'", m.role)
            } else {
                m.role.clone()
            };
            media.push(MediaRule {
                each: m.each.as_deref().map(|p| path(&format!("{mkey}.each"), p)).transpose()?,
                data: ex(&format!("{mkey}.data"), &m.data)?,
                role: ex(&format!("{mkey}.role"), &role_text)?,
                max_bytes: m
                    .max_bytes
                    .as_deref()
                    .map(crate::config::parse_bytes)
                    .transpose()
                    .map_err(|x| err(&format!("{mkey}.max_bytes"), x))?
                    .unwrap_or(default_max),
            });
        }
        let rule = Rule {
            when: e.when.as_deref().map(|t| ex(&format!("{key}.when"), t)).transpose()?,
            action,
            offline_replay: e.offline_replay.as_deref().map(|t| ex(&format!("{key}.offline_replay"), t)).transpose()?,
            map,
            media,
        };
        if let Action::Emit(kind) = rule.action {
            check_fields(kind, &rule.map).map_err(|m| err(&format!("{key}.map"), m))?;
        }
        rules.push(rule);
    }
    if rules.is_empty() {
        return Err(err("emit", "at least one rule".into()));
    }

    let interval = f.liveness.expect_every.unwrap_or(std::time::Duration::from_secs(60));
    let misses = f.liveness.misses.unwrap_or(3).clamp(1, 100);
    let lwt = match &f.liveness.lwt {
        None => None,
        Some(l) => Some(Lwt {
            pattern: Pattern::parse(&l.topic).map_err(|m| err("liveness.lwt.topic", m))?,
            online: l.online.clone(),
            offline: l.offline.clone(),
        }),
    };
    let liveness = Liveness {
        timeout_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX / 4).saturating_mul(i64::from(misses)),
        lwt,
    };
    let split = |v: &Vec<String>| v.iter().map(|p| p.split('.').map(str::to_owned).collect()).collect();

    let profile = Profile {
        id: format!("{}@{}", f.profile, f.version),
        name: f.profile.clone(),
        version: f.version,
        vendor: f.vendor.clone(),
        description: f.description.clone(),
        kind,
        models: f.models.clone(),
        routes,
        identity,
        charset,
        decode,
        time,
        time_rules,
        sequence: f.sequence.as_deref().map(|t| ex("sequence", t)).transpose()?,
        dedup: f.dedup.iter().enumerate().map(|(i, t)| ex(&format!("dedup[{i}]"), t)).collect::<Result<_, _>>()?,
        tables,
        rules,
        liveness,
        privacy_hash: split(&f.privacy.hash),
        privacy_drop: split(&f.privacy.drop),
        tests: f.tests.clone(),
        need: sparse::Need::default(),
    };
    check_names(&profile).map_err(|(k, m)| err(&k, m))?;
    let need = needs(&profile);
    Ok(Profile { need, ..profile })
}

/// The paths a profile reads, for sparse parsing: decode targets in full, every expression's
/// paths (relative to the record after `unwrap` / `each`), media inside their arrays, and
/// the whole record when the dedup key is a hash of it.
fn needs(p: &Profile) -> sparse::Need {
    let mut need = sparse::Need::default();
    let mut record: Vec<Step> = Vec::new();
    for d in &p.decode {
        match d {
            Decode::Json => {}
            Decode::Unwrap(path) => record.extend(path.iter().cloned()),
            Decode::Base64(path) | Decode::JsonText(path) => {
                let full: Vec<Step> = record.iter().chain(path).cloned().collect();
                need.add(&full);
            }
            Decode::Each(path) => {
                record.extend(path.iter().cloned());
                record.push(Step::Index(0));
            }
        }
    }
    if p.dedup.is_empty() {
        need.add(&record);
    }
    let id = &p.identity;
    let mut exprs: Vec<&Expr> = vec![&id.key];
    exprs.extend(id.site.iter().chain(&id.name).chain(&id.model).chain(&id.firmware).chain(&id.object));
    exprs.extend(p.time.as_ref().map(|t| &t.field));
    exprs.extend(p.sequence.iter().chain(&p.dedup));
    for r in &p.rules {
        exprs.extend(r.when.iter().chain(&r.offline_replay));
        exprs.extend(r.map.iter().map(|(_, e)| e));
        for m in &r.media {
            let mut inner = record.clone();
            if let Some(each) = &m.each {
                inner.extend(each.iter().cloned());
                inner.push(Step::Index(0));
            }
            need.add_expr(&m.data, &inner);
            need.add_expr(&m.role, &inner);
        }
    }
    for e in exprs {
        need.add_expr(e, &record);
    }
    need
}

/// Every body field a rule maps must exist in the kind's body: a dry run with each mapped
/// field set to null (which every field accepts) catches typos at load, not at 3 a.m.
fn check_fields(kind: EventKind, map: &[(Vec<String>, Expr)]) -> Result<(), String> {
    let mut body = serde_json::Map::new();
    body.insert("kind".into(), Value::String(kind.as_str().into()));
    if kind == EventKind::Access {
        body.insert("result".into(), Value::String("granted".into()));
    }
    for (path, _) in map {
        if path.len() == 1 && path[0] == "result" {
            continue;
        }
        map::set_path(&mut body, path, Value::Null);
    }
    serde_json::from_value::<crate::event::EventBody>(Value::Object(body)).map(|_| ()).map_err(|e| e.to_string())
}

/// Captures used must come from a route; tables used must be defined.
fn check_names(p: &Profile) -> Result<(), (String, String)> {
    let mut caps = Vec::new();
    let mut tables = Vec::new();
    let mut all: Vec<&Expr> = vec![&p.identity.key];
    all.extend(
        p.identity
            .site
            .iter()
            .chain(&p.identity.name)
            .chain(&p.identity.model)
            .chain(&p.identity.firmware)
            .chain(&p.identity.object),
    );
    all.extend(p.time.as_ref().map(|t| &t.field));
    all.extend(p.sequence.iter());
    all.extend(p.dedup.iter());
    for r in &p.rules {
        all.extend(r.when.iter().chain(&r.offline_replay));
        all.extend(r.map.iter().map(|(_, e)| e));
        for m in &r.media {
            all.push(&m.data);
            all.push(&m.role);
        }
    }
    for e in all {
        e.names(&mut caps, &mut tables);
    }
    for t in tables {
        if !p.tables.contains_key(&t) {
            return Err(("tables".into(), format!("table {t:?} is used but not defined")));
        }
    }
    // A capture must come from at least one route (where another route lacks it, it is null).
    for c in caps {
        if !p.routes.iter().any(|r| r.pattern.captures().any(|n| n == c)) {
            return Err(("routes".into(), format!("`{{{c}}}` is used but no route captures it")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("DS-K1T*", "ds-k1t341m"));
        assert!(glob("*plate*", "vz-plate-3"));
        assert!(glob("R?", "R3"));
        assert!(!glob("R?", "R33"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acd"));
    }

    fn file(extra: &str) -> spec::ProfileFile {
        let text = format!(
            r#"
profile = "t.x"
version = 1
kind = "sensor"
routes = [{{ mqtt = "t/{{sn}}/up" }}]
identity = {{ key = "{{sn}}" }}
{extra}
"#
        );
        toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn compile_names_the_bad_key() {
        let ok = compile(file("[[emit]]\nevent = \"alarm\"\nmap = { category = \"'smoke'\" }")).expect("ok");
        assert_eq!(ok.id, "t.x@1");
        let typo = compile(file("[[emit]]\nevent = \"alarm\"\nmap = { categry = \"'smoke'\" }")).expect_err("typo");
        assert_eq!(typo.key, "emit[0].map");
        assert!(typo.message.contains("categry"), "{typo}");
        let cap =
            compile(file("[[emit]]\nevent = \"alarm\"\nmap = { source_id = \"{{site}}\" }")).expect_err("capture");
        assert!(cap.message.contains("site"), "{cap}");
        let table =
            compile(file("[[emit]]\nevent = \"alarm\"\nmap = { category = \"lookup(nope, 1)\" }")).expect_err("table");
        assert!(table.message.contains("nope"), "{table}");
        let kind = compile(file("[[emit]]\nevent = \"status\"")).expect_err("status is ours");
        assert_eq!(kind.key, "emit[0].event");
        let expr = compile(file("[[emit]]\nevent = \"alarm\"\nwhen = \"$.a ==\"")).expect_err("expr");
        assert_eq!(expr.key, "emit[0].when");
    }
}
