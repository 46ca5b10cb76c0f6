//! Socket helpers shared by the client and upstream sides.

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What one read produced.
pub enum Read {
    /// `n` bytes were appended.
    Data(usize),
    /// The peer closed its side.
    Eof,
    /// Nothing to read now.
    WouldBlock,
}

/// Reads once into `buf` (growing it to at least `min_spare` free bytes first).
///
/// A short read means the socket is drained, so readiness is cleared right away: the next wait
/// goes to epoll instead of costing one more `read` that would only say EAGAIN. With the
/// edge-triggered epoll under tokio, data arriving after the read raises a new event, so
/// nothing is missed. This saves one syscall per batch on each side of the proxy.
pub fn read_some(stream: &TcpStream, buf: &mut BytesMut, min_spare: usize) -> io::Result<Read> {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let spare = buf.capacity() - buf.len();
    let mut got = 0;
    let result = stream.try_io(Interest::READABLE, || {
        let n = crate::os::recv(stream.as_raw_fd(), buf)?;
        got = n;
        if n > 0 && n < spare {
            // Drained: report WouldBlock so that tokio clears the readiness.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    if got > 0 {
        crate::busy_poll::note_read();
    }
    match result {
        Ok(0) => Ok(Read::Eof),
        Ok(n) => Ok(Read::Data(n)),
        Err(_) if got > 0 => Ok(Read::Data(got)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Read::WouldBlock),
        Err(e) => Err(e),
    }
}

/// Writes once, as `TcpStream::try_write` does (readiness cleared on `WouldBlock`).
pub fn try_send(stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
    stream.try_io(Interest::WRITABLE, || crate::os::send(stream.as_raw_fd(), data))
}
