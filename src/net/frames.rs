//! Messages off a byte stream, cut by a protocol's own framing rule (given as a function, so
//! nothing here knows the protocol): a message must be whole within `deadline` of its first
//! byte (a peer that trickles one never holds a task or a buffer for long), a connection with
//! nothing under way is ended after `idle` (none: never), and what the rule cannot frame ends
//! the stream (the next message's start is unknowable). Bytes the rule calls filler between
//! messages (SIP's CRLF keep-alives) are counted into the next frame by the rule itself.
//! `next` is cancel-safe: a `select!` that drops it loses nothing. The other way, `write_within`
//! bounds what is written to such a peer: one that does not read holds no task for long.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Why a stream gave no more messages.
#[derive(Debug, thiserror::Error)]
pub enum End<E: std::fmt::Display> {
    #[error("the peer closed the connection")]
    Closed,
    #[error("nothing under way for {0:?}")]
    Idle(Duration),
    #[error("a message was not whole within {0:?} of its first byte")]
    Late(Duration),
    #[error("the stream cannot be framed: {0}")]
    Unframeable(E),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// The framing rule: the length of the first whole message in a buffer, `Ok(None)` while more
/// bytes are needed, an error when the stream cannot be framed (the rule bounds the size).
pub type Rule<E> = fn(&[u8]) -> Result<Option<usize>, E>;

/// One stream's reader.
pub struct Frames<R, E> {
    rd: R,
    rule: Rule<E>,
    buf: Vec<u8>,
    chunk: Box<[u8]>,
    deadline: Duration,
    idle: Option<Duration>,
    /// When the message now in `buf` began.
    begun: Option<Instant>,
}

impl<R: AsyncRead + Unpin, E: std::fmt::Display> Frames<R, E> {
    pub fn new(rd: R, rule: Rule<E>, deadline: Duration, idle: Option<Duration>) -> Self {
        Frames {
            rd,
            rule,
            buf: Vec::with_capacity(4096),
            chunk: vec![0u8; 16 * 1024].into(),
            deadline,
            idle,
            begun: None,
        }
    }

    /// The next whole message.
    pub async fn next(&mut self) -> Result<Vec<u8>, End<E>> {
        loop {
            match (self.rule)(&self.buf) {
                Ok(Some(len)) => {
                    let frame: Vec<u8> = self.buf.drain(..len.min(self.buf.len())).collect();
                    self.begun = (!self.buf.is_empty()).then(Instant::now);
                    return Ok(frame);
                }
                Ok(None) => {
                    // Only filler (CRLF keep-alives) is not a message under way.
                    if self.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) {
                        self.buf.clear();
                        self.begun = None;
                    }
                }
                Err(e) => return Err(End::Unframeable(e)),
            }
            let read = self.rd.read(&mut self.chunk);
            let n = match (self.begun, self.idle) {
                (Some(t), _) => {
                    let left = self.deadline.saturating_sub(t.elapsed());
                    tokio::time::timeout(left, read).await.map_err(|_| End::Late(self.deadline))??
                }
                (None, Some(idle)) => tokio::time::timeout(idle, read).await.map_err(|_| End::Idle(idle))??,
                (None, None) => read.await?,
            };
            if n == 0 {
                return Err(End::Closed);
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
            if self.begun.is_none() {
                self.begun = Some(Instant::now());
            }
        }
    }
}

/// Why a write to a peer did not finish.
#[derive(Debug, thiserror::Error)]
pub enum WriteEnd {
    #[error("the peer took nothing for {0:?}")]
    Stalled(Duration),
    #[error("write error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes all of `bytes`, or gives up once `deadline` has passed without the peer taking them
/// (its receive window shut).
pub async fn write_within<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8], deadline: Duration) -> Result<(), WriteEnd> {
    match tokio::time::timeout(deadline, wr.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(WriteEnd::Stalled(deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A toy rule: a message is a line ending in '\n' after any empty lines (filler); a line
    /// over 8 bytes cannot be framed.
    fn lines(buf: &[u8]) -> Result<Option<usize>, String> {
        let skip = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        let rest = &buf[skip..];
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) if i > 8 => Err(format!("line of {i} bytes")),
            Some(i) => Ok(Some(skip + i + 1)),
            None if rest.len() > 8 => Err("line too long".into()),
            None => Ok(None),
        }
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_reads_come_out_whole_and_garbage_ends_the_stream() {
        let (mut w, r) = tokio::io::duplex(64);
        let mut f = Frames::new(r, lines, Duration::from_secs(5), None);
        w.write_all(b"ab").await.expect("write");
        w.write_all(b"c\nde\nf").await.expect("write");
        assert_eq!(f.next().await.expect("first"), b"abc\n");
        assert_eq!(f.next().await.expect("second"), b"de\n");
        w.write_all(b"g\n0123456789\n").await.expect("write");
        assert_eq!(f.next().await.expect("third"), b"fg\n");
        assert!(matches!(f.next().await, Err(End::Unframeable(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_message_is_cut_at_its_deadline_and_an_idle_stream_at_idle() {
        let (mut w, r) = tokio::io::duplex(64);
        let mut f = Frames::new(r, lines, Duration::from_secs(2), Some(Duration::from_secs(30)));
        w.write_all(b"abc").await.expect("write");
        assert!(matches!(f.next().await, Err(End::Late(_))), "half a message past its deadline");
        let (mut w, r) = tokio::io::duplex(64);
        let mut f = Frames::new(r, lines, Duration::from_secs(2), Some(Duration::from_secs(30)));
        w.write_all(b"\r\n").await.expect("write");
        assert!(matches!(f.next().await, Err(End::Idle(_))), "filler is not a message under way");
        drop(w);
        let (w, r) = tokio::io::duplex(64);
        let mut f = Frames::new(r, lines, Duration::from_secs(2), None);
        drop(w);
        assert!(matches!(f.next().await, Err(End::Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_does_not_take_ends_at_its_deadline() {
        let (mut w, mut r) = tokio::io::duplex(64);
        write_within(&mut w, &[7; 64], Duration::from_secs(2)).await.expect("fits the window");
        let stalled = write_within(&mut w, &[7; 64], Duration::from_secs(2)).await;
        assert!(matches!(stalled, Err(WriteEnd::Stalled(_))), "{stalled:?}");
        let mut got = vec![0; 64];
        r.read_exact(&mut got).await.expect("read");
        write_within(&mut w, &[7; 64], Duration::from_secs(2)).await.expect("taken once read");
    }
}
