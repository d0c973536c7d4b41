//! Arbitrary bytes as a GB/T 28181 program stream, split where the first byte says (as RTP
//! packets would split it), through the demuxer and the access-unit assembler: never a panic;
//! no access unit over the bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::protocol::ps::es::{Assembler, MAX_AU};
use vigil::protocol::ps::Demuxer;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let (mut d, mut a) = (Demuxer::default(), Assembler::default());
    let mut check = |u: vigil::protocol::ps::es::AccessUnit| assert!(u.data.len() <= MAX_AU);
    for chunk in rest.chunks(usize::from(split).max(1)) {
        let mut video = Vec::new();
        d.push(chunk, |p| video.push(p));
        for p in video.into_iter().filter(|p| p.is_video()) {
            a.push(p.pts, &p.payload, &mut check);
        }
    }
    a.flush(&mut check);
});
