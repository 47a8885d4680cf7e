//! Framing: a header message plus a raw payload on a byte stream.
//!
//! A frame on the wire is:
//!
//! ```text
//! u32 LE  H   length of the header
//! u64 LE  P   length of the payload
//! H bytes     the header message, bincode-encoded (see [`crate::codec`])
//! P bytes     the payload, raw (not bincode-encoded)
//! ```
//!
//! The payload is raw so that large results travel without an extra copy: [`write_frame`] writes
//! the caller's slice as is, and a reader can call [`read_header`] and then read the payload
//! straight into its own buffer with [`read_payload_into`]. Both lengths are checked against
//! [`FrameLimits`] before anything is allocated.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{self, DecodeError, EncodeError};

/// Bytes before the header: the two length fields.
pub const PREFIX_LEN: usize = 12;

/// Default [`FrameLimits::max_header`]: 1 MiB.
pub const DEFAULT_MAX_HEADER: u32 = 1 << 20;
/// Default [`FrameLimits::max_payload`]: 256 MiB.
pub const DEFAULT_MAX_PAYLOAD: u64 = 256 << 20;

/// The largest frame a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// The largest header in bytes (default [`DEFAULT_MAX_HEADER`], 1 MiB).
    pub max_header: u32,
    /// The largest payload in bytes (default [`DEFAULT_MAX_PAYLOAD`], 256 MiB).
    pub max_payload: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_header: DEFAULT_MAX_HEADER,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why a frame could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream failed (other than ending early).
    #[error("stream error ({kind:?}): {reason}")]
    Io {
        /// The I/O error kind.
        kind: std::io::ErrorKind,
        /// The I/O error's message.
        reason: String,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The header length exceeds [`FrameLimits::max_header`] (nothing was allocated for it).
    #[error("frame header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// The length the frame claims (or, when writing, the encoded length).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The payload length exceeds [`FrameLimits::max_payload`] (nothing was allocated for it).
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// The length the frame claims.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The header bytes are not a valid encoding of the expected message.
    #[error("malformed frame header: {source}")]
    Malformed {
        /// Why decoding failed.
        #[source]
        source: DecodeError,
    },
    /// The header message could not be encoded (when writing).
    #[error("cannot encode frame header: {0}")]
    Encode(#[from] EncodeError),
    /// The destination buffer of [`read_payload_into`] is not the payload's length.
    #[error("payload buffer of {buffer} bytes does not match the payload length {payload}")]
    PayloadBufferMismatch {
        /// The buffer's length.
        buffer: usize,
        /// The payload length from the header.
        payload: u64,
    },
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io {
                kind: e.kind(),
                reason: e.to_string(),
            }
        }
    }
}

/// Writes one frame: `msg` as the header and `payload` as is.
///
/// The payload is not copied: it is handed to the writer with `write_all` after the header. The
/// writer is flushed at the end. Fails with [`FrameError::HeaderTooLarge`] when the encoded header
/// does not fit the `u32` length field.
pub async fn write_frame<W, M>(w: &mut W, msg: &M, payload: &[u8]) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
    M: Serialize + ?Sized,
{
    write_frame_header(w, msg, payload.len() as u64).await?;
    if !payload.is_empty() {
        w.write_all(payload).await?;
    }
    w.flush().await?;
    Ok(())
}

/// Writes the prefix and header of a frame whose `payload_len` payload bytes the caller writes
/// next, straight from wherever they are (for payloads that are not one contiguous slice).
pub async fn write_frame_header<W, M>(
    w: &mut W,
    msg: &M,
    payload_len: u64,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
    M: Serialize + ?Sized,
{
    let header = codec::encode(msg)?;
    let header_len = u32::try_from(header.len()).map_err(|_| FrameError::HeaderTooLarge {
        len: header.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    let mut head = Vec::with_capacity(PREFIX_LEN + header.len());
    head.extend_from_slice(&header_len.to_le_bytes());
    head.extend_from_slice(&payload_len.to_le_bytes());
    head.extend_from_slice(&header);
    w.write_all(&head).await?;
    Ok(())
}

/// Reads the prefix and the header of the next frame and returns the header message and the
/// payload length; the caller then reads exactly that many payload bytes (for example with
/// [`read_payload_into`]) before the next frame.
///
/// Returns `Ok(None)` when the stream ends cleanly before the first byte of a frame. Lengths over
/// `limits` fail before anything is allocated; a stream ending inside the prefix or header is
/// [`FrameError::Truncated`]; a header that does not decode as `M` (including trailing bytes) is
/// [`FrameError::Malformed`].
pub async fn read_header<R, M>(
    r: &mut R,
    limits: &FrameLimits,
) -> Result<Option<(M, u64)>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    M: DeserializeOwned,
{
    let mut prefix = [0u8; PREFIX_LEN];
    let mut filled = 0;
    while filled < PREFIX_LEN {
        let n = r.read(&mut prefix[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        filled += n;
    }
    let (h, p) = prefix.split_at(4);
    let header_len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let payload_len = u64::from_le_bytes([p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]]);
    if header_len > limits.max_header {
        return Err(FrameError::HeaderTooLarge {
            len: u64::from(header_len),
            max: u64::from(limits.max_header),
        });
    }
    if payload_len > limits.max_payload {
        return Err(FrameError::PayloadTooLarge {
            len: payload_len,
            max: limits.max_payload,
        });
    }
    // header_len <= max_header (a u32), so this allocation is bounded by the limits.
    let header_len = header_len as usize;
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).await?;
    let msg =
        codec::decode(&header, header_len).map_err(|source| FrameError::Malformed { source })?;
    Ok(Some((msg, payload_len)))
}

/// Reads a payload of exactly `buf.len()` bytes into `buf` (a stream ending early is
/// [`FrameError::Truncated`]).
pub async fn read_payload_into<R>(r: &mut R, buf: &mut [u8]) -> Result<(), FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    r.read_exact(buf).await?;
    Ok(())
}

/// Reads one whole frame: [`read_header`] and then the payload into a new vector.
///
/// The payload vector grows as bytes arrive rather than being sized from the length prefix, so a
/// frame that claims a large payload and then ends allocates only what was actually received.
pub async fn read_frame<R, M>(
    r: &mut R,
    limits: &FrameLimits,
) -> Result<Option<(M, Vec<u8>)>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    M: DeserializeOwned,
{
    let Some((msg, payload_len)) = read_header::<R, M>(r, limits).await? else {
        return Ok(None);
    };
    const INITIAL: u64 = 64 << 10;
    let mut payload = Vec::with_capacity(payload_len.min(INITIAL) as usize);
    let read = (&mut *r)
        .take(payload_len)
        .read_to_end(&mut payload)
        .await?;
    if (read as u64) != payload_len {
        return Err(FrameError::Truncated);
    }
    Ok(Some((msg, payload)))
}
