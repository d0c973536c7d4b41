//! SIP and MANSCDP parsing (GB/T 28181 issue targets: >= 500,000 REGISTER/MESSAGE parses
//! per second per core; MANSCDP Keepalive >= 1,000,000/s). `cargo bench --bench sip_parse`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vigil::protocol::manscdp;
use vigil::protocol::sip::message::{uri_user, Message};

const REGISTER: &str = "REGISTER sip:42010400002000000001@4201040000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1829381093\r\n\
From: <sip:42010400001320000001@4201040000>;tag=1939582613\r\n\
To: <sip:42010400001320000001@4201040000>\r\n\
Call-ID: 1459395383\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:42010400001320000001@192.168.1.64:5060>\r\n\
Authorization: Digest username=\"42010400001320000001\", realm=\"4201040000\", nonce=\"0193a1b2c3d4e5f60718293a4b5c6d7e\", uri=\"sip:42010400002000000001@4201040000\", response=\"9a61637436620c51e4b2abf82a53e6be\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\r\n\
Max-Forwards: 70\r\n\
User-Agent: IP Camera\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

const KEEPALIVE_BODY: &str = "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Notify>\r\n<CmdType>Keepalive</CmdType>\r\n<SN>1093</SN>\r\n<DeviceID>42010400001320000001</DeviceID>\r\n<Status>OK</Status>\r\n</Notify>\r\n";

fn keepalive_message() -> String {
    format!(
        "MESSAGE sip:42010400002000000001@4201040000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK3859230\r\n\
From: <sip:42010400001320000001@4201040000>;tag=84710\r\n\
To: <sip:42010400002000000001@4201040000>\r\n\
Call-ID: 7729103\r\n\
CSeq: 20 MESSAGE\r\n\
Content-Type: Application/MANSCDP+xml\r\n\
Max-Forwards: 70\r\n\
User-Agent: IP Camera\r\n\
Content-Length: {}\r\n\r\n{KEEPALIVE_BODY}",
        KEEPALIVE_BODY.len()
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sip");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_register_with_digest", |b| {
        b.iter(|| {
            let m = Message::parse(REGISTER.as_bytes()).expect("parses");
            (
                m.cseq().map(|c| c.0),
                m.branch().map(str::len),
                m.header("From").and_then(uri_user).map(str::len),
                m.header("Authorization").map(str::len),
            )
        })
    });
    // The crate the issue asked to evaluate, on the same REGISTER: its parse alone (typed
    // headers are parsed further on access, which is not counted here).
    g.bench_function("rsip_parse_register_with_digest", |b| {
        b.iter(|| {
            let m = rsip::SipMessage::try_from(REGISTER.as_bytes()).expect("rsip parses");
            m.body().len()
        })
    });
    let ka = keepalive_message();
    g.bench_function("rsip_parse_keepalive_message", |b| {
        b.iter(|| {
            let m = rsip::SipMessage::try_from(ka.as_bytes()).expect("rsip parses");
            m.body().len()
        })
    });
    g.bench_function("parse_keepalive_message", |b| {
        b.iter(|| {
            let m = Message::parse(ka.as_bytes()).expect("parses");
            (m.cseq().map(|c| c.0), m.header("From").and_then(uri_user).map(str::len), m.body.len())
        })
    });
    g.bench_function("manscdp_keepalive_decode_and_envelope", |b| {
        b.iter(|| {
            let (text, _) = manscdp::decode(KEEPALIVE_BODY.as_bytes());
            manscdp::envelope(&text).expect("parses")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
