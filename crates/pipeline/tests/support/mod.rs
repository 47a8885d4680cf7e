//! Shared by the pipeline's test binaries: the payload (the real NIfTI when present, else a
//! generated one), an independent NIfTI decoder, and the npz check.
#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::path::{Path, PathBuf};

/// The real NIfTI of the reference's passthrough (91 x 109 x 91, big-endian uint8).
pub const REAL_NIFTI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/nifti/avg152T1_LR_nifti.nii.gz"
);

/// The payload to run the passthrough on: the real file when it exists (dims 91x109x91),
/// otherwise a generated one written into `dir` (printing why).
pub fn payload(dir: &Path) -> (PathBuf, [usize; 3]) {
    let real = PathBuf::from(REAL_NIFTI);
    if real.exists() {
        return (real, [91, 109, 91]);
    }
    println!(
        "real NIfTI {} is absent: running on a generated 23x17x11 volume instead",
        real.display()
    );
    let path = dir.join("generated.nii.gz");
    fragmenta_pipeline::passthrough::write_test_nifti(&path, [23, 17, 11]).unwrap();
    (path, [23, 17, 11])
}

/// Decodes a NIfTI-1 file without the `nifti` crate: dims and voxels as f32, x fastest.
/// Supports uint8, int16, int32, float32 and float64 in either byte order, unscaled (slope 0)
/// or with slope 1 and intercept 0.
pub fn decode_nifti(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let raw = std::fs::read(path).unwrap();
    let mut bytes = Vec::new();
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut bytes)
            .unwrap();
    } else {
        bytes = raw;
    }
    let be = i32::from_be_bytes(bytes[0..4].try_into().unwrap()) == 348;
    let i16_at = |o: usize| {
        let b: [u8; 2] = bytes[o..o + 2].try_into().unwrap();
        if be {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    };
    let f32_at = |o: usize| {
        let b: [u8; 4] = bytes[o..o + 4].try_into().unwrap();
        if be {
            f32::from_be_bytes(b)
        } else {
            f32::from_le_bytes(b)
        }
    };
    let rank = i16_at(40) as usize;
    let dims: Vec<usize> = (0..rank).map(|i| i16_at(42 + 2 * i) as usize).collect();
    let datatype = i16_at(70);
    let offset = f32_at(108) as usize;
    let (slope, inter) = (f32_at(112), f32_at(116));
    assert!(
        slope == 0.0 || (slope == 1.0 && inter == 0.0),
        "scaled NIfTI"
    );
    let n: usize = dims.iter().product();
    let data = &bytes[offset..];
    let voxel = |i: usize| -> f32 {
        macro_rules! at {
            ($t:ty, $w:expr) => {{
                let b: [u8; $w] = data[i * $w..i * $w + $w].try_into().unwrap();
                (if be {
                    <$t>::from_be_bytes(b)
                } else {
                    <$t>::from_le_bytes(b)
                }) as f32
            }};
        }
        match datatype {
            2 => data[i] as f32,
            4 => at!(i16, 2),
            8 => at!(i32, 4),
            16 => at!(f32, 4),
            64 => at!(f64, 8),
            t => panic!("datatype {t}"),
        }
    };
    (dims, (0..n).map(voxel).collect())
}

/// Checks that `npz` holds `segmentation` of shape (1, X, Y, Z) equal, bit for bit, to the
/// voxels of the NIfTI `nifti` (npz in C order, NIfTI x fastest).
pub fn assert_npz_matches(npz: &Path, nifti: &Path, dims: [usize; 3]) {
    let (ndims, voxels) = decode_nifti(nifti);
    assert_eq!(ndims, dims);
    let file = std::fs::File::open(npz).unwrap();
    let mut reader = ndarray_npy::NpzReader::new(file).unwrap();
    let array: ndarray::ArrayD<f32> = reader.by_name("segmentation").unwrap();
    assert_eq!(array.shape(), &[1, dims[0], dims[1], dims[2]]);
    let [nx, ny, nz] = dims;
    for x in 0..nx {
        for y in 0..ny {
            for z in 0..nz {
                let v = voxels[x + nx * (y + ny * z)];
                assert_eq!(
                    array[[0, x, y, z]].to_bits(),
                    v.to_bits(),
                    "voxel {x},{y},{z}"
                );
            }
        }
    }
}

/// The context holds no allocation and no publication.
pub fn assert_empty(stats: fragmenta_fastio::ContextStats) {
    assert_eq!(
        (
            stats.allocations,
            stats.publications,
            stats.handles,
            stats.used
        ),
        (0, 0, 0, 0),
        "{stats:?}"
    );
}
