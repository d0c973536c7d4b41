//! MANSCDP (`Application/MANSCDP+xml`) bodies: charset decoding (strict UTF-8 first, then
//! GB18030 — a superset of GB2312/GBK — whatever the declaration says; never drop a message
//! over its charset) and a bounded reader for the envelope (root `Query`/`Control`/`Notify`/
//! `Response`, `CmdType`, `SN`, `DeviceID`) and the Keepalive `Status`. Catalog, DeviceInfo,
//! DeviceStatus and Alarm bodies come next. Pure: no sockets.

use quick_xml::events::Event;
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

/// Decodes a body: UTF-8 if it is valid UTF-8, GB18030 otherwise (with replacement).
pub fn decode(body: &[u8]) -> (String, Charset) {
    match std::str::from_utf8(body) {
        Ok(s) => (s.to_owned(), Charset::Utf8),
        Err(_) => {
            let (text, _, _) = encoding_rs::GB18030.decode(body);
            (text.into_owned(), Charset::Gb18030)
        }
    }
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

/// Reads the envelope of a MANSCDP body (already decoded), bounded in depth and length.
/// Accepts the attribute form (`<Response CmdType=".." SN="..">`) too.
pub fn envelope(xml: &str) -> Result<Envelope, Error> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    reader.config_mut().check_end_names = false;
    let mut env = Envelope::default();
    let mut path: Vec<String> = Vec::new();
    let mut events = 0usize;
    loop {
        events += 1;
        if events > MAX_EVENTS {
            return Err(Error::TooLong);
        }
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                if path.len() >= MAX_DEPTH {
                    return Err(Error::TooDeep);
                }
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if path.is_empty() {
                    env.root = name.clone();
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
                path.push(name);
            }
            Ok(Event::Empty(e)) if path.is_empty() => {
                env.root = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
            }
            Ok(Event::End(_)) => {
                path.pop();
            }
            Ok(Event::Text(t)) if path.len() == 2 => {
                // Unescaped `&` (Hikvision) fails unescaping: keep the raw text then.
                let text =
                    t.unescape().map(|c| c.into_owned()).unwrap_or_else(|_| String::from_utf8_lossy(&t).into_owned());
                match path[1].as_str() {
                    "CmdType" => env.cmd_type = text,
                    "SN" => env.sn = text.trim().parse().ok(),
                    "DeviceID" => env.device_id = text,
                    "Status" => env.status = Some(text),
                    _ => {}
                }
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => return Err(Error::Xml(e.to_string().chars().take(120).collect())),
        }
    }
    if env.root.is_empty() {
        return Err(Error::Empty);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_in_gb2312_and_utf8() {
        let utf8 = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>43</SN>\r\n<DeviceID>42010400001320000001</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n";
        let (text, cs) = decode(utf8.as_bytes());
        assert_eq!(cs, Charset::Utf8);
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

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let (text, _) = decode(&bytes);
            let _ = envelope(&text);
        }
    }
}
