//! Access units to a GB/T 28181 program stream, and the stream to RTP payloads: what vigil
//! sends when an upper platform plays a channel it did not receive as PS (an RTSP camera, a
//! stream re-muxed), and what the simulators send as devices. Each access unit is one pack: a
//! pack header whose SCR is the PTS; on a keyframe, a system header and a program stream map
//! naming the codec; then the picture in PES packets of at most `PES_PAYLOAD` bytes, the first
//! with its PTS. RTP payloads are cut from the pack at `mtu`, all with the access unit's
//! timestamp, the marker on the last (how WVP, ZLMediaKit and devices send it).

use super::es::Codec;

/// Payload bytes per PES (the PES length field holds 65,535 with the header).
pub const PES_PAYLOAD: usize = 65_000;

/// One access unit as one PS pack.
pub fn pack(codec: Codec, pts: u64, keyframe: bool, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64 + data.len() / PES_PAYLOAD * 14);
    pack_header(pts, 0, &mut out);
    if keyframe {
        out.extend([0, 0, 1, 0xBB, 0, 12, 0x80, 0x1E, 0xFF, 0xFE, 0xE1, 0x7F, 0xE0, 0xE0, 0xE8, 0xC0, 0xC0, 0x20]);
        let stream_type = match codec {
            Codec::H264 => 0x1B,
            Codec::H265 => 0x24,
        };
        map(&[(stream_type, 0xE0)], &mut out);
    }
    for (i, chunk) in data.chunks(PES_PAYLOAD).enumerate() {
        pes(0xE0, (i == 0).then_some(pts), chunk, &mut out);
    }
    out
}

/// An MPEG-2 pack header with the SCR at `scr` (90 kHz; extension 0), a mux rate and
/// `stuffing` bytes (0–7).
pub fn pack_header(scr: u64, stuffing: u8, out: &mut Vec<u8>) {
    let scr = scr & 0x1_FFFF_FFFF;
    let stuffing = stuffing & 0x07;
    out.extend([
        0,
        0,
        1,
        0xBA,
        0x44 | ((scr >> 27) as u8 & 0x38) | ((scr >> 28) as u8 & 0x03),
        (scr >> 20) as u8,
        ((scr >> 12) as u8 & 0xF8) | 0x04 | ((scr >> 13) as u8 & 0x03),
        (scr >> 5) as u8,
        ((scr << 3) as u8 & 0xF8) | 0x04,
        0x01,
        0x01,
        0x89,
        0xC3,
        0xF8 | stuffing,
    ]);
    out.extend(std::iter::repeat_n(0xFF, usize::from(stuffing)));
}

/// A program stream map naming `(stream_type, stream_id)` pairs; the CRC is not computed
/// (readers of PS over RTP do not check it).
pub fn map(streams: &[(u8, u8)], out: &mut Vec<u8>) {
    let es_len = streams.len() * 4;
    // flags, info length 0, es map length, entries, CRC.
    let body_len = 6 + es_len + 4;
    out.extend([0, 0, 1, 0xBC]);
    out.extend((body_len as u16).to_be_bytes());
    out.extend([0xE0, 0xFF, 0, 0]);
    out.extend((es_len as u16).to_be_bytes());
    for (ty, id) in streams {
        out.extend([*ty, *id, 0, 0]);
    }
    out.extend([0, 0, 0, 0]);
}

/// A PES of `stream_id` carrying `payload` (at most `PES_PAYLOAD` bytes), with its PTS when
/// given.
pub fn pes(stream_id: u8, pts: Option<u64>, payload: &[u8], out: &mut Vec<u8>) {
    let header_len: u8 = if pts.is_some() { 5 } else { 0 };
    let len = 3 + usize::from(header_len) + payload.len().min(PES_PAYLOAD);
    out.extend([0, 0, 1, stream_id]);
    out.extend((len as u16).to_be_bytes());
    out.extend([0x80, if pts.is_some() { 0x80 } else { 0 }, header_len]);
    if let Some(t) = pts {
        out.extend(pes_timestamp(0x2, t));
    }
    out.extend_from_slice(&payload[..payload.len().min(PES_PAYLOAD)]);
}

/// A PES timestamp's 5 bytes with its 4-bit prefix (2: PTS only).
fn pes_timestamp(prefix: u8, t: u64) -> [u8; 5] {
    [
        (prefix << 4) | ((t >> 29) as u8 & 0x0E) | 1,
        (t >> 22) as u8,
        ((t >> 14) as u8 & 0xFE) | 1,
        (t >> 7) as u8,
        ((t << 1) as u8 & 0xFE) | 1,
    ]
}

/// The RTP payloads of one pack: at most `mtu` bytes each (at least 64).
pub fn rtp_payloads(pack: &[u8], mtu: usize) -> impl Iterator<Item = &[u8]> {
    pack.chunks(mtu.max(64))
}

#[cfg(test)]
mod tests {
    use super::super::es::Assembler;
    use super::super::{Demuxer, StreamType};
    use super::*;

    #[test]
    fn packs_demux_back_to_the_same_access_units_with_their_pts() {
        let idr = [
            &[0u8, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1E, 0, 0, 0, 1, 0x68, 0xCE, 0x3C, 0x80, 0, 0, 1, 0x65][..],
            &[0x88; 150_000][..],
        ]
        .concat();
        let p = [0u8, 0, 1, 0x41, 0x9A, 0x02];
        let mut stream = pack(Codec::H264, 3600, true, &idr);
        stream.extend(pack(Codec::H264, (1 << 33) - 1, false, &p));
        let (mut d, mut a) = (Demuxer::default(), Assembler::default());
        let mut units = Vec::new();
        for payload in rtp_payloads(&stream, 1400) {
            let mut video = Vec::new();
            d.push(payload, |pes| video.push(pes));
            for pes in video {
                a.set_hint(d.stream_type(pes.stream_id).map(|t| {
                    if t == StreamType::H265 {
                        Codec::H265
                    } else {
                        Codec::H264
                    }
                }));
                a.push(pes.pts, &pes.payload, |u| units.push(u));
            }
        }
        a.flush(|u| units.push(u));
        assert_eq!(d.stream_type(0xE0), Some(StreamType::H264));
        assert_eq!(d.counters.packs, 2);
        assert_eq!(units.len(), 2);
        assert_eq!((units[0].pts, units[0].keyframe, units[0].data.as_slice()), (Some(3600), true, idr.as_slice()));
        assert_eq!((units[1].pts, units[1].data.as_slice()), (Some((1 << 33) - 1), &p[..]));
        assert!(rtp_payloads(&stream, 1400).all(|c| c.len() <= 1400));
    }
}
