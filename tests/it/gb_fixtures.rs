//! Captured GB/T 28181 messages from public sources (shared/reference/gb28181.md §3.10, each
//! named by vendor or product) through vigil's SIP, digest and MANSCDP readers.

use vigil::protocol::digest::{expected, parse_authorization};
use vigil::protocol::manscdp;
use vigil::protocol::sip::message::{uri_user, Message, StartLine};

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gb28181").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn wvp_register_over_tcp_from_behind_nat() {
    let raw = fixture("wvp-2.7.4-register-tcp-behind-nat.sip");
    let m = Message::parse(&raw).expect("parses");
    assert_eq!(m.method(), Some("REGISTER"));
    assert_eq!(m.header("From").and_then(uri_user), Some("34020092992000868740"));
    assert_eq!(m.header("Expires"), Some("3600"));
    assert_eq!(m.cseq().map(|c| c.0), Some(413));
    assert_eq!(m.branch(), Some("z9hG4bK8770638578"));
    assert!(m.header("Via").is_some_and(|v| v.contains("rport")));
}

#[test]
fn dahua_accepted_challenge_offers_md5() {
    let raw = fixture("dahua-ipc-401-challenge.sip");
    let m = Message::parse(&raw).expect("parses");
    assert!(matches!(m.start, StartLine::Response { code: 401, .. }));
    let www = parse_authorization(m.header("WWW-Authenticate").expect("challenge")).expect("digest params");
    assert_eq!(www.get("algorithm").map(String::as_str), Some("MD5"));
    assert!(www.contains_key("nonce") && www.contains_key("realm"));
}

#[test]
fn hikvision_nvr_digest_with_qop_auth() {
    // The values of the capture: vigil computes the response the standard expects (and so
    // refuses what that NVR sent, as WVP did).
    let text = String::from_utf8(fixture("hikvision-nvr-digest-qop-auth.txt")).expect("text");
    let want = text
        .lines()
        .find_map(|l| l.strip_prefix("expected response "))
        .and_then(|l| l.split_whitespace().next())
        .expect("expected response in the fixture");
    let got = expected(
        "34020000001110000301",
        "3100000000",
        "336699",
        "REGISTER",
        "sip:31000000000121100010@3100000000",
        "72ebe402c9b39b11ec648ff1c1c5a3f2",
        Some(("00000001", "67dd03c3", "auth")),
    );
    assert_eq!(got, want);
    assert_ne!(got, "36bb36a165e3ff7a89b913da8f751b7a");
}

#[test]
fn catalog_query_from_a_proxy() {
    let raw = fixture("sip-proxy-catalog-query.sip");
    let m = Message::parse(&raw).expect("parses");
    assert_eq!(m.method(), Some("MESSAGE"));
    let (text, _) = manscdp::decode(m.body);
    let env = manscdp::envelope(&text).expect("MANSCDP");
    assert_eq!(
        (env.root.as_str(), env.cmd_type.as_str(), env.sn, env.device_id.as_str()),
        ("Query", "Catalog", Some(159_055), "34020000002000000044")
    );
}

#[test]
fn hikvision_catalog_response_with_null_civil_code() {
    let raw = fixture("hikvision-catalog-response-wvp554.xml");
    let (text, _) = manscdp::decode(&raw);
    let c = manscdp::catalog(&text).expect("parses");
    assert_eq!((c.sum_num, c.items.len()), (1, 1));
    assert_eq!(c.items[0].civil_code, "", "the literal null is no civil code");
    assert!(c.items[0].status_on);
}

#[test]
fn platform_keepalive_body() {
    let raw = fixture("platform-keepalive-body.xml");
    assert_eq!(manscdp::declared(&raw), Some(manscdp::Charset::Gb18030));
    let (text, _) = manscdp::decode(&raw);
    let env = manscdp::envelope(&text).expect("parses");
    assert_eq!((env.root.as_str(), env.cmd_type.as_str(), env.status.as_deref()), ("Notify", "Keepalive", Some("OK")));
}
