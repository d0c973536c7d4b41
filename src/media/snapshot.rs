//! Keyframes to pictures, in-process with FFmpeg (ffmpeg-next against the system's
//! libavcodec): decodes one cached keyframe (Annex B with parameter sets, as retina's
//! `FrameFormat::SIMPLE` gives it; a whole JPEG for MJPEG cameras), and turns the picture into
//! a JPEG snapshot or into the small planes diagnosis scores.
//!
//! All of it is CPU work: callers run it through `Pool`, a bounded set of blocking threads,
//! never on a runtime thread. No sockets and no state here beyond the pool's permits.

use std::sync::{Arc, Once};

use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;

/// The codecs vigil decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    H264,
    H265,
    Jpeg,
}

impl Codec {
    /// From retina's encoding name (`h264`, `h265`, `jpeg`).
    pub fn from_encoding(name: &str) -> Option<Self> {
        match name {
            "h264" => Some(Codec::H264),
            "h265" => Some(Codec::H265),
            "jpeg" => Some(Codec::Jpeg),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Jpeg => "mjpeg",
        }
    }

    fn id(self) -> ff::codec::Id {
        match self {
            Codec::H264 => ff::codec::Id::H264,
            Codec::H265 => ff::codec::Id::HEVC,
            Codec::Jpeg => ff::codec::Id::MJPEG,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("FFmpeg has no {0} decoder")]
    NoDecoder(&'static str),
    #[error("FFmpeg: {0}")]
    Ffmpeg(#[from] ff::Error),
    #[error("the keyframe decoded to no picture")]
    NoPicture,
    #[error("the picture is {0}x{1}, too small to use")]
    TooSmall(u32, u32),
    #[error("the decode pool stopped")]
    PoolClosed,
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = ff::init();
        // swscale warns about full-range formats on every JPEG; decoders complain about
        // missing references when handed a lone keyframe. Neither is news to an operator.
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

/// A decoded picture.
pub struct Picture(ff::frame::Video);

impl Picture {
    pub fn width(&self) -> u32 {
        self.0.width()
    }
    pub fn height(&self) -> u32 {
        self.0.height()
    }
}

/// Decodes one keyframe with a fresh single-threaded decoder (a keyframe needs no history;
/// a fresh decoder per call keeps no per-camera state alive).
pub fn decode(codec: Codec, data: &[u8]) -> Result<Picture, Error> {
    init();
    let found = ff::codec::decoder::find(codec.id()).ok_or(Error::NoDecoder(codec.as_str()))?;
    let mut ctx = ff::codec::context::Context::new_with_codec(found);
    ctx.set_threading(ff::codec::threading::Config::count(1));
    let mut decoder = ctx.decoder().video()?;
    decoder.send_packet(&ff::Packet::copy(data))?;
    decoder.send_eof()?;
    let mut frame = ff::frame::Video::empty();
    decoder.receive_frame(&mut frame).map_err(|_| Error::NoPicture)?;
    if frame.width() < 16 || frame.height() < 16 {
        return Err(Error::TooSmall(frame.width(), frame.height()));
    }
    Ok(Picture(frame))
}

/// Fits `w`×`h` into `max_width` keeping the aspect ratio, with even dimensions (4:2:0).
fn fit(w: u32, h: u32, max_width: u32) -> (u32, u32) {
    if w <= max_width {
        return (w & !1, h & !1);
    }
    let nh = (u64::from(h) * u64::from(max_width) / u64::from(w.max(1))) as u32;
    (max_width & !1, nh.max(2) & !1)
}

/// Encodes the picture as a JPEG no wider than `max_width` (full size when it fits).
pub fn jpeg(picture: &Picture, max_width: u32) -> Result<Vec<u8>, Error> {
    init();
    let src = &picture.0;
    let (w, h) = fit(src.width(), src.height(), max_width);
    let mut scaler = scaling::Context::get(
        src.format(),
        src.width(),
        src.height(),
        Pixel::YUVJ420P,
        w,
        h,
        scaling::Flags::BILINEAR,
    )?;
    let mut scaled = ff::frame::Video::empty();
    scaler.run(src, &mut scaled)?;
    let codec = ff::codec::encoder::find(ff::codec::Id::MJPEG).ok_or(Error::NoDecoder("mjpeg encoder"))?;
    let mut enc = ff::codec::context::Context::new_with_codec(codec).encoder().video()?;
    enc.set_width(w);
    enc.set_height(h);
    enc.set_format(Pixel::YUVJ420P);
    enc.set_time_base((1, 25));
    enc.set_qmin(2);
    enc.set_qmax(6);
    let mut enc = enc.open_as(codec)?;
    enc.send_frame(&scaled)?;
    enc.send_eof()?;
    let mut packet = ff::Packet::empty();
    enc.receive_packet(&mut packet)?;
    packet.data().map(<[u8]>::to_vec).ok_or(Error::NoPicture)
}

/// A small full-colour copy of a picture (4:4:4, 8 bit) for diagnosis.
pub struct Planes {
    pub width: usize,
    pub height: usize,
    /// Luma as coded (limited range: black ≈ 16, white ≈ 235).
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

/// Scales a picture down to `width` (keeping aspect) as YUV 4:4:4 planes without padding.
pub fn planes(picture: &Picture, width: u32) -> Result<Planes, Error> {
    init();
    let src = &picture.0;
    let (w, h) = fit(src.width(), src.height(), width);
    let mut scaler =
        scaling::Context::get(src.format(), src.width(), src.height(), Pixel::YUV444P, w, h, scaling::Flags::AREA)?;
    let mut out = ff::frame::Video::empty();
    scaler.run(src, &mut out)?;
    let (w, h) = (w as usize, h as usize);
    let plane = |i: usize| -> Vec<u8> {
        let stride = out.stride(i);
        let data = out.data(i);
        let mut v = Vec::with_capacity(w * h);
        for row in 0..h {
            let start = row * stride;
            v.extend_from_slice(data.get(start..start + w).unwrap_or(&[]));
        }
        v
    };
    Ok(Planes { width: w, height: h, y: plane(0), u: plane(1), v: plane(2) })
}

/// The threads decoding runs on: `threads` dedicated threads taking jobs in turn; callers
/// beyond that wait their turn. Dedicated rather than tokio's blocking pool so that FFmpeg's
/// allocations stay in the C allocator's arenas of the same few threads (the blocking pool
/// spreads them over whichever threads it has, and each keeps what it freed: 11 KB more RSS
/// per stream over 300 GB/T 28181 channels, BENCHMARKS.md).
#[derive(Clone)]
pub struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

impl Pool {
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new().name(format!("vigil-decode-{i}")).spawn(move || loop {
                // The lock is held while waiting, not while working: one thread takes the next
                // job while the others decode.
                let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return, // every Pool handle is gone
                };
                job();
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "Cannot start a decode thread.");
            }
        }
        Pool { jobs }
    }

    /// Runs `job` on a decode thread once one is free. A job that panics answers `PoolClosed`
    /// and leaves its thread running.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if let Ok(out) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                let _ = done.send(out);
            }
        });
        self.jobs.send(job).map_err(|_| Error::PoolClosed)?;
        result.await.map_err(|_| Error::PoolClosed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect_and_even_sizes() {
        assert_eq!(fit(1920, 1080, 640), (640, 360));
        assert_eq!(fit(640, 360, 1920), (640, 360));
        assert_eq!(fit(641, 361, 1920), (640, 360));
        assert_eq!(fit(2560, 1440, 255), (254, 142));
        assert_eq!(fit(1, 1, 0), (0, 2));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for data in [&b""[..], &b"\x00\x00\x00\x01\x67garbage"[..], &[0xff; 4096][..]] {
            for codec in [Codec::H264, Codec::H265, Codec::Jpeg] {
                assert!(decode(codec, data).is_err(), "{codec:?} {} bytes", data.len());
            }
        }
    }
}
