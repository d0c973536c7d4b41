//! H.264 (RFC 6184) and H.265 (RFC 7798) elementary streams over RTP, the payloads a GB/T 28181
//! device sends when it answers an INVITE with `98 H264/90000` or `99 H265/90000` rather than
//! PS. `Depacketizer` turns payloads in sequence order back into Annex B access units (single
//! NAL units, STAP-A / aggregation packets, FU-A / fragmentation units; an access unit ends at
//! the marker bit or a new timestamp); `packetize` is the other direction (the simulator, and
//! the cascade). Pure and bounded: an access unit over `MAX_AU` bytes is dropped and counted,
//! a fragmented unit broken by loss is dropped, never glued to the next.

use crate::protocol::ps::es::Codec;

/// The largest access unit put together.
pub const MAX_AU: usize = 8 << 20;
const START: [u8; 4] = [0, 0, 0, 1];

/// What a depacketizer counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub access_units: u64,
    /// Payloads of a type this format does not use (or too short to read).
    pub malformed: u64,
    /// Fragmented NAL units lost in part, dropped.
    pub broken_fragments: u64,
    /// Access units over `MAX_AU`, dropped.
    pub oversize: u64,
}

/// RTP payloads in, Annex B access units out.
#[derive(Debug)]
pub struct Depacketizer {
    codec: Codec,
    au: Vec<u8>,
    timestamp: Option<u32>,
    /// The fragmented NAL unit being put together (header included, no start code).
    fragment: Option<Vec<u8>>,
    oversize: bool,
    pub counters: Counters,
}

impl Depacketizer {
    pub fn new(codec: Codec) -> Self {
        Depacketizer {
            codec,
            au: Vec::new(),
            timestamp: None,
            fragment: None,
            oversize: false,
            counters: Counters::default(),
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// One payload, in sequence order; `gap`: packets were lost just before it. Calls `out`
    /// with each access unit completed (its RTP timestamp and Annex B bytes).
    pub fn push(&mut self, payload: &[u8], timestamp: u32, marker: bool, gap: bool, mut out: impl FnMut(u32, &[u8])) {
        if self.timestamp.is_some_and(|t| t != timestamp) {
            self.finish(&mut out);
        }
        self.timestamp = Some(timestamp);
        if gap && self.fragment.take().is_some() {
            self.counters.broken_fragments += 1;
        }
        match self.codec {
            Codec::H264 => self.h264(payload),
            Codec::H265 => self.h265(payload),
        }
        if marker {
            self.finish(&mut out);
        }
    }

    fn h264(&mut self, p: &[u8]) {
        let Some(&first) = p.first() else { return self.malformed() };
        match first & 0x1F {
            1..=23 => self.nal(p),
            24 => self.aggregate(&p[1..]),
            28 => match p.get(1) {
                Some(&fu) => self.fragment(fu & 0x80 != 0, fu & 0x40 != 0, &[(first & 0xE0) | (fu & 0x1F)], &p[2..]),
                None => self.malformed(),
            },
            _ => self.malformed(),
        }
    }

    fn h265(&mut self, p: &[u8]) {
        let [h0, h1, ..] = *p else { return self.malformed() };
        match (h0 >> 1) & 0x3F {
            0..=47 => self.nal(p),
            48 => self.aggregate(&p[2..]),
            49 => match p.get(2) {
                Some(&fu) => {
                    let header = [(h0 & 0x81) | ((fu & 0x3F) << 1), h1];
                    self.fragment(fu & 0x80 != 0, fu & 0x40 != 0, &header, &p[3..]);
                }
                None => self.malformed(),
            },
            _ => self.malformed(),
        }
    }

    fn malformed(&mut self) {
        self.counters.malformed += 1;
    }

    /// NAL units each behind a two-byte length (STAP-A, H.265 AP without DONL).
    fn aggregate(&mut self, mut b: &[u8]) {
        while let [hi, lo, rest @ ..] = b {
            let n = usize::from(u16::from_be_bytes([*hi, *lo]));
            if n == 0 || n > rest.len() {
                return self.malformed();
            }
            self.nal(&rest[..n]);
            b = &rest[n..];
        }
    }

    fn fragment(&mut self, start: bool, end: bool, header: &[u8], data: &[u8]) {
        if start {
            if self.fragment.take().is_some() {
                self.counters.broken_fragments += 1;
            }
            let mut f = Vec::with_capacity(header.len() + data.len() * 4);
            f.extend_from_slice(header);
            self.fragment = Some(f);
        }
        let Some(f) = self.fragment.as_mut() else { return }; // its start was lost
        if f.len() + data.len() > MAX_AU {
            self.fragment = None;
            self.oversize = true;
            return;
        }
        f.extend_from_slice(data);
        if end {
            if let Some(f) = self.fragment.take() {
                self.nal(&f);
            }
        }
    }

    fn nal(&mut self, nal: &[u8]) {
        if self.oversize || self.au.len() + START.len() + nal.len() > MAX_AU {
            self.oversize = true;
            self.au.clear();
            return;
        }
        self.au.extend_from_slice(&START);
        self.au.extend_from_slice(nal);
    }

    fn finish(&mut self, out: &mut impl FnMut(u32, &[u8])) {
        if self.fragment.take().is_some() {
            self.counters.broken_fragments += 1;
        }
        if self.oversize {
            self.counters.oversize += 1;
        } else if let (false, Some(t)) = (self.au.is_empty(), self.timestamp) {
            self.counters.access_units += 1;
            out(t, &self.au);
        }
        self.au.clear();
        self.oversize = false;
        // A keyframe's buffer is given back once done (hundreds of streams at once).
        if self.au.capacity() > 1 << 20 {
            self.au = Vec::new();
        }
    }
}

/// Cuts one NAL unit (no start code) into RTP payloads of at most `mtu` bytes: the unit whole
/// when it fits, else FU-A (H.264) or FU (H.265) fragments.
pub fn packetize(codec: Codec, nal: &[u8], mtu: usize, mut out: impl FnMut(&[u8])) {
    let header_len = if codec == Codec::H264 { 1 } else { 2 };
    if nal.len() <= mtu || nal.len() <= header_len {
        return out(nal);
    }
    let (header, body) = nal.split_at(header_len);
    let mut payload = Vec::with_capacity(mtu);
    let room = mtu.saturating_sub(header_len + 1).max(1);
    let pieces = body.chunks(room);
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in body.chunks(room).enumerate() {
        payload.clear();
        let flags = (if i == 0 { 0x80 } else { 0 }) | (if i == last { 0x40 } else { 0 });
        match codec {
            Codec::H264 => payload.extend([(header[0] & 0xE0) | 28, flags | (header[0] & 0x1F)]),
            Codec::H265 => {
                payload.extend([(header[0] & 0x81) | (49 << 1), header[1], flags | ((header[0] >> 1) & 0x3F)])
            }
        }
        payload.extend_from_slice(piece);
        out(&payload);
    }
}

/// The NAL units of an Annex B buffer (start codes removed).
pub fn nal_units(annex_b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= annex_b.len() {
        if annex_b[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts.iter().skip(1).map(|&s| s - 3).chain(std::iter::once(annex_b.len())).collect();
    starts.into_iter().zip(ends).map(move |(s, e)| {
        let mut e = e;
        // The leading zero of a 4-byte start code belongs to the next unit's start code.
        while e > s && annex_b[e - 1] == 0 {
            e -= 1;
        }
        &annex_b[s..e]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| START.iter().chain(n.iter()).copied()).collect()
    }

    fn round_trip(codec: Codec, nals: &[Vec<u8>], mtu: usize) -> (Vec<u8>, Counters) {
        let mut d = Depacketizer::new(codec);
        let mut payloads = Vec::new();
        for n in nals {
            packetize(codec, n, mtu, |p| payloads.push(p.to_vec()));
        }
        let mut got = Vec::new();
        let last = payloads.len() - 1;
        for (i, p) in payloads.iter().enumerate() {
            d.push(p, 3600, i == last, false, |t, au| {
                assert_eq!(t, 3600);
                got.extend_from_slice(au)
            });
        }
        (got, d.counters)
    }

    #[test]
    fn nal_units_survive_fragmentation_both_codecs() {
        let idr264: Vec<u8> = [0x65].into_iter().chain((0..5000u32).map(|i| (i % 251) as u8 | 1)).collect();
        let sps264 = vec![0x67, 0x42, 0x00, 0x1F];
        let (got, c) = round_trip(Codec::H264, &[sps264.clone(), idr264.clone()], 1200);
        assert_eq!(got, annex_b(&[&sps264, &idr264]));
        assert_eq!((c.access_units, c.malformed, c.broken_fragments), (1, 0, 0));
        let idr265: Vec<u8> = [0x26, 0x01].into_iter().chain((0..5000u32).map(|i| (i % 251) as u8 | 1)).collect();
        let vps265 = vec![0x40, 0x01, 0x0C];
        let (got, c) = round_trip(Codec::H265, &[vps265.clone(), idr265.clone()], 1000);
        assert_eq!(got, annex_b(&[&vps265, &idr265]));
        assert_eq!(c.access_units, 1);
    }

    #[test]
    fn aggregates_split_and_losses_drop_the_broken_unit_only() {
        // STAP-A with SPS and PPS, then a slice.
        let mut d = Depacketizer::new(Codec::H264);
        let mut aus = Vec::new();
        let stap = [24, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE];
        d.push(&stap, 0, false, false, |_, a| aus.push(a.to_vec()));
        d.push(&[0x65, 1, 2, 3], 0, true, false, |_, a| aus.push(a.to_vec()));
        assert_eq!(aus, vec![annex_b(&[&[0x67, 0x42], &[0x68, 0xCE], &[0x65, 1, 2, 3]])]);
        // A fragment whose middle was lost is dropped; the next picture comes whole.
        let big: Vec<u8> = [0x41].into_iter().chain(std::iter::repeat_n(7u8, 3000)).collect();
        let mut frags = Vec::new();
        packetize(Codec::H264, &big, 1000, |p| frags.push(p.to_vec()));
        assert_eq!(frags.len(), 4);
        aus.clear();
        d.push(&frags[0], 3600, false, false, |_, a| aus.push(a.to_vec()));
        d.push(&frags[2], 3600, false, true, |_, a| aus.push(a.to_vec()));
        d.push(&frags[3], 3600, true, false, |_, a| aus.push(a.to_vec()));
        for (i, f) in frags.iter().enumerate() {
            d.push(f, 7200, i == 3, false, |_, a| aus.push(a.to_vec()));
        }
        assert_eq!(aus, vec![annex_b(&[&big])], "the broken picture never comes out, the whole one does");
        assert_eq!(d.counters.broken_fragments, 1);
        // Nonsense is counted, never a panic.
        for bad in [&[][..], &[0x1F][..], &[24, 0, 9, 1][..], &[28][..]] {
            d.push(bad, 9, true, false, |_, _| {});
        }
        assert_eq!(d.counters.malformed, 4);
        let mut h = Depacketizer::new(Codec::H265);
        for bad in [&[0x62][..], &[0x62, 1][..], &[0x60, 1, 0, 40][..]] {
            h.push(bad, 9, true, false, |_, _| {});
        }
        assert_eq!(h.counters.malformed, 3);
    }

    #[test]
    fn annex_b_splits_at_three_and_four_byte_start_codes() {
        let b = [0, 0, 0, 1, 0x67, 1, 0, 0, 1, 0x68, 2, 0, 0, 0, 1, 0x65, 3];
        let n: Vec<&[u8]> = nal_units(&b).collect();
        assert_eq!(n, vec![&[0x67, 1][..], &[0x68, 2][..], &[0x65, 3][..]]);
    }
}
