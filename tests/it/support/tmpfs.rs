//! A small tmpfs of its own for a test (a disk that really fills): mounted on a fresh
//! temporary directory, unmounted on drop. Mounting needs root (CAP_SYS_ADMIN), which CI and
//! the project's machines have; elsewhere `mount` answers why not.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// A tmpfs of `mib` MiB, or why it cannot be mounted here.
    pub fn mount(mib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Free bytes, as the gateway sees them.
    pub fn free(&self) -> u64 {
        vigil::outbox::gate::free_bytes(self.path()).expect("statvfs on the tmpfs")
    }

    /// Writes a file of zeroes until `free()` is at most `leave` bytes, or the file system is
    /// full when `leave` is 0; answers the file.
    pub fn fill_to(&self, name: &str, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join(name);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("filler file");
        let chunk = vec![0u8; 256 << 10];
        while self.free() > leave {
            let want = (self.free() - leave).min(chunk.len() as u64) as usize;
            match f.write(&chunk[..want]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC: full, as asked
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = f.sync_all();
        path
    }
}

/// Whether this process runs as root (may mount).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file still open elsewhere must not keep the mount (and the test) around.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
