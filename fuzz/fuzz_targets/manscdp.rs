//! Arbitrary bytes as a MANSCDP body through every reader: never a panic; depth and length
//! bounds hold.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::protocol::manscdp;

fuzz_target!(|data: &[u8]| {
    let _ = manscdp::declared(data);
    let (text, _) = manscdp::decode(data);
    let _ = manscdp::envelope(&text);
    if let Ok(c) = manscdp::catalog(&text) {
        assert!(c.items.len() <= manscdp::MAX_ITEMS);
    }
    let _ = manscdp::device_info(&text);
    let _ = manscdp::device_status(&text);
    let _ = manscdp::basic_param(&text);
    let _ = manscdp::alarm(&text);
});
