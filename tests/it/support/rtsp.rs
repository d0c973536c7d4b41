//! A real RTSP camera for the tests: `tests/peers/rtsp_server.py` (gst-rtsp-server through
//! Debian's python3-gi) as a child process on an ephemeral port, stopped on drop; `stall` and
//! `resume` are `kill -STOP` / `kill -CONT` (a camera that stalls with TCP open).

use std::process::{Child, Command, Stdio};

pub struct GstCamera {
    child: Child,
    /// `rtsp://127.0.0.1:PORT/cam1` (no credentials).
    pub url: String,
    pub port: u16,
}

impl GstCamera {
    /// `auth`: none | basic | digest (admin / secret); `codec`: h264 | h265.
    pub fn start(auth: &str, codec: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/rtsp_server.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args([script, "--auth", auth, "--codec", codec]).stderr(Stdio::inherit());
        let (child, url) = super::start_printing_url(
            cmd,
            "rtsp://127.0.0.1:",
            "gst-rtsp-server (python3-gi: run scripts/install-deps.sh)",
        );
        let port = url
            .trim_start_matches("rtsp://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the URL");
        GstCamera { child, url, port }
    }

    /// The URL with credentials in it.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        self.url.replacen("rtsp://", &format!("rtsp://{user}:{password}@"), 1)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} the camera");
    }

    pub fn stall(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for GstCamera {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ffprobe's `codec_name,width,height` of an image or media file.
pub fn ffprobe(path: &std::path::Path) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe (ffmpeg package)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `vigil-sim rtsp-camera` (built by `make test` beside the test binary): many synthetic
/// H.264 cameras with fault modes by path (`/live/N`, `/stall/N`, `/black/N`, ...).
pub struct SimCameras {
    child: Child,
    /// `rtsp://127.0.0.1:PORT`.
    pub base: String,
}

impl SimCameras {
    pub fn start(extra: &[&str]) -> Self {
        let sim = super::sim_binary();
        let clips = sim.parent().map(|d| d.join("sim-clips")).expect("target dir");
        let mut cmd = Command::new(sim);
        cmd.args(["rtsp-camera", "--listen", "127.0.0.1:0", "--clips"]).arg(&clips).args(extra).stderr(Stdio::null());
        let (child, base) = super::start_printing_url(cmd, "rtsp://127.0.0.1:", "vigil-sim rtsp-camera");
        SimCameras { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }
}

impl Drop for SimCameras {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
