//! MANSCDP (`Application/MANSCDP+xml`) bodies: charset decoding (strict UTF-8 first, then
//! GB18030 — a superset of GB2312/GBK — whatever the declaration says; never drop a message
//! over its charset), one bounded walker (depth, length) and small readers over it: the
//! envelope (root `Query`/`Control`/`Notify`/`Response`, `CmdType`, `SN`, `DeviceID`, the
//! Keepalive `Status`), Catalog (responses and subscription notifies), DeviceInfo,
//! DeviceStatus, ConfigDownload/BasicParam and Alarm; and the bodies vigil sends (`Query`,
//! `Response/Alarm`) in the device's charset. Pure: no sockets.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Deepest nesting accepted (catalog items are 4 deep; `Info` adds one).
pub const MAX_DEPTH: usize = 16;
/// Most XML events read from one body (an XML bomb stops here).
pub const MAX_EVENTS: usize = 200_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("XML: {0}")]
    Xml(String),
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_EVENTS} XML events")]
    TooLong,
    #[error("no root element")]
    Empty,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Xml(_) => "bad_xml",
            Error::TooDeep => "xml_too_deep",
            Error::TooLong => "xml_too_long",
            Error::Empty => "empty_xml",
        }
    }
}

/// Which charset a body was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Gb18030,
}

impl Charset {
    /// The name written in an XML declaration.
    pub fn xml_name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Gb18030 => "GB2312",
        }
    }
}

/// The charset a body declares (`encoding="..."` in its XML declaration), if any: what the
/// device expects back. GB2312, GBK and GB18030 are all answered as GB2312.
pub fn declared(body: &[u8]) -> Option<Charset> {
    let head = &body[..body.len().min(100)];
    let at = head.windows(8).position(|w| w.eq_ignore_ascii_case(b"encoding"))?;
    let rest = &head[at + 8..];
    let start = rest.iter().position(|b| *b == b'"' || *b == b'\'')? + 1;
    let len = rest[start..].iter().position(|b| *b == b'"' || *b == b'\'')?;
    let name = &rest[start..start + len];
    if name.eq_ignore_ascii_case(b"utf-8") || name.eq_ignore_ascii_case(b"utf8") {
        Some(Charset::Utf8)
    } else if name.len() >= 2 && name[..2].eq_ignore_ascii_case(b"gb") {
        Some(Charset::Gb18030)
    } else {
        None
    }
}

/// Decodes a body: UTF-8 (borrowed, no copy) if it is valid UTF-8, GB18030 otherwise
/// (with replacement).
pub fn decode(body: &[u8]) -> (Cow<'_, str>, Charset) {
    match std::str::from_utf8(body) {
        Ok(s) => (Cow::Borrowed(s), Charset::Utf8),
        Err(_) => {
            let (text, _, _) = encoding_rs::GB18030.decode(body);
            (text, Charset::Gb18030)
        }
    }
}

/// The open elements from the root down, their names in one buffer (no allocation per
/// element). `path[i]` is the i-th name.
#[derive(Default)]
struct Path {
    names: String,
    ends: Vec<usize>,
}

impl Path {
    fn len(&self) -> usize {
        self.ends.len()
    }
    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    fn last(&self) -> Option<&str> {
        self.len().checked_sub(1).map(|i| &self[i])
    }
    fn push(&mut self, name: &[u8]) {
        self.names.push_str(&String::from_utf8_lossy(name));
        self.ends.push(self.names.len());
    }
    fn pop(&mut self) {
        self.ends.pop();
        self.names.truncate(self.ends.last().copied().unwrap_or(0));
    }
}

impl std::ops::Index<usize> for Path {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.names[start..self.ends[i]]
    }
}

/// One step of a bounded walk over a MANSCDP document. `path` holds the open elements from
/// the root down, the element itself included for `Start` and `End`.
enum Node<'p, 'e> {
    Start(&'p Path, &'p BytesStart<'e>),
    End(&'p Path),
    Text(&'p Path, Cow<'e, str>),
}

/// Walks a document, bounded in depth (`MAX_DEPTH`) and length (`MAX_EVENTS`), tolerating
/// mismatched end tags and unescaped `&` (Hikvision: the raw text is kept then). Every
/// reader below is a small function of the nodes it is handed.
fn walk(xml: &str, mut on: impl FnMut(Node<'_, '_>)) -> Result<(), Error> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    reader.config_mut().check_end_names = false;
    let mut path = Path::default();
    for _ in 0..MAX_EVENTS {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if path.len() >= MAX_DEPTH {
                    return Err(Error::TooDeep);
                }
                path.push(e.local_name().as_ref());
                on(Node::Start(&path, &e));
            }
            Ok(Event::Empty(e)) => {
                if path.len() >= MAX_DEPTH {
                    return Err(Error::TooDeep);
                }
                path.push(e.local_name().as_ref());
                on(Node::Start(&path, &e));
                on(Node::End(&path));
                path.pop();
            }
            Ok(Event::End(_)) => {
                if !path.is_empty() {
                    on(Node::End(&path));
                    path.pop();
                }
            }
            Ok(Event::Text(t)) => {
                let text = match t.unescape() {
                    Ok(c) => c,
                    Err(_) => Cow::Owned(String::from_utf8_lossy(&t).into_owned()),
                };
                on(Node::Text(&path, text));
            }
            Ok(Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(Error::Xml(e.to_string().chars().take(120).collect())),
        }
    }
    Err(Error::TooLong)
}

/// The envelope of a MANSCDP message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// `Query`, `Control`, `Notify` or `Response`.
    pub root: String,
    pub cmd_type: String,
    pub sn: Option<u64>,
    pub device_id: String,
    /// Keepalive's `Status` (`OK`, `ERROR`, some vendors `ON`).
    pub status: Option<String>,
}

/// Reads the envelope of a MANSCDP body (already decoded). Accepts the attribute form
/// (`<Response CmdType=".." SN="..">`) too. The common flat shape (a keepalive: a root with
/// plain-text children, no attributes, entities, comments or nesting) is read by a small
/// scanner; anything else by the bounded walker. Both give the same envelope (a property
/// test holds them to it).
pub fn envelope(xml: &str) -> Result<Envelope, Error> {
    match envelope_flat(xml) {
        Some(env) => Ok(env),
        None => envelope_walk(xml),
    }
}

/// An XML name vigil expects in MANSCDP: ASCII letters, digits, `_` and `-`.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The envelope of a flat document (`<?xml ..?><Root><Name>text</Name>...</Root>`), or
/// `None` when the document is anything else (the walker reads it then). Bounded by the
/// input: one forward pass, no allocation but the fields kept.
fn envelope_flat(xml: &str) -> Option<Envelope> {
    if memchr::memchr(b'&', xml.as_bytes()).is_some() || xml.contains("<!") {
        return None;
    }
    let mut rest = xml.trim_start();
    if let Some(r) = rest.strip_prefix("<?") {
        let end = r.find("?>")?;
        rest = r[end + 2..].trim_start();
    }
    let r = rest.strip_prefix('<')?;
    let close = r.find('>')?;
    let root = &r[..close];
    if !plain_name(root) {
        return None;
    }
    let mut env = Envelope { root: root.to_owned(), ..Default::default() };
    rest = &r[close + 1..];
    loop {
        let r = rest.trim_start().strip_prefix('<')?;
        if let Some(end) = r.strip_prefix('/') {
            let after = end.strip_prefix(root)?.strip_prefix('>')?;
            return after.trim().is_empty().then_some(env);
        }
        let close = r.find('>')?;
        let name = &r[..close];
        if !plain_name(name) {
            return None;
        }
        let body = &r[close + 1..];
        let lt = body.find('<')?;
        let text = body[..lt].trim();
        rest = body[lt..].strip_prefix("</")?.strip_prefix(name)?.strip_prefix('>')?;
        if text.is_empty() {
            continue; // as the walker: no text event for whitespace only
        }
        match name {
            "CmdType" => env.cmd_type = text.to_owned(),
            "SN" => env.sn = text.parse().ok(),
            "DeviceID" => env.device_id = text.to_owned(),
            "Status" => env.status = Some(text.to_owned()),
            _ => {}
        }
    }
}

fn envelope_walk(xml: &str) -> Result<Envelope, Error> {
    let mut env = Envelope::default();
    walk(xml, |node| match node {
        Node::Start(path, e) if path.len() == 1 => {
            env.root = path[0].to_owned();
            for a in e.attributes().flatten() {
                let v = String::from_utf8_lossy(&a.value).into_owned();
                match a.key.local_name().as_ref() {
                    b"CmdType" => env.cmd_type = v,
                    b"SN" => env.sn = v.trim().parse().ok(),
                    b"DeviceID" => env.device_id = v,
                    _ => {}
                }
            }
        }
        Node::Text(path, text) if path.len() == 2 => match &path[1] {
            "CmdType" => env.cmd_type = text.into_owned(),
            "SN" => env.sn = text.trim().parse().ok(),
            "DeviceID" => env.device_id = text.into_owned(),
            "Status" => env.status = Some(text.into_owned()),
            _ => {}
        },
        _ => {}
    })?;
    if env.root.is_empty() {
        return Err(Error::Empty);
    }
    Ok(env)
}

/// Most items read from one catalog message.
pub const MAX_ITEMS: usize = 2_000;

/// One channel (or civil/business node) of a catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogItem {
    pub device_id: String,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    /// `Status` ON/ONLINE (true) or OFF/OFFLINE (false); absent counts as ON.
    pub status_on: bool,
    pub parent_id: String,
    pub civil_code: String,
    pub address: String,
    pub longitude: String,
    pub latitude: String,
    /// In a catalog subscription `Notify`: `ON`, `OFF`, `VLOST`, `DEFECT`, `ADD`, `DEL` or
    /// `UPDATE`; empty in a query response.
    pub event: String,
}

/// One part of a catalog response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogResponse {
    pub sn: Option<u64>,
    pub device_id: String,
    pub sum_num: usize,
    pub items: Vec<CatalogItem>,
}

/// Trims, and treats the literal `null` some vendors send as empty.
fn clean(text: &str) -> String {
    let t = text.trim();
    if t.eq_ignore_ascii_case("null") {
        String::new()
    } else {
        t.to_owned()
    }
}

/// Reads a `Response/Catalog` (or catalog `Notify`) body: the envelope, `SumNum` and the
/// `DeviceList` items, at most `MAX_ITEMS` of them.
pub fn catalog(xml: &str) -> Result<CatalogResponse, Error> {
    let mut out = CatalogResponse::default();
    let mut item: Option<CatalogItem> = None;
    walk(xml, |node| match node {
        // The attribute form some devices write (`<Response CmdType="Catalog" SN="7">`, the
        // gb28181-rs device among them): SN and DeviceID on the root element.
        Node::Start(path, e) if path.len() == 1 => {
            for a in e.attributes().flatten() {
                let v = String::from_utf8_lossy(&a.value).into_owned();
                match a.key.local_name().as_ref() {
                    b"SN" => out.sn = v.trim().parse().ok(),
                    b"DeviceID" => out.device_id = clean(&v),
                    _ => {}
                }
            }
        }
        Node::Start(path, _)
            if path.len() >= 2 && &path[path.len() - 1] == "Item" && &path[path.len() - 2] == "DeviceList" =>
        {
            item = Some(CatalogItem { status_on: true, ..Default::default() });
        }
        Node::End(path) if path.last().is_some_and(|p| p == "Item") => {
            if let Some(it) = item.take() {
                if !it.device_id.is_empty() && out.items.len() < MAX_ITEMS {
                    out.items.push(it);
                }
            }
        }
        Node::Text(path, text) if path.len() == 2 => match &path[1] {
            "SN" => out.sn = text.trim().parse().ok(),
            "DeviceID" => out.device_id = clean(&text),
            "SumNum" => out.sum_num = text.trim().parse().unwrap_or(0),
            _ => {}
        },
        Node::Text(path, text) if path.len() == 4 => {
            let Some(it) = item.as_mut() else { return };
            match &path[3] {
                "DeviceID" => it.device_id = clean(&text),
                "Name" => it.name = clean(&text),
                "Manufacturer" => it.manufacturer = clean(&text),
                "Model" => it.model = clean(&text),
                "Status" => it.status_on = !matches!(text.trim().to_ascii_uppercase().as_str(), "OFF" | "OFFLINE"),
                "ParentID" => it.parent_id = clean(&text),
                "CivilCode" => it.civil_code = clean(&text),
                "Address" => it.address = clean(&text),
                "Longitude" => it.longitude = clean(&text),
                "Latitude" => it.latitude = clean(&text),
                "Event" => it.event = clean(&text).to_ascii_uppercase(),
                _ => {}
            }
        }
        _ => {}
    })?;
    Ok(out)
}

/// A `Response/DeviceInfo`: what the device says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device_name: String,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
    pub channels: Option<u32>,
}

/// Reads a `Response/DeviceInfo` body (top-level fields).
pub fn device_info(xml: &str) -> Result<DeviceInfo, Error> {
    let mut out = DeviceInfo::default();
    walk(xml, |node| {
        if let Node::Text(path, text) = node {
            if path.len() == 2 {
                let text = clean(&text);
                match &path[1] {
                    "DeviceName" => out.device_name = text,
                    "Manufacturer" => out.manufacturer = text,
                    "Model" => out.model = text,
                    "Firmware" => out.firmware = text,
                    "Channel" => out.channels = text.parse().ok(),
                    _ => {}
                }
            }
        }
    })?;
    Ok(out)
}

/// A `Response/DeviceStatus`: the device's own view of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    /// `Result`: OK or ERROR (the query itself).
    pub result: String,
    /// `Online`: ONLINE or OFFLINE (the device's view of its own link).
    pub online: String,
    /// `Status`: OK or ERROR (the device is working normally).
    pub status: String,
    /// `Encode`, `Record`: ON or OFF.
    pub encode: String,
    pub record: String,
    pub device_time: String,
    /// `Alarmstatus` items: (channel/alarm input id, `DutyStatus` ONDUTY/OFFDUTY/ALARM).
    pub alarms: Vec<(String, String)>,
}

/// Reads a `Response/DeviceStatus` body (at most `MAX_ITEMS` alarm-status items).
pub fn device_status(xml: &str) -> Result<DeviceStatus, Error> {
    let mut out = DeviceStatus::default();
    let mut item: Option<(String, String)> = None;
    walk(xml, |node| match node {
        Node::Start(path, _) if path.len() == 3 && &path[2] == "Item" => item = Some(Default::default()),
        Node::End(path) if path.len() == 3 && &path[2] == "Item" => {
            if let Some(it) = item.take().filter(|(id, _)| !id.is_empty()) {
                if out.alarms.len() < MAX_ITEMS {
                    out.alarms.push(it);
                }
            }
        }
        Node::Text(path, text) if path.len() == 4 && &path[2] == "Item" => {
            if let Some(it) = item.as_mut() {
                match &path[3] {
                    "DeviceID" => it.0 = clean(&text),
                    "DutyStatus" => it.1 = clean(&text).to_ascii_uppercase(),
                    _ => {}
                }
            }
        }
        Node::Text(path, text) if path.len() == 2 => {
            let text = clean(&text);
            match &path[1] {
                "Result" => out.result = text,
                "Online" => out.online = text.to_ascii_uppercase(),
                "Status" => out.status = text.to_ascii_uppercase(),
                "Encode" => out.encode = text.to_ascii_uppercase(),
                "Record" => out.record = text.to_ascii_uppercase(),
                "DeviceTime" => out.device_time = text,
                _ => {}
            }
        }
        _ => {}
    })?;
    Ok(out)
}

/// The keepalive and registration settings a device reports in `ConfigDownload/BasicParam`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BasicParam {
    pub name: String,
    /// `Expiration` (registration validity, s).
    pub expiration: Option<u64>,
    /// `HeartBeatInterval` (s) and `HeartBeatCount` (misses before offline).
    pub heartbeat_interval: Option<u64>,
    pub heartbeat_count: Option<u64>,
}

/// Reads the `BasicParam` block of a `Response/ConfigDownload` (`None` when it has none).
pub fn basic_param(xml: &str) -> Result<Option<BasicParam>, Error> {
    let mut out = BasicParam::default();
    let mut seen = false;
    walk(xml, |node| match node {
        Node::Start(path, _) if path.len() == 2 && &path[1] == "BasicParam" => seen = true,
        Node::Text(path, text) if path.len() == 3 && &path[1] == "BasicParam" => {
            let text = clean(&text);
            match &path[2] {
                "Name" => out.name = text,
                "Expiration" => out.expiration = text.parse().ok(),
                "HeartBeatInterval" => out.heartbeat_interval = text.parse().ok(),
                "HeartBeatCount" => out.heartbeat_count = text.parse().ok(),
                _ => {}
            }
        }
        _ => {}
    })?;
    Ok(seen.then_some(out))
}

/// A `Notify/Alarm` from a device.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alarm {
    pub sn: Option<u64>,
    /// The channel or alarm input that raised it.
    pub device_id: String,
    pub priority: Option<u8>,
    pub method: Option<u8>,
    /// `AlarmTime` as sent (`yyyy-MM-ddTHH:mm:ss`, local time, no zone).
    pub time: String,
    pub description: String,
    pub longitude: Option<f64>,
    pub latitude: Option<f64>,
    /// `Info/AlarmType`.
    pub alarm_type: Option<u16>,
}

/// Reads a `Notify/Alarm` body.
pub fn alarm(xml: &str) -> Result<Alarm, Error> {
    let mut out = Alarm::default();
    walk(xml, |node| match node {
        Node::Text(path, text) if path.len() == 2 => {
            let text = clean(&text);
            match &path[1] {
                "SN" => out.sn = text.parse().ok(),
                "DeviceID" => out.device_id = text,
                "AlarmPriority" => out.priority = text.parse().ok(),
                "AlarmMethod" => out.method = text.split(['/', ',']).next().and_then(|m| m.trim().parse().ok()),
                "AlarmTime" => out.time = text,
                "AlarmDescription" => out.description = text,
                "Longitude" => out.longitude = text.parse().ok().filter(|v: &f64| v.is_finite()),
                "Latitude" => out.latitude = text.parse().ok().filter(|v: &f64| v.is_finite()),
                _ => {}
            }
        }
        Node::Text(path, text) if path.len() == 3 && &path[1] == "Info" && &path[2] == "AlarmType" => {
            out.alarm_type = clean(&text).parse().ok();
        }
        _ => {}
    })?;
    Ok(out)
}

/// Encodes an XML text in `charset` (GB2312 bodies as GB18030, its superset).
pub fn encode(text: &str, charset: Charset) -> Vec<u8> {
    match charset {
        Charset::Utf8 => text.as_bytes().to_vec(),
        Charset::Gb18030 => encoding_rs::GB18030.encode(text).0.into_owned(),
    }
}

/// A `Query` body vigil sends (`Catalog`, `DeviceInfo`, `DeviceStatus`, `ConfigDownload`
/// with `ConfigType` BasicParam) in the device's charset (GB2312 unless it used UTF-8).
pub fn query(cmd_type: &str, sn: u64, device_id: &str, charset: Charset) -> Vec<u8> {
    let extra = if cmd_type == "ConfigDownload" { "<ConfigType>BasicParam</ConfigType>\r\n" } else { "" };
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"{cs}\"?>\r\n<Query>\r\n<CmdType>{cmd_type}</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n{extra}</Query>\r\n",
        cs = charset.xml_name()
    );
    encode(&text, charset)
}

/// `Control/DeviceControl` with `IFameCmd` (the standard's spelling): ask a channel for a
/// keyframe now, sent right after a live INVITE is answered so the first picture does not
/// wait for the encoder's GOP.
pub fn keyframe_request(sn: u64, channel_id: &str, charset: Charset) -> Vec<u8> {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"{cs}\"?>\r\n<Control>\r\n<CmdType>DeviceControl</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{channel_id}</DeviceID>\r\n<IFameCmd>Send</IFameCmd>\r\n</Control>\r\n",
        cs = charset.xml_name()
    );
    encode(&text, charset)
}

/// `Notify/Keepalive`: what vigil, as a lower platform, tells its upper platforms every
/// keepalive interval (and what devices tell vigil).
pub fn keepalive(sn: u64, device_id: &str, charset: Charset) -> Vec<u8> {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"{cs}\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n",
        cs = charset.xml_name()
    );
    encode(&text, charset)
}

/// The `Response/Alarm` vigil sends back once an alarm is stored (same SN and DeviceID).
pub fn alarm_response(sn: u64, device_id: &str, charset: Charset) -> Vec<u8> {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"{cs}\"?>\r\n<Response>\r\n<CmdType>Alarm</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{device_id}</DeviceID>\r\n<Result>OK</Result>\r\n</Response>\r\n",
        cs = charset.xml_name()
    );
    encode(&text, charset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_in_gb2312_and_utf8() {
        let utf8 = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>43</SN>\r\n<DeviceID>42010400001320000001</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n";
        let (text, cs) = decode(utf8.as_bytes());
        assert_eq!(cs, Charset::Utf8);
        assert_eq!(envelope_flat(&text).map(|e| e.sn), Some(Some(43)), "a keepalive takes the flat path");
        let e = envelope(&text).expect("parses");
        assert_eq!(
            (e.root.as_str(), e.cmd_type.as_str(), e.sn, e.device_id.as_str(), e.status.as_deref()),
            ("Notify", "Keepalive", Some(43), "42010400001320000001", Some("OK"))
        );
        // A GB2312 body (as most devices send) that declares UTF-8 anyway.
        let (gb, _, _) = encoding_rs::GB18030
            .encode("<Notify><CmdType>Keepalive</CmdType><SN>1</SN><DeviceID>古田一路</DeviceID></Notify>");
        let (text, cs) = decode(&gb);
        assert_eq!(cs, Charset::Gb18030);
        assert_eq!(envelope(&text).expect("parses").device_id, "古田一路");
    }

    #[test]
    fn attribute_form_and_unescaped_ampersands() {
        let e = envelope("<Response CmdType=\"Catalog\" SN=\"7\" DeviceID=\"x\"><Name>A & B</Name></Response>")
            .expect("parses");
        assert_eq!((e.cmd_type.as_str(), e.sn), ("Catalog", Some(7)));
    }

    #[test]
    fn bombs_and_deep_nesting_are_refused() {
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert_eq!(envelope(&deep).expect_err("too deep"), Error::TooDeep);
        assert!(envelope("").is_err());
        assert!(
            envelope("<Notify><CmdType>Keepalive</Notify").is_ok()
                || envelope("<Notify><CmdType>Keepalive</Notify").is_err()
        );
    }

    /// TV5 of shared/reference/gb28181.md §3.10 (wvp-GB28181-pro issue 554): a one-item
    /// catalog with `CivilCode` the literal `null` and a leading space in `Owner`.
    #[test]
    fn catalog_response_tv5() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n<CmdType>Catalog</CmdType>\n<SN>204070</SN>\n<DeviceID>11010800001181000110</DeviceID>\n<SumNum>1</SumNum>\n<DeviceList Num=\"1\">\n<Item>\n<DeviceID>11010800001311000054</DeviceID>\n<Name>Camera 01</Name>\n<Parental>0</Parental>\n<Manufacturer>Hikvision</Manufacturer>\n<Secrecy>0</Secrecy>\n<RegisterWay>1</RegisterWay>\n<Status>ON</Status>\n<Model>IP Camera</Model>\n<Owner> Owner</Owner>\n<CivilCode>null</CivilCode>\n<Address>Address</Address>\n</Item>\n</DeviceList>\n</Response>";
        let c = catalog(xml).expect("parses");
        assert_eq!(
            (c.sn, c.device_id.as_str(), c.sum_num, c.items.len()),
            (Some(204070), "11010800001181000110", 1, 1)
        );
        let it = &c.items[0];
        assert_eq!(
            (it.device_id.as_str(), it.name.as_str(), it.manufacturer.as_str(), it.status_on, it.civil_code.as_str()),
            ("11010800001311000054", "Camera 01", "Hikvision", true, "")
        );
        let q = query("Catalog", 7, "11010800001181000110", Charset::Gb18030);
        assert_eq!(envelope(&decode(&q).0).expect("our query parses").cmd_type, "Catalog");
    }

    /// The attribute form of the envelope (the `gb28181-rs` device writes its catalog so): SN
    /// and DeviceID on the root. Before 2026-12-06 the catalog reader missed that SN (the
    /// envelope did not), so parts of different answers could be assembled as one.
    #[test]
    fn catalog_response_in_attribute_form() {
        let xml = "<Response CmdType=\"Catalog\" SN=\"12\"><DeviceID>42010400001320000077</DeviceID><SumNum>1</SumNum><DeviceList Num=\"1\"><Item><DeviceID>42010400001310000077</DeviceID><Name>Camera</Name><Manufacturer>Unknown</Manufacturer><Model>Unknown</Model><Status>ON</Status></Item></DeviceList></Response>";
        let c = catalog(xml).expect("parses");
        assert_eq!((c.sn, c.device_id.as_str(), c.sum_num, c.items.len()), (Some(12), "42010400001320000077", 1, 1));
        assert_eq!(envelope(xml).expect("envelope").cmd_type, "Catalog");
    }

    #[test]
    fn device_info_response() {
        let xml = "<?xml version=\"1.0\" encoding=\"GB2312\"?><Response><CmdType>DeviceInfo</CmdType><SN>17</SN><DeviceID>42010400001180000500</DeviceID><DeviceName>古田 NVR</DeviceName><Result>OK</Result><Manufacturer>Hikvision</Manufacturer><Model>DS-7608N</Model><Firmware>V4.30.005</Firmware><Channel>8</Channel></Response>";
        let i = device_info(xml).expect("parses");
        assert_eq!(
            (i.device_name.as_str(), i.manufacturer.as_str(), i.model.as_str(), i.firmware.as_str(), i.channels),
            ("古田 NVR", "Hikvision", "DS-7608N", "V4.30.005", Some(8))
        );
    }

    #[test]
    fn device_status_basic_param_and_alarm() {
        let xml = "<?xml version=\"1.0\" encoding=\"GB2312\"?><Response><CmdType>DeviceStatus</CmdType><SN>3</SN><DeviceID>42010400001320000001</DeviceID><Result>OK</Result><Online>ONLINE</Online><Status>OK</Status><Encode>ON</Encode><Record>OFF</Record><DeviceTime>2026-11-27T10:00:00</DeviceTime><Alarmstatus Num=\"1\"><Item><DeviceID>42010400001340000001</DeviceID><DutyStatus>OFFDUTY</DutyStatus></Item></Alarmstatus></Response>";
        let s = device_status(xml).expect("parses");
        assert_eq!((s.online.as_str(), s.status.as_str(), s.record.as_str()), ("ONLINE", "OK", "OFF"));
        assert_eq!(s.alarms, vec![("42010400001340000001".to_owned(), "OFFDUTY".to_owned())]);

        let xml = "<Response><CmdType>ConfigDownload</CmdType><SN>4</SN><DeviceID>x</DeviceID><Result>OK</Result><BasicParam><Name>IPC</Name><Expiration>3600</Expiration><HeartBeatInterval>30</HeartBeatInterval><HeartBeatCount>5</HeartBeatCount></BasicParam></Response>";
        let p = basic_param(xml).expect("parses").expect("has BasicParam");
        assert_eq!((p.expiration, p.heartbeat_interval, p.heartbeat_count), (Some(3600), Some(30), Some(5)));
        assert_eq!(basic_param("<Response><CmdType>ConfigDownload</CmdType></Response>").expect("parses"), None);

        let (gb, _, _) = encoding_rs::GB18030.encode("<?xml version=\"1.0\" encoding=\"GB2312\"?><Notify><CmdType>Alarm</CmdType><SN>77</SN><DeviceID>42010400001310000001</DeviceID><AlarmPriority>1</AlarmPriority><AlarmMethod>5</AlarmMethod><AlarmTime>2026-11-27T10:01:02</AlarmTime><AlarmDescription>区域入侵</AlarmDescription><Longitude>114.25</Longitude><Latitude>30.58</Latitude><Info><AlarmType>6</AlarmType></Info></Notify>");
        assert_eq!(declared(&gb), Some(Charset::Gb18030));
        let a = alarm(&decode(&gb).0).expect("parses");
        assert_eq!(
            (a.sn, a.priority, a.method, a.alarm_type, a.description.as_str(), a.time.as_str()),
            (Some(77), Some(1), Some(5), Some(6), "区域入侵", "2026-11-27T10:01:02")
        );
        let back = alarm_response(77, "42010400001310000001", Charset::Gb18030);
        let e = envelope(&decode(&back).0).expect("our answer parses");
        assert_eq!((e.root.as_str(), e.cmd_type.as_str(), e.sn), ("Response", "Alarm", Some(77)));
        assert_eq!(declared(b"<?xml version='1.0' encoding='UTF-8'?><Notify/>"), Some(Charset::Utf8));
        assert_eq!(declared(b"<Notify/>"), None);
        let q = query("ConfigDownload", 9, "x", Charset::Utf8);
        assert!(String::from_utf8_lossy(&q).contains("<ConfigType>BasicParam</ConfigType>"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_catalogs_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let (text, _) = decode(&bytes);
            let _ = catalog(&text);
        }

        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let _ = declared(&bytes);
            let (text, _) = decode(&bytes);
            let _ = envelope(&text);
            let _ = device_info(&text);
            let _ = device_status(&text);
            let _ = basic_param(&text);
            let _ = alarm(&text);
        }

        /// The flat scanner and the walker agree wherever the scanner answers.
        #[test]
        fn flat_envelope_agrees_with_the_walker(
            decl in proptest::bool::ANY,
            root in "(Notify|Response|Query|X)",
            children in proptest::collection::vec(("(CmdType|SN|DeviceID|Status|Info|a-b)", "[ a-zA-Z0-9<>&/古]{0,10}"), 0..6),
            pad in "[ \r\n\t]{0,2}",
            close in "(Notify|Response|Query|X)",
        ) {
            let mut xml = String::new();
            if decl {
                xml.push_str("<?xml version=\"1.0\" encoding=\"GB2312\"?>");
            }
            xml.push_str(&format!("{pad}<{root}>{pad}"));
            for (name, text) in &children {
                xml.push_str(&format!("<{name}>{text}</{name}>{pad}"));
            }
            xml.push_str(&format!("</{close}>{pad}"));
            if let Some(flat) = envelope_flat(&xml) {
                proptest::prop_assert_eq!(Ok(flat), envelope_walk(&xml), "{}", xml);
            }
        }

        /// Well-formed shapes with arbitrary text inside, so the readers' branches are reached.
        #[test]
        fn arbitrary_fields_never_panic(root in "(Notify|Response|Query)", cmd in "(Alarm|DeviceStatus|ConfigDownload|Catalog)", text in ".{0,64}") {
            let xml = format!("<{root}><CmdType>{cmd}</CmdType><SN>{text}</SN><AlarmTime>{text}</AlarmTime><Longitude>{text}</Longitude><BasicParam><HeartBeatInterval>{text}</HeartBeatInterval></BasicParam><Alarmstatus><Item><DeviceID>{text}</DeviceID></Item></Alarmstatus><Info><AlarmType>{text}</AlarmType></Info></{root}>");
            let _ = alarm(&xml);
            let _ = device_status(&xml);
            let _ = basic_param(&xml);
            let _ = catalog(&xml);
        }
    }
}
