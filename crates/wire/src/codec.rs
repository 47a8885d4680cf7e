//! Encoding of messages: serde with bincode 2's standard configuration (little endian, variable
//! length integers) under an explicit size limit.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The message's `Serialize` implementation failed or uses something bincode cannot encode
    /// (for example a sequence of unknown length).
    #[error("cannot encode message: {reason}")]
    Serialize {
        /// bincode's message.
        reason: String,
    },
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than the limit, or decoding would allocate more than the limit.
    #[error("message exceeds the size limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The input ends in the middle of the message.
    #[error("message is truncated")]
    Truncated,
    /// The message was decoded but `extra` bytes follow it.
    #[error("{extra} trailing bytes after the message")]
    TrailingBytes {
        /// The number of bytes left over.
        extra: usize,
    },
    /// The bytes are not a valid encoding of the expected message type.
    #[error("malformed message: {reason}")]
    Malformed {
        /// bincode's message.
        reason: String,
    },
}

/// The most bytes bincode may count while decoding one message, whatever the caller's limit:
/// bincode's [`with_limit`](bincode::config::Configuration::with_limit) counts the in-memory size of
/// every decoded primitive and the length of every decoded string and byte array, and fails the
/// decode past this many (4 GiB).
///
/// Memory is bounded by the *input* instead. The caller's `limit` bounds the input length; every
/// decoded element consumes input bytes; serde preallocates at most 1 MiB per sequence on the
/// strength of a length prefix; and since bincode allocates a string or byte array of the length
/// its prefix claims before reading it, [`decode`] lowers bincode's count limit to
/// [`DECODED_BYTES_PER_INPUT_BYTE`] times the input's length (rounded up to a power of 4, at
/// least 4 KiB): a lying length prefix inside a message allocates at most that, never what it
/// claims.
pub const MAX_DECODED_BYTES: usize = 1 << 32;

/// The most bytes bincode counts per input byte for a valid message: a primitive counts its
/// in-memory size (at most 16, for a `u128` that may take one byte), a string or byte array its
/// length, which is also the input it takes.
pub const DECODED_BYTES_PER_INPUT_BYTE: usize = 16;

fn encode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes `M` from `bytes` with bincode counting at most `DECODED_BYTES_PER_INPUT_BYTE` ×
/// `bytes.len()` decoded bytes (rounded up to a power of 4 between 4 KiB and
/// [`MAX_DECODED_BYTES`]).
fn decode_bounded<M: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(M, usize), bincode::error::DecodeError> {
    let need = bytes.len().saturating_mul(DECODED_BYTES_PER_INPUT_BYTE);
    macro_rules! first_fitting {
        ($($limit:expr),*) => {
            $(
                if need <= $limit {
                    let config = bincode::config::standard().with_limit::<{ $limit }>();
                    return bincode::serde::decode_from_slice::<M, _>(bytes, config);
                }
            )*
        };
    }
    first_fitting!(
        1 << 12,
        1 << 14,
        1 << 16,
        1 << 18,
        1 << 20,
        1 << 22,
        1 << 24,
        1 << 26,
        1 << 28,
        1 << 30
    );
    let config = bincode::config::standard().with_limit::<MAX_DECODED_BYTES>();
    bincode::serde::decode_from_slice::<M, _>(bytes, config)
}

/// Encodes `msg` with bincode 2's standard configuration.
pub fn encode<M: Serialize + ?Sized>(msg: &M) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(msg, encode_config()).map_err(|e| EncodeError::Serialize {
        reason: e.to_string(),
    })
}

/// Decodes exactly one `M` from `bytes`, which must be at most `limit` bytes long
/// ([`DecodeError::TooLarge`]) and contain nothing after the message
/// ([`DecodeError::TrailingBytes`]).
pub fn decode<M: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<M, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge { limit });
    }
    let (msg, used) = decode_bounded::<M>(bytes).map_err(|e| map_decode_error(e, limit))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(msg)
}

fn map_decode_error(e: bincode::error::DecodeError, limit: usize) -> DecodeError {
    use bincode::error::DecodeError as B;
    match e {
        B::UnexpectedEnd { .. } => DecodeError::Truncated,
        B::LimitExceeded => DecodeError::TooLarge {
            limit: limit.min(MAX_DECODED_BYTES),
        },
        other => DecodeError::Malformed {
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Msg {
        a: u64,
        name: String,
        data: Vec<u8>,
    }

    fn msg() -> Msg {
        Msg {
            a: 300,
            name: "héllo".into(),
            data: vec![1, 2, 3],
        }
    }

    #[test]
    fn roundtrip() {
        let bytes = encode(&msg()).unwrap();
        assert_eq!(decode::<Msg>(&bytes, 1024), Ok(msg()));
    }

    #[test]
    fn input_over_limit_is_rejected() {
        let bytes = encode(&msg()).unwrap();
        assert_eq!(
            decode::<Msg>(&bytes, bytes.len() - 1),
            Err(DecodeError::TooLarge {
                limit: bytes.len() - 1
            })
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&msg()).unwrap();
        bytes.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode::<Msg>(&bytes, 1024),
            Err(DecodeError::TrailingBytes { extra: 2 })
        );
    }

    #[test]
    fn truncated_is_rejected() {
        let bytes = encode(&msg()).unwrap();
        assert_eq!(
            decode::<Msg>(&bytes[..bytes.len() - 1], 1024),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn lying_length_prefix_allocates_nothing_large() {
        // A Vec<u8> claiming u64::MAX / 2 elements, followed by nothing.
        let mut bytes = vec![0xFF];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(decode::<Vec<u8>>(&bytes, 1024).is_err());
        // A string claiming 3 GiB.
        let mut bytes = vec![0xFC];
        bytes.extend_from_slice(&(3u32 << 30).to_le_bytes());
        assert!(decode::<String>(&bytes, 1024).is_err());
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let bytes = [2u8, 0xFF, 0xFE];
        assert!(matches!(
            decode::<String>(&bytes, 16),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
