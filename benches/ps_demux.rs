//! PS demux (GB/T 28181 live-video issue target: >= 1 GB/s per core on a 1080p H.264 PS
//! stream). The stream is made at bench time: ffmpeg encodes 10 s of 1080p test pattern
//! (H.264, 25 fps, GOP 1 s, ~8 Mbit/s), vigil's muxer packs each access unit as devices do
//! (pack header, system header and map on keyframes, PES), and the bench feeds it in RTP-sized
//! pieces (1,400 bytes) to the demuxer alone, and to the demuxer and the access-unit assembler.
//! `cargo bench --bench ps_demux`

use std::process::Command;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vigil::protocol::ps::es::{Assembler, Codec};
use vigil::protocol::ps::{mux, Demuxer};

/// 10 s of 1080p H.264 from ffmpeg as a program stream, one pack per access unit.
fn stream() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let es = dir.path().join("1080p.h264");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25", "-t", "10"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-bf", "0", "-g", "25"])
        .args(["-b:v", "8M", "-x264-params", "repeat-headers=1", "-f", "h264"])
        .arg(&es)
        .status()
        .expect("ffmpeg (Debian's ffmpeg package) makes the bench stream");
    assert!(status.success(), "ffmpeg failed");
    let data = std::fs::read(&es).expect("the clip");
    let mut a = Assembler::default();
    a.set_hint(Some(Codec::H264));
    let mut units = Vec::new();
    a.push(None, &data, |u| units.push(u));
    a.flush(|u| units.push(u));
    let mut ps = Vec::with_capacity(data.len() + units.len() * 64);
    for (i, u) in units.iter().enumerate() {
        ps.extend(mux::pack(u.codec, i as u64 * 3600, u.keyframe, &u.data));
    }
    assert!(units.len() >= 250, "{} access units", units.len());
    ps
}

fn bench(c: &mut Criterion) {
    let ps = stream();
    // What one pass yields, so the figure is read against real work: every byte of video
    // comes out of the demuxer, every frame out of the assembler.
    let (mut d, mut a) = (Demuxer::default(), Assembler::default());
    let (mut bytes, mut frames) = (0usize, 0usize);
    for chunk in ps.chunks(1400) {
        d.push(chunk, |p| {
            bytes += p.payload.len();
            a.push(p.pts, &p.payload, |_| frames += 1)
        });
    }
    a.flush(|_| frames += 1);
    eprintln!("ps_demux: {} bytes of PS, {bytes} bytes of video in {} PES, {frames} frames", ps.len(), d.counters.pes);
    assert_eq!(frames, 250, "every frame comes out");
    let mut g = c.benchmark_group("ps");
    g.throughput(Throughput::Bytes(ps.len() as u64));
    g.sample_size(20);
    g.bench_function("demux_1080p_h264", |b| {
        b.iter(|| {
            let mut d = Demuxer::default();
            let mut n = 0usize;
            for chunk in ps.chunks(1400) {
                d.push(chunk, |p| n += p.payload.len());
            }
            n
        })
    });
    g.bench_function("demux_and_assemble_1080p_h264", |b| {
        b.iter(|| {
            let (mut d, mut a) = (Demuxer::default(), Assembler::default());
            let mut frames = 0usize;
            for chunk in ps.chunks(1400) {
                d.push(chunk, |p| a.push(p.pts, &p.payload, |_| frames += 1));
            }
            a.flush(|_| frames += 1);
            frames
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
