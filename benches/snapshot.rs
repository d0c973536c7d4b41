//! Snapshot from a cached keyframe (issue #4 target: p99 <= 30 ms at 1080p H.264): FFmpeg
//! decode of one keyframe as retina hands it (Annex B with parameter sets) + JPEG encode at
//! full size, as `GET /devices/{id}/snapshot` does on a cache miss. Also the diagnosis work
//! (decode + 320-wide planes + scores) and H.265. The keyframes are made with Debian's ffmpeg.
//! `cargo bench --bench snapshot` prints p50/p99 over 300 runs, then criterion's figures.
#![allow(clippy::disallowed_methods)] // measures real time

use std::process::Command;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use vigil::media::diagnosis;
use vigil::media::snapshot::{self, Codec};

fn keyframe(codec: &str, size: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("key.bin");
    let (enc, fmt) = if codec == "h265" { ("libx265", "hevc") } else { ("libx264", "h264") };
    let ok = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i", &format!("testsrc2=size={size}:rate=25"), "-frames:v", "1"])
        .args(["-c:v", enc, "-pix_fmt", "yuv420p", "-b:v", "4M", "-x265-params", "log-level=error", "-f", fmt])
        .arg(&out)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg (Debian's package) makes the keyframe");
    std::fs::read(out).expect("keyframe")
}

fn percentiles(name: &str, mut f: impl FnMut()) {
    let mut ms: Vec<f64> = (0..300)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    println!("{name}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (300 runs)", ms[150], ms[296], ms[299]);
}

fn bench(c: &mut Criterion) {
    let h264 = keyframe("h264", "1920x1080");
    let h265 = keyframe("h265", "1920x1080");
    let snap = |codec: Codec, data: &[u8]| {
        let p = snapshot::decode(codec, data).expect("decodes");
        snapshot::jpeg(&p, 1920).expect("encodes")
    };
    let jpeg = snap(Codec::H264, &h264);
    println!("1080p H.264 keyframe {} KB -> JPEG {} KB", h264.len() / 1024, jpeg.len() / 1024);
    percentiles("snapshot 1080p H.264 (decode + JPEG)", || {
        snap(Codec::H264, &h264);
    });
    percentiles("snapshot 1080p H.265 (decode + JPEG)", || {
        snap(Codec::H265, &h265);
    });
    percentiles("diagnosis 1080p H.264 (decode + planes + scores)", || {
        let p = snapshot::planes(&snapshot::decode(Codec::H264, &h264).expect("decodes"), 320).expect("planes");
        diagnosis::score(&p, None);
    });
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(30);
    g.bench_function("h264_1080p_decode_jpeg", |b| b.iter(|| snap(Codec::H264, &h264)));
    g.bench_function("h265_1080p_decode_jpeg", |b| b.iter(|| snap(Codec::H265, &h265)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
