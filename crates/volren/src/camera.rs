//! Orbit camera and the volume's placement in world space.

use serde::{Deserialize, Serialize};

pub(crate) type V3 = [f32; 3];

#[inline]
pub(crate) fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
#[inline]
pub(crate) fn dot(a: V3, b: V3) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
#[inline]
fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
#[inline]
fn normalize(a: V3) -> V3 {
    let l = dot(a, a).sqrt();
    [a[0] / l, a[1] / l, a[2] / l]
}

/// A perspective camera orbiting the volume centre (the world origin), z up.
///
/// The eye sits at `distance * (cos(el) cos(az), cos(el) sin(az), sin(el))` in world space,
/// where the volume is a box whose longest side is 1, centred at the origin.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Camera {
    /// Azimuth around the z axis, degrees (0 = looking from +x).
    pub azimuth: f32,
    /// Elevation above the xy plane, degrees (90 = looking down from +z).
    pub elevation: f32,
    /// Distance of the eye from the origin, world units.
    pub distance: f32,
    /// Vertical field of view, degrees.
    pub fov_y: f32,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
}

impl Default for Camera {
    /// The README picture's view: 512x512, azimuth 35°, elevation 45°, distance 3.5, fov 30°.
    fn default() -> Self {
        Camera {
            azimuth: 35.0,
            elevation: 45.0,
            distance: 3.5,
            fov_y: 30.0,
            width: 512,
            height: 512,
        }
    }
}

/// Derived per-frame camera quantities shared by all bricks (computed identically everywhere,
/// so every brick sees bit-identical rays).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub(crate) eye: V3,
    pub(crate) fwd: V3,
    pub(crate) right: V3,
    pub(crate) up: V3,
    pub(crate) tan_x: f32,
    pub(crate) tan_y: f32,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

impl Camera {
    /// A camera with the default angles and the given image size.
    pub fn with_size(width: u32, height: u32) -> Self {
        Camera {
            width,
            height,
            ..Camera::default()
        }
    }

    /// The same camera at the distance where the bounding sphere of a `dims` volume just
    /// fills the narrower of the two fields of view (plus 2%), whatever the angles.
    pub fn fitted(self, dims: [u32; 3]) -> Self {
        let (lo, hi) = world_box(dims);
        let d = sub(hi, lo);
        let radius = 0.5 * dot(d, d).sqrt();
        let half_y = (self.fov_y.to_radians() * 0.5).clamp(1e-3, 1.5);
        let aspect = self.width.max(1) as f32 / self.height.max(1) as f32;
        let half = half_y.min((half_y.tan() * aspect).atan());
        Camera {
            distance: radius / half.sin() * 1.02,
            ..self
        }
    }

    /// Eye position in world space.
    pub fn eye(&self) -> [f32; 3] {
        let (az, el) = (self.azimuth.to_radians(), self.elevation.to_radians());
        [
            self.distance * el.cos() * az.cos(),
            self.distance * el.cos() * az.sin(),
            self.distance * el.sin(),
        ]
    }

    pub(crate) fn frame(&self) -> Frame {
        let eye = self.eye();
        let fwd = normalize([-eye[0], -eye[1], -eye[2]]);
        let world_up = if fwd[2].abs() > 0.999 {
            [0.0, 1.0, 0.0]
        } else {
            [0.0, 0.0, 1.0]
        };
        let right = normalize(cross(fwd, world_up));
        let up = cross(right, fwd);
        let tan_y = (self.fov_y.to_radians() * 0.5).tan();
        let aspect = self.width.max(1) as f32 / self.height.max(1) as f32;
        Frame {
            eye,
            fwd,
            right,
            up,
            tan_x: tan_y * aspect,
            tan_y,
            width: self.width,
            height: self.height,
        }
    }
}

impl Frame {
    /// Normalised world-space direction of the ray through the centre of pixel `(x, y)`
    /// (y down).
    #[inline]
    pub(crate) fn ray_dir(&self, x: u32, y: u32) -> V3 {
        let u = ((x as f32 + 0.5) / self.width as f32 * 2.0 - 1.0) * self.tan_x;
        let v = (1.0 - (y as f32 + 0.5) / self.height as f32 * 2.0) * self.tan_y;
        normalize([
            self.fwd[0] + u * self.right[0] + v * self.up[0],
            self.fwd[1] + u * self.right[1] + v * self.up[1],
            self.fwd[2] + u * self.right[2] + v * self.up[2],
        ])
    }

    /// Continuous pixel coordinates (pixel centres at integers) of a world point, or `None`
    /// when it is not in front of the eye.
    pub(crate) fn project(&self, p: V3) -> Option<(f32, f32)> {
        let d = sub(p, self.eye);
        let z = dot(d, self.fwd);
        if z <= 1e-6 {
            return None;
        }
        let u = dot(d, self.right) / z / self.tan_x;
        let v = dot(d, self.up) / z / self.tan_y;
        Some((
            (u + 1.0) * 0.5 * self.width as f32 - 0.5,
            (1.0 - v) * 0.5 * self.height as f32 - 0.5,
        ))
    }
}

/// Mapping between world space and voxel coordinates (voxel `i` centred at coordinate `i`).
/// The voxel-coordinate box `[0, n-1]` maps onto a world box whose longest side is 1,
/// centred at the origin, with aspect ratio `(n-1)` per axis.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VolumeSpace {
    /// World coordinate of voxel coordinate 0.
    pub(crate) origin: V3,
    /// World units per voxel (the same on every axis).
    pub(crate) spacing: f32,
    /// Voxels per world unit.
    pub(crate) inv_spacing: f32,
}

impl VolumeSpace {
    pub(crate) fn new(dims: [u32; 3]) -> Self {
        let longest = dims
            .iter()
            .map(|&d| d.saturating_sub(1).max(1))
            .max()
            .unwrap_or(1);
        let spacing = 1.0 / longest as f32;
        let origin = [0, 1, 2].map(|a| -0.5 * dims[a].saturating_sub(1) as f32 * spacing);
        VolumeSpace {
            origin,
            spacing,
            inv_spacing: longest as f32,
        }
    }

    #[inline]
    pub(crate) fn to_voxel(self, w: V3) -> V3 {
        [0, 1, 2].map(|a| (w[a] - self.origin[a]) * self.inv_spacing)
    }

    #[inline]
    pub(crate) fn to_world(self, v: V3) -> V3 {
        [0, 1, 2].map(|a| self.origin[a] + v[a] * self.spacing)
    }
}

/// World-space extent of a volume of the given size: a box with longest side 1, centred at
/// the origin. Returns `(min corner, max corner)`.
pub fn world_box(dims: [u32; 3]) -> ([f32; 3], [f32; 3]) {
    let vs = VolumeSpace::new(dims);
    let hi = vs.to_world(dims.map(|d| d.saturating_sub(1) as f32));
    (vs.origin, hi)
}
