//! 1D RGBA transfer functions.

use serde::{Deserialize, Serialize};

use crate::error::{Result, VolrenError};

/// Number of entries of a transfer-function lookup table.
pub const LUT_SIZE: usize = 256;

/// A 1D RGBA lookup table over normalised values `[0,1]`: straight (not premultiplied) colour,
/// and opacity per **one voxel** of ray length. The renderer corrects opacity for its step
/// size (`1 - (1 - a)^(step in voxels)`) and premultiplies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferFunction {
    /// `LUT_SIZE` RGBA entries; entry `i` is the value `i / (LUT_SIZE - 1)`.
    pub lut: Vec<[f32; 4]>,
}

/// A control point `(value, [r, g, b, a])` of a piecewise-linear transfer function.
pub type ControlPoint = (f32, [f32; 4]);

impl TransferFunction {
    /// Names accepted by [`TransferFunction::preset`].
    pub const PRESETS: [&'static str; 3] = ["ct", "fire", "grayscale"];

    /// Builds a LUT by linear interpolation between control points (sorted by value; values
    /// outside the first/last point take that point's colour).
    pub fn from_points(points: &[ControlPoint]) -> Self {
        let lut = (0..LUT_SIZE)
            .map(|i| {
                let v = i as f32 / (LUT_SIZE - 1) as f32;
                let Some(first) = points.first() else {
                    return [0.0; 4];
                };
                if v <= first.0 {
                    return first.1;
                }
                for w in points.windows(2) {
                    let ((v0, c0), (v1, c1)) = (w[0], w[1]);
                    if v <= v1 {
                        let t = if v1 > v0 { (v - v0) / (v1 - v0) } else { 1.0 };
                        return [0, 1, 2, 3].map(|c| c0[c] + t * (c1[c] - c0[c]));
                    }
                }
                points[points.len() - 1].1
            })
            .collect();
        TransferFunction { lut }
    }

    /// A named preset: `ct` (transparent air, faint reddish soft tissue, opaque ivory bone),
    /// `fire` (black-red-orange-yellow-white, opacity rising with value) or `grayscale`
    /// (grey level and opacity proportional to value).
    pub fn preset(name: &str) -> Result<Self> {
        let pts: &[ControlPoint] = match name.trim().to_ascii_lowercase().as_str() {
            "ct" => &[
                (0.00, [0.0, 0.0, 0.0, 0.0]),
                (0.20, [0.55, 0.12, 0.08, 0.0]),
                (0.30, [0.85, 0.30, 0.22, 0.006]),
                (0.45, [0.95, 0.55, 0.42, 0.010]),
                (0.54, [0.98, 0.80, 0.66, 0.012]),
                (0.60, [1.00, 0.93, 0.82, 0.60]),
                (0.80, [1.00, 0.97, 0.90, 0.85]),
                (1.00, [1.00, 1.00, 1.00, 0.95]),
            ],
            "fire" => &[
                (0.00, [0.0, 0.0, 0.0, 0.0]),
                (0.20, [0.25, 0.0, 0.0, 0.0]),
                (0.35, [0.75, 0.08, 0.0, 0.02]),
                (0.50, [1.00, 0.35, 0.0, 0.08]),
                (0.65, [1.00, 0.65, 0.05, 0.25]),
                (0.80, [1.00, 0.90, 0.30, 0.55]),
                (1.00, [1.00, 1.00, 0.95, 0.85]),
            ],
            "grayscale" | "gray" | "grey" => {
                &[(0.0, [0.0, 0.0, 0.0, 0.0]), (1.0, [1.0, 1.0, 1.0, 0.25])]
            }
            _ => return Err(VolrenError::UnknownPreset(name.to_string())),
        };
        Ok(Self::from_points(pts))
    }

    /// The LUT for a ray step of `step_voxels` voxels: opacity corrected to
    /// `1 - (1 - a)^step_voxels`, colour premultiplied by the corrected opacity.
    pub fn corrected(&self, step_voxels: f32) -> Vec<[f32; 4]> {
        self.lut
            .iter()
            .map(|&[r, g, b, a]| {
                let a = 1.0 - (1.0 - a.clamp(0.0, 1.0)).powf(step_voxels);
                [r * a, g * a, b * a, a]
            })
            .collect()
    }
}
