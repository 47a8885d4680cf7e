//! The operators of Clara's FastIO passthrough pipeline (`pipelines/passthrough.yaml`):
//!
//! - `clara/nifti-to-fastio` reads the payload NIfTI (x fastest, as NIfTI stores it) into the
//!   dynamic output `segmentation` (float32 `[1, -1, -1, -1]`, C order: element
//!   `[0, x, y, z]`) and writes its dims into the fixed output `segmentation_shape` (int32 `[4]`);
//! - `clara/fastio-to-npz` checks that the two agree and writes `segmentation.npz` (an
//!   uncompressed NumPy archive holding `segmentation`, shape `(1, X, Y, Z)`) straight from the
//!   shared memory;
//! - `clara/compare-input-to-npz` writes `comparison.txt` holding `true` only when the npz
//!   equals the NIfTI voxel for voxel (bit for bit), `false` otherwise.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use fragmenta_fastio::ElementType;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use ndarray_npy::{NpzReader, NpzWriter};
use nifti::{IntoNdArray, NiftiObject, ReaderOptions};

use crate::operator::{
    ExecuteContext, Operator, OperatorRegistry, OperatorResult, PortSpec, Ports,
};

/// The passthrough pipeline's definition, as shipped (`pipelines/passthrough.yaml`).
pub const PASSTHROUGH_YAML: &str = include_str!("../pipelines/passthrough.yaml");

/// The name of the npz file `fastio-to-npz` writes, and of the array in it.
pub const NPZ_FILE: &str = "segmentation.npz";
/// The name of the verdict file `compare-input-to-npz` writes.
pub const VERDICT_FILE: &str = "comparison.txt";

/// A registry with the three passthrough operators under their container images.
pub fn registry() -> OperatorRegistry {
    OperatorRegistry::new()
        .register("clara/nifti-to-fastio", || NiftiToFastio)
        .register("clara/fastio-to-npz", || FastioToNpz)
        .register("clara/compare-input-to-npz", || CompareInputToNpz)
}

/// The NIfTI file of a payload: the file itself, or the first `.nii`/`.nii.gz` (by name) in a
/// folder.
pub fn find_nifti(payload: &Path) -> Result<PathBuf, String> {
    if payload.is_file() {
        return Ok(payload.to_owned());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(payload)
        .map_err(|e| format!("cannot list payload {}: {e}", payload.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            n.ends_with(".nii") || n.ends_with(".nii.gz")
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .next()
        .ok_or_else(|| format!("no .nii or .nii.gz file in {}", payload.display()))
}

/// Reads a 3-D NIfTI volume as float32 (scaled by the header's slope and intercept), indexed
/// `[x, y, z]`.
pub fn read_nifti(path: &Path) -> Result<ArrayD<f32>, String> {
    let obj = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| format!("cannot read NIfTI {}: {e}", path.display()))?;
    let volume = obj
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| format!("cannot convert NIfTI {} to float32: {e}", path.display()))?;
    if volume.ndim() != 3 {
        return Err(format!(
            "NIfTI {} has {} dimensions, the pipeline takes 3",
            path.display(),
            volume.ndim()
        ));
    }
    Ok(volume)
}

/// Writes a float32 NIfTI volume of dims `[x, y, z]` with deterministic, distinct values (a
/// payload for tests and the example when no real file is given); gzip when `path` ends in
/// `.gz`.
pub fn write_test_nifti(path: &Path, dims: [usize; 3]) -> Result<(), String> {
    let data = ArrayD::from_shape_fn(IxDyn(&dims), |i| {
        let (x, y, z) = (i[0] as f32, i[1] as f32, i[2] as f32);
        x * 0.5 + y * 1000.25 - z * 77.125 + (x * y) * 1e-3
    });
    let gz = path.extension().is_some_and(|e| e == "gz");
    nifti::writer::WriterOptions::new(path)
        .compress(gz)
        .write_nifti(&data)
        .map_err(|e| format!("cannot write NIfTI {}: {e}", path.display()))
}

/// `clara/nifti-to-fastio`.
#[derive(Debug, Default)]
pub struct NiftiToFastio;

impl Operator for NiftiToFastio {
    fn ports(&self) -> Ports {
        Ports::new()
            .input(PortSpec::payload("/input", "nifti"))
            .output(PortSpec::array(
                "segmentation",
                ElementType::F32,
                &[1, -1, -1, -1],
            ))
            .output(PortSpec::array(
                "segmentation_shape",
                ElementType::I32,
                &[4],
            ))
    }

    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let file = find_nifti(ctx.input_path("/input")?)?;
        let volume = read_nifti(&file)?;
        let dims: Vec<u64> = std::iter::once(1)
            .chain(volume.shape().iter().map(|&d| d as u64))
            .collect();
        let seg = ctx.output("segmentation")?;
        seg.allocate(&dims)?;
        let mut w = seg.write()?;
        // Logical order of the [x, y, z] view = C order of [1, x, y, z].
        for (dst, src) in w.as_mut_slice::<f32>()?.iter_mut().zip(volume.iter()) {
            *dst = *src;
        }
        drop(w);
        let shape = ctx.output("segmentation_shape")?;
        let mut w = shape.write()?;
        for (dst, &d) in w.as_mut_slice::<i32>()?.iter_mut().zip(&dims) {
            *dst = i32::try_from(d)?;
        }
        Ok(())
    }
}

/// `clara/fastio-to-npz`.
#[derive(Debug, Default)]
pub struct FastioToNpz;

impl Operator for FastioToNpz {
    fn ports(&self) -> Ports {
        Ports::new()
            .input(PortSpec::array(
                "segmentation",
                ElementType::F32,
                &[1, -1, -1, -1],
            ))
            .input(PortSpec::array(
                "segmentation_shape",
                ElementType::I32,
                &[4],
            ))
            .output(PortSpec::stream("numpy_npz", "/output", "npz"))
    }

    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let seg = ctx.input("segmentation")?;
        let shape = ctx.input("segmentation_shape")?;
        let declared: Vec<u64> = shape
            .read()?
            .as_slice::<i32>()?
            .iter()
            .map(|&d| u64::try_from(d))
            .collect::<Result<_, _>>()?;
        if declared != seg.dims() {
            return Err(format!(
                "segmentation has dims {:?} but segmentation_shape says {declared:?}",
                seg.dims()
            )
            .into());
        }
        let dims: Vec<usize> = seg.dims().iter().map(|&d| d as usize).collect();
        let r = seg.read()?;
        let view = ArrayViewD::from_shape(IxDyn(&dims), r.as_slice::<f32>()?)?;
        let path = ctx.output_path("numpy_npz")?.join(NPZ_FILE);
        let mut npz = NpzWriter::new(BufWriter::new(File::create(&path)?));
        npz.add_array("segmentation", &view)?;
        npz.finish()?;
        Ok(())
    }
}

/// `clara/compare-input-to-npz`.
#[derive(Debug, Default)]
pub struct CompareInputToNpz;

/// Whether the npz in `npz_dir` holds exactly the volume of the NIfTI file `nifti`, as
/// `[1, x, y, z]`, bit for bit.
pub fn npz_equals_nifti(npz_dir: &Path, nifti: &Path) -> Result<bool, String> {
    let volume = read_nifti(nifti)?;
    let npz_path = npz_dir.join(NPZ_FILE);
    let file =
        File::open(&npz_path).map_err(|e| format!("cannot open {}: {e}", npz_path.display()))?;
    let mut npz = NpzReader::new(file).map_err(|e| format!("{}: {e}", npz_path.display()))?;
    let array: ArrayD<f32> = npz
        .by_name("segmentation")
        .map_err(|e| format!("{}: {e}", npz_path.display()))?;
    let expected: Vec<usize> = std::iter::once(1)
        .chain(volume.shape().iter().copied())
        .collect();
    Ok(array.shape() == expected.as_slice()
        && array
            .iter()
            .zip(volume.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits()))
}

impl Operator for CompareInputToNpz {
    fn ports(&self) -> Ports {
        Ports::new()
            .input(PortSpec::payload("/input", "nifti"))
            .input(PortSpec::stream("numpy_npz", "/npz", "npz"))
            .output(PortSpec::stream("truth-val", "/output", "txt"))
    }

    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let nifti = find_nifti(ctx.input_path("/input")?)?;
        let equal = npz_equals_nifti(ctx.input_path("/npz")?, &nifti)?;
        std::fs::write(
            ctx.output_path("truth-val")?.join(VERDICT_FILE),
            if equal { "true" } else { "false" },
        )?;
        Ok(())
    }
}
