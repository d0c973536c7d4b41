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
    /// The org of its device (placed in the tree by `arrange`).
    pub org: Option<String>,
    /// What `arrange` put it under: `ParentID` (`None`: the platform), `CivilCode` (`None`:
    /// the id's first 6 digits), `BusinessGroupID`.
    pub parent: Option<String>,
    pub civil: Option<String>,
    pub group: Option<String>,
    /// A node of the org tree rather than a channel (no status, no video).
    pub node: Option<Node>,
    /// While ON, what is wrong with its picture: `VLOST` (stalled) or `DEFECT` (diagnosis).
    pub fault: Option<&'static str>,
}

/// An org tree node in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// An administrative region, by its civil code (2–8 digits).
    Region,
    /// A business group (type 215).
    Group,
    /// A virtual organisation (type 216).
    VirtualOrg,
}

/// An org as the tree needs it: its region code (`gb_prefix`), and in `groups` its 20-digit
/// id (215 for a root, 216 below).
#[derive(Debug, Clone)]
pub struct OrgNode {
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    pub prefix: Option<String>,
    pub gb_id: Option<String>,
}

impl Item {
    /// A channel, not yet placed in the tree.
    pub fn channel(id: String, name: String, on: bool, video: Option<Video>, org: Option<String>) -> Item {
        Item {
            id,
            name,
            manufacturer: String::new(),
            model: String::new(),
            on,
            video,
            org,
            parent: None,
            civil: None,
            group: None,
            node: None,
            fault: None,
        }
    }

    /// The `Event` that tells the upper this item's state: OFF, VLOST, DEFECT or ON.
    pub fn event(&self) -> &'static str {
        match (self.on, self.fault) {
            (false, _) => "OFF",
            (true, Some(f)) => f,
            (true, None) => "ON",
        }
    }
}

/// Places the channels in the org tree `tree` asks for, and adds the tree's nodes in front
/// (only the orgs that hold a channel, with their ancestors): `Civil`, regions by civil code
/// and each channel's `CivilCode` its nearest org's; `Groups`, the root orgs as business
/// groups and the others as virtual orgs, each channel under its org's node; `Flat`, nothing.
pub fn arrange(
    items: Vec<Item>,
    orgs: &std::collections::HashMap<String, OrgNode>,
    tree: crate::config::CatalogTree,
) -> Vec<Item> {
    use crate::config::CatalogTree;
    if tree == CatalogTree::Flat {
        return items;
    }
    // The chain of an org up to its root (bounded against a cycle).
    let chain = |org: &str| {
        let mut out = Vec::new();
        let mut cur = Some(org.to_owned());
        while let Some(id) = cur {
            let Some(o) = orgs.get(&id).filter(|_| out.len() < 64) else { break };
            out.push(o);
            cur = o.parent.clone();
        }
        out
    };
    let mut nodes: Vec<Item> = Vec::new();
    let mut placed = std::collections::HashSet::new();
    let mut channels = Vec::with_capacity(items.len());
    for mut i in items {
        let Some(org) = i.org.clone() else {
            channels.push(i);
            continue;
        };
        let up = chain(&org);
        match tree {
            CatalogTree::Civil => {
                let regions: Vec<&OrgNode> =
                    up.iter().copied().filter(|o| o.prefix.as_deref().is_some_and(|p| !p.is_empty())).collect();
                i.civil = regions.first().and_then(|o| o.prefix.clone());
                let mut fresh = Vec::new();
                for (k, o) in regions.iter().enumerate() {
                    let code = o.prefix.clone().unwrap_or_default();
                    if placed.insert(code.clone()) {
                        let mut n = Item::channel(code, o.name.clone(), true, None, None);
                        n.node = Some(Node::Region);
                        n.parent = regions.get(k + 1).and_then(|p| p.prefix.clone());
                        fresh.push(n);
                    }
                }
                // Parents before children: the upper builds its tree as the items come.
                nodes.extend(fresh.into_iter().rev());
            }
            CatalogTree::Groups => {
                let Some(root) = up.last().and_then(|o| o.gb_id.clone()) else {
                    channels.push(i);
                    continue;
                };
                i.parent = up.first().and_then(|o| o.gb_id.clone());
                i.group = Some(root.clone());
                let mut fresh = Vec::new();
                for (k, o) in up.iter().enumerate() {
                    let Some(id) = o.gb_id.clone() else { continue };
                    if placed.insert(id.clone()) {
                        let mut n = Item::channel(id, o.name.clone(), true, None, None);
                        let is_root = k + 1 == up.len();
                        n.node = Some(if is_root { Node::Group } else { Node::VirtualOrg });
                        n.parent = up.get(k + 1).and_then(|p| p.gb_id.clone());
                        n.group = (!is_root).then(|| root.clone());
                        fresh.push(n);
                    }
                }
                nodes.extend(fresh.into_iter().rev());
            }
            CatalogTree::Flat => {}
        }
        channels.push(i);
    }
    nodes.extend(channels);
    nodes
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
                if let Some(node) = i.node {
                    text.push_str(&node_item(i, node, platform_id));
                    continue;
                }
                text.push_str(&channel_item(i, platform_id, None));
            }
            text.push_str("</DeviceList>\r\n</Response>\r\n");
            manscdp::encode(&text, Charset::Gb18030)
        })
        .collect()
}

/// An org tree node as a catalog item: a region (its civil code, its parent region), a
/// business group, or a virtual organisation (with its parent and business group).
fn node_item(i: &Item, node: Node, platform_id: &str) -> String {
    let parent = i.parent.as_deref().unwrap_or(platform_id);
    match node {
        Node::Region => format!(
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n{}</Item>\r\n",
            escape(&i.id),
            escape(&i.name),
            i.parent.as_ref().map(|p| format!("<ParentID>{}</ParentID>\r\n", escape(p))).unwrap_or_default()
        ),
        Node::Group => format!(
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n<ParentID>{}</ParentID>\r\n</Item>\r\n",
            escape(&i.id),
            escape(&i.name),
            escape(parent)
        ),
        Node::VirtualOrg => format!(
            "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>{}</Name>\r\n<ParentID>{}</ParentID>\r\n<BusinessGroupID>{}</BusinessGroupID>\r\n</Item>\r\n",
            escape(&i.id),
            escape(&i.name),
            escape(parent),
            escape(i.group.as_deref().unwrap_or(""))
        ),
    }
}

/// A channel as a catalog item (`event`: the NOTIFY's `Event`, e.g. `ADD`, before `Status`).
fn channel_item(i: &Item, platform_id: &str, event: Option<&str>) -> String {
    let civil = i.civil.as_deref().unwrap_or_else(|| i.id.get(..6).unwrap_or(""));
    let parent = i.parent.as_deref().unwrap_or(platform_id);
    let group =
        i.group.as_ref().map(|g| format!("<BusinessGroupID>{}</BusinessGroupID>\r\n", escape(g))).unwrap_or_default();
    let event = event.map(|e| format!("<Event>{e}</Event>\r\n")).unwrap_or_default();
    format!(
        "<Item>\r\n<DeviceID>{id}</DeviceID>\r\n<Name>{name}</Name>\r\n<Manufacturer>{m}</Manufacturer>\r\n<Model>{model}</Model>\r\n<Owner>Owner</Owner>\r\n<CivilCode>{civil}</CivilCode>\r\n<Address>{name}</Address>\r\n<Parental>0</Parental>\r\n<ParentID>{parent}</ParentID>\r\n{group}<SafetyWay>0</SafetyWay>\r\n<RegisterWay>1</RegisterWay>\r\n<Secrecy>0</Secrecy>\r\n{event}<Status>{status}</Status>\r\n</Item>\r\n",
        id = escape(&i.id),
        name = escape(&i.name),
        m = escape(&i.manufacturer),
        model = escape(&i.model),
        civil = escape(civil),
        parent = escape(parent),
        status = if i.on { "ON" } else { "OFF" },
    )
}

/// One change an upper is told in a catalog NOTIFY.
#[derive(Debug, Clone)]
pub enum Change {
    /// A channel's state: `Event` ON, OFF, VLOST or DEFECT.
    Status(String, &'static str),
    /// A channel the upper has not seen: `Event` ADD with the whole item.
    Add(Box<Item>),
    /// A channel whose item changed (renamed): `Event` UPDATE with the whole item.
    Update(Box<Item>),
    /// A channel gone (deleted, disabled, out of scope): `Event` DEL.
    Del(String),
}

/// Catalog `Notify` bodies telling the upper `changes`, at most `batch` items each.
pub fn notifies(sn: u64, platform_id: &str, changes: &[Change], batch: usize) -> Vec<Vec<u8>> {
    changes
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut text = format!(
                "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{platform_id}</DeviceID>\r\n<SumNum>{}</SumNum>\r\n<DeviceList Num=\"{}\">\r\n",
                chunk.len(),
                chunk.len()
            );
            for c in chunk {
                let short = |id: &str, event: &str| {
                    format!("<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Event>{event}</Event>\r\n</Item>\r\n", escape(id))
                };
                text.push_str(&match c {
                    Change::Status(id, event) => short(id, event),
                    Change::Del(id) => short(id, "DEL"),
                    Change::Add(i) => channel_item(i, platform_id, Some("ADD")),
                    Change::Update(i) => channel_item(i, platform_id, Some("UPDATE")),
                });
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
        let mut i = Item::channel(format!("42010400001310000{n:03}"), format!("东门 & 北门 {n}"), on, None, None);
        (i.manufacturer, i.model) = ("Hikvision".into(), "DS-2CD".into());
        i
    }

    fn orgs(with_ids: bool) -> std::collections::HashMap<String, OrgNode> {
        let node = |id: &str, parent: Option<&str>, prefix: Option<&str>, gb: &str| OrgNode {
            id: id.into(),
            name: format!("{id} 区"),
            parent: parent.map(Into::into),
            prefix: prefix.map(Into::into),
            gb_id: with_ids.then(|| gb.to_owned()),
        };
        [
            node("d", None, Some("4201"), "42010000002150900000"),
            node("s", Some("d"), Some("420104"), "42010400002160900001"),
            node("c", Some("s"), None, "42010400002160900002"),
        ]
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect()
    }

    /// An item's id, parent, civil code or group, and node kind.
    type Shape<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<Node>);

    #[test]
    fn the_org_tree_comes_before_the_channels_as_regions_or_as_groups() {
        use crate::config::CatalogTree;
        let channels = || {
            vec![
                Item::channel("42010400001320000001".into(), "A".into(), true, None, Some("c".into())),
                Item::channel("42010400001320000002".into(), "B".into(), false, None, None),
            ]
        };
        let civil = arrange(channels(), &orgs(false), CatalogTree::Civil);
        let shape: Vec<Shape> =
            civil.iter().map(|i| (i.id.as_str(), i.parent.as_deref(), i.civil.as_deref(), i.node)).collect();
        assert_eq!(
            shape,
            vec![
                ("4201", None, None, Some(Node::Region)),
                ("420104", Some("4201"), None, Some(Node::Region)),
                ("42010400001320000001", None, Some("420104"), None),
                ("42010400001320000002", None, None, None),
            ]
        );
        let groups = arrange(channels(), &orgs(true), CatalogTree::Groups);
        let shape: Vec<Shape> =
            groups.iter().map(|i| (i.id.as_str(), i.parent.as_deref(), i.group.as_deref(), i.node)).collect();
        let (g, v1, v2) = ("42010000002150900000", "42010400002160900001", "42010400002160900002");
        assert_eq!(
            shape,
            vec![
                (g, None, None, Some(Node::Group)),
                (v1, Some(g), Some(g), Some(Node::VirtualOrg)),
                (v2, Some(v1), Some(g), Some(Node::VirtualOrg)),
                ("42010400001320000001", Some(v2), Some(g), None),
                ("42010400001320000002", None, None, None),
            ]
        );
        assert_eq!(arrange(channels(), &orgs(true), CatalogTree::Flat).len(), 2);
        // As the upper reads it: the virtual org under its parent and group, the channel with
        // its group and parent, SumNum counting the nodes.
        let body = bodies(1, "42010400002000000001", &groups, 8).remove(0);
        let (text, _) = manscdp::decode(&body);
        assert!(text.contains(&format!("<DeviceID>{v2}</DeviceID>\r\n<Name>c 区</Name>\r\n<ParentID>{v1}</ParentID>\r\n<BusinessGroupID>{g}</BusinessGroupID>")), "{text}");
        assert!(
            text.contains(&format!("<ParentID>{v2}</ParentID>\r\n<BusinessGroupID>{g}</BusinessGroupID>")),
            "{text}"
        );
        assert!(text.contains("<SumNum>5</SumNum>"), "{text}");
        let body = bodies(1, "42010400002000000001", &civil, 8).remove(0);
        let (text, _) = manscdp::decode(&body);
        assert!(
            text.contains("<DeviceID>420104</DeviceID>\r\n<Name>s 区</Name>\r\n<ParentID>4201</ParentID>\r\n</Item>"),
            "{text}"
        );
        assert!(text.contains("<CivilCode>420104</CivilCode>"), "{text}");
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
