//! kd-style brick decomposition, ghost layers and brick loading.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, VolrenError};
use crate::volume::{marschner_lobb, raw_value, read_raw_bytes, validate_dims, VolumeSource};

/// One split plane on the path from the kd-tree root to a brick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Axis of the plane (0 = x, 1 = y, 2 = z).
    pub axis: u8,
    /// Position of the plane in voxel coordinates: voxels `< pos` are on the low side.
    pub pos: u32,
    /// Whether the brick lies on the high (`>= pos`) side of the plane.
    pub high: bool,
}

/// A brick: the voxel box `[lo, hi)` it owns plus a one-voxel ghost layer clamped at the
/// volume border, and the kd-tree path that produced it (used for exact visibility order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Brick {
    /// Index of the brick in the `bricks()` result (also its rank in the distributed renderer).
    pub id: usize,
    /// Grid size of the whole volume.
    pub volume_dims: [u32; 3],
    /// First owned voxel (inclusive).
    pub lo: [u32; 3],
    /// End of the owned voxels (exclusive).
    pub hi: [u32; 3],
    /// First voxel stored, ghost layer included: `max(lo - 1, 0)`.
    pub ghost_lo: [u32; 3],
    /// End of the voxels stored, ghost layer included: `min(hi + 1, volume_dims)`.
    pub ghost_hi: [u32; 3],
    /// Split planes from the kd-tree root down to this brick.
    pub path: Vec<Split>,
}

impl Brick {
    /// Size of the stored (ghost-inclusive) box.
    pub fn ghost_dims(&self) -> [u32; 3] {
        [0, 1, 2].map(|a| self.ghost_hi[a] - self.ghost_lo[a])
    }

    /// Number of stored voxels.
    pub fn ghost_voxel_count(&self) -> usize {
        self.ghost_dims().iter().map(|&d| d as usize).product()
    }

    /// The continuous region (voxel coordinates, half-open) in which this brick takes ray
    /// samples: `[lo, min(hi, n-1))` per axis. Sampling the whole volume covers `[0, n-1)`.
    pub fn sample_region(&self) -> ([f32; 3], [f32; 3]) {
        let lo = [0, 1, 2].map(|a| self.lo[a] as f32);
        let hi = [0, 1, 2].map(|a| self.hi[a].min(self.volume_dims[a] - 1) as f32);
        (lo, hi)
    }
}

/// Splits a volume into `n` bricks kd-style: each node is cut across its longest axis, at a
/// position proportional to how its brick count is shared between the two halves
/// (`floor(c/2)` low, the rest high), so any `n ≥ 1` works. Bricks are numbered in
/// depth-first order (low side first). `n` below 1 counts as 1. A node one voxel long on
/// its longest axis is not split further, so a tiny volume may give fewer than `n` bricks
/// (never more); with at least `n` voxels along every axis there are exactly `n`.
pub fn bricks(dims: [u32; 3], n: usize) -> Vec<Brick> {
    let mut out = Vec::with_capacity(n.max(1));
    split(dims, [0; 3], dims, n.max(1), &mut Vec::new(), &mut out);
    out
}

fn split(
    dims: [u32; 3],
    lo: [u32; 3],
    hi: [u32; 3],
    count: usize,
    path: &mut Vec<Split>,
    out: &mut Vec<Brick>,
) {
    let ext = [0, 1, 2].map(|a| hi[a] - lo[a]);
    // Longest axis, ties broken towards x.
    let axis = (0..3).fold(0, |b, a| if ext[a] > ext[b] { a } else { b });
    if count <= 1 || ext[axis] < 2 {
        out.push(Brick {
            id: out.len(),
            volume_dims: dims,
            lo,
            hi,
            ghost_lo: [0, 1, 2].map(|a| lo[a].saturating_sub(1)),
            ghost_hi: [0, 1, 2].map(|a| (hi[a] + 1).min(dims[a])),
            path: path.clone(),
        });
        return;
    }
    let c_lo = count / 2;
    let len = u64::from(ext[axis]);
    let cut = ((len * c_lo as u64 + count as u64 / 2) / count as u64).clamp(1, len - 1);
    let pos = lo[axis] + cut as u32;
    let (mut hi_l, mut lo_h) = (hi, lo);
    hi_l[axis] = pos;
    lo_h[axis] = pos;
    let mut s = Split {
        axis: axis as u8,
        pos,
        high: false,
    };
    path.push(s);
    split(dims, lo, hi_l, c_lo, path, out);
    path.pop();
    s.high = true;
    path.push(s);
    split(dims, lo_h, hi, count - c_lo, path, out);
    path.pop();
}

/// The fixed-size description of a [`BrickData`]'s voxel array: enough to reinterpret a flat
/// byte buffer (for example a shared-memory publication) as brick voxels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrickHeader {
    /// The brick the voxels belong to.
    pub brick: Brick,
}

/// The voxels of one brick, ghost layer included: `f32` in `[0,1]`, x fastest, covering
/// `brick.ghost_lo .. brick.ghost_hi`.
#[derive(Clone, Debug, PartialEq)]
pub struct BrickData {
    /// Which brick, and so the layout of `voxels`.
    pub header: BrickHeader,
    /// `ghost_voxel_count()` values, x fastest.
    pub voxels: Vec<f32>,
}

impl BrickData {
    /// The brick these voxels belong to.
    pub fn brick(&self) -> &Brick {
        &self.header.brick
    }

    /// The voxel array as native-endian bytes (4 per voxel), zero-copy.
    pub fn as_bytes(&self) -> &[u8] {
        let len = std::mem::size_of_val(self.voxels.as_slice());
        // SAFETY: `f32` has no padding and every bit pattern is a valid `u8`; `u8` has
        // alignment 1; the pointer and length cover exactly the initialised `voxels` buffer,
        // which lives as long as the returned borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.voxels.as_ptr().cast::<u8>(), len) }
    }

    /// Rebuilds brick data from a header and the bytes written by [`BrickData::as_bytes`]
    /// (native-endian, any alignment). The length must match the header exactly.
    pub fn from_bytes(header: BrickHeader, bytes: &[u8]) -> Result<Self> {
        let want = header.brick.ghost_voxel_count() * 4;
        if bytes.len() != want {
            return Err(VolrenError::BadBrickBytes(format!(
                "brick {} needs {want} bytes, got {}",
                header.brick.id,
                bytes.len()
            )));
        }
        let voxels = bytes
            .chunks_exact(4)
            .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(BrickData { header, voxels })
    }
}

/// Produces the voxels of one brick (ghost layer included), and only those: the
/// Marschner-Lobb source evaluates the function at those voxels, a raw source reads its file
/// and copies the sub-box. Fails when `brick` does not belong to a volume of `source`'s size
/// or when the file cannot be read or has the wrong size.
pub fn load_brick(source: &VolumeSource, brick: &Brick) -> Result<BrickData> {
    check_brick(source.dims(), brick)?;
    let mut voxels = vec![0.0; brick.ghost_voxel_count()];
    load_brick_into(source, brick, &mut voxels)?;
    Ok(BrickData {
        header: BrickHeader {
            brick: brick.clone(),
        },
        voxels,
    })
}

/// Checks that `brick` is a brick of a `dims` volume (so its sizes cannot overflow).
fn check_brick(dims: [u32; 3], brick: &Brick) -> Result<()> {
    validate_dims(dims)?;
    let inside = (0..3).all(|a| {
        brick.ghost_lo[a] <= brick.lo[a]
            && brick.lo[a] < brick.hi[a]
            && brick.hi[a] <= brick.ghost_hi[a]
            && brick.ghost_hi[a] <= dims[a]
    });
    if brick.volume_dims != dims || !inside {
        return Err(VolrenError::InvalidArgument(format!(
            "brick {} was made for a {:?} volume, source is {:?}",
            brick.id, brick.volume_dims, dims
        )));
    }
    Ok(())
}

/// [`load_brick`] into a caller's buffer (for instance a mapped shared-memory allocation), so
/// the voxels are written once, where they will be read. `out` must hold exactly
/// `brick.ghost_voxel_count()` values; they are written x fastest. Slices along z are filled
/// in parallel (rayon).
pub fn load_brick_into(source: &VolumeSource, brick: &Brick, out: &mut [f32]) -> Result<()> {
    let dims = source.dims();
    check_brick(dims, brick)?;
    if out.len() != brick.ghost_voxel_count() {
        return Err(VolrenError::InvalidArgument(format!(
            "brick {} holds {} voxels, the buffer {}",
            brick.id,
            brick.ghost_voxel_count(),
            out.len()
        )));
    }
    let gd = brick.ghost_dims().map(|d| d as usize);
    let g0 = brick.ghost_lo.map(|d| d as usize);
    let slice_len = gd[0] * gd[1];
    if slice_len == 0 {
        return Ok(());
    }
    match source {
        VolumeSource::MarschnerLobb { .. } => {
            let coord = |i: usize, a: usize| -1.0 + 2.0 * i as f64 / f64::from(dims[a] - 1);
            out.par_chunks_mut(slice_len)
                .enumerate()
                .for_each(|(dk, slice)| {
                    let z = coord(g0[2] + dk, 2);
                    for (dj, row) in slice.chunks_exact_mut(gd[0]).enumerate() {
                        let y = coord(g0[1] + dj, 1);
                        for (di, v) in row.iter_mut().enumerate() {
                            *v = marschner_lobb(coord(g0[0] + di, 0), y, z) as f32;
                        }
                    }
                });
        }
        VolumeSource::Raw { path, voxel, .. } => {
            let bytes = read_raw_bytes(path, dims, *voxel)?;
            let (nx, ny) = (dims[0] as usize, dims[1] as usize);
            out.par_chunks_mut(slice_len)
                .enumerate()
                .for_each(|(dk, slice)| {
                    let k = g0[2] + dk;
                    for (dj, row) in slice.chunks_exact_mut(gd[0]).enumerate() {
                        let start = (k * ny + g0[1] + dj) * nx + g0[0];
                        for (di, v) in row.iter_mut().enumerate() {
                            *v = raw_value(&bytes, *voxel, start + di);
                        }
                    }
                });
        }
    }
    Ok(())
}
