//! MPEG-2 Program Stream (ISO/IEC 13818-1 §2.5) as GB/T 28181 devices send it over RTP: the
//! byte stream in, PES packets out, whatever the RTP packets' boundaries. Pack headers (with
//! their stuffing; MPEG-1 packs too), system headers and private streams are skipped by their
//! own lengths — never by searching for a start code, so Hikvision's private 0xBD packets with
//! start codes inside them are passed over whole. The program stream map is read for its
//! stream types (0x1B H.264, 0x24 H.265, 0x90/0x91 G.711) and tolerated when its lengths are
//! wrong or when it is missing (the elementary stream is then probed: `es`). PES headers are
//! read with or without PTS/DTS.
//!
//! `es` turns the video PES payloads into access units (H.264/H.265), deciding the codec from
//! the stream itself. Pure and bounded: the demuxer holds at most one unit (a PES is at most
//! 65,541 bytes) plus what a resync skips; every length is checked before it is used.

pub mod es;
pub mod mux;

/// The start codes this demuxer knows.
const PACK: u8 = 0xBA;
const SYSTEM_HEADER: u8 = 0xBB;
const PSM: u8 = 0xBC;
const PROGRAM_END: u8 = 0xB9;

/// A buffer emptied with more room than this is given back (hundreds of streams at once).
const KEEP_CAPACITY: usize = 4096;

/// Bytes held while waiting for the rest of a unit; past it the unit is dropped as corrupt
/// (a PES length is at most 65,535 plus its 6-byte prefix).
const MAX_HELD: usize = 70 * 1024;

/// A stream type from the program stream map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    H264,
    H265,
    G711A,
    G711U,
    Other(u8),
}

impl StreamType {
    fn from_byte(b: u8) -> StreamType {
        match b {
            0x1B => StreamType::H264,
            0x24 => StreamType::H265,
            0x90 => StreamType::G711A,
            0x91 => StreamType::G711U,
            o => StreamType::Other(o),
        }
    }
}

/// One PES packet of a video or audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pes {
    /// 0xE0–0xEF video, 0xC0–0xDF audio.
    pub stream_id: u8,
    /// 90 kHz.
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub payload: Vec<u8>,
}

impl Pes {
    pub fn is_video(&self) -> bool {
        (0xE0..=0xEF).contains(&self.stream_id)
    }
}

/// What the demuxer counted: for health, and for the log when a stream is unreadable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packs: u64,
    pub maps: u64,
    /// Program stream maps whose lengths did not add up (read as far as they went).
    pub bad_maps: u64,
    pub pes: u64,
    /// Private and padding packets passed over by their length (0xBD, 0xBE, 0xBF, ...).
    pub skipped: u64,
    /// Bytes passed over looking for the next start code (loss, garbage).
    pub resync_bytes: u64,
}

/// A streaming program-stream demuxer.
#[derive(Debug, Default)]
pub struct Demuxer {
    held: Vec<u8>,
    /// Stream types by elementary stream id, from the last map.
    types: Vec<(u8, StreamType)>,
    pub counters: Counters,
}

/// What one unit at the front of the buffer is.
enum Unit {
    /// Need more bytes.
    Incomplete,
    /// `n` bytes to drop (a header, a skipped packet, garbage before a start code).
    Skip(usize),
    /// A PES of `n` bytes.
    Pes(usize),
    /// A program stream map of `n` bytes.
    Map(usize),
}

impl Demuxer {
    /// The stream type the last map gave `stream_id`, if a map was seen.
    pub fn stream_type(&self, stream_id: u8) -> Option<StreamType> {
        self.types.iter().find(|(id, _)| *id == stream_id).map(|(_, t)| *t)
    }

    /// Feeds bytes (any split); calls `out` with each whole PES of an audio or video stream.
    pub fn push(&mut self, data: &[u8], mut out: impl FnMut(Pes)) {
        self.held.extend_from_slice(data);
        let mut at = 0;
        loop {
            match unit(&self.held[at..], &mut self.counters) {
                Unit::Skip(n) => at += n,
                Unit::Map(n) => {
                    self.read_map(at, n);
                    at += n;
                }
                Unit::Pes(n) => {
                    if let Some(p) = read_pes(&self.held[at..at + n]) {
                        self.counters.pes += 1;
                        out(p);
                    }
                    at += n;
                }
                // More than any unit can hold waits behind the one at the front: it claims a
                // length no PES has (corrupt). Pass its first byte and look again.
                Unit::Incomplete if self.held.len() - at > MAX_HELD => {
                    self.counters.resync_bytes += 1;
                    at += 1;
                }
                Unit::Incomplete => break,
            }
        }
        self.held.drain(..at);
        // Each picture's pack usually ends with its last RTP packet, leaving nothing held:
        // give back a buffer a keyframe grew rather than keep it per stream between keyframes.
        if self.held.is_empty() && self.held.capacity() > KEEP_CAPACITY {
            self.held = Vec::new();
        }
    }

    /// Reads a program stream map (`held[at..at + n]`): its stream types, as far as its
    /// lengths allow.
    fn read_map(&mut self, at: usize, n: usize) {
        self.counters.maps += 1;
        let b = &self.held[at..at + n];
        // 6 prefix, 2 flags, 2 program_stream_info_length, info, 2 es_map_length, entries, CRC.
        let mut ok = b.len() >= 12;
        let mut types = Vec::new();
        if ok {
            let info = usize::from(u16::from_be_bytes([b[8], b[9]]));
            let map_at = 10 + info;
            if let Some(len) = b.get(map_at..map_at + 2) {
                let es_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let end = (map_at + 2 + es_len).min(b.len().saturating_sub(4));
                ok = map_at + 2 + es_len <= b.len().saturating_sub(4);
                let mut i = map_at + 2;
                while i + 4 <= end {
                    let (ty, id) = (b[i], b[i + 1]);
                    let info_len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                    types.push((id, StreamType::from_byte(ty)));
                    // A wrong element_stream_info_length (seen from cameras) ends the reading
                    // here, keeping what was read.
                    if i + 4 + info_len > end {
                        ok = false;
                        break;
                    }
                    i += 4 + info_len;
                }
            } else {
                ok = false;
            }
        }
        if !ok {
            self.counters.bad_maps += 1;
        }
        if !types.is_empty() {
            self.types = types;
        }
    }
}

/// Reads the unit at the front of `b`.
fn unit(b: &[u8], counters: &mut Counters) -> Unit {
    if b.len() < 4 {
        return Unit::Incomplete;
    }
    if b[..3] != [0, 0, 1] {
        // Loss or garbage: skip to the next 00 00 01 (keeping a partial one at the end).
        let skip = memchr::memmem::find(&b[1..], &[0, 0, 1]).map(|i| i + 1).unwrap_or(b.len() - 2);
        counters.resync_bytes += skip as u64;
        return Unit::Skip(skip);
    }
    match b[3] {
        PACK => {
            if b.len() < 5 {
                return Unit::Incomplete;
            }
            // MPEG-2: 14 bytes, then stuffing (low 3 bits of the last byte); MPEG-1: 12.
            let n = if b[4] & 0xC0 == 0x40 {
                match b.get(13) {
                    Some(last) => 14 + usize::from(last & 0x07),
                    None => return Unit::Incomplete,
                }
            } else {
                12
            };
            if b.len() < n {
                return Unit::Incomplete;
            }
            counters.packs += 1;
            Unit::Skip(n)
        }
        PROGRAM_END => Unit::Skip(4),
        id if id >= SYSTEM_HEADER => {
            if b.len() < 6 {
                return Unit::Incomplete;
            }
            let n = 6 + usize::from(u16::from_be_bytes([b[4], b[5]]));
            if b.len() < n {
                return Unit::Incomplete;
            }
            match id {
                PSM => Unit::Map(n),
                0xC0..=0xEF if n > 6 => Unit::Pes(n),
                SYSTEM_HEADER => Unit::Skip(n),
                _ => {
                    counters.skipped += 1;
                    Unit::Skip(n)
                }
            }
        }
        // A start code that is no PS unit (an elementary stream's, after loss): resync.
        _ => {
            counters.resync_bytes += 3;
            Unit::Skip(3)
        }
    }
}

/// Reads one PES (`00 00 01 id len ...`, whole). `None` when its header does not fit in it.
fn read_pes(b: &[u8]) -> Option<Pes> {
    let stream_id = b[3];
    let body = &b[6..];
    // MPEG-2 PES header: '10' marker bits, flags, header length, then optional fields.
    if body.len() >= 3 && body[0] & 0xC0 == 0x80 {
        let flags = body[1] >> 6;
        let header_len = usize::from(body[2]);
        let payload = body.get(3 + header_len..)?;
        let opt = &body[3..3 + header_len];
        let pts = if flags & 0b10 != 0 { opt.get(..5).map(timestamp) } else { None };
        let dts = if flags == 0b11 { opt.get(5..10).map(timestamp) } else { None };
        return Some(Pes { stream_id, pts, dts, payload: payload.to_vec() });
    }
    // MPEG-1 PES: stuffing 0xFF, an optional STD buffer field, then PTS/DTS or 0x0F.
    let mut i = 0;
    while body.get(i) == Some(&0xFF) && i < 16 {
        i += 1;
    }
    if body.get(i).is_some_and(|b| b & 0xC0 == 0x40) {
        i += 2;
    }
    let first = *body.get(i)?;
    let (pts, dts, skip) = match first >> 4 {
        0b0010 => (body.get(i..i + 5).map(timestamp), None, 5),
        0b0011 => (body.get(i..i + 5).map(timestamp), body.get(i + 5..i + 10).map(timestamp), 10),
        _ => (None, None, 1),
    };
    Some(Pes { stream_id, pts, dts, payload: body.get(i + skip..)?.to_vec() })
}

/// A 33-bit PES timestamp from its 5 bytes.
fn timestamp(b: &[u8]) -> u64 {
    (u64::from(b[0] >> 1) & 0x07) << 30
        | u64::from(b[1]) << 22
        | (u64::from(b[2]) >> 1) << 15
        | u64::from(b[3]) << 7
        | u64::from(b[4]) >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    // The units as vigil writes them (`mux`), and a private packet as Hikvision sends one.
    fn pack(stuffing: u8) -> Vec<u8> {
        let mut v = Vec::new();
        mux::pack_header(0, stuffing, &mut v);
        v
    }

    fn map(streams: &[(u8, u8)]) -> Vec<u8> {
        let mut v = Vec::new();
        mux::map(streams, &mut v);
        v
    }

    fn pes(stream_id: u8, pts: Option<u64>, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        mux::pes(stream_id, pts, payload, &mut v);
        v
    }

    fn private(payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 1, 0xBD];
        v.extend((payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn demux(chunks: &[&[u8]]) -> (Vec<Pes>, Demuxer) {
        let mut d = Demuxer::default();
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, |p| out.push(p));
        }
        (out, d)
    }

    /// A keyframe pack (pack with stuffing, system header, map, video PES split in two with
    /// the second without PTS, an audio PES, a Hikvision private packet with start codes in
    /// it) and a P-frame pack.
    fn stream() -> Vec<u8> {
        let mut s = pack(3);
        s.extend([0, 0, 1, 0xBB, 0, 6, 0x80, 0, 1, 0x04, 0xE1, 0xFF]);
        s.extend(map(&[(0x1B, 0xE0), (0x90, 0xC0)]));
        s.extend(pes(0xE0, Some(90_000), &[0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 1, 2]));
        s.extend(pes(0xE0, None, &[3, 4, 5]));
        s.extend(pes(0xC0, Some(90_000), &[0xD5; 160]));
        s.extend(private(&[0, 0, 1, 0xE0, 0, 0, 0, 0, 1, 0xBA, 9, 9]));
        s.extend(pack(0));
        s.extend(pes(0xE0, Some(93_600), &[0, 0, 0, 1, 0x41, 7]));
        s
    }

    #[test]
    fn a_stream_reads_the_same_in_one_piece_and_byte_by_byte() {
        let s = stream();
        let (whole, d) = demux(&[&s]);
        let ids: Vec<(u8, Option<u64>)> = whole.iter().map(|p| (p.stream_id, p.pts)).collect();
        assert_eq!(ids, vec![(0xE0, Some(90_000)), (0xE0, None), (0xC0, Some(90_000)), (0xE0, Some(93_600))]);
        assert_eq!(whole[1].payload, vec![3, 4, 5]);
        assert_eq!((d.stream_type(0xE0), d.stream_type(0xC0)), (Some(StreamType::H264), Some(StreamType::G711A)));
        assert_eq!((d.counters.packs, d.counters.skipped, d.counters.resync_bytes), (2, 1, 0));
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        let (split, _) = demux(&bytes);
        assert_eq!(split, whole, "RTP packet boundaries do not matter");
        for cut in [7, 100, 1000] {
            let parts: Vec<&[u8]> = s.chunks(cut).collect();
            assert_eq!(demux(&parts).0, whole, "chunks of {cut}");
        }
    }

    #[test]
    fn a_map_with_wrong_lengths_gives_what_it_has_and_garbage_is_passed_over() {
        // element_stream_info_length runs past the map (ZLMediaKit #2325).
        let mut bad = map(&[(0x24, 0xE0)]);
        let at = bad.len() - 6;
        bad[at] = 0x40;
        let mut s = pack(0);
        s.extend(bad);
        s.extend([0x12, 0x34, 0x00, 0x00, 0x09]); // loss in between
        s.extend(pes(0xE0, Some(1), &[0, 0, 1, 0x40, 1]));
        let (out, d) = demux(&[&s]);
        assert_eq!(out.len(), 1);
        assert_eq!((d.stream_type(0xE0), d.counters.bad_maps), (Some(StreamType::H265), 1));
        assert!(d.counters.resync_bytes >= 5);
    }

    #[test]
    fn timestamps_round_trip_through_33_bits() {
        for pts in [0u64, 1, 90_000, (1 << 32) + 12_345, (1 << 33) - 1] {
            let (out, _) = demux(&[&pes(0xE0, Some(pts), &[1])]);
            assert_eq!(out[0].pts, Some(pts));
        }
    }

    #[test]
    fn no_input_panics_or_holds_more_than_a_unit() {
        let s = stream();
        let mut d = Demuxer::default();
        // Every truncation and every single-byte corruption of a real stream.
        for cut in 0..s.len() {
            d.push(&s[..cut], |_| {});
            let mut m = s.clone();
            m[cut] ^= 0xFF;
            Demuxer::default().push(&m, |_| {});
        }
        // A unit that claims 65 KiB and never ends, then random bytes.
        let mut d = Demuxer::default();
        d.push(&[0, 0, 1, 0xE0, 0xFF, 0xFF], |_| {});
        let mut x: u32 = 7;
        for _ in 0..200_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            d.push(&[(x >> 16) as u8], |_| {});
            assert!(d.held.len() <= MAX_HELD);
        }
    }
}
