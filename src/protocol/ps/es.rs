//! Video elementary streams (H.264 and H.265, Annex B) from PES payloads to access units.
//! The codec is decided from the stream — parameter sets are unmistakable — and the program
//! stream map's word is used only while the stream has said nothing yet (cameras send H.265
//! under an H.264 map and the reverse). Access units are cut where the standards put their
//! boundaries (an access unit delimiter, a parameter set or SEI after a picture, the first slice
//! of a new picture), so it does not matter whether a PES holds one frame (GB/T 28181 devices)
//! or several and starts mid-frame (ffmpeg's PS muxer). Bounded: an access unit over
//! `MAX_AU` bytes is dropped and counted.

/// Largest access unit kept (a 4K keyframe is well under it).
pub const MAX_AU: usize = 8 << 20;
/// PES timestamps remembered while their bytes wait to be cut.
const MAX_MARKS: usize = 256;
/// Bytes waited for the stream to name its codec before the map's word is taken.
const PROBE_LIMIT: usize = 512 << 10;

/// A video codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
}

/// One access unit: a picture's NAL units with their start codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub codec: Codec,
    /// 90 kHz, from the PES the access unit began in.
    pub pts: Option<u64>,
    /// IDR (H.264) or IRAP (H.265).
    pub keyframe: bool,
    pub data: Vec<u8>,
}

/// What the assembler counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub access_units: u64,
    /// Access units over `MAX_AU`, dropped.
    pub oversize: u64,
    /// The map named one codec and the stream turned out to be the other.
    pub map_contradicted: u64,
}

/// Cuts access units out of a video stream's PES payloads.
#[derive(Debug, Default)]
pub struct Assembler {
    codec: Option<Codec>,
    /// What the program stream map says, until the stream says otherwise.
    hint: Option<Codec>,
    /// Bytes not yet cut into NAL units: from the last start code on (once `started`).
    pending: Vec<u8>,
    started: bool,
    /// Where the search for the next start code resumes in `pending`.
    scanned: usize,
    /// The stream offset of `pending[0]`, and where each PES with a PTS began.
    offset: u64,
    marks: std::collections::VecDeque<(u64, u64)>,
    /// NAL units held until the codec is known.
    probing: Vec<(u64, Vec<u8>)>,
    probed_bytes: usize,
    au: Vec<u8>,
    au_pts: Option<u64>,
    au_has_picture: bool,
    au_keyframe: bool,
    oversize: bool,
    pub counters: Counters,
}

impl Assembler {
    /// The codec the program stream map names (used until the stream decides).
    pub fn set_hint(&mut self, hint: Option<Codec>) {
        self.hint = hint;
    }

    /// The codec in use, once known.
    pub fn codec(&self) -> Option<Codec> {
        self.codec
    }

    /// Feeds one PES payload; calls `out` with each access unit completed.
    pub fn push(&mut self, pts: Option<u64>, payload: &[u8], mut out: impl FnMut(AccessUnit)) {
        if let Some(p) = pts {
            if self.marks.len() == MAX_MARKS {
                self.marks.pop_front();
            }
            self.marks.push_back((self.offset + self.pending.len() as u64, p));
        }
        self.pending.extend_from_slice(payload);
        if !self.started {
            let Some(i) = find_start(&self.pending, 0) else {
                // No start code yet: keep what may be the beginning of one.
                let cut = self.pending.len().saturating_sub(3);
                self.drop_front(cut);
                return;
            };
            let i = if i > 0 && self.pending[i - 1] == 0 { i - 1 } else { i };
            self.drop_front(i);
            self.started = true;
            self.scanned = 3;
        }
        // The NAL units are handed over as slices of `pending` (taken out for the loop): no
        // copy per NAL unit; the access unit copies each once.
        let pending = std::mem::take(&mut self.pending);
        let mut cur = 0;
        while let Some(next) = find_start(&pending, self.scanned) {
            // A 4-byte start code's leading zero belongs to it, not to the NAL before.
            let end = if next > cur + 4 && pending[next - 1] == 0 { next - 1 } else { next };
            let at = self.offset + cur as u64;
            self.nal(&pending[cur..end], at, &mut out);
            cur = end;
            self.scanned = next + 3;
        }
        self.pending = pending;
        self.drop_front(cur);
        self.scanned -= cur;
        if self.pending.len() > MAX_AU {
            // A NAL unit longer than any access unit: drop it and the access unit it is in.
            let n = self.pending.len();
            self.drop_front(n);
            self.started = false;
            self.au.clear();
            (self.au_has_picture, self.au_keyframe, self.oversize, self.au_pts) = (false, false, false, None);
            self.counters.oversize += 1;
        }
    }

    /// Ends the stream: the last NAL unit and access unit go out.
    pub fn flush(&mut self, mut out: impl FnMut(AccessUnit)) {
        if self.started && !self.pending.is_empty() {
            let nal = std::mem::take(&mut self.pending);
            let at = self.offset;
            self.offset += nal.len() as u64;
            self.nal(&nal, at, &mut out);
        }
        self.started = false;
        if self.codec.is_none() {
            self.codec = self.hint;
            self.release_probing(&mut out);
        }
        self.emit(&mut out);
    }

    fn drop_front(&mut self, n: usize) {
        self.pending.drain(..n);
        self.offset += n as u64;
        // An emptied buffer a keyframe grew is given back (hundreds of streams at once).
        if self.pending.is_empty() && self.pending.capacity() > 4096 {
            self.pending = Vec::new();
        }
    }

    /// The PTS of the PES the byte at `at` came in, once per PES.
    fn pts_at(&mut self, at: u64) -> Option<u64> {
        let mut found = None;
        while self.marks.front().is_some_and(|(o, _)| *o <= at) {
            found = self.marks.pop_front().map(|(_, p)| p);
        }
        found
    }

    /// One whole NAL unit (start code included).
    fn nal(&mut self, nal: &[u8], at: u64, out: &mut impl FnMut(AccessUnit)) {
        let Some(codec) = self.codec else {
            let seen = probe(header(nal));
            self.probed_bytes += nal.len();
            self.probing.push((at, nal.to_vec()));
            let decided = seen.or_else(|| (self.probed_bytes > PROBE_LIMIT).then_some(self.hint).flatten());
            if let Some(c) = decided {
                if self.hint.is_some_and(|h| h != c) {
                    self.counters.map_contradicted += 1;
                }
                self.codec = Some(c);
                self.release_probing(out);
            } else if self.probed_bytes > PROBE_LIMIT {
                // Neither the stream nor a map names a codec: not video we know.
                self.probing.clear();
                self.probed_bytes = 0;
            }
            return;
        };
        let kind = classify(codec, header(nal));
        if self.au_has_picture && kind.starts {
            self.emit(out);
        }
        if self.au.is_empty() && !self.oversize && !self.au_has_picture {
            // The NAL's own bytes (past its start code) say which PES it began in.
            self.au_pts = self.pts_at(at + 3);
        }
        if kind.picture {
            self.au_has_picture = true;
            self.au_keyframe |= kind.keyframe;
        }
        if self.oversize || self.au.len() + nal.len() > MAX_AU {
            if !self.oversize {
                self.counters.oversize += 1;
            }
            self.oversize = true;
            self.au.clear();
            return;
        }
        self.au.extend_from_slice(nal);
    }

    fn release_probing(&mut self, out: &mut impl FnMut(AccessUnit)) {
        let held = std::mem::take(&mut self.probing);
        self.probed_bytes = 0;
        if self.codec.is_some() {
            for (at, nal) in held {
                self.nal(&nal, at, out);
            }
        }
    }

    fn emit(&mut self, out: &mut impl FnMut(AccessUnit)) {
        let data = std::mem::take(&mut self.au);
        // The next access unit is likely about as large: one allocation instead of a growth.
        self.au.reserve(data.len());
        let (picture, keyframe, oversize) = (self.au_has_picture, self.au_keyframe, self.oversize);
        self.au_has_picture = false;
        self.au_keyframe = false;
        self.oversize = false;
        if let (Some(codec), true, false) = (self.codec, picture, oversize) {
            self.counters.access_units += 1;
            out(AccessUnit { codec, pts: self.au_pts.take(), keyframe, data });
        }
    }
}

/// The first start code (00 00 01) at or after `from`.
fn find_start(b: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(b.get(from..)?, &[0, 0, 1]).map(|i| i + from)
}

/// The two bytes after a NAL unit's start code (and the third, for H.265's first slice flag).
fn header(nal: &[u8]) -> &[u8] {
    let i = nal.iter().position(|b| *b == 1).map(|i| i + 1).unwrap_or(nal.len());
    &nal[i..nal.len().min(i + 3)]
}

/// What the stream says its codec is, from a NAL header: H.265 parameter sets (VPS, SPS, PPS
/// with layer 0 and temporal id 1) or an H.264 SPS with a known profile.
fn probe(h: &[u8]) -> Option<Codec> {
    let (h0, h1) = (*h.first()?, *h.get(1)?);
    if h0 & 0x80 != 0 {
        return None;
    }
    let hevc_type = (h0 >> 1) & 0x3F;
    let hevc_layer = ((h0 & 1) << 5) | (h1 >> 3);
    if (32..=34).contains(&hevc_type) && hevc_layer == 0 && h1 & 0x07 == 1 {
        return Some(Codec::H265);
    }
    const PROFILES: [u8; 16] = [66, 77, 88, 100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];
    if h0 & 0x1F == 7 && h0 & 0x60 != 0 && PROFILES.contains(&h1) {
        return Some(Codec::H264);
    }
    None
}

/// What a NAL unit is, for cutting access units.
struct Kind {
    /// A slice of a picture.
    picture: bool,
    keyframe: bool,
    /// Begins a new access unit when a picture is already held: a delimiter, a parameter set,
    /// SEI, or the first slice of a picture.
    starts: bool,
}

fn classify(codec: Codec, h: &[u8]) -> Kind {
    let none = Kind { picture: false, keyframe: false, starts: false };
    let Some(&h0) = h.first() else { return none };
    match codec {
        Codec::H264 => match h0 & 0x1F {
            t @ (1 | 5) => Kind {
                picture: true,
                keyframe: t == 5,
                // first_mb_in_slice is ue(v): 0 is the single bit '1'.
                starts: h.get(1).is_some_and(|b| b & 0x80 != 0),
            },
            6..=9 | 14..=18 => Kind { picture: false, keyframe: false, starts: true },
            _ => none,
        },
        Codec::H265 => match (h0 >> 1) & 0x3F {
            t @ 0..=31 if !(10..=15).contains(&t) && t < 22 => Kind {
                picture: true,
                keyframe: (16..=21).contains(&t),
                // first_slice_segment_in_pic_flag, the first bit after the 2-byte header.
                starts: h.get(2).is_some_and(|b| b & 0x80 != 0),
            },
            32..=35 | 39 | 41..=44 | 48..=55 => Kind { picture: false, keyframe: false, starts: true },
            _ => none,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS264: &[u8] = &[0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1E];
    const PPS264: &[u8] = &[0, 0, 0, 1, 0x68, 0xCE, 0x3C, 0x80];
    const IDR264: &[u8] = &[0, 0, 1, 0x65, 0x88, 0x84, 0x80];
    const P264: &[u8] = &[0, 0, 1, 0x41, 0x9A, 0x02];
    const VPS265: &[u8] = &[0, 0, 0, 1, 0x40, 0x01, 0x0C, 0x01];
    const SPS265: &[u8] = &[0, 0, 0, 1, 0x42, 0x01, 0x01, 0x01];
    const PPS265: &[u8] = &[0, 0, 0, 1, 0x44, 0x01, 0xC1, 0x72];
    const IDR265: &[u8] = &[0, 0, 1, 0x26, 0x01, 0xAF, 0x1D];
    const TRAIL265: &[u8] = &[0, 0, 1, 0x02, 0x01, 0xD0, 0x09];

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn run(a: &mut Assembler, pes: &[(Option<u64>, Vec<u8>)]) -> Vec<AccessUnit> {
        let mut out = Vec::new();
        for (pts, p) in pes {
            a.push(*pts, p, |u| out.push(u));
        }
        a.flush(|u| out.push(u));
        out
    }

    #[test]
    fn one_frame_per_pes_gives_one_access_unit_each_with_its_pts() {
        let mut a = Assembler::default();
        let units = run(
            &mut a,
            &[(Some(3600), cat(&[SPS264, PPS264, IDR264])), (Some(7200), P264.to_vec()), (Some(10_800), P264.to_vec())],
        );
        let got: Vec<(Option<u64>, bool, usize)> = units.iter().map(|u| (u.pts, u.keyframe, u.data.len())).collect();
        assert_eq!(got, vec![(Some(3600), true, 23), (Some(7200), false, 6), (Some(10_800), false, 6)]);
        assert_eq!(a.codec(), Some(Codec::H264));
    }

    #[test]
    fn several_frames_in_a_pes_and_frames_across_pes_are_cut_where_pictures_begin() {
        let stream = cat(&[SPS264, PPS264, IDR264, P264, P264, P264]);
        for cut in [1, 2, 5, 9, 13] {
            let mut a = Assembler::default();
            let pes: Vec<(Option<u64>, Vec<u8>)> = stream.chunks(cut).map(|c| (None, c.to_vec())).collect();
            let units = run(&mut a, &pes);
            assert_eq!(units.len(), 4, "chunks of {cut}");
            assert!(units[0].keyframe && !units[1].keyframe);
            assert_eq!(units.iter().map(|u| u.data.len()).sum::<usize>(), stream.len(), "no byte lost");
        }
    }

    #[test]
    fn h265_under_an_h264_map_is_read_as_h265() {
        let mut a = Assembler::default();
        a.set_hint(Some(Codec::H264));
        let units = run(&mut a, &[(Some(1), cat(&[VPS265, SPS265, PPS265, IDR265])), (Some(2), TRAIL265.to_vec())]);
        assert_eq!(a.codec(), Some(Codec::H265));
        assert_eq!(a.counters.map_contradicted, 1);
        assert_eq!(
            units.iter().map(|u| (u.codec, u.keyframe)).collect::<Vec<_>>(),
            vec![(Codec::H265, true), (Codec::H265, false)]
        );
    }

    #[test]
    fn without_parameter_sets_the_map_decides_and_without_either_nothing_comes_out() {
        let mut a = Assembler::default();
        a.set_hint(Some(Codec::H264));
        assert_eq!(run(&mut a, &[(Some(1), P264.to_vec()), (Some(2), P264.to_vec())]).len(), 2);
        let mut b = Assembler::default();
        assert!(run(&mut b, &[(Some(1), P264.to_vec())]).is_empty());
    }

    #[test]
    fn an_endless_access_unit_is_dropped_and_counted_and_the_next_comes_through() {
        let mut a = Assembler::default();
        let mut out = Vec::new();
        a.push(Some(1), &cat(&[SPS264, PPS264, IDR264]), |u| out.push(u));
        let filler = vec![0xAB; 1 << 20];
        for _ in 0..9 {
            a.push(None, &filler, |u| out.push(u));
        }
        a.push(Some(2), &cat(&[SPS264, PPS264, IDR264, P264]), |u| out.push(u));
        a.flush(|u| out.push(u));
        assert!(a.counters.oversize >= 1);
        assert!(out.iter().all(|u| u.data.len() <= MAX_AU));
        assert!(
            out.iter().any(|u| u.pts == Some(2) && u.keyframe),
            "{:?}",
            out.iter().map(|u| u.pts).collect::<Vec<_>>()
        );
    }
}
