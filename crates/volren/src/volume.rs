//! Volume sources: the analytic Marschner-Lobb test signal and raw files.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, VolrenError};

/// Marschner-Lobb parameter `f_M`.
pub const ML_FM: f64 = 6.0;
/// Marschner-Lobb parameter `a`.
pub const ML_A: f64 = 0.25;
/// Default edge length of the sampled Marschner-Lobb volume.
pub const ML_DEFAULT_SIZE: u32 = 256;

/// The Marschner-Lobb function on `[-1,1]^3`, with values in `[0,1]`.
///
/// `rho(x,y,z) = (1 - sin(pi z/2) + a(1 + rho_r(sqrt(x^2+y^2)))) / (2(1+a))`,
/// `rho_r(r) = cos(2 pi f_M cos(pi r/2))`, `f_M = 6`, `a = 0.25`.
pub fn marschner_lobb(x: f64, y: f64, z: f64) -> f64 {
    use std::f64::consts::PI;
    let r = (x * x + y * y).sqrt();
    let rho_r = (2.0 * PI * ML_FM * (PI * r / 2.0).cos()).cos();
    (1.0 - (PI * z / 2.0).sin() + ML_A * (1.0 + rho_r)) / (2.0 * (1.0 + ML_A))
}

/// Element type of a raw volume file (little-endian, x fastest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoxelType {
    /// Unsigned 8 bit, normalised by 255.
    U8,
    /// Unsigned 16 bit little-endian, normalised by 65535.
    U16,
    /// 32 bit float little-endian, clamped to `[0,1]`.
    F32,
}

impl VoxelType {
    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            VoxelType::U8 => 1,
            VoxelType::U16 => 2,
            VoxelType::F32 => 4,
        }
    }

    fn normalise(self, b: &[u8]) -> f32 {
        match self {
            VoxelType::U8 => f32::from(b[0]) / 255.0,
            VoxelType::U16 => f32::from(u16::from_le_bytes([b[0], b[1]])) / 65535.0,
            VoxelType::F32 => {
                let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if v.is_nan() {
                    0.0
                } else {
                    v.clamp(0.0, 1.0)
                }
            }
        }
    }
}

impl std::str::FromStr for VoxelType {
    type Err = VolrenError;
    /// Accepts `u8`/`uint8`, `u16`/`uint16`, `f32`/`float32`/`float` (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "u8" | "uint8" => Ok(VoxelType::U8),
            "u16" | "uint16" => Ok(VoxelType::U16),
            "f32" | "float32" | "float" => Ok(VoxelType::F32),
            _ => Err(VolrenError::InvalidVoxelType(s.to_string())),
        }
    }
}

/// Parses a `XxYxZ` dimension string such as `256x256x128`. Every axis must be ≥ 2 voxels
/// (trilinear sampling needs two samples per axis) and the total must fit in memory indices.
pub fn parse_dims(s: &str) -> Result<[u32; 3]> {
    let err = |reason: &str| VolrenError::InvalidDims {
        input: s.to_string(),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = s.trim().split(['x', 'X']).collect();
    if parts.len() != 3 {
        return Err(err(
            "expected three sizes separated by 'x', like 256x256x128",
        ));
    }
    let mut dims = [0u32; 3];
    for (d, p) in dims.iter_mut().zip(&parts) {
        *d = p
            .trim()
            .parse::<u32>()
            .map_err(|e| err(&format!("{p:?} is not a size: {e}")))?;
    }
    validate_dims(dims).map_err(|_| err("every axis needs at least 2 voxels"))?;
    Ok(dims)
}

/// Checks that every axis has at least 2 voxels and the voxel count fits in `usize`.
pub fn validate_dims(dims: [u32; 3]) -> Result<()> {
    if dims.iter().any(|&d| d < 2) {
        return Err(VolrenError::InvalidDims {
            input: format!("{}x{}x{}", dims[0], dims[1], dims[2]),
            reason: "every axis needs at least 2 voxels".into(),
        });
    }
    Ok(())
}

/// Where a volume's voxels come from. Bricks are loaded from a source with
/// [`crate::load_brick`], which touches only that brick's voxels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum VolumeSource {
    /// The Marschner-Lobb function sampled on a `dims` grid over `[-1,1]^3`:
    /// voxel `(i,j,k)` sits at `x = -1 + 2i/(nx-1)` and likewise for y and z.
    MarschnerLobb {
        /// Grid size.
        dims: [u32; 3],
    },
    /// A raw file, x fastest, optionally gzip-compressed.
    Raw {
        /// File path.
        path: PathBuf,
        /// Grid size.
        dims: [u32; 3],
        /// Element type.
        voxel: VoxelType,
    },
}

impl VolumeSource {
    /// Marschner-Lobb sampled on an `n^3` grid (`n` ≥ 2).
    pub fn marschner_lobb(n: u32) -> Result<Self> {
        let dims = [n; 3];
        validate_dims(dims)?;
        Ok(VolumeSource::MarschnerLobb { dims })
    }

    /// A raw file source from command-line style strings (`--volume FILE --dims XxYxZ --type T`).
    /// Only the strings are checked here; the file is read by [`crate::load_brick`].
    pub fn raw(path: impl Into<PathBuf>, dims: &str, voxel: &str) -> Result<Self> {
        Ok(VolumeSource::Raw {
            path: path.into(),
            dims: parse_dims(dims)?,
            voxel: voxel.parse()?,
        })
    }

    /// Grid size in voxels.
    pub fn dims(&self) -> [u32; 3] {
        match self {
            VolumeSource::MarschnerLobb { dims } | VolumeSource::Raw { dims, .. } => *dims,
        }
    }
}

/// Reads a whole raw file (decompressing gzip when the name ends in `.gz` or the file starts
/// with the gzip magic bytes) and checks its size against `dims` and `voxel`.
pub fn read_raw_bytes(path: &Path, dims: [u32; 3], voxel: VoxelType) -> Result<Vec<u8>> {
    let io = |source| VolrenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let gz_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"));
    let gz_magic = raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b;
    let bytes = if gz_name || gz_magic {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(io)?;
        out
    } else {
        raw
    };
    let expected = dims.iter().map(|&d| u64::from(d)).product::<u64>() * voxel.size() as u64;
    if bytes.len() as u64 != expected {
        return Err(VolrenError::SizeMismatch {
            path: path.to_path_buf(),
            expected,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Normalises voxel `index` of a raw byte buffer to `[0,1]`.
pub(crate) fn raw_value(bytes: &[u8], voxel: VoxelType, index: usize) -> f32 {
    let s = voxel.size();
    voxel.normalise(&bytes[index * s..index * s + s])
}
