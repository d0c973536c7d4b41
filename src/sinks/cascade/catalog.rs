//! What vigil tells an upper platform about its channels: the `Response/Catalog` MESSAGE
//! bodies (GB/T 28181 §9.2.3 / A.2.6), `SumNum` the whole, each body a batch of items so a
//! catalog of thousands goes as paced MESSAGEs the upper can take; and the `DeviceInfo` and
//! `DeviceStatus` answers about vigil itself. Pure: the items come in from the wiring
//! (registry and presence), bytes go out in GB 2312 (GB 18030).

use crate::protocol::manscdp::{self, Charset};

/// One channel as the upper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    /// ON while the channel (and the device it is under) is online.
    pub on: bool,
    /// Where its video comes from when the upper plays it; `None`: it has none.
    pub video: Option<Video>,
}

/// Where a channel's video comes from, for an upper platform's INVITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Video {
    /// A stream vigil pulls always (an RTSP camera), by its key on the stream board.
    Pulled(String),
    /// A GB/T 28181 channel, pulled from its device while someone plays it.
    Gb { device: String, channel: String },
}

/// Text for an XML element or attribute value.
pub(super) fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The catalog answering query `sn`, as bodies of at most `batch` items (one empty body when
/// there are none: the upper still learns `SumNum` 0).
pub fn bodies(sn: u64, platform_id: &str, items: &[Item], batch: usize) -> Vec<Vec<u8>> {
    let total = items.len();
    let chunks: Vec<&[Item]> = if items.is_empty() { vec![&[]] } else { items.chunks(batch.max(1)).collect() };
    chunks
        .into_iter()
        .map(|chunk| {
            let mut text = format!(
                "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{platform_id}</DeviceID>\r\n<SumNum>{total}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
                chunk.len()
            );
            for i in chunk {
                let civil = i.id.get(..6).unwrap_or("");
                text.push_str(&format!(
                    "<Item>\r\n<DeviceID>{id}</DeviceID>\r\n<Name>{name}</Name>\r\n<Manufacturer>{m}</Manufacturer>\r\n<Model>{model}</Model>\r\n<Owner>Owner</Owner>\r\n<CivilCode>{civil}</CivilCode>\r\n<Address>{name}</Address>\r\n<Parental>0</Parental>\r\n<ParentID>{platform_id}</ParentID>\r\n<SafetyWay>0</SafetyWay>\r\n<RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n<Status>{status}</Status>\r\n</Item>\r\n",
                    id = escape(&i.id),
                    name = escape(&i.name),
                    m = escape(&i.manufacturer),
                    model = escape(&i.model),
                    status = if i.on { "ON" } else { "OFF" },
                ));
            }
            text.push_str("</DeviceList>\r\n</Response>\r\n");
            manscdp::encode(&text, Charset::Gb18030)
        })
        .collect()
}

/// Catalog `Notify` bodies telling the upper channels' status (`Event` ON or OFF), at most
/// `batch` items each.
pub fn status_notifies(sn: u64, platform_id: &str, changes: &[(String, bool)], batch: usize) -> Vec<Vec<u8>> {
    changes
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut text = format!(
                "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{platform_id}</DeviceID>\r\n<SumNum>{}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
                chunk.len(),
                chunk.len()
            );
            for (id, on) in chunk {
                text.push_str(&format!(
                    "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Event>{}</Event>\r\n</Item>\r\n",
                    escape(id),
                    if *on { "ON" } else { "OFF" }
                ));
            }
            text.push_str("</DeviceList>\r\n</Notify>\r\n");
            manscdp::encode(&text, Charset::Gb18030)
        })
        .collect()
}

/// The answer body to a catalog SUBSCRIBE.
pub fn subscribed(sn: u64, platform_id: &str) -> Vec<u8> {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{platform_id}</DeviceID>\r\n<Result>OK</Result>\r\n</Response>\r\n"
    );
    manscdp::encode(&text, Charset::Gb18030)
}

/// `Response/DeviceInfo` about vigil (the lower platform) with its channel count.
pub fn device_info(sn: u64, platform_id: &str, name: &str, channels: usize) -> Vec<u8> {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>DeviceInfo</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{platform_id}</DeviceID>\r\n<Result>OK</Result>\r\n<DeviceName>{}</DeviceName>\r\n<Manufacturer>vigil</Manufacturer>\r\n<Model>vigil gateway</Model>\r\n<Firmware>{}</Firmware>\r\n<Channel>{channels}</Channel>\r\n</Response>\r\n",
        escape(name),
        env!("CARGO_PKG_VERSION")
    );
    manscdp::encode(&text, Charset::Gb18030)
}

/// `Response/DeviceStatus` about vigil: online, working.
pub fn device_status(sn: u64, platform_id: &str) -> Vec<u8> {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>DeviceStatus</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{platform_id}</DeviceID>\r\n<Result>OK</Result>\r\n<Online>ONLINE</Online>\r\n<Status>OK</Status>\r\n</Response>\r\n"
    );
    manscdp::encode(&text, Charset::Gb18030)
}

/// `Response/RecordInfo` for `channel`: vigil keeps no recordings, and says so (`SumNum` 0)
/// rather than leaving the upper's query to time out.
pub fn record_info(sn: u64, channel: &str, name: &str) -> Vec<u8> {
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>RecordInfo</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n<SumNum>0</SumNum>\r\n<RecordList Num=\"0\">\r\n</RecordList>\r\n</Response>\r\n",
        escape(channel),
        escape(name)
    );
    manscdp::encode(&text, Charset::Gb18030)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_info_says_there_are_no_recordings() {
        let body = record_info(7, "42010400001310000001", "东门");
        let (text, _) = manscdp::decode(&body);
        for part in [
            "<CmdType>RecordInfo</CmdType>",
            "<SN>7</SN>",
            "<DeviceID>42010400001310000001</DeviceID>",
            "<SumNum>0</SumNum>",
            "<Name>东门</Name>",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
    }

    fn item(n: u32, on: bool) -> Item {
        Item {
            id: format!("42010400001310000{n:03}"),
            name: format!("东门 & 北门 {n}"),
            manufacturer: "Hikvision".into(),
            model: "DS-2CD".into(),
            on,
            video: None,
        }
    }

    #[test]
    fn the_catalog_goes_in_batches_each_saying_the_whole_and_vigils_own_reader_reads_it() {
        let items: Vec<Item> = (0..19).map(|n| item(n, n % 3 != 0)).collect();
        let bodies = bodies(7, "42010400002000000001", &items, 8);
        assert_eq!(bodies.len(), 3);
        let mut seen = Vec::new();
        for b in &bodies {
            let (text, cs) = manscdp::decode(b);
            assert_eq!(cs, Charset::Gb18030, "declared GB2312");
            let c = manscdp::catalog(&text).expect("the device-side catalog reader reads what vigil sends upward");
            assert_eq!((c.sn, c.sum_num), (Some(7), 19));
            seen.extend(c.items);
        }
        assert_eq!(seen.len(), 19);
        assert_eq!(seen[4].name, "东门 & 北门 4", "escaped on the way, read back whole");
        assert_eq!(seen.iter().filter(|c| c.status_on).count(), 12);
        let empty = super::bodies(8, "42010400002000000001", &[], 8);
        let (text, _) = manscdp::decode(&empty[0]);
        assert_eq!(manscdp::catalog(&text).map(|c| (c.sum_num, c.items.len())).ok(), Some((0, 0)));
    }
}
