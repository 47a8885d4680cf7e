//! Wire protocol between [`crate::RemoteContext`] and [`crate::ContextServer`]: one request,
//! one reply, each a little-endian `u32` length followed by a bincode body of at most
//! [`MAX_FRAME`] bytes. Replies that grant a handle carry the memfd with `SCM_RIGHTS`.

use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{FastIoError, IoOp};
use crate::types::{ContextStats, HandleId, MapMode, MemId, Metadata};

/// Largest frame body accepted in either direction.
pub(crate) const MAX_FRAME: usize = 64 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Client → server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToServer {
    Create {
        size: u64,
    },
    Get {
        name: String,
    },
    Publish {
        handle: HandleId,
        name: String,
        meta: Metadata,
    },
    Map {
        handle: HandleId,
        mode: MapMode,
    },
    Unmap {
        handle: HandleId,
        mode: MapMode,
    },
    Release {
        handle: HandleId,
    },
    Free {
        handle: HandleId,
    },
    Stats,
    /// `create_reusing` and a write lock on the new handle, in one round trip.
    CreateMapped {
        size: u64,
    },
    /// Drops the handle's locks, publishes it under `name` and releases it, in one round trip.
    PublishRelease {
        handle: HandleId,
        name: String,
        meta: Metadata,
    },
}

/// Server → client.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromServer {
    /// A new handle; the memfd is attached.
    Granted {
        handle: HandleId,
        mem: MemId,
        size: u64,
        meta: Metadata,
    },
    Done,
    Stats(ContextStats),
    Failed(FastIoError),
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The peer closed the connection cleanly between frames.
    Closed,
    /// An I/O error.
    Io(std::io::Error),
    /// The bytes are not a valid frame.
    Malformed(&'static str),
}

pub(crate) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FastIoError> {
    let body = bincode::serde::encode_to_vec(msg, config())
        .map_err(|_| FastIoError::Protocol("message too large to encode".into()))?;
    let len =
        u32::try_from(body.len()).map_err(|_| FastIoError::Protocol("message too large".into()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    match bincode::serde::decode_from_slice(body, config()) {
        Ok((msg, used)) if used == body.len() => Ok(msg),
        Ok(_) => Err(FrameError::Malformed("trailing bytes after message")),
        Err(_) => Err(FrameError::Malformed("undecodable message")),
    }
}

fn body_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Malformed("frame exceeds size limit"));
    }
    Ok(len)
}

/// Sends one frame with an optional descriptor.
pub(crate) fn send<T: Serialize>(
    stream: &UnixStream,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> Result<(), FastIoError> {
    let frame = encode(msg)?;
    crate::sys::send_with_fd(stream, &frame, fd).map_err(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
            FastIoError::Disconnected
        }
        _ => FastIoError::io(IoOp::Send, &e),
    })
}

/// Reads one request on the server (descriptors a client attaches are discarded by the kernel).
///
/// `stream` must have a read timeout (the server sets its frame timeout once per connection):
/// the wait for a request to begin goes on across timeouts (a client may hold its connection
/// idle), but once its first byte has arrived the whole frame must arrive within
/// `frame_timeout`, or it is [`FrameError::Malformed`] (a client that sends part of a frame and
/// stalls). No system call is added to a request that arrives whole.
pub(crate) fn read_request(
    stream: &mut UnixStream,
    frame_timeout: Duration,
) -> Result<ToServer, FrameError> {
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let mut header = [0u8; 4];
    let mut got = 0;
    while got == 0 {
        match stream.read(&mut header) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => got = n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted || timed_out(&e) => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let deadline = Instant::now() + frame_timeout;
    let mut read_by_deadline = |buf: &mut [u8]| -> Result<(), FrameError> {
        let mut got = 0;
        while got < buf.len() {
            if Instant::now() >= deadline {
                return Err(FrameError::Malformed("request frame not completed in time"));
            }
            match stream.read(&mut buf[got..]) {
                Ok(0) => return Err(FrameError::Malformed("connection closed inside a frame")),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted || timed_out(&e) => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        Ok(())
    };
    read_by_deadline(&mut header[got..])?;
    let mut body = vec![0u8; body_len(header)?];
    read_by_deadline(&mut body)?;
    decode(&body)
}

fn recv_exact(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), FastIoError> {
    let mut got = 0;
    while got < buf.len() {
        let (n, more) =
            crate::sys::recv_with_fds(stream, &mut buf[got..]).map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionReset => FastIoError::Disconnected,
                std::io::ErrorKind::InvalidData => {
                    FastIoError::Protocol("truncated descriptor message".into())
                }
                _ => FastIoError::io(IoOp::Receive, &e),
            })?;
        fds.extend(more);
        if n == 0 {
            return Err(FastIoError::Disconnected);
        }
        got += n;
    }
    Ok(())
}

/// Reads one reply on the client, with any descriptors attached to it.
pub(crate) fn read_reply(stream: &UnixStream) -> Result<(FromServer, Vec<OwnedFd>), FastIoError> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    recv_exact(stream, &mut header, &mut fds)?;
    let len =
        body_len(header).map_err(|_| FastIoError::Protocol("reply exceeds size limit".into()))?;
    let mut body = vec![0u8; len];
    recv_exact(stream, &mut body, &mut fds)?;
    let msg = decode(&body).map_err(|_| FastIoError::Protocol("undecodable reply".into()))?;
    Ok((msg, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_garbage_frames_are_malformed() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut a, &(MAX_FRAME as u32 + 1).to_le_bytes()).unwrap();
        assert!(matches!(
            read_request(&mut b, Duration::from_secs(5)),
            Err(FrameError::Malformed(_))
        ));
        std::io::Write::write_all(&mut a, &[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(
            read_request(&mut b, Duration::from_secs(5)),
            Err(FrameError::Malformed(_))
        ));
        send(&a, &ToServer::Stats, None).unwrap();
        assert!(matches!(
            read_request(&mut b, Duration::from_secs(5)),
            Ok(ToServer::Stats)
        ));
        drop(a);
        assert!(matches!(
            read_request(&mut b, Duration::from_secs(5)),
            Err(FrameError::Closed)
        ));
    }
}
