//! What rsip (evaluated for the SIP parser, BENCHMARKS.md) accepts of what GB/T 28181
//! devices send, beside vigil's parser: `cargo run --example rsip_tolerance`.
fn main() {
    let crlf = "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1\r\nFrom: <sip:34020000001320000001@3402000000>;tag=1\r\nTo: <sip:34020000001320000001@3402000000>\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\nContact: <sip:34020000001320000001@10.0.0.5:5060>\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n";
    let lf = crlf.replace("\r\n", "\n");
    let folded = crlf.replace("Call-ID: 1\r\n", "Call-ID:\r\n 1\r\n");
    let compact = crlf.replace("Call-ID:", "i:").replace("Via:", "v:");
    for (name, m) in [("crlf", crlf.to_string()), ("lf", lf), ("folded", folded), ("compact", compact)] {
        let r = rsip::SipMessage::try_from(m.as_bytes());
        println!("rsip {name}: {}", if r.is_ok() { "accepted" } else { "refused" });
        let v = vigil::protocol::sip::message::Message::parse(m.as_bytes());
        println!("vigil {name}: {}", if v.is_ok() { "accepted" } else { "refused" });
    }
}
