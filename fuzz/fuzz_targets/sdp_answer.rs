//! Arbitrary text as the SDP a device answers an INVITE with (and as an upper platform's
//! offer): the parser and the answer check never panic, and what parses renders to text that
//! parses again to the same description.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::protocol::sdp::Sdp;
use vigil::sources::gb28181::play::offer::{check_answer, MediaTransport};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = check_answer(text, 104_000_007, MediaTransport::Udp);
    let _ = check_answer(text, 104_000_007, MediaTransport::TcpActive);
    if let Ok(sdp) = Sdp::parse(text) {
        let again = Sdp::parse(&sdp.render()).expect("what vigil renders parses");
        assert_eq!(again, sdp);
    }
});
