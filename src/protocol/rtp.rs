//! RTP (RFC 3550) as GB/T 28181 media arrives: the packet header read without copying
//! (`Packet::parse`), the TCP framings devices use — RFC 4571's two-byte length and the
//! `$`-interleaved four-byte header some send instead, told apart per packet (`TcpFramer`) —,
//! a reorder window for UDP that releases packets in sequence order and counts what never came
//! (`Reorder`), and the RTCP receiver report vigil sends back (`receiver_report`). Pure and
//! bounded: the framer holds at most one frame, the window a fixed number of packets.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("RTP packet of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("RTP version {0} (expected 2)")]
    Version(u8),
    #[error("RTP padding of {pad} bytes in a payload of {len}")]
    Padding { pad: usize, len: usize },
}

/// One RTP packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Reads a packet: the fixed header, CSRCs, a header extension and padding skipped.
    pub fn parse(b: &'a [u8]) -> Result<Packet<'a>, Error> {
        if b.len() < 12 {
            return Err(Error::Short(b.len()));
        }
        let version = b[0] >> 6;
        if version != 2 {
            return Err(Error::Version(version));
        }
        let mut at = 12 + 4 * usize::from(b[0] & 0x0F);
        if b[0] & 0x10 != 0 {
            let ext = b.get(at + 2..at + 4).ok_or(Error::Short(b.len()))?;
            at += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = usize::from(*b.last().unwrap_or(&0));
            if pad == 0 || at + pad > end {
                return Err(Error::Padding { pad, len: end.saturating_sub(at) });
            }
            end -= pad;
        }
        let payload = b.get(at..end).ok_or(Error::Short(b.len()))?;
        Ok(Packet {
            marker: b[1] & 0x80 != 0,
            payload_type: b[1] & 0x7F,
            sequence: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload,
        })
    }

    /// Writes a packet (no CSRC, no extension): for the cascade sender and the simulators.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend([0x80, u8::from(self.marker) << 7 | (self.payload_type & 0x7F)]);
        out.extend(self.sequence.to_be_bytes());
        out.extend(self.timestamp.to_be_bytes());
        out.extend(self.ssrc.to_be_bytes());
        out.extend_from_slice(self.payload);
    }
}

/// Whether an RTP-port datagram is RTCP (payload types 200–204 where RTP would have its
/// marker and type: RTCP mistaken for RTP binds the wrong SSRC, ZLMediaKit #2247).
pub fn is_rtcp(b: &[u8]) -> bool {
    b.len() >= 8 && b[0] >> 6 == 2 && (200..=204).contains(&b[1])
}

/// Splits a TCP byte stream into RTP packets. Each frame is either RFC 4571 (a two-byte
/// length, then the packet) or interleaved (`$`, a channel byte, a two-byte length), decided
/// per frame: an RTP packet never starts with `$` (its version bits would be 0).
#[derive(Debug, Default)]
pub struct TcpFramer {
    held: Vec<u8>,
    /// Frames read, and frames skipped (interleaved channels other than 0, i.e. RTCP).
    pub frames: u64,
    pub skipped: u64,
}

/// Largest frame: the two-byte length's limit plus its header.
const MAX_FRAME: usize = 4 + 65_535;

impl TcpFramer {
    /// Feeds bytes; calls `out` with each whole RTP packet's bytes.
    pub fn push(&mut self, data: &[u8], mut out: impl FnMut(&[u8])) {
        self.held.extend_from_slice(data);
        let mut at = 0;
        loop {
            let b = &self.held[at..];
            let (header, len, channel) = match b {
                [b'$', ch, hi, lo, ..] => (4, usize::from(u16::from_be_bytes([*hi, *lo])), *ch),
                [hi, lo, ..] if b[0] != b'$' => (2, usize::from(u16::from_be_bytes([*hi, *lo])), 0),
                _ => break,
            };
            if b.len() < header + len {
                break;
            }
            let frame = &b[header..header + len];
            if channel == 0 && len > 0 {
                self.frames += 1;
                out(frame);
            } else {
                self.skipped += 1;
            }
            at += header + len;
        }
        self.held.drain(..at);
        debug_assert!(self.held.len() < MAX_FRAME);
    }
}

/// Packets released in order by a `Reorder` window, with what was lost on the way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Losses {
    /// Sequence numbers never received (released past).
    pub lost: u64,
    /// Packets that came after their turn had passed, or twice: dropped.
    pub late: u64,
}

/// A reorder window for RTP over UDP: packets are held until the next in sequence arrives or
/// the window is full, then released in order; a gap released past is counted as lost.
#[derive(Debug)]
pub struct Reorder<T> {
    window: usize,
    /// The extended sequence number expected next.
    next: Option<u64>,
    held: BTreeMap<u64, T>,
    /// The highest extended sequence number seen (to extend the next 16-bit one).
    highest: u64,
    /// The lowest extended sequence number the stream started from.
    base: Option<u64>,
    pub losses: Losses,
}

impl<T> Reorder<T> {
    /// A window of `window` packets (at least 1).
    pub fn new(window: usize) -> Reorder<T> {
        Reorder {
            window: window.max(1),
            next: None,
            held: BTreeMap::new(),
            highest: 0,
            base: None,
            losses: Losses::default(),
        }
    }

    /// The highest extended sequence number received and the one the stream started from
    /// (`None` before the first packet): what a receiver report's "expected" is made of.
    pub fn span(&self) -> Option<(u64, u64)> {
        self.base.map(|b| (b, self.highest))
    }

    /// The 16-bit sequence number as a 64-bit one near the highest seen (wraps counted).
    fn extend(&self, seq: u16) -> u64 {
        if self.highest == 0 {
            return u64::from(seq) + (1 << 16);
        }
        let base = self.highest & !0xFFFF;
        let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
        candidates
            .iter()
            .map(|b| b.wrapping_add(u64::from(seq)))
            .min_by_key(|c| c.abs_diff(self.highest))
            .unwrap_or(base + u64::from(seq))
    }

    /// The fast path: when `seq` is the very next packet and nothing is held, it is released
    /// at once (the caller uses it without handing it over: no copy); `None` otherwise, and
    /// the packet goes through `push`.
    pub fn in_order(&mut self, seq: u16) -> Option<u64> {
        let next = self.next?;
        if !self.held.is_empty() {
            return None;
        }
        let ext = self.extend(seq);
        if ext != next {
            return None;
        }
        self.highest = self.highest.max(ext);
        self.next = Some(next + 1);
        Some(ext)
    }

    /// Takes a packet; calls `out` with the packets now releasable, in order. The first
    /// packets are held until the window is full, so a stream that starts out of order starts
    /// from its lowest sequence number, not from whichever packet came first.
    pub fn push(&mut self, seq: u16, item: T, mut out: impl FnMut(u64, T)) {
        let ext = self.extend(seq);
        if self.next.is_some_and(|next| ext < next) || self.held.contains_key(&ext) {
            self.losses.late += 1;
            return;
        }
        self.highest = self.highest.max(ext);
        if self.next.is_none() {
            self.base = Some(self.base.map_or(ext, |b| b.min(ext)));
        }
        self.held.insert(ext, item);
        if self.next.is_none() {
            if self.held.len() < self.window {
                return;
            }
            self.next = self.held.keys().next().copied();
        }
        self.release(&mut out);
        // Full: give up on the oldest gap.
        while self.held.len() > self.window {
            if let Some((&first, _)) = self.held.iter().next() {
                let gap = first - self.next.unwrap_or(first);
                self.losses.lost += gap;
                self.next = Some(first);
                self.release(&mut out);
            }
        }
    }

    /// Releases every packet held (the stream ended or stalled).
    pub fn flush(&mut self, mut out: impl FnMut(u64, T)) {
        while let Some((first, item)) = self.held.pop_first() {
            let gap = first - self.next.unwrap_or(first);
            self.losses.lost += gap;
            self.next = Some(first + 1);
            out(first, item);
        }
    }

    fn release(&mut self, out: &mut impl FnMut(u64, T)) {
        while let Some(next) = self.next {
            match self.held.remove(&next) {
                Some(item) => {
                    out(next, item);
                    self.next = Some(next + 1);
                }
                None => break,
            }
        }
    }
}

/// An RTCP receiver report (RFC 3550 §6.4.2) about one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverReport {
    /// vigil's own SSRC as a receiver.
    pub reporter: u32,
    pub source: u32,
    /// Lost since the last report, as a fraction of 256.
    pub fraction_lost: u8,
    pub cumulative_lost: u32,
    pub highest_sequence: u32,
    pub jitter: u32,
    /// The middle 32 bits of the last sender report's NTP time, and the delay since it (1/65536 s).
    pub last_sr: u32,
    pub delay_since_last_sr: u32,
}

impl ReceiverReport {
    /// The report's 32 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = vec![0x81, 201, 0, 7];
        v.extend(self.reporter.to_be_bytes());
        v.extend(self.source.to_be_bytes());
        let lost = self.cumulative_lost.min(0x7F_FFFF).to_be_bytes();
        v.extend([self.fraction_lost, lost[1], lost[2], lost[3]]);
        v.extend(self.highest_sequence.to_be_bytes());
        v.extend(self.jitter.to_be_bytes());
        v.extend(self.last_sr.to_be_bytes());
        v.extend(self.delay_since_last_sr.to_be_bytes());
        v
    }
}

/// What a receiver knows about one source between reports (RFC 3550 §6.4.1, A.3, A.8):
/// packets received, interarrival jitter, the last sender report.
#[derive(Debug, Default, Clone)]
pub struct Reception {
    received: u64,
    /// Jitter in timestamp units, times 16 (RFC 3550 A.8's integer form).
    jitter16: u64,
    last_transit: Option<u32>,
    expected_prior: u64,
    received_prior: u64,
    /// The last sender report's middle NTP bits and when it came (1/65536 s).
    last_sr: Option<(u32, u64)>,
}

impl Reception {
    /// One packet in: `arrival` in the stream's timestamp units (90 kHz for video), its RTP
    /// timestamp.
    pub fn packet(&mut self, arrival: u32, timestamp: u32) {
        self.received += 1;
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            // J += (|D| - J) / 16, kept times 16.
            self.jitter16 = self.jitter16 + d - ((self.jitter16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// A sender report came (`ntp_middle`: the middle 32 bits of its NTP time), at `now` in
    /// 1/65536 s.
    pub fn sender_report(&mut self, ntp_middle: u32, now: u64) {
        self.last_sr = Some((ntp_middle, now));
    }

    /// The report about `source` as of `now` (1/65536 s), given the sequence span received
    /// (`Reorder::span`); the interval's counters restart.
    pub fn report(&mut self, reporter: u32, source: u32, span: (u64, u64), now: u64) -> ReceiverReport {
        let expected = span.1.saturating_sub(span.0) + 1;
        let lost = expected.saturating_sub(self.received);
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8).checked_div(expected_interval).map_or(0, |f| f.min(255) as u8);
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((ntp, at)) => (ntp, u32::try_from(now.saturating_sub(at)).unwrap_or(u32::MAX)),
            None => (0, 0),
        };
        ReceiverReport {
            reporter,
            source,
            fraction_lost,
            cumulative_lost: u32::try_from(lost).unwrap_or(u32::MAX),
            highest_sequence: span.1 as u32,
            jitter: u32::try_from(self.jitter16 >> 4).unwrap_or(u32::MAX),
            last_sr,
            delay_since_last_sr,
        }
    }
}

/// A sender report's sender SSRC and the middle 32 bits of its NTP time, when `b` (an RTCP
/// compound packet) starts with one.
pub fn sender_report(b: &[u8]) -> Option<(u32, u32)> {
    if b.len() < 28 || b[0] >> 6 != 2 || b[1] != 200 {
        return None;
    }
    let ssrc = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    Some((ssrc, u32::from_be_bytes([b[10], b[11], b[12], b[13]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        Packet { marker: true, payload_type: 96, sequence: seq, timestamp: 3600, ssrc: 200_000_001, payload }
            .write(&mut v);
        v
    }

    #[test]
    fn headers_with_csrcs_extensions_and_padding_read_to_their_payload() {
        let bytes = packet(7, b"ps");
        let p = Packet::parse(&bytes).expect("packet");
        assert_eq!(
            (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc, p.payload),
            (true, 96, 7, 3600, 200_000_001, &b"ps"[..])
        );
        // One CSRC, a one-word extension, two bytes of padding.
        let mut b = vec![0xB1, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 9, 9, 9, 9, 0xBE, 0xDE, 0, 1, 1, 2, 3, 4];
        b.extend([b'x', b'y', 0, 2]);
        assert_eq!(Packet::parse(&b).expect("packet").payload, b"xy");
        for bad in [&[0x80u8, 96][..], &[0x40; 12][..], &[0xA0, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 9][..]] {
            assert!(Packet::parse(bad).is_err(), "{bad:?}");
        }
        assert!(is_rtcp(
            &ReceiverReport {
                reporter: 1,
                source: 2,
                fraction_lost: 0,
                cumulative_lost: 0,
                highest_sequence: 0,
                jitter: 0,
                last_sr: 0,
                delay_since_last_sr: 0
            }
            .to_bytes()
        ));
        assert!(!is_rtcp(&packet(1, b"x")));
    }

    #[test]
    fn both_tcp_framings_split_alike_across_any_read_boundaries() {
        let (a, b) = (packet(1, b"first"), packet(2, b"second"));
        let mut stream = Vec::new();
        stream.extend((a.len() as u16).to_be_bytes());
        stream.extend(&a);
        stream.extend([b'$', 1, 0, 4, 1, 2, 3, 4]); // RTCP on channel 1: skipped
        stream.extend([b'$', 0]);
        stream.extend((b.len() as u16).to_be_bytes());
        stream.extend(&b);
        for cut in [1, 3, 5, 100] {
            let mut f = TcpFramer::default();
            let mut got = Vec::new();
            for c in stream.chunks(cut) {
                f.push(c, |p| got.push(p.to_vec()));
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "chunks of {cut}");
            assert_eq!((f.frames, f.skipped), (2, 1));
        }
    }

    #[test]
    fn the_window_reorders_counts_losses_and_drops_late_packets_across_the_wrap() {
        let mut r = Reorder::new(4);
        let mut out = Vec::new();
        for seq in [65_534u16, 0, 65_535, 1, 1, 3, 4, 5, 6, 7, 65_533] {
            r.push(seq, seq, |_, s| out.push(s));
        }
        r.flush(|_, s| out.push(s));
        assert_eq!(out, vec![65_534, 65_535, 0, 1, 3, 4, 5, 6, 7]);
        assert_eq!(r.losses, Losses { lost: 1, late: 2 }, "2 never came; the second 1 and 65533 came late");
    }

    #[test]
    fn receiver_reports_say_what_was_lost_since_the_last_and_in_all() {
        let mut r = Reorder::new(1);
        let mut rx = Reception::default();
        // 100 packets sent 3600 ticks apart, 5 of them lost, arriving with no jitter.
        for seq in 0u16..100 {
            if seq % 20 == 7 {
                continue;
            }
            r.push(seq, (), |_, _| {});
            rx.packet(u32::from(seq) * 3600 + 777, u32::from(seq) * 3600);
        }
        rx.sender_report(0xABCD_1234, 65_536);
        let rr = rx.report(1, 2, r.span().expect("packets came"), 3 * 65_536);
        assert_eq!((rr.cumulative_lost, rr.fraction_lost, rr.jitter), (5, (5 * 256 / 100) as u8, 0));
        assert_eq!(
            (rr.highest_sequence, rr.last_sr, rr.delay_since_last_sr),
            ((1 << 16) + 99, 0xABCD_1234, 2 * 65_536)
        );
        // The next interval: 10 more, none lost; then one arriving 900 ticks late.
        for seq in 100u16..110 {
            r.push(seq, (), |_, _| {});
            rx.packet(u32::from(seq) * 3600 + 777 + if seq == 109 { 900 } else { 0 }, u32::from(seq) * 3600);
        }
        let rr = rx.report(1, 2, r.span().expect("packets came"), 4 * 65_536);
        assert_eq!((rr.cumulative_lost, rr.fraction_lost, rr.jitter), (5, 0, 900 / 16));
        let bytes = rr.to_bytes();
        assert_eq!((bytes.len(), bytes[1], &bytes[8..12]), (32, 201, &2u32.to_be_bytes()[..]));
        // A sender report is recognised by its type; a receiver report is not one.
        let mut sr = vec![0x80, 200, 0, 6, 0, 0, 0, 9, 1, 2, 0xAB, 0xCD, 0x12, 0x34, 5, 6];
        sr.extend([0u8; 12]);
        assert_eq!(sender_report(&sr), Some((9, 0xABCD_1234)));
        assert_eq!(sender_report(&bytes), None);
    }

    #[test]
    fn in_order_packets_skip_the_window_and_the_rest_still_reorder() {
        let mut r = Reorder::new(2);
        let mut out = Vec::new();
        assert_eq!(r.in_order(10), None, "nothing before the window has started");
        r.push(10, 10, |_, s| out.push(s));
        r.push(11, 11, |_, s| out.push(s));
        assert_eq!(r.in_order(12), Some((1 << 16) + 12));
        assert_eq!(r.in_order(14), None, "13 is missing: 14 is held");
        r.push(14, 14, |_, s| out.push(s));
        assert_eq!(r.in_order(13), None, "something is held: 13 goes through the window");
        r.push(13, 13, |_, s| out.push(s));
        assert_eq!(out, vec![10, 11, 13, 14]);
        assert_eq!(r.in_order(15), Some((1 << 16) + 15));
        assert_eq!(r.span(), Some(((1 << 16) + 10, (1 << 16) + 15)));
        assert_eq!(r.losses, Losses::default());
    }
}
