//! Video quality diagnosis (视频质量诊断) on decoded keyframes: black / white screen, frozen
//! picture, blur, occlusion and colour cast, each as a raw score, judged against absolute
//! limits and a per-camera baseline learned from the first healthy samples, and alarmed only
//! after N consecutive bad samples.
//!
//! Pure functions over `snapshot::Planes` (small YUV 4:4:4 copies); the pull task schedules
//! it and the API shows the result. No FFmpeg, no I/O here. Thresholds follow the practice in
//! `shared/reference/rtsp.md` §5; the raw scores are published so they can be tuned.

use serde::Serialize;

use super::snapshot::Planes;

/// One sample's scores. Luma values are as coded (limited range: black ≈ 16, white ≈ 235).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Scores {
    /// Mean luma.
    pub luma_mean: f32,
    /// Share of pixels at black level (luma ≤ 35).
    pub dark_fraction: f32,
    /// Share of pixels at white level (luma ≥ 230).
    pub bright_fraction: f32,
    /// Luma standard deviation.
    pub contrast: f32,
    /// Variance of the 4-neighbour Laplacian of luma (low = blurred).
    pub sharpness: f32,
    /// Shannon entropy of the luma histogram in bits (0..8; collapses when covered).
    pub entropy: f32,
    /// Share of 8×8 blocks that are flat (luma σ < 3): a lens cap, a wall, a bag.
    pub uniform_fraction: f32,
    /// Colour cast factor K = D / M in CIE Lab (D: distance of the mean (a, b) from neutral,
    /// M: the spread around it); K > 1.5 with a real offset is a cast.
    pub cast: f32,
    /// D of the cast factor (0 for a grey picture, such as an IR night image).
    pub chroma_offset: f32,
    /// Mean absolute luma difference from the previous keyframe (None without one).
    pub change: Option<f32>,
}

/// Computes the scores of `now`, with `previous` (the keyframe before it) for the frozen check.
pub fn score(now: &Planes, previous: Option<&Planes>) -> Scores {
    let y = &now.y;
    let n = y.len().max(1) as f64;
    let mut hist = [0u32; 256];
    let (mut sum, mut sum2) = (0f64, 0f64);
    for &p in y {
        hist[usize::from(p)] += 1;
        sum += f64::from(p);
        sum2 += f64::from(p) * f64::from(p);
    }
    let mean = sum / n;
    let var = (sum2 / n - mean * mean).max(0.0);
    let dark: u32 = hist[..=35].iter().sum();
    let bright: u32 = hist[230..].iter().sum();
    let entropy = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum::<f64>();
    Scores {
        luma_mean: mean as f32,
        dark_fraction: (f64::from(dark) / n) as f32,
        bright_fraction: (f64::from(bright) / n) as f32,
        contrast: var.sqrt() as f32,
        sharpness: laplacian_variance(y, now.width, now.height),
        entropy: entropy as f32,
        uniform_fraction: uniform_blocks(y, now.width, now.height),
        cast: 0.0,
        chroma_offset: 0.0,
        change: previous.filter(|p| p.y.len() == y.len()).map(|p| mean_abs_diff(y, &p.y)),
    }
    .with_cast(now)
}

impl Scores {
    fn with_cast(mut self, p: &Planes) -> Self {
        let (k, d) = cast_factor(p);
        self.cast = k;
        self.chroma_offset = d;
        self
    }
}

fn laplacian_variance(y: &[u8], w: usize, h: usize) -> f32 {
    if w < 3 || h < 3 || y.len() < w * h {
        return 0.0;
    }
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0f64);
    for r in 1..h - 1 {
        for c in 1..w - 1 {
            let i = r * w + c;
            let l = 4 * i32::from(y[i])
                - i32::from(y[i - 1])
                - i32::from(y[i + 1])
                - i32::from(y[i - w])
                - i32::from(y[i + w]);
            let l = f64::from(l);
            sum += l;
            sum2 += l * l;
            n += 1.0;
        }
    }
    let mean = sum / n;
    (sum2 / n - mean * mean).max(0.0) as f32
}

fn uniform_blocks(y: &[u8], w: usize, h: usize) -> f32 {
    const B: usize = 8;
    let (bw, bh) = (w / B, h / B);
    if bw == 0 || bh == 0 || y.len() < w * h {
        return 0.0;
    }
    let mut flat = 0u32;
    for br in 0..bh {
        for bc in 0..bw {
            let (mut s, mut s2) = (0u32, 0u32);
            for r in 0..B {
                let row = (br * B + r) * w + bc * B;
                for &p in &y[row..row + B] {
                    s += u32::from(p);
                    s2 += u32::from(p) * u32::from(p);
                }
            }
            let n = (B * B) as f32;
            let mean = s as f32 / n;
            let var = s2 as f32 / n - mean * mean;
            if var < 9.0 {
                flat += 1;
            }
        }
    }
    flat as f32 / (bw * bh) as f32
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f32 {
    let n = a.len().max(1) as f64;
    let total: u64 = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    (total as f64 / n) as f32
}

/// Limited-range BT.601 YCbCr → sRGB → CIE Lab (D65), then the "equivalent circle" factor.
fn cast_factor(p: &Planes) -> (f32, f32) {
    let n = p.y.len().min(p.u.len()).min(p.v.len());
    if n == 0 {
        return (0.0, 0.0);
    }
    let mut ab = Vec::with_capacity(n);
    for i in 0..n {
        let y = (f64::from(p.y[i]) - 16.0) * 255.0 / 219.0;
        let cb = (f64::from(p.u[i]) - 128.0) * 255.0 / 224.0;
        let cr = (f64::from(p.v[i]) - 128.0) * 255.0 / 224.0;
        let r = (y + 1.402 * cr) / 255.0;
        let g = (y - 0.344_136 * cb - 0.714_136 * cr) / 255.0;
        let b = (y + 1.772 * cb) / 255.0;
        let lin = |c: f64| {
            let c = c.clamp(0.0, 1.0);
            if c <= 0.040_45 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let (r, g, b) = (lin(r), lin(g), lin(b));
        let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.950_47;
        let yy = 0.2126 * r + 0.7152 * g + 0.0722 * b;
        let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.088_83;
        let f = |t: f64| if t > 0.008_856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
        let (fx, fy, fz) = (f(x), f(yy), f(z));
        ab.push((500.0 * (fx - fy), 200.0 * (fy - fz)));
    }
    let nf = n as f64;
    let ma = ab.iter().map(|v| v.0).sum::<f64>() / nf;
    let mb = ab.iter().map(|v| v.1).sum::<f64>() / nf;
    let d = (ma * ma + mb * mb).sqrt();
    let sa = ab.iter().map(|v| (v.0 - ma).abs()).sum::<f64>() / nf;
    let sb = ab.iter().map(|v| (v.1 - mb).abs()).sum::<f64>() / nf;
    let m = (sa * sa + sb * sb).sqrt();
    let k = if m > 1e-6 {
        d / m
    } else if d > 1e-6 {
        99.0
    } else {
        0.0
    };
    (k.min(99.0) as f32, d as f32)
}

/// The checks, by the names the API, the alarm and the dashboard use.
pub const BLACK: &str = "black";
pub const WHITE: &str = "white";
pub const FROZEN: &str = "frozen";
pub const BLUR: &str = "blur";
pub const OCCLUSION: &str = "occlusion";
pub const COLOR_CAST: &str = "color_cast";

/// What a camera looks like when healthy: medians of its first fault-free samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Baseline {
    samples: Vec<Scores>,
    pub sharpness: Option<f32>,
    pub entropy: Option<f32>,
    pub cast: Option<f32>,
    pub uniform: Option<f32>,
}

/// Fault-free samples a baseline is learned from.
pub const BASELINE_SAMPLES: usize = 3;

impl Baseline {
    pub fn ready(&self) -> bool {
        self.sharpness.is_some()
    }

    fn learn(&mut self, s: Scores) {
        if self.ready() {
            return;
        }
        self.samples.push(s);
        if self.samples.len() >= BASELINE_SAMPLES {
            let median = |f: fn(&Scores) -> f32| {
                let mut v: Vec<f32> = self.samples.iter().map(f).collect();
                v.sort_by(f32::total_cmp);
                v[v.len() / 2]
            };
            self.sharpness = Some(median(|s| s.sharpness));
            self.entropy = Some(median(|s| s.entropy));
            self.cast = Some(median(|s| s.cast));
            self.uniform = Some(median(|s| s.uniform_fraction));
            self.samples = Vec::new();
        }
    }
}

/// The faults in one sample: absolute limits first, then relative to the baseline.
pub fn faults(s: &Scores, base: &Baseline) -> Vec<&'static str> {
    let mut out = Vec::new();
    let black = s.dark_fraction >= 0.95 && s.luma_mean < 40.0;
    let white = s.bright_fraction >= 0.95 && s.luma_mean > 215.0;
    if black {
        out.push(BLACK);
    }
    if white {
        out.push(WHITE);
    }
    // Nearly identical consecutive keyframes while the stream's timestamps advanced (the
    // caller only compares keyframes with different timestamps). Camera noise alone keeps
    // a live static scene above this.
    if !black && !white && s.change.is_some_and(|c| c < 0.25) {
        out.push(FROZEN);
    }
    if !black && !white {
        // Nearly all flat (a lens cap, a bag), or much flatter than this camera's usual scene
        // (test charts and skies are legitimately flat in large parts).
        let flat = s.uniform_fraction >= 0.9 || base.uniform.is_some_and(|u| s.uniform_fraction >= u + 0.4);
        let collapsed = base.entropy.is_some_and(|e| e > 2.0 && s.entropy < 0.5 * e);
        if flat || collapsed {
            out.push(OCCLUSION);
        }
        if base.sharpness.is_some_and(|b| b > 20.0 && s.sharpness < 0.3 * b) && !flat {
            out.push(BLUR);
        }
        let limit = base.cast.map_or(1.5, |b| (2.0 * b).max(1.5));
        if s.cast > limit && s.chroma_offset > 8.0 {
            out.push(COLOR_CAST);
        }
    }
    out
}

/// Per-camera judgement over time: baseline, consecutive bad samples, alarm state.
#[derive(Debug, Default)]
pub struct Judge {
    pub baseline: Baseline,
    pub consecutive_bad: u32,
    pub alarmed: bool,
}

/// What one sample changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Good,
    /// Bad, but not yet `alarm_after` times in a row (or already alarmed).
    Bad,
    /// Reached `alarm_after` consecutive bad samples now: raise the alarm.
    Alarm,
    /// The first good sample after an alarm.
    Recovered,
}

impl Judge {
    pub fn judge(&mut self, s: &Scores, alarm_after: u32) -> (Vec<&'static str>, Verdict) {
        let f = faults(s, &self.baseline);
        if f.is_empty() {
            self.baseline.learn(*s);
            self.consecutive_bad = 0;
            let was = std::mem::replace(&mut self.alarmed, false);
            return (f, if was { Verdict::Recovered } else { Verdict::Good });
        }
        self.consecutive_bad = self.consecutive_bad.saturating_add(1);
        if !self.alarmed && self.consecutive_bad >= alarm_after.max(1) {
            self.alarmed = true;
            return (f, Verdict::Alarm);
        }
        (f, Verdict::Bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planes(w: usize, h: usize, f: impl Fn(usize, usize) -> (u8, u8, u8)) -> Planes {
        let mut p = Planes { width: w, height: h, y: vec![], u: vec![], v: vec![] };
        for r in 0..h {
            for c in 0..w {
                let (y, u, v) = f(r, c);
                p.y.push(y);
                p.u.push(u);
                p.v.push(v);
            }
        }
        p
    }

    /// A busy, neutral scene: a texture that changes with `t`.
    fn scene(t: usize) -> Planes {
        planes(160, 90, |r, c| {
            let v = ((r * 7 + c * 13 + t * 5) % 200) as u8 + 20;
            let noise = ((r * 31 + c * 17 + t * 11) % 9) as u8;
            (v.saturating_add(noise), 128 + (c % 7) as u8 - 3, 128 + (r % 5) as u8 - 2)
        })
    }

    #[test]
    fn a_healthy_scene_has_no_faults_and_learns_a_baseline() {
        let mut j = Judge::default();
        for t in 1..6 {
            let s = score(&scene(t), Some(&scene(t - 1)));
            let (f, v) = j.judge(&s, 3);
            assert!(f.is_empty(), "{f:?} {s:?}");
            assert_eq!(v, Verdict::Good);
        }
        assert!(j.baseline.ready());
    }

    #[test]
    fn black_white_frozen_occluded_blurred_and_cast_are_told_apart() {
        let mut base = Baseline::default();
        for t in 1..4 {
            base.learn(score(&scene(t), Some(&scene(t - 1))));
        }
        let black = score(&planes(160, 90, |r, c| (16 + ((r + c) % 3) as u8, 128, 128)), None);
        assert_eq!(faults(&black, &base), vec![BLACK]);
        let white = score(&planes(160, 90, |_, _| (235, 128, 128)), None);
        assert_eq!(faults(&white, &base), vec![WHITE]);
        let frozen = score(&scene(7), Some(&scene(7)));
        assert_eq!(faults(&frozen, &base), vec![FROZEN]);
        // Half the picture covered by a flat grey card, the rest one flat colour: occluded.
        let covered =
            score(&planes(160, 90, |_, c| if c < 150 { (120, 128, 128) } else { (60, 128, 128) }), Some(&scene(1)));
        assert!(faults(&covered, &base).contains(&OCCLUSION), "{covered:?}");
        // Blur: the same scene averaged over 5×5 neighbourhoods.
        let sharp = scene(3);
        let blurred = planes(160, 90, |r, c| {
            let mut s = 0u32;
            let mut n = 0u32;
            for dr in 0..5usize {
                for dc in 0..5usize {
                    let (rr, cc) = ((r + dr).saturating_sub(2).min(89), (c + dc).saturating_sub(2).min(159));
                    s += u32::from(sharp.y[rr * 160 + cc]);
                    n += 1;
                }
            }
            ((s / n) as u8, 128, 128)
        });
        let bs = score(&blurred, Some(&scene(2)));
        assert_eq!(faults(&bs, &base), vec![BLUR], "{bs:?} base {:?}", base.sharpness);
        // A strong blue cast over the scene.
        let cast = score(&planes(160, 90, |r, c| (scene(4).y[r * 160 + c], 175, 110)), Some(&scene(3)));
        assert_eq!(faults(&cast, &base), vec![COLOR_CAST], "{cast:?}");
        // A grey (IR night) picture is not a cast.
        let grey = score(&planes(160, 90, |r, c| (scene(4).y[r * 160 + c], 128, 128)), Some(&scene(3)));
        assert!(!faults(&grey, &base).contains(&COLOR_CAST));
    }

    #[test]
    fn alarms_only_after_consecutive_bad_samples_and_recovers() {
        let mut j = Judge::default();
        let black = score(&planes(64, 64, |_, _| (16, 128, 128)), None);
        let good = score(&scene(2), Some(&scene(1)));
        assert_eq!(j.judge(&black, 3).1, Verdict::Bad);
        assert_eq!(j.judge(&good, 3).1, Verdict::Good, "a good sample resets the count");
        assert_eq!(j.judge(&black, 3).1, Verdict::Bad);
        assert_eq!(j.judge(&black, 3).1, Verdict::Bad);
        assert_eq!(j.judge(&black, 3).1, Verdict::Alarm);
        assert_eq!(j.judge(&black, 3).1, Verdict::Bad, "one alarm, not one per sample");
        assert_eq!(j.judge(&good, 3).1, Verdict::Recovered);
        assert!(!j.alarmed);
    }

    #[test]
    fn degenerate_planes_do_not_panic() {
        let empty = Planes { width: 0, height: 0, y: vec![], u: vec![], v: vec![] };
        let s = score(&empty, Some(&empty));
        assert!(s.luma_mean.is_finite());
        let short = Planes { width: 100, height: 100, y: vec![1; 10], u: vec![], v: vec![] };
        let _ = score(&short, None);
    }
}
