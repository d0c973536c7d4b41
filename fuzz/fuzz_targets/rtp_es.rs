//! Arbitrary bytes as RTP packets of an H.264 or H.265 elementary stream (a device that answered
//! `98 H264` / `99 H265`): the packet reader and the depacketizer never panic, no access unit
//! exceeds its bound, and whatever comes out is Annex B (starts with a start code).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::protocol::ps::es::Codec;
use vigil::protocol::rtp::Packet;
use vigil::protocol::rtp_h26x::{Depacketizer, MAX_AU};

fuzz_target!(|data: &[u8]| {
    for codec in [Codec::H264, Codec::H265] {
        let mut d = Depacketizer::new(codec);
        // The input as a run of packets, each behind a one-byte length.
        let mut rest = data;
        while let [n, tail @ ..] = rest {
            let n = usize::from(*n).min(tail.len());
            let (packet, next) = tail.split_at(n);
            rest = next;
            if let Ok(p) = Packet::parse(packet) {
                d.push(p.payload, p.timestamp, p.marker, p.sequence % 7 == 0, |_, au| {
                    assert!(au.len() <= MAX_AU + 4);
                    assert!(au.starts_with(&[0, 0, 0, 1]));
                });
            }
        }
    }
});
