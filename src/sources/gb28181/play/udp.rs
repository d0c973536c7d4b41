//! Batched UDP receive for media sockets: one `recvmmsg` reads up to 16 datagrams per wake-up
//! (through `quinn-udp`, which also turns on UDP GRO where the kernel has it, so one slot may
//! hold many datagrams of one flow, split again here at the kernel's stride). The receive
//! slots are per thread, not per stream: 300 streams on 2 worker threads share 2 MB, and
//! nothing awaits while a slot is borrowed.

use std::io::IoSliceMut;
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagram slots per `recvmmsg`.
const SLOTS: usize = 16;
/// One slot: the largest GRO aggregate (and the largest datagram).
const SLOT: usize = 64 * 1024;

thread_local! {
    static SLOTS_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SLOTS * SLOT]);
}

/// A UDP socket read in batches.
pub struct BatchSocket {
    sock: UdpSocket,
    state: UdpSocketState,
}

impl BatchSocket {
    pub fn new(sock: UdpSocket) -> std::io::Result<Self> {
        let state = UdpSocketState::new((&sock).into())?;
        Ok(BatchSocket { sock, state })
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    pub async fn readable(&self) -> std::io::Result<()> {
        self.sock.readable().await
    }

    /// Reads what is waiting, without blocking, up to `rounds` batches; calls `each` with every
    /// datagram and its source. Returns the datagrams read (0: nothing was waiting).
    pub fn drain(&self, rounds: usize, mut each: impl FnMut(&[u8], SocketAddr)) -> std::io::Result<usize> {
        SLOTS_BUF.with_borrow_mut(|buf| {
            let mut total = 0;
            for _ in 0..rounds {
                let mut meta = [RecvMeta::default(); SLOTS];
                let read = {
                    let mut slices: Vec<IoSliceMut<'_>> = buf.chunks_mut(SLOT).map(IoSliceMut::new).collect();
                    self.sock
                        .try_io(Interest::READABLE, || self.state.recv((&self.sock).into(), &mut slices, &mut meta))
                };
                let n = match read {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(total),
                    Err(e) => return Err(e),
                };
                for (m, slot) in meta.iter().zip(buf.chunks(SLOT)).take(n) {
                    let data = &slot[..m.len.min(SLOT)];
                    let stride = if m.stride == 0 { data.len().max(1) } else { m.stride };
                    for d in data.chunks(stride) {
                        total += 1;
                        each(d, m.addr);
                    }
                }
                if n < SLOTS {
                    break;
                }
            }
            Ok(total)
        })
    }
}
