//! GB/T 28181 cascade against an upper platform that misbehaves, played from a plain UDP socket
//! (no real upper answers garbage on purpose, and SIPp cannot send a storm of SUBSCRIBEs on new
//! dialogs while answering what comes back): garbage where an answer should be is counted and
//! ignored, and the registration goes on with the first real answer; a storm of SUBSCRIBEs is
//! answered one by one and coalesced into a handful of NOTIFYs, and vigil stays registered and
//! answers what comes next.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;

use crate::cascade::{LOWER, UPPER};
use crate::support::free_port;
use crate::support::gateway::{Db, TestGateway};

/// The rogue upper's socket.
struct Rogue(UdpSocket);

impl Rogue {
    /// The next message from vigil.
    async fn next(&self) -> (String, SocketAddr) {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = tokio::time::timeout(Duration::from_secs(15), self.0.recv_from(&mut buf))
            .await
            .expect("vigil sends within 15 s")
            .expect("recv");
        (String::from_utf8_lossy(&buf[..n]).to_string(), from)
    }

    async fn send(&self, text: &str, to: SocketAddr) {
        self.0.send_to(text.as_bytes(), to).await.expect("send");
    }
}

fn header<'a>(msg: &'a str, name: &str) -> &'a str {
    msg.lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
        .unwrap_or("")
}

/// A final answer to the request `req`, its dialog headers echoed.
fn answer(req: &str, code: u16, extra: &str) -> String {
    format!(
        "SIP/2.0 {code} OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=rogue\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        header(req, "Via"),
        header(req, "From"),
        header(req, "To"),
        header(req, "Call-ID"),
        header(req, "CSeq")
    )
}

fn subscribe(n: usize, me: SocketAddr, vigil: u16) -> String {
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<Query>\r\n<CmdType>Catalog</CmdType>\r\n<SN>{n}</SN>\r\n<DeviceID>{LOWER}</DeviceID>\r\n</Query>\r\n"
    );
    format!(
        "SUBSCRIBE sip:{LOWER}@127.0.0.1:{vigil} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKstorm{n}\r\n\
From: <sip:{UPPER}@4201000000>;tag=s{n}\r\nTo: <sip:{LOWER}@4201040000>\r\nCall-ID: storm-{n}@rogue\r\nCSeq: 1 SUBSCRIBE\r\n\
Event: Catalog;id={n}\r\nExpires: 600\r\nContact: <sip:{UPPER}@{me}>\r\nMax-Forwards: 70\r\n\
Content-Type: Application/MANSCDP+xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answers_are_counted_and_a_subscribe_storm_is_coalesced_while_vigil_stays_registered() {
    let rogue = Rogue(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let me = rogue.0.local_addr().expect("addr");
    let listen = free_port();
    let config = format!(
        "[[upstreams]]\nname = \"city\"\nprotocol = \"gb28181\"\nserver_id = \"{UPPER}\"\nserver_addr = \"{me}\"\n\
user_id = \"{LOWER}\"\npassword = \"12345678\"\nlisten = \"127.0.0.1:{listen}\"\n"
    );
    let gw = TestGateway::start(Db::Sqlite, &config).await;
    let camera = json!({"id": "42010400001320000001", "name": "东门", "kind": "camera", "protocol": "rtsp", "rtsp_url": "rtsp://127.0.0.1:9/x"});
    assert_eq!(gw.api.post("/devices", camera).await.0, 201);

    // Garbage where the REGISTER's answer should be: counted, ignored; the retransmission
    // answered for real registers.
    let (register, vigil) = rogue.next().await;
    assert!(register.starts_with("REGISTER "), "{register}");
    rogue.send("\u{1}\u{2} not SIP at all\r\n\r\n", vigil).await;
    rogue.send("SIP/2.0 200 OK\r\nContent-Length: 0\r\nContent-Length: 7\r\n\r\n", vigil).await;
    let unreadable = "vigil_cascade_requests_total{answer=\"none\",method=\"unreadable\",target=\"city\"} 2";
    gw.api.wait_for_metrics(Duration::from_secs(10), |m| m.lines().any(|l| l == unreadable)).await;
    loop {
        let (msg, from) = rogue.next().await;
        if msg.starts_with("REGISTER ") {
            rogue.send(&answer(&msg, 200, "Expires: 3600\r\n"), from).await;
            break;
        }
    }

    // 300 SUBSCRIBEs on 300 dialogs at once; as any UAC over UDP, the rogue sends again what
    // is not answered in 500 ms (the kernel's buffers drop part of a burst like this).
    const STORM: usize = 300;
    let mut pending: std::collections::BTreeSet<usize> = (0..STORM).collect();
    let (mut notifies, mut rounds) = (0, 0);
    let mut resend = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = resend.tick(), if !pending.is_empty() && rounds < 10 => {
                rounds += 1;
                for n in &pending {
                    rogue.send(&subscribe(*n, me, listen), vigil).await;
                }
            }
            got = tokio::time::timeout(Duration::from_secs(3), rogue.next()) => {
                // Three seconds without a word from vigil: the storm is over.
                let Ok((msg, from)) = got else { break };
                if msg.starts_with("SIP/2.0 200") && header(&msg, "CSeq").ends_with("SUBSCRIBE") {
                    let n = header(&msg, "Call-ID").trim_start_matches("storm-").split('@').next().and_then(|n| n.parse().ok());
                    pending.remove(&n.unwrap_or(usize::MAX));
                } else if msg.starts_with("NOTIFY ") {
                    notifies += 1;
                    rogue.send(&answer(&msg, 200, ""), from).await;
                } else if msg.starts_with("MESSAGE ") || msg.starts_with("REGISTER ") {
                    rogue.send(&answer(&msg, 200, "Expires: 3600\r\n"), from).await;
                }
            }
        }
    }
    assert!(pending.is_empty(), "{} of {STORM} SUBSCRIBEs never answered in {rounds} rounds", pending.len());
    assert!(notifies >= 1, "the subscribed upper was told the channel's status");
    assert!(
        notifies <= 30,
        "{notifies} NOTIFYs for {STORM} SUBSCRIBEs in {rounds} rounds: the full pushes were not coalesced"
    );
    let t = gw
        .api
        .wait_for("/relay/targets", Duration::from_secs(10), |v| v["items"][0]["session"]["state"] == "registered")
        .await;
    assert!(t["items"][0]["session"]["view"]["subscribed_until"].is_string(), "{t}");
    // And vigil still answers what comes next.
    let options = format!(
        "OPTIONS sip:{LOWER}@127.0.0.1:{listen} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKafter\r\n\
From: <sip:{UPPER}@4201000000>;tag=a\r\nTo: <sip:{LOWER}@4201040000>\r\nCall-ID: after@rogue\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    rogue.send(&options, vigil).await;
    loop {
        let (msg, from) = rogue.next().await;
        if header(&msg, "Call-ID") == "after@rogue" {
            assert!(msg.starts_with("SIP/2.0 200"), "{msg}");
            break;
        }
        if !msg.starts_with("SIP/2.0") {
            rogue.send(&answer(&msg, 200, ""), from).await;
        }
    }
    gw.shutdown().await;
}
