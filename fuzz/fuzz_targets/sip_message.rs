//! Arbitrary bytes into the SIP parser and the TCP framer: never a panic, never an
//! allocation past the message cap.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::protocol::sip::message::{frame_len, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(n)) = frame_len(data) {
        assert!(n <= data.len());
    }
    if let Ok(m) = Message::parse(data) {
        let _ = (m.header("Via"), m.cseq(), m.branch(), m.method());
        for h in ["From", "To", "Contact", "Authorization"] {
            if let Some(v) = m.header(h) {
                let _ = vigil::protocol::sip::message::uri_user(v);
                let _ = vigil::protocol::digest::parse_authorization(v);
            }
        }
    }
});
