//! GB/T 28181 device access over SIP/UDP: a real third-party user agent (baresip) registers
//! with digest and is shown online, then offline on un-REGISTER; and a device speaking raw
//! SIP from this test is quarantined, approved, registered, kept alive, un-registered, and
//! refused for a wrong password or garbage — each answer checked on the wire.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;
use vigil::protocol::digest::{expected, parse_authorization};
use vigil::protocol::manscdp;
use vigil::protocol::sip::message::{Message, StartLine};

use crate::support::gateway::{Db, TestGateway};
use crate::support::{free_port, require_command};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_registers_with_digest_and_is_online_then_offline_on_unregister() {
    let baresip = require_command("baresip");
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let sip = gw.sip.expect("SIP is enabled");
    let id = "42010400001320000099";
    let (s, body) =
        gw.api.post("/devices", json!({"id": id, "name": "baresip UA", "kind": "camera", "protocol": "gb28181"})).await;
    assert_eq!(s, 201, "{body}");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("config"),
        format!("poll_method\tepoll\nsip_listen\t127.0.0.1:{}\nsip_transports\tudp\nmodule_path\t/usr/lib/baresip/modules\nmodule\taccount.so\n", free_port()),
    )
    .expect("config");
    std::fs::write(
        dir.path().join("accounts"),
        format!("<sip:{id}@{sip};transport=udp>;auth_pass=12345678;regint=60\n"),
    )
    .expect("accounts");
    // baresip quits (and un-registers) by itself after 4 s.
    let mut child = Command::new(baresip)
        .arg("-f")
        .arg(dir.path())
        .args(["-t", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("baresip starts");
    let d = gw
        .api
        .wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| d["presence"]["state"] == "online")
        .await;
    assert_eq!(d["presence"]["reason"], "register");
    let d = gw
        .api
        .wait_for(&format!("/devices/{id}"), Duration::from_secs(10), |d| d["presence"]["state"] == "offline")
        .await;
    assert_eq!(d["presence"]["reason"], "unregister");
    let _ = child.wait();
    let m = gw.api.metrics().await;
    assert!(m.lines().any(|l| l.starts_with("vigil_sip_registrations_total{outcome=\"challenged\"}")), "{m}");
    assert!(m.lines().any(|l| l == "vigil_sip_registrations_total{outcome=\"registered\"} 1"), "{m}");
    assert!(m.lines().any(|l| l == "vigil_sip_registrations_total{outcome=\"unregistered\"} 1"), "{m}");
    gw.shutdown().await;
}

/// A GB/T 28181 device speaking SIP from this test.
pub struct Device {
    sock: UdpSocket,
    id: String,
    server: SocketAddr,
    cseq: u32,
    /// Requests vigil sent this device (catalog queries), kept while waiting for answers.
    inbox: Vec<String>,
    /// The last request this device sent (to send it again as a retransmission).
    last_request: String,
}

impl Device {
    pub async fn new(id: &str, server: SocketAddr) -> Self {
        Self::new_at(id, server, "127.0.0.1:0").await
    }

    /// A device on another loopback address (127.0.0.0/8 is all local).
    pub async fn new_at(id: &str, server: SocketAddr, bind: &str) -> Self {
        Device {
            sock: UdpSocket::bind(bind).await.expect("bind"),
            id: id.into(),
            server,
            cseq: 0,
            inbox: Vec::new(),
            last_request: String::new(),
        }
    }

    async fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), self.sock.recv_from(&mut buf))
            .await
            .expect("a datagram within 5 s")
            .expect("recv");
        buf.truncate(n);
        buf
    }

    /// Sends a request and returns vigil's answer; requests from vigil meanwhile go to the inbox.
    async fn exchange(&mut self, raw: &str) -> String {
        self.last_request = raw.to_owned();
        self.sock.send_to(raw.as_bytes(), self.server).await.expect("send");
        loop {
            let got = self.recv().await;
            if got.starts_with(b"SIP/2.0 ") {
                return String::from_utf8_lossy(&got).into_owned();
            }
            self.inbox.push(String::from_utf8_lossy(&got).into_owned());
        }
    }

    /// The next request vigil sends this device.
    async fn next_request(&mut self) -> Vec<u8> {
        if !self.inbox.is_empty() {
            return self.inbox.remove(0).into_bytes();
        }
        loop {
            let got = self.recv().await;
            if !got.starts_with(b"SIP/2.0 ") {
                return got;
            }
        }
    }

    /// The next request of vigil's that asks `cmd_type` (a MESSAGE `Query`, or a SUBSCRIBE for
    /// `SubscribeCatalog`), answered 200 at the SIP level; other requests stay in the inbox
    /// and retransmissions of ones already seen are skipped.
    pub async fn next_query(&mut self, cmd_type: &str) -> (Vec<u8>, manscdp::Envelope) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut skipped = Vec::new();
        let found = loop {
            assert!(tokio::time::Instant::now() < deadline, "no {cmd_type} request from vigil within 5 s");
            let got = self.next_request().await;
            let Ok(msg) = Message::parse(&got) else { continue };
            let (text, _) = manscdp::decode(msg.body);
            let Ok(env) = manscdp::envelope(&text) else { continue };
            let wanted = match cmd_type {
                "SubscribeCatalog" => msg.method() == Some("SUBSCRIBE"),
                cmd => msg.method() == Some("MESSAGE") && env.cmd_type == cmd,
            };
            if wanted {
                break (got.clone(), env);
            }
            skipped.push(String::from_utf8_lossy(&got).into_owned());
        };
        self.inbox.extend(skipped);
        self.ok(&found.0).await;
        found
    }

    /// Answers one of vigil's requests with a 200 (copying Via, From, To, Call-ID, CSeq).
    async fn ok(&self, request: &[u8]) {
        let msg = Message::parse(request).expect("vigil's request parses");
        let mut answer = String::from("SIP/2.0 200 OK\r\n");
        for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
            answer += &format!("{h}: {}\r\n", msg.header(h).unwrap_or(""));
        }
        if msg.method() == Some("SUBSCRIBE") {
            answer += "Expires: 3600\r\n";
        }
        answer += "Content-Length: 0\r\n\r\n";
        self.sock.send_to(answer.as_bytes(), self.server).await.expect("send");
    }

    /// Sends a MANSCDP body (encoded in GB18030) in a MESSAGE and returns vigil's answer.
    pub async fn send_manscdp(&mut self, method: &str, call_id: &str, body: &str) -> String {
        let (gb, _, _) = encoding_rs::GB18030.encode(body);
        let head = self.request(method, call_id, "Content-Type: Application/MANSCDP+xml\r\n", "");
        let mut raw = head.replace("Content-Length: 0", &format!("Content-Length: {}", gb.len())).into_bytes();
        raw.extend_from_slice(&gb);
        self.sock.send_to(&raw, self.server).await.expect("send");
        loop {
            let got = self.recv().await;
            if got.starts_with(b"SIP/2.0 ") {
                return String::from_utf8_lossy(&got).into_owned();
            }
            self.inbox.push(String::from_utf8_lossy(&got).into_owned());
        }
    }

    fn request(&mut self, method: &str, call_id: &str, extra: &str, body: &str) -> String {
        self.cseq += 1;
        let local = self.sock.local_addr().expect("addr");
        format!(
            "{method} sip:42010400002000000001@4201040000 SIP/2.0\r\n\
Via: SIP/2.0/UDP {local};rport;branch=z9hG4bK{}-{}-{}\r\n\
From: <sip:{id}@4201040000>;tag=dev{cseq}\r\n\
To: <sip:{to}@4201040000>\r\n\
Call-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n\
Contact: <sip:{id}@{local}>\r\n\
Max-Forwards: 70\r\n\
{extra}Content-Length: {}\r\n\r\n{body}",
            local.port(),
            call_id.len(),
            self.cseq,
            body.len(),
            id = self.id,
            cseq = self.cseq,
            to = if method == "REGISTER" { self.id.as_str() } else { "42010400002000000001" },
        )
    }

    /// REGISTER → 401 → REGISTER with digest; returns the final answer.
    pub async fn register(&mut self, expires: u32, password: &str) -> String {
        let call_id = format!("reg-{}", self.id);
        let first = self.request("REGISTER", &call_id, &format!("Expires: {expires}\r\n"), "");
        let challenge = self.exchange(&first).await;
        assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
        let msg = Message::parse(challenge.as_bytes()).expect("401 parses");
        let www =
            parse_authorization(msg.header("WWW-Authenticate").expect("challenge header")).expect("digest params");
        assert_eq!(www.get("algorithm").map(String::as_str), Some("MD5"));
        let (realm, nonce) = (&www["realm"], &www["nonce"]);
        let uri = "sip:42010400002000000001@4201040000";
        let resp = expected(&self.id, realm, password, "REGISTER", uri, nonce, Some(("00000001", "0a4f113b", "auth")));
        let auth = format!(
            "Authorization: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\nExpires: {expires}\r\n",
            self.id
        );
        let second = self.request("REGISTER", &call_id, &auth, "");
        self.exchange(&second).await
    }

    pub async fn keepalive(&mut self, sn: u32) -> String {
        let body = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{}</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n", self.id);
        let msg = self.request("MESSAGE", &format!("ka-{sn}"), "Content-Type: Application/MANSCDP+xml\r\n", &body);
        self.exchange(&msg).await
    }
}

fn code(answer: &str) -> u16 {
    match Message::parse(answer.as_bytes()).expect("answer parses").start {
        StartLine::Response { code, .. } => code,
        other => panic!("not a response: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_device_is_quarantined_then_approved_registered_kept_alive_and_unregistered() {
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let api = &gw.api;
    let sip = gw.sip.expect("SIP is enabled");
    assert_eq!(
        api.post("/orgs", json!({"id": "qiaokou", "name": "硚口区", "kind": "district", "gb_prefix": "420104"}))
            .await
            .0,
        201
    );
    let id = "42010400001180000007"; // type 118: an NVR
    let mut dev = Device::new(id, sip).await;

    // Unknown: authenticated with the default password, then quarantined (403) and listed.
    let answer = dev.register(3600, "12345678").await;
    assert_eq!(code(&answer), 403, "{answer}");
    assert!(answer.contains("awaiting approval"), "{answer}");
    let (_, d) = api.get(&format!("/devices/{id}")).await;
    assert_eq!(
        (d["admission"].as_str(), d["kind"].as_str(), d["org_id"].as_str()),
        (Some("quarantined"), Some("nvr"), Some("qiaokou")),
        "{d}"
    );
    let (_, q) = api.get("/devices?admission=quarantined").await;
    assert_eq!(q["items"][0]["id"], id);
    // Listed with its attempts and where they come from, for the operator who approves it.
    let d =
        api.wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| d["attrs"]["register_attempts"] == 1).await;
    assert_eq!(d["attrs"]["source"].as_str(), Some(dev.sock.local_addr().expect("addr").to_string().as_str()));

    // Approved by an operator: the next REGISTER is accepted, with Expires, Date and NAT params.
    assert_eq!(
        api.send(reqwest::Method::PATCH, &format!("/devices/{id}"), json!({"admission": "approved"})).await.0,
        200
    );
    let answer = dev.register(7200, "12345678").await;
    assert_eq!(code(&answer), 200, "{answer}");
    let ok = Message::parse(answer.as_bytes()).expect("200 parses");
    assert_eq!(ok.header("Expires"), Some("3600"), "granted at most register_expires_max");
    let date = ok.header("Date").expect("GB Date header");
    assert!(
        chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%dT%H:%M:%S%.3f").is_ok(),
        "Date {date:?} is not yyyy-MM-ddTHH:mm:ss.SSS"
    );
    let local = dev.sock.local_addr().expect("addr");
    assert!(
        ok.header("Via")
            .is_some_and(|v| v.contains(&format!("rport={}", local.port())) && v.contains("received=127.0.0.1")),
        "{answer}"
    );
    let d =
        api.wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| d["presence"]["state"] == "online").await;
    assert_eq!(d["presence"]["reason"], "register");

    // Keepalive (GB2312-declared body) → 200; a retransmission gets the same answer.
    let first = dev.keepalive(1).await;
    assert_eq!(code(&first), 200, "{first}");
    dev.cseq -= 1;
    let again = dev.keepalive(1).await;
    assert_eq!(first, again, "a retransmitted MESSAGE must get the same answer");

    // A wrong password is a 403 after the challenge; garbage is dropped and counted.
    let mut impostor = Device::new(id, sip).await;
    assert_eq!(code(&impostor.register(3600, "not-the-password").await), 403);
    impostor.sock.send_to(b"\x00\x01garbage that is not SIP\r\n\r\n", sip).await.expect("send");
    let bomb = format!("<?xml version=\"1.0\"?>{}", "<a>".repeat(100));
    let bomb = dev_message(&mut dev, &bomb);
    assert_eq!(code(&dev.exchange(&bomb).await), 400, "an XML bomb is refused with 400");

    // un-REGISTER: offline at once with its reason.
    let answer = dev.register(0, "12345678").await;
    assert_eq!(code(&answer), 200, "{answer}");
    let d =
        api.wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| d["presence"]["state"] == "offline").await;
    assert_eq!(d["presence"]["reason"], "unregister");
    // A keepalive without a registration is evidence (presence has handled it), but does not
    // make it online.
    let handled = |m: &str| crate::support::metric(m, "vigil_observations_total");
    let before = handled(&api.metrics().await);
    assert_eq!(code(&dev.keepalive(2).await), 200);
    api.wait_for_metrics(Duration::from_secs(5), |m| handled(m) > before).await;
    assert_eq!(api.get(&format!("/devices/{id}")).await.1["presence"]["state"], "offline");

    // Refused messages are kept with their raw bytes for the operator.
    let (_, rej) = api.get("/rejections?source=gb28181&reason=bad_start_line").await;
    let garbage = &rej["items"][0];
    assert!(garbage["raw"].as_str().is_some_and(|r| r.contains("garbage that is not SIP")), "{rej}");
    assert_eq!(garbage["peer"].as_str().map(|p| p.starts_with("127.0.0.1:")), Some(true));
    let (_, rej) = api.get("/rejections?reason=xml_too_deep").await;
    assert!(rej["items"][0]["raw"].as_str().is_some_and(|r| r.contains("<a><a><a>")), "{rej}");

    let m = api.metrics().await;
    for line in [
        "vigil_sip_registrations_total{outcome=\"quarantined\"} 1",
        "vigil_sip_registrations_total{outcome=\"wrong_password\"} 1",
        "vigil_events_rejected_total{reason=\"bad_start_line\",source=\"gb28181\"} 1",
        "vigil_events_rejected_total{reason=\"xml_too_deep\",source=\"gb28181\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "missing `{line}` in\n{m}");
    }
    gw.shutdown().await;
}

fn dev_message(dev: &mut Device, body: &str) -> String {
    dev.request("MESSAGE", "bomb", "Content-Type: Application/MANSCDP+xml\r\n", body)
}

/// Reads one framed SIP message off a TCP stream.
async fn read_frame(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(len) = vigil::protocol::sip::message::frame_len(buf).expect("framable") {
            let frame: Vec<u8> = buf.drain(..len).collect();
            return String::from_utf8_lossy(&frame).into_owned();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_registers_over_tcp_with_messages_split_and_coalesced() {
    use tokio::io::AsyncWriteExt;
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let sip = gw.sip.expect("SIP is enabled");
    let id = "42010400001320000031";
    assert_eq!(
        gw.api.post("/devices", json!({"id": id, "name": "tcp cam", "kind": "camera", "protocol": "gb28181"})).await.0,
        201
    );
    let mut stream = tokio::net::TcpStream::connect(sip).await.expect("TCP connect");
    let local = stream.local_addr().expect("addr");
    let req = |cseq: u32, extra: &str| {
        format!(
            "REGISTER sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/TCP {local};rport;branch=z9hG4bKtcp{cseq}\r\n\
From: <sip:{id}@4201040000>;tag=t{cseq}\r\nTo: <sip:{id}@4201040000>\r\nCall-ID: tcp-reg\r\nCSeq: {cseq} REGISTER\r\n\
Contact: <sip:{id}@{local};transport=tcp>\r\nExpires: 600\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    // The first REGISTER arrives in two pieces.
    let first = req(1, "");
    let (a, b) = first.as_bytes().split_at(first.len() / 2);
    stream.write_all(a).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b).await.expect("write");
    let mut buf = Vec::new();
    let challenge = read_frame(&mut stream, &mut buf).await;
    assert!(challenge.starts_with("SIP/2.0 401"), "{challenge}");
    let msg = Message::parse(challenge.as_bytes()).expect("parses");
    let www = parse_authorization(msg.header("WWW-Authenticate").expect("challenge")).expect("params");
    let uri = "sip:42010400002000000001@4201040000";
    let resp = expected(id, &www["realm"], "12345678", "REGISTER", uri, &www["nonce"], None);
    let auth = format!("Authorization: Digest username=\"{id}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5\r\n", www["realm"], www["nonce"]);
    // The authenticated REGISTER and an OPTIONS ping in one write.
    let options = format!(
        "OPTIONS sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKopt\r\nFrom: <sip:{id}@4201040000>;tag=o\r\n\
To: <sip:42010400002000000001@4201040000>\r\nCall-ID: tcp-opt\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(format!("{}{options}", req(2, &auth)).as_bytes()).await.expect("write");
    let ok = read_frame(&mut stream, &mut buf).await;
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(ok.contains("Expires: 600"), "{ok}");
    let pong = read_frame(&mut stream, &mut buf).await;
    assert!(pong.starts_with("SIP/2.0 200") && pong.contains("CSeq: 1 OPTIONS"), "{pong}");
    let d = gw
        .api
        .wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| d["presence"]["state"] == "online")
        .await;
    assert_eq!(d["presence"]["reason"], "register");
    assert_eq!(d["gb28181"]["transport"], "tcp");
    // vigil's queries come down the same connection, with a TCP Via, and are not retransmitted.
    let query = read_frame(&mut stream, &mut buf).await;
    let q = Message::parse(query.as_bytes()).expect("query parses");
    assert_eq!(q.method(), Some("MESSAGE"), "{query}");
    assert!(q.header("Via").is_some_and(|v| v.starts_with("SIP/2.0/TCP")), "{query}");
    assert!(q.header("To").is_some_and(|t| t.contains(id)), "{query}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nvr_catalog_of_500_gb2312_channels_arrives_across_many_messages() {
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let api = &gw.api;
    let sip = gw.sip.expect("SIP is enabled");
    let id = "42010400001180000500";
    assert_eq!(
        api.post("/devices", json!({"id": id, "name": "古田 NVR", "kind": "nvr", "protocol": "gb28181"})).await.0,
        201
    );
    let mut nvr = Device::new(id, sip).await;
    assert_eq!(code(&nvr.register(3600, "12345678").await), 200);

    // vigil asks for the catalog after the registration, in GB2312 ...
    let (query, env) = nvr.next_query("Catalog").await;
    assert!(String::from_utf8_lossy(&query).contains("encoding=\"GB2312\""));
    assert_eq!((env.root.as_str(), env.device_id.as_str()), ("Query", id));
    let sn = env.sn.expect("SN");

    // ... and for its device info, which it keeps with the device.
    let (_, info_env) = nvr.next_query("DeviceInfo").await;
    let info = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>DeviceInfo</CmdType>\r\n<SN>{}</SN>\r\n<DeviceID>{id}</DeviceID>\r\n<DeviceName>古田硬盘录像机</DeviceName>\r\n<Result>OK</Result>\r\n<Manufacturer>Hikvision</Manufacturer>\r\n<Model>DS-7932N</Model>\r\n<Firmware>V4.30.085</Firmware>\r\n<Channel>500</Channel>\r\n</Response>\r\n",
        info_env.sn.expect("SN")
    );
    assert_eq!(code(&nvr.send_manscdp("MESSAGE", "info-1", &info).await), 200);
    let d =
        api.wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| d["attrs"]["model"] == "DS-7932N").await;
    assert_eq!(
        (d["attrs"]["manufacturer"].as_str(), d["attrs"]["firmware"].as_str(), d["attrs"]["device_name"].as_str()),
        (Some("Hikvision"), Some("V4.30.085"), Some("古田硬盘录像机"))
    );
    assert_eq!(d["attrs"]["channel_count"], 500);
    assert_eq!(
        (d["gb28181"]["manufacturer"].as_str(), d["gb28181"]["channel_count"].as_i64()),
        (Some("Hikvision"), Some(500))
    );

    // 500 channels, 20 per message, GB2312, sent last part first, one part twice.
    let name = |i: usize| format!("古田一路 {i:03} 号通道");
    let mut parts: Vec<String> = (0..25)
        .map(|p| {
            let items: String = (p * 20..p * 20 + 20)
                .map(|i| {
                    format!(
                        "<Item>\r\n<DeviceID>4201040000131{i:07}</DeviceID>\r\n<Name>{}</Name>\r\n<Manufacturer>海康威视</Manufacturer>\r\n<Status>{}</Status>\r\n<CivilCode>null</CivilCode>\r\n<ParentID>{id}</ParentID>\r\n</Item>\r\n",
                        name(i),
                        if i % 50 == 0 { "OFF" } else { "ON" }
                    )
                })
                .collect();
            format!(
                "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{sn}</SN>\r\n<DeviceID>{id}</DeviceID>\r\n<SumNum>500</SumNum>\r\n<DeviceList Num=\"20\">\r\n{items}</DeviceList>\r\n</Response>\r\n"
            )
        })
        .collect();
    parts.reverse();
    parts.insert(3, parts[0].clone());
    for (k, body) in parts.iter().enumerate() {
        let (gb, _, _) = encoding_rs::GB18030.encode(body);
        nvr.cseq += 1;
        let local = nvr.sock.local_addr().expect("addr");
        let mut raw = format!(
            "MESSAGE sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKcat{k}\r\n\
From: <sip:{id}@4201040000>;tag=c{k}\r\nTo: <sip:42010400002000000001@4201040000>\r\nCall-ID: cat-{k}\r\nCSeq: {} MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n",
            nvr.cseq,
            gb.len()
        )
        .into_bytes();
        raw.extend_from_slice(&gb);
        nvr.sock.send_to(&raw, sip).await.expect("send");
        loop {
            let got = nvr.recv().await;
            if got.starts_with(b"SIP/2.0 ") {
                assert!(got.starts_with(b"SIP/2.0 200"), "{}", String::from_utf8_lossy(&got));
                break;
            }
        }
    }

    let chans = api
        .wait_for(&format!("/devices/{id}/channels"), Duration::from_secs(10), |c| {
            c["items"].as_array().is_some_and(|i| i.len() == 500)
        })
        .await;
    let items = chans["items"].as_array().expect("items");
    // A catalog claiming to be this NVR's from another address is refused and changes nothing.
    let mut forger = Device::new_at(id, sip, "127.0.0.2:0").await;
    let fake = format!("<?xml version=\"1.0\"?><Response><CmdType>Catalog</CmdType><SN>{sn}</SN><DeviceID>{id}</DeviceID><SumNum>1</SumNum><DeviceList Num=\"1\"><Item><DeviceID>42010400001310009999</DeviceID><Name>forged</Name></Item></DeviceList></Response>");
    let forged = forger.request("MESSAGE", "forged-1", "Content-Type: Application/MANSCDP+xml\r\n", &fake);
    // Refused before anything is written: the answer itself says the channels are untouched.
    assert_eq!(code(&forger.exchange(&forged).await), 403);
    assert_eq!(api.get(&format!("/devices/{id}/channels")).await.1["items"].as_array().map(Vec::len), Some(500));
    let seven = items.iter().find(|c| c["id"] == "42010400001310000007").expect("channel 7");
    assert_eq!((seven["name"].as_str(), seven["status"].as_str()), (Some(name(7).as_str()), Some("ON")));
    assert_eq!(seven["attrs"]["manufacturer"], "海康威视");
    assert!(seven["attrs"].get("civil_code").is_none(), "the literal `null` is not a civil code");
    assert_eq!(items.iter().filter(|c| c["status"] == "OFF").count(), 10);
    // The NVR counts as its 500 channels, 490 of them online while it is.
    let rate = api.wait_for("/online-rate", Duration::from_secs(5), |r| r["total"] == 500).await;
    assert_eq!(rate["online"], 490, "{rate}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_keepalives_makes_a_device_offline_after_the_configured_misses() {
    // Keepalive every 1 s, 2 misses allowed: silent for 2 s means offline.
    let gw = TestGateway::start_with_sip(Db::Sqlite, "keepalive_interval = \"1s\"\nkeepalive_misses = 2\n").await;
    let api = &gw.api;
    let id = "42010400001320000042";
    assert_eq!(
        api.post("/devices", json!({"id": id, "name": "silent cam", "kind": "camera", "protocol": "gb28181"})).await.0,
        201
    );
    let mut dev = Device::new(id, gw.sip.expect("SIP")).await;
    assert_eq!(code(&dev.register(3600, "12345678").await), 200);
    for sn in 0..3 {
        assert_eq!(code(&dev.keepalive(sn).await), 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        api.get(&format!("/devices/{id}")).await.1["presence"]["state"],
        "online",
        "keepalives within the window keep it online"
    );
    let last = tokio::time::Instant::now();
    let d =
        api.wait_for(&format!("/devices/{id}"), Duration::from_secs(6), |d| d["presence"]["state"] == "offline").await;
    let after = last.elapsed();
    assert_eq!(d["presence"]["reason"], "keepalive_timeout");
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_secs(4),
        "offline {after:?} after the last keepalive"
    );
    gw.shutdown().await;
}

/// Everything vigil asks a device after it registers, and what it makes of the answers: the
/// keepalive settings (learned, clamped, shown), device status, a catalog subscription and
/// its change notifies, the session in the API, an alarm that becomes one event however
/// often it is sent, an answer to a query never sent, and the session surviving a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_device_is_asked_about_itself_and_its_alarm_becomes_an_event() {
    let mut gw = TestGateway::start(Db::Sqlite, "").await;
    let sip = gw.sip.expect("SIP is enabled");
    let id = "42010400001320000077";
    let (s, body) =
        gw.api.post("/devices", json!({"id": id, "name": "韩家墩 IPC", "kind": "camera", "protocol": "gb28181"})).await;
    assert_eq!(s, 201, "{body}");
    let mut dev = Device::new(id, sip).await;
    assert_eq!(code(&dev.register(3600, "12345678").await), 200);
    let ka = |sn: u64, body: &str| {
        format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Response>\r\n<SN>{sn}</SN>\r\n<DeviceID>{id}</DeviceID>\r\n<Result>OK</Result>\r\n{body}</Response>\r\n")
    };

    // Keepalive settings: 30 s × 4 reported; the window becomes 120 s and says where from.
    let (_, q) = dev.next_query("ConfigDownload").await;
    let answer = ka(q.sn.expect("SN"), "<CmdType>ConfigDownload</CmdType>\r\n<BasicParam>\r\n<Name>IPC</Name>\r\n<Expiration>3600</Expiration>\r\n<HeartBeatInterval>30</HeartBeatInterval>\r\n<HeartBeatCount>4</HeartBeatCount>\r\n</BasicParam>\r\n");
    assert_eq!(code(&dev.send_manscdp("MESSAGE", "cfg-1", &answer).await), 200);
    // Device status.
    let (_, q) = dev.next_query("DeviceStatus").await;
    let answer = ka(q.sn.expect("SN"), "<CmdType>DeviceStatus</CmdType>\r\n<Online>ONLINE</Online>\r\n<Status>OK</Status>\r\n<Encode>ON</Encode>\r\n<Record>ON</Record>\r\n");
    assert_eq!(code(&dev.send_manscdp("MESSAGE", "st-1", &answer).await), 200);
    // The catalog subscription is accepted (200 with Expires), then the catalog query answered.
    let (sub, _) = dev.next_query("SubscribeCatalog").await;
    let sub = Message::parse(&sub).expect("SUBSCRIBE parses");
    assert!(sub.header("Event").is_some_and(|e| e.starts_with("Catalog")), "{:?}", sub.header("Event"));
    let (_, q) = dev.next_query("Catalog").await;
    let ch = |n: u32| format!("4201040000131{n:07}");
    let items: String = (1..=2)
        .map(|n| {
            format!(
                "<Item>\r\n<DeviceID>{}</DeviceID>\r\n<Name>通道 {n}</Name>\r\n<Status>ON</Status>\r\n</Item>\r\n",
                ch(n)
            )
        })
        .collect();
    let answer = ka(
        q.sn.expect("SN"),
        &format!(
            "<CmdType>Catalog</CmdType>\r\n<SumNum>2</SumNum>\r\n<DeviceList Num=\"2\">\r\n{items}</DeviceList>\r\n"
        ),
    );
    assert_eq!(code(&dev.send_manscdp("MESSAGE", "cat-1", &answer).await), 200);
    let api = &gw.api;
    api.wait_for(&format!("/devices/{id}/channels"), Duration::from_secs(5), |c| {
        c["items"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    assert_eq!(code(&dev.keepalive(1).await), 200);

    let d = api
        .wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| {
            d["attrs"]["device_status"]["record"] == "ON" && d["gb28181"]["catalog_subscription_until"].is_string()
        })
        .await;
    let gb = &d["gb28181"];
    let local = dev.sock.local_addr().expect("addr").to_string();
    assert_eq!((gb["registered"].as_bool(), gb["transport"].as_str()), (Some(true), Some("udp")), "{gb}");
    assert_eq!(gb["source"].as_str(), Some(local.as_str()));
    assert!(gb["contact"].as_str().is_some_and(|c| c.contains(id)), "{gb}");
    assert!(gb["registered_at"].is_string() && gb["expires_at"].is_string() && gb["last_keepalive"].is_string());
    assert_eq!(gb["keepalive_window_s"], 120, "{gb}");
    assert!(gb["keepalive_from"].as_str().is_some_and(|f| f.starts_with("device")), "{gb}");
    assert_eq!(d["attrs"]["keepalive"]["interval_s"], 30);

    // Catalog change notifies: channel 1 goes OFF, channel 2 is deleted, channel 3 added.
    let notify = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Catalog</CmdType>\r\n<SN>5</SN>\r\n<DeviceID>{id}</DeviceID>\r\n<SumNum>3</SumNum>\r\n<DeviceList Num=\"3\">\r\n<Item><DeviceID>{}</DeviceID><Event>OFF</Event></Item>\r\n<Item><DeviceID>{}</DeviceID><Event>DEL</Event></Item>\r\n<Item><DeviceID>{}</DeviceID><Name>新增通道</Name><Status>ON</Status><Event>ADD</Event></Item>\r\n</DeviceList>\r\n</Notify>\r\n", ch(1), ch(2), ch(3));
    assert_eq!(code(&dev.send_manscdp("NOTIFY", "notify-1", &notify).await), 200);
    let chans = api
        .wait_for(&format!("/devices/{id}/channels"), Duration::from_secs(5), |c| {
            c["items"].as_array().is_some_and(|i| i.iter().any(|c| c["id"] == ch(3)))
        })
        .await;
    let by_id = |n: u32| chans["items"].as_array().and_then(|i| i.iter().find(|c| c["id"] == ch(n)).cloned());
    assert_eq!(by_id(1).map(|c| (c["name"].clone(), c["status"].clone())), Some((json!("通道 1"), json!("OFF"))));
    assert!(by_id(2).is_none(), "a DEL notify removes the channel");
    assert_eq!(by_id(3).map(|c| c["name"].clone()), Some(json!("新增通道")));

    // A catalog "answer" to a query vigil never sent is acknowledged, counted and ignored.
    let stray = ka(999_999_999, &format!("<CmdType>Catalog</CmdType>\r\n<SumNum>1</SumNum>\r\n<DeviceList Num=\"1\">\r\n<Item><DeviceID>{}</DeviceID><Name>stray</Name></Item>\r\n</DeviceList>\r\n", ch(9)));
    assert_eq!(code(&dev.send_manscdp("MESSAGE", "stray-1", &stray).await), 200);
    let rej = api.get("/rejections?reason=unsolicited_response").await.1;
    assert_eq!(rej["items"].as_array().map(Vec::len), Some(1), "{rej}");

    // An alarm (GB2312): 200 once stored, then vigil's Response/Alarm with the same SN.
    // Stamped an hour ago in the district's zone: inside the clock-sanity window on any date.
    let alarm_time = crate::support::device_local_time(Duration::from_secs(3600));
    let alarm = format!("<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Alarm</CmdType>\r\n<SN>88</SN>\r\n<DeviceID>{id}</DeviceID>\r\n<AlarmPriority>1</AlarmPriority>\r\n<AlarmMethod>5</AlarmMethod>\r\n<AlarmTime>{alarm_time}</AlarmTime>\r\n<AlarmDescription>区域入侵</AlarmDescription>\r\n<Info>\r\n<AlarmType>6</AlarmType>\r\n</Info>\r\n</Notify>\r\n");
    assert_eq!(code(&dev.send_manscdp("MESSAGE", "alarm-1", &alarm).await), 200);
    let response = loop {
        let got = dev.next_request().await;
        let msg = Message::parse(&got).expect("parses");
        let (text, _) = manscdp::decode(msg.body);
        if let Ok(env) = manscdp::envelope(&text) {
            if env.root == "Response" && env.cmd_type == "Alarm" {
                dev.ok(&got).await;
                break env;
            }
        }
    };
    assert_eq!(response.sn, Some(88));
    // The device sends it again (a new transaction): still one event.
    assert_eq!(code(&dev.send_manscdp("MESSAGE", "alarm-2", &alarm).await), 200);
    let events = api.get(&format!("/events?kind=alarm&device={id}")).await.1;
    let items = events["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{events}");
    let e = &items[0];
    assert_eq!(
        (e["kind"].as_str(), e["source"].as_str(), e["seq"].as_i64()),
        (Some("alarm"), Some("gb28181"), Some(88))
    );
    assert_eq!(e["occurred_at"], format!("{alarm_time}+08:00"));
    assert_eq!(e["time_source"], "device");
    assert_eq!(
        (e["body"]["description"].as_str(), e["body"]["priority"].as_i64(), e["body"]["alarm_type"].as_i64()),
        (Some("区域入侵"), Some(1), Some(6))
    );
    let one = api.get(&format!("/events/{}", e["id"].as_str().expect("id"))).await;
    assert_eq!((one.0, one.1["id"].clone()), (200, e["id"].clone()));
    let bad = api.get("/events?kind=parade").await;
    assert_eq!((bad.0, bad.1["error"]["field"].as_str()), (400, Some("kind")));
    assert!(api.metrics().await.contains("vigil_events_total{kind=\"alarm\",source=\"gb28181\"} 1"));

    // A restart: the session is restored from its granted expiry and registered address,
    // and vigil asks the device about itself again at that address.
    gw.restart().await;
    dev.server = gw.sip.expect("SIP");
    dev.inbox.clear();
    let d = gw.api.get(&format!("/devices/{id}")).await.1;
    assert_eq!(d["gb28181"]["registered"], true, "{d}");
    assert_eq!(d["gb28181"]["source"].as_str(), Some(local.as_str()));
    assert_eq!(d["presence"]["state"], "online", "{d}");
    let (_, q) = dev.next_query("DeviceInfo").await;
    assert_eq!(q.device_id, id);
    gw.shutdown().await;
}

/// With admission open, devices nobody listed register and are online at once; their
/// admissions are written in batches and a REGISTER retransmitted meanwhile gets the same
/// answer, not a second admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_open_admission_unknown_devices_register_at_once() {
    let gw = TestGateway::start(Db::Sqlite, "[admission]\npolicy = \"open\"\n").await;
    let sip = gw.sip.expect("SIP");
    let ids: Vec<String> = (0..20).map(|n| format!("4201040000132{:07}", 5_000 + n)).collect();
    let mut tasks = Vec::new();
    for id in ids.clone() {
        tasks.push(tokio::spawn(async move {
            let mut dev = Device::new(&id, sip).await;
            let answer = dev.register(3600, "12345678").await;
            // The same authenticated REGISTER again (a retransmission): the same answer.
            let again = dev.last_request.clone();
            let repeat = dev.exchange(&again).await;
            (code(&answer), code(&repeat))
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("device task"), (200, 200));
    }
    for id in &ids {
        let d = gw
            .api
            .wait_for(&format!("/devices/{id}"), Duration::from_secs(5), |d| d["presence"]["state"] == "online")
            .await;
        assert_eq!((d["admission"].as_str(), d["kind"].as_str()), (Some("approved"), Some("camera")));
    }
    let m = gw.api.metrics().await;
    assert!(m.lines().any(|l| l == "vigil_sip_registrations_total{outcome=\"registered\"} 20"), "{m}");
    gw.shutdown().await;
}

/// RFC 4475 §3.1.2, every invalid message, sent to the running gateway: over UDP a request
/// is answered 400 (505 for another SIP version) naming nothing vigil acted on, a response is
/// dropped; over TCP a stream whose framing is unknowable (two Content-Length headers, a
/// negative one) is closed, and a well-framed bad request is answered on the connection,
/// which stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4475_invalid_messages_are_refused_on_the_wire() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = TestGateway::start(Db::Sqlite, "").await;
    let sip = gw.sip.expect("SIP is enabled");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sip");
    let read = |name: &str| {
        let path = if name == "dup-content-length" {
            format!("{dir}/{name}.sip")
        } else {
            format!("{dir}/rfc4475/{name}.sip")
        };
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    // `None`: dropped (responses); `Some(0)`: accepted as a request (answered, not refused).
    let table: [(&str, Option<u16>); 20] = [
        ("badinv01", Some(400)),
        ("clerr", Some(400)),
        ("ncl", Some(400)),
        ("scalar02", Some(400)),
        ("scalarlg", None),
        ("quotbal", Some(400)),
        ("ltgtruri", Some(400)),
        ("lwsruri", Some(400)),
        ("lwsstart", Some(400)),
        ("trws", Some(400)),
        ("escruri", Some(400)),
        ("baddate", Some(0)),
        ("regbadct", Some(400)),
        ("badaspec", Some(400)),
        ("baddn", Some(400)),
        ("badvers", Some(505)),
        ("mismatch01", Some(400)),
        ("mismatch02", Some(400)),
        ("bigcode", None),
        ("dup-content-length", Some(400)),
    ];
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let local = sock.local_addr().expect("addr");
    let recv = || async {
        let mut buf = vec![0u8; 65_535];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let options = |call_id: &str, transport: &str, at: SocketAddr| {
        format!(
            "OPTIONS sip:42010400002000000001@4201040000 SIP/2.0\r\nVia: SIP/2.0/{transport} {at};branch=z9hG4bK{call_id}\r\n\
From: <sip:probe@4201040000>;tag=p\r\nTo: <sip:42010400002000000001@4201040000>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut refused = 0;
    for (name, want) in table {
        sock.send_to(&read(name), sip).await.expect("send");
        match want {
            Some(0) => {
                let got = recv().await;
                assert!(!got.starts_with("SIP/2.0 400") && !got.starts_with("SIP/2.0 505"), "{name}: {got}");
            }
            Some(code) => {
                let got = recv().await;
                assert!(got.starts_with(&format!("SIP/2.0 {code} ")), "{name}: {got}");
                assert!(
                    got.contains(&format!("Call-ID: {}", if name == "dup-content-length" { "dupcl" } else { name })),
                    "{name}: {got}"
                );
                refused += 1;
            }
            None => {
                // Nothing is sent back: the next datagram is the answer to a probe sent after.
                let probe = format!("probe-after-{name}");
                sock.send_to(options(&probe, "UDP", local).as_bytes(), sip).await.expect("send");
                let got = recv().await;
                assert!(got.starts_with("SIP/2.0 200") && got.contains(&probe), "{name} was answered: {got}");
            }
        }
    }
    let m = gw.api.metrics().await;
    let counted: u64 = m
        .lines()
        .filter(|l| l.starts_with("vigil_events_rejected_total{") && l.contains("source=\"gb28181\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    assert!(counted >= refused + 2, "every refusal is counted ({refused} answered, 2 dropped): {m}");

    // TCP: unknowable framing closes the connection.
    for name in ["dup-content-length", "ncl"] {
        let mut stream = tokio::net::TcpStream::connect(sip).await.expect("connect");
        stream.write_all(&read(name)).await.expect("write");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("closed within 5 s")
            .unwrap_or(0);
        assert_eq!(n, 0, "{name}: the connection must be closed, got {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    // A well-framed bad request is answered on the connection, which stays open.
    let mut stream = tokio::net::TcpStream::connect(sip).await.expect("connect");
    let at = stream.local_addr().expect("addr");
    stream.write_all(&read("quotbal")).await.expect("write");
    let mut buf = Vec::new();
    let answer = read_frame(&mut stream, &mut buf).await;
    assert!(answer.starts_with("SIP/2.0 400 ") && answer.contains("quotbal"), "{answer}");
    stream.write_all(options("tcp-after-quotbal", "TCP", at).as_bytes()).await.expect("write");
    let pong = read_frame(&mut stream, &mut buf).await;
    assert!(pong.starts_with("SIP/2.0 200") && pong.contains("tcp-after-quotbal"), "{pong}");
    gw.shutdown().await;
}
