//! Typed errors of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading volumes, rendering or compositing.
#[derive(Debug, thiserror::Error)]
pub enum VolrenError {
    /// A `XxYxZ` dimension string could not be parsed.
    #[error("invalid volume dimensions {input:?}: {reason}")]
    InvalidDims {
        /// The string as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An unknown voxel type name (expected `u8`, `u16` or `f32`).
    #[error("invalid voxel type {0:?}: expected u8, u16 or f32")]
    InvalidVoxelType(String),
    /// An unknown transfer-function preset name.
    #[error("unknown transfer function preset {0:?}: expected ct, fire or grayscale")]
    UnknownPreset(String),
    /// The raw file does not hold exactly `dims` voxels of the given type.
    #[error(
        "raw volume {path}: expected {expected} bytes for the given dims and type, found {actual}"
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Bytes implied by dims and voxel type.
        expected: u64,
        /// Bytes actually present (after decompression).
        actual: u64,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Serialized brick bytes do not match their header.
    #[error("brick bytes do not match header: {0}")]
    BadBrickBytes(String),
    /// Arguments that do not fit together (counts, sizes, orders).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// PNG encoding failed.
    #[error("png encoding failed: {0}")]
    Png(String),
}

/// Result alias of the crate.
pub type Result<T, E = VolrenError> = std::result::Result<T, E>;
