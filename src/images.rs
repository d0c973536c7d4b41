//! The image store: pictures that events refer to (face crops, scenes, plates), stored once
//! under `<data_dir>/images/ab/cd/<sha256>` and named by the SHA-256 of their bytes, so a
//! retransmitted capture costs no second copy. A file is written to a temporary name,
//! synced, then renamed: an event never refers to a half-written image, and an image is
//! durable before the event that refers to it is committed. Owns nothing else.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::protocol::digest::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image of {size} bytes is over the {max}-byte limit")]
    TooLarge { size: usize, max: u64 },
    #[error("not a JPEG or PNG picture (its first bytes read as {found})")]
    NotAnImage { found: &'static str },
    #[error("cannot store image under {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error("image store task failed: {0}")]
    Task(String),
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::TooLarge { .. } | Error::NotAnImage { .. } => crate::error::ErrorKind::InvalidInput,
            Error::Io { .. } | Error::Task(_) => crate::error::ErrorKind::Unavailable,
        }
    }
}

/// A stored image: its hash, size and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub hash: String,
    pub bytes: u64,
    pub mime: &'static str,
}

#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    max: u64,
}

/// The type of an image from its first bytes.
pub fn sniff(b: &[u8]) -> &'static str {
    if b.starts_with(&[0xFF, 0xD8]) {
        "image/jpeg"
    } else if b.starts_with(b"\x89PNG") {
        "image/png"
    } else if b.starts_with(b"BM") {
        "image/bmp"
    } else {
        "application/octet-stream"
    }
}

/// Whether `b` is a picture vigil keeps: a JPEG (SOI then a marker) or a PNG (its 8-byte
/// signature). Anything else — HTML, script, random bytes — is refused, so the image URL of
/// a record can never serve a page.
pub fn is_picture(b: &[u8]) -> bool {
    b.starts_with(&[0xFF, 0xD8, 0xFF]) || b.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Whether `hash` is a well-formed name (64 lowercase hex digits).
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl ImageStore {
    pub fn new(data_dir: &Path, max: u64) -> ImageStore {
        ImageStore { dir: data_dir.join("images"), max }
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(&hash[..2]).join(&hash[2..4]).join(hash)
    }

    /// Stores `bytes` (durably) and answers its name. Runs on the blocking pool.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<Stored, Error> {
        if bytes.len() as u64 > self.max {
            return Err(Error::TooLarge { size: bytes.len(), max: self.max });
        }
        if !is_picture(&bytes) {
            let found = match sniff(&bytes) {
                "application/octet-stream" if bytes.trim_ascii_start().starts_with(b"<") => "markup",
                "application/octet-stream" => "unknown bytes",
                other => other,
            };
            return Err(Error::NotAnImage { found });
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.put_blocking(&bytes)).await.map_err(|e| Error::Task(e.to_string()))?
    }

    fn put_blocking(&self, bytes: &[u8]) -> Result<Stored, Error> {
        let hash = sha256_hex(bytes);
        let stored = Stored { hash: hash.clone(), bytes: bytes.len() as u64, mime: sniff(bytes) };
        let path = self.path(&hash);
        if path.exists() {
            return Ok(stored);
        }
        let io = |source| Error::Io { dir: self.dir.clone(), source };
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(io)?;
        // A name of its own per write: the same picture may arrive twice at once.
        let tmp = parent.join(format!(".{hash}.{}.tmp", uuid::Uuid::now_v7().simple()));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_data().map_err(io)?;
        drop(f);
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            if !path.exists() {
                return Err(io(e));
            }
        }
        Ok(stored)
    }

    /// The bytes of a stored image, `None` when there is none by that name.
    pub async fn get(&self, hash: &str) -> Result<Option<Vec<u8>>, Error> {
        if !valid_hash(hash) {
            return Ok(None);
        }
        match tokio::fs::read(self.path(hash)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { dir: self.dir.clone(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_once_by_content_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::new(dir.path(), 1024);
        let jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3];
        let a = store.put(jpeg.clone()).await.expect("put");
        let b = store.put(jpeg.clone()).await.expect("put again");
        assert_eq!(a, b);
        assert_eq!(a.mime, "image/jpeg");
        assert_eq!(store.get(&a.hash).await.expect("get"), Some(jpeg));
        assert_eq!(store.get("../../etc/passwd").await.expect("get"), None, "names are hashes only");
        assert!(matches!(store.put(vec![0; 2048]).await, Err(Error::TooLarge { .. })));
        // What is not a JPEG or PNG is refused, whatever it claims to be.
        for not_a_picture in [&b"<html><script>alert(1)</script>"[..], b"\xFF\xD8<svg>", b"BM6\x00", b"\x89PNG", b""] {
            assert!(
                matches!(store.put(not_a_picture.to_vec()).await, Err(Error::NotAnImage { .. })),
                "{not_a_picture:?}"
            );
        }
        let png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR".to_vec();
        assert_eq!(store.put(png).await.expect("a PNG").mime, "image/png");
        let _ = std::fs::remove_file(store.path(&sha256_hex(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")));
        // The same picture stored from many tasks at once: one file, every put succeeds.
        let puts: Vec<_> = (0..16).map(|_| store.put(vec![0xFF, 0xD8, 0xFF, 9])).collect();
        for r in futures_util::future::join_all(puts).await {
            r.expect("concurrent put");
        }
        let _ = std::fs::remove_file(store.path(&sha256_hex(&[0xFF, 0xD8, 0xFF, 9])));
        let files = walk(&dir.path().join("images"));
        assert_eq!(files.len(), 1, "one file, no temporaries left: {files:?}");
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
