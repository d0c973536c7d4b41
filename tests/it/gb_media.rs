//! GB/T 28181 media codecs against real producers. The RTP TCP framer and the reorder window
//! on GStreamer's RTP over RFC 4571 (`rtpstreampay`); the program-stream demuxer on GStreamer's `mpegpsmux` (H.264 with a
//! program stream map, as GB/T 28181 devices write it) and FFmpeg's `mpeg` muxer (H.264 as
//! stream 0xE2 and H.265, both without a map, several frames per PES, frames across packs).
//! What vigil cuts out is handed back to `ffprobe`, which must read every frame of it with the
//! right codec: the producers and the judge are not ours.

use std::path::Path;
use std::process::Command;

use vigil::protocol::ps::es::{AccessUnit, Assembler, Codec};
use vigil::protocol::ps::mux;
use vigil::protocol::ps::{Demuxer, StreamType};
use vigil::protocol::rtp::{Packet, Reorder, TcpFramer};

const FRAMES: usize = 50;
/// At most 25 frames between keyframes: two in 50.
const GOP: usize = 25;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} cannot run (scripts/install-deps.sh installs it): {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Demuxes a PS file fed in RTP-payload-sized pieces; the access units and the demuxer.
fn demux(path: &Path) -> (Vec<AccessUnit>, Demuxer, Assembler) {
    let bytes = std::fs::read(path).expect("PS file");
    let (mut d, mut a) = (Demuxer::default(), Assembler::default());
    let mut units = Vec::new();
    for chunk in bytes.chunks(1400) {
        let mut video = Vec::new();
        d.push(chunk, |p| {
            if p.is_video() {
                video.push(p)
            }
        });
        for p in video {
            a.set_hint(match d.stream_type(p.stream_id) {
                Some(StreamType::H264) => Some(Codec::H264),
                Some(StreamType::H265) => Some(Codec::H265),
                _ => None,
            });
            a.push(p.pts, &p.payload, |u| units.push(u));
        }
    }
    a.flush(|u| units.push(u));
    (units, d, a)
}

/// What ffprobe reads in an elementary stream: (codec name, frames).
fn probe(es: &Path, format: &str) -> (String, usize) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-f", format, "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0"])
        .arg(es)
        .output()
        .expect("ffprobe runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.trim().split(',');
    let codec = f.next().unwrap_or_default().to_owned();
    let frames = f.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (codec, frames)
}

fn check(units: &[AccessUnit], codec: Codec, dir: &Path, name: &str, source: &Path) {
    assert_eq!(units.len(), FRAMES, "{name}: access units");
    assert!(units.iter().all(|u| u.codec == codec), "{name}: codec");
    // Keyframes in decode order: the first, and one per GOP (B-frames move where in decode
    // order the second one falls, not how many there are).
    assert!(units[0].keyframe, "{name}: the stream starts with a keyframe");
    assert_eq!(units.iter().filter(|u| u.keyframe).count(), FRAMES / GOP, "{name}: keyframes");
    assert!(units[0].pts.is_some(), "{name}: the first access unit has its PTS");
    let es = dir.join(format!("{name}.es"));
    std::fs::write(&es, units.iter().flat_map(|u| u.data.iter().copied()).collect::<Vec<u8>>()).expect("write");
    let format = if codec == Codec::H264 { "h264" } else { "hevc" };
    let want = if codec == Codec::H264 { "h264" } else { "hevc" };
    assert_eq!(probe(&es, format), (want.to_owned(), FRAMES), "{name}: ffprobe on what vigil cut out");
    // Byte for byte what FFmpeg's own demuxer takes out of the same file.
    let theirs = dir.join(format!("{name}.ffmpeg.es"));
    run(Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-i"])
        .arg(source)
        .args(["-c", "copy", "-f", format])
        .arg(&theirs));
    let (ours, theirs) = (std::fs::read(&es).expect("ours"), std::fs::read(&theirs).expect("ffmpeg's"));
    assert!(
        ours == theirs,
        "{name}: vigil's elementary stream ({} bytes) differs from FFmpeg's ({} bytes)",
        ours.len(),
        theirs.len()
    );
    // And back into a program stream as vigil sends one (one pack per access unit, a map on
    // each keyframe, PTS spaced at 25 fps): ffprobe reads every frame of it too.
    let ps: Vec<u8> =
        units.iter().enumerate().flat_map(|(i, u)| mux::pack(u.codec, 3600 * i as u64, u.keyframe, &u.data)).collect();
    let remuxed = dir.join(format!("{name}.remuxed.ps"));
    std::fs::write(&remuxed, ps).expect("write");
    assert_eq!(probe(&remuxed, "mpeg"), (want.to_owned(), FRAMES), "{name}: ffprobe on vigil's own PS");
}

#[test]
fn gstreamer_ps_with_a_map_gives_every_h264_frame() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ps = dir.path().join("gst.ps");
    run(Command::new("gst-launch-1.0").args(["-q", "videotestsrc", &format!("num-buffers={FRAMES}"), "!"]).args([
        "video/x-raw,width=320,height=240,framerate=25/1",
        "!",
        "x264enc",
        &format!("key-int-max={GOP}"),
        "!",
        "h264parse",
        "!",
        "mpegpsmux",
        "!",
        "filesink",
        &format!("location={}", ps.display()),
    ]));
    let (units, d, _) = demux(&ps);
    assert_eq!(d.stream_type(0xE0), Some(StreamType::H264), "mpegpsmux writes a map");
    assert!(d.counters.maps >= 1 && d.counters.packs >= 1);
    check(&units, Codec::H264, dir.path(), "gst-h264", &ps);
}

#[test]
fn ffmpeg_ps_without_a_map_gives_every_h264_and_h265_frame() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (encoder, codec, name, quiet) in [
        ("libx264", Codec::H264, "ffmpeg-h264", &[][..]),
        ("libx265", Codec::H265, "ffmpeg-h265", &["-x265-params", "log-level=error"][..]),
    ] {
        let ps = dir.path().join(format!("{name}.ps"));
        run(Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
            .args(["-frames:v", &FRAMES.to_string(), "-c:v", encoder, "-g", &GOP.to_string()])
            .args(quiet)
            .args(["-f", "mpeg"])
            .arg(&ps));
        let (units, d, a) = demux(&ps);
        assert_eq!(d.counters.maps, 0, "{name}: ffmpeg writes no map");
        assert_eq!(a.codec(), Some(codec), "{name}: the codec is read from the stream");
        check(&units, codec, dir.path(), name, &ps);
    }
}

#[test]
fn gstreamer_rtp_over_rfc4571_splits_into_every_packet_and_reorders_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("h264.rtp");
    run(Command::new("gst-launch-1.0").args(["-q", "videotestsrc", &format!("num-buffers={FRAMES}"), "!"]).args([
        "video/x-raw,width=320,height=240,framerate=25/1",
        "!",
        "x264enc",
        "!",
        "rtph264pay",
        "mtu=400",
        "!",
        "rtpstreampay",
        "!",
        "filesink",
        &format!("location={}", file.display()),
    ]));
    let bytes = std::fs::read(&file).expect("RTP file");
    let mut framer = TcpFramer::default();
    let mut packets: Vec<Vec<u8>> = Vec::new();
    for chunk in bytes.chunks(1000) {
        framer.push(chunk, |p| packets.push(p.to_vec()));
    }
    let parsed: Vec<Packet<'_>> = packets.iter().map(|p| Packet::parse(p).expect("GStreamer's RTP parses")).collect();
    assert!(parsed.len() > FRAMES, "{} packets", parsed.len());
    assert!(parsed.iter().all(|p| p.ssrc == parsed[0].ssrc && p.payload_type == parsed[0].payload_type));
    for w in parsed.windows(2) {
        assert_eq!(w[1].sequence, w[0].sequence.wrapping_add(1), "no packet lost or doubled by the framer");
    }
    assert_eq!(parsed.iter().filter(|p| p.marker).count(), FRAMES, "one marker per frame");
    // Shuffled within 8 packets, as a UDP path may: the window puts them back, nothing lost.
    let mut shuffled: Vec<(u16, usize)> = parsed.iter().enumerate().map(|(i, p)| (p.sequence, i)).collect();
    for block in shuffled.chunks_mut(8) {
        block.reverse();
    }
    let mut window = Reorder::new(16);
    let mut order = Vec::new();
    for (seq, i) in shuffled {
        window.push(seq, i, |_, i| order.push(i));
    }
    window.flush(|_, i| order.push(i));
    assert_eq!(order, (0..parsed.len()).collect::<Vec<_>>());
    assert_eq!((window.losses.lost, window.losses.late), (0, 0));
}

/// Devices that answer `98 H264` or `99 H265` send the elementary stream over RTP: GStreamer's
/// `rtph264pay` / `rtph265pay` (single NAL units, FU-A / FU fragments at a small MTU) cut an
/// ffmpeg-made stream, and what vigil's depacketizer puts back together is the same stream,
/// byte for byte, frame for frame (ffprobe).
#[test]
fn gstreamer_es_over_rtp_depacketizes_to_every_h264_and_h265_frame() {
    use vigil::protocol::rtp_h26x::{nal_units, Depacketizer};
    let dir = tempfile::tempdir().expect("temp dir");
    for (encoder, codec, name, parse, pay, quiet) in [
        ("libx264", Codec::H264, "es-h264", "h264parse", "rtph264pay", &[][..]),
        ("libx265", Codec::H265, "es-h265", "h265parse", "rtph265pay", &["-x265-params", "log-level=error"][..]),
    ] {
        let es = dir.path().join(format!("{name}.source"));
        let format = if codec == Codec::H264 { "h264" } else { "hevc" };
        run(Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
            .args(["-frames:v", &FRAMES.to_string(), "-c:v", encoder, "-g", &GOP.to_string()])
            .args(quiet)
            .args(["-f", format])
            .arg(&es));
        let rtp = dir.path().join(format!("{name}.rtp"));
        let caps = format!(
            "video/x-{},stream-format=byte-stream,alignment=au",
            if codec == Codec::H264 { "h264" } else { "h265" }
        );
        run(Command::new("gst-launch-1.0").args(["-q", "filesrc", &format!("location={}", es.display()), "!"]).args([
            parse,
            "!",
            &caps,
            "!",
            pay,
            "mtu=500",
            "!",
            "rtpstreampay",
            "!",
            "filesink",
            &format!("location={}", rtp.display()),
        ]));
        let bytes = std::fs::read(&rtp).expect("RTP file");
        let mut framer = TcpFramer::default();
        let mut packets: Vec<Vec<u8>> = Vec::new();
        framer.push(&bytes, |p| packets.push(p.to_vec()));
        let mut d = Depacketizer::new(codec);
        let mut a = Assembler::default();
        a.set_hint(Some(codec));
        let mut units = Vec::new();
        let (mut fragmented, mut single) = (0, 0);
        for p in &packets {
            let p = Packet::parse(p).expect("GStreamer's RTP parses");
            let nal_type = if codec == Codec::H264 { p.payload[0] & 0x1F } else { (p.payload[0] >> 1) & 0x3F };
            fragmented += usize::from(nal_type == 28 || nal_type == 49);
            single += usize::from(nal_type < 24);
            d.push(p.payload, p.timestamp, p.marker, false, |t, au| a.push(Some(u64::from(t)), au, |u| units.push(u)));
        }
        a.flush(|u| units.push(u));
        assert!(
            fragmented > 0 && single > 0,
            "{name}: {fragmented} fragments and {single} whole units: both kinds read"
        );
        assert_eq!((d.counters.malformed, d.counters.broken_fragments), (0, 0), "{name}");
        assert_eq!(units.len(), FRAMES, "{name}: access units");
        assert_eq!(units.iter().filter(|u| u.keyframe).count(), FRAMES / GOP, "{name}: keyframes");
        let ours: Vec<u8> = units.iter().flat_map(|u| u.data.iter().copied()).collect();
        let out = dir.path().join(format!("{name}.es"));
        std::fs::write(&out, &ours).expect("write");
        let want = if codec == Codec::H264 { "h264" } else { "hevc" };
        assert_eq!(probe(&out, format), (want.to_owned(), FRAMES), "{name}: ffprobe on what vigil put back");
        // The same NAL units, byte for byte, in the same order (RTP carries no start codes:
        // their length, 3 or 4 bytes, may differ).
        // h264parse/h265parse put an access unit delimiter before each picture on the way to
        // the payloader (`alignment=au`): those are GStreamer's, not the source's, and are
        // set aside on both sides.
        let aud = |n: &&[u8]| match codec {
            Codec::H264 => n[0] & 0x1F == 9,
            Codec::H265 => (n[0] >> 1) & 0x3F == 35,
        };
        let source = std::fs::read(&es).expect("source");
        let theirs: Vec<&[u8]> = nal_units(&source).filter(|n| !aud(n)).collect();
        let ours: Vec<&[u8]> = nal_units(&ours).filter(|n| !aud(n)).collect();
        assert_eq!(ours.len(), theirs.len(), "{name}: NAL units");
        assert!(ours == theirs, "{name}: the NAL units differ from the source's");
    }
}
