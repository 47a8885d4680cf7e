//! Ray casting of one brick into a partial image.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::brick::{Brick, BrickData};
use crate::camera::{Camera, Frame, VolumeSpace, V3};
use crate::image::{PartialImage, Rect, Rgba};
use crate::tf::{TransferFunction, LUT_SIZE};

/// Ray-marching parameters. Both must be the same on every brick of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RenderParams {
    /// Distance between samples along a ray, in voxels (of the volume's common spacing).
    pub step_voxels: f32,
    /// Early ray termination: a ray stops once its accumulated alpha exceeds this.
    /// Values ≥ 1 disable it.
    ///
    /// Each brick only knows its own accumulated alpha, so a brick behind a partly opaque one
    /// may march further than the single-host render does: the composited image differs from
    /// the single-host image by at most `1 - early_termination` per (premultiplied) channel,
    /// and only by float rounding when termination is disabled. The default, `1 - 1/512`,
    /// keeps that bound below half an 8-bit level, so distributed and single-host PNGs agree
    /// to ±1; the classic 0.99 would allow differences of up to 2.55 levels.
    pub early_termination: f32,
    /// Headlight Blinn-Phong shading from the gradient of the trilinear interpolant (computed
    /// from the 8 voxels of the sample's cell only, so it is identical on every brick).
    pub shading: bool,
}

impl Default for RenderParams {
    /// Half-voxel steps, termination at alpha > 1 - 1/512, shading on.
    fn default() -> Self {
        RenderParams {
            step_voxels: 0.5,
            early_termination: 1.0 - 1.0 / 512.0,
            shading: true,
        }
    }
}

/// Screen-space bounding rectangle of a world-space box, clamped to the image; the whole
/// image when a corner is not in front of the eye. Conservative by one pixel.
fn screen_rect(frame: &Frame, lo: V3, hi: V3) -> Rect {
    let full = Rect::full(frame.width, frame.height);
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for c in 0..8 {
        let p = [0, 1, 2].map(|a| if c >> a & 1 == 0 { lo[a] } else { hi[a] });
        let Some((x, y)) = frame.project(p) else {
            return full;
        };
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let clamp = |v: f32, max: u32| v.clamp(0.0, max as f32) as u32;
    Rect {
        x0: clamp(x0.floor() - 1.0, frame.width),
        y0: clamp(y0.floor() - 1.0, frame.height),
        x1: clamp(x1.ceil() + 2.0, frame.width),
        y1: clamp(y1.ceil() + 2.0, frame.height),
    }
    .intersect(&full)
}

/// Parametric interval `[t0, t1]` of the ray inside the box, if any.
fn slab(o: V3, d: V3, lo: V3, hi: V3) -> Option<(f32, f32)> {
    let (mut t0, mut t1) = (f32::MIN, f32::MAX);
    for a in 0..3 {
        if d[a].abs() < 1e-12 {
            if o[a] < lo[a] || o[a] > hi[a] {
                return None;
            }
            continue;
        }
        let inv = 1.0 / d[a];
        let (ta, tb) = ((lo[a] - o[a]) * inv, (hi[a] - o[a]) * inv);
        t0 = t0.max(ta.min(tb));
        t1 = t1.min(ta.max(tb));
    }
    (t1 >= t0 && t1 >= 0.0).then_some((t0.max(0.0), t1))
}

/// Renders one brick: premultiplied RGBA over the brick's screen-space bounding rectangle,
/// rows in parallel (rayon).
///
/// Samples lie on a global grid: sample `k` of a ray is at distance `t_k = k * dt` from the
/// eye (`dt` = `step_voxels` voxels), the same `k` grid for every brick, and a brick takes
/// exactly the samples whose voxel-space position lies in its half-open region
/// [`crate::Brick::sample_region`]. Every sample of a frame is therefore taken by exactly one
/// brick, with bit-identical position and value (the ghost layer supplies the trilinear
/// neighbours across brick faces), and compositing the partial images in visibility order
/// gives the single-host image (one brick covering the volume, same code).
pub fn render_brick(
    data: &BrickData,
    camera: &Camera,
    tf: &TransferFunction,
    params: &RenderParams,
) -> PartialImage {
    render_voxels(data.brick(), &data.voxels, camera, tf, params)
}

/// [`render_brick`] on borrowed voxels: `voxels` holds `brick.ghost_voxel_count()` values, x
/// fastest, covering `brick.ghost_lo .. brick.ghost_hi` (the layout of [`BrickData::voxels`]),
/// for instance a mapped shared-memory publication, read in place. A slice of the wrong length
/// renders nothing (an empty partial image).
pub fn render_voxels(
    brick: &Brick,
    voxels: &[f32],
    camera: &Camera,
    tf: &TransferFunction,
    params: &RenderParams,
) -> PartialImage {
    let vs = VolumeSpace::new(brick.volume_dims);
    let frame = camera.frame();
    let (slo, shi) = brick.sample_region();
    let empty_region = (0..3).any(|a| shi[a] <= slo[a]);
    let rect = if empty_region || voxels.len() != brick.ghost_voxel_count() {
        Rect::default()
    } else {
        // Slightly enlarged box for the screen rectangle and slab test; ownership is decided
        // exactly per sample.
        let pad = 0.01;
        let wlo = vs.to_world(slo.map(|v| v - pad));
        let whi = vs.to_world(shi.map(|v| v + pad));
        screen_rect(&frame, wlo, whi)
    };
    let mut pixels = vec![[0.0f32; 4]; rect.area()];
    if rect.is_empty() {
        return PartialImage {
            width: camera.width,
            height: camera.height,
            rect,
            pixels,
        };
    }
    let step = params.step_voxels.max(1e-3);
    let lut = tf.corrected(step);
    let dt = step * vs.spacing;
    let wlo = vs.to_world(slo.map(|v| v - 0.01));
    let whi = vs.to_world(shi.map(|v| v + 0.01));
    let gd = brick.ghost_dims().map(|d| d as usize);
    let glo = brick.ghost_lo.map(|d| d as usize);
    let term = params.early_termination;
    let ctx = RayCtx {
        voxels,
        vs: &vs,
        lut: &lut,
        slo,
        shi,
        gd,
        glo,
        shading: params.shading,
    };

    pixels
        .par_chunks_mut(rect.width() as usize)
        .enumerate()
        .for_each(|(row, out)| {
            let y = rect.y0 + row as u32;
            for (col, px) in out.iter_mut().enumerate() {
                let x = rect.x0 + col as u32;
                let dir = frame.ray_dir(x, y);
                let Some((t0, t1)) = slab(frame.eye, dir, wlo, whi) else {
                    continue;
                };
                let k0 = ((t0 / dt).floor() - 1.0).max(0.0) as u64;
                let k1 = (t1 / dt).ceil() as u64 + 1;
                *px = ctx.march(frame.eye, dir, dt, k0, k1, term);
            }
        });

    PartialImage {
        width: camera.width,
        height: camera.height,
        rect,
        pixels,
    }
}

/// Headlight shading of a premultiplied colour: two-sided diffuse plus a white specular
/// highlight, faded out where the gradient is too weak to define a surface.
#[inline]
fn shade(c: Rgba, g: V3, dir: V3) -> Rgba {
    let len = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt();
    if len < 1e-5 {
        return c;
    }
    let ndl = ((g[0] * dir[0] + g[1] * dir[1] + g[2] * dir[2]) / len).abs();
    let weight = (len * 50.0).min(1.0);
    let lit = 0.3 + 0.7 * ndl;
    let spec = 0.35 * ndl.powi(24) * c[3] * weight;
    let f = 1.0 - weight + weight * lit;
    [
        (c[0] * f + spec).min(c[3]),
        (c[1] * f + spec).min(c[3]),
        (c[2] * f + spec).min(c[3]),
        c[3],
    ]
}

struct RayCtx<'a> {
    voxels: &'a [f32],
    vs: &'a VolumeSpace,
    lut: &'a [[f32; 4]],
    slo: V3,
    shi: V3,
    gd: [usize; 3],
    glo: [usize; 3],
    shading: bool,
}

impl RayCtx<'_> {
    #[inline]
    fn march(&self, eye: V3, dir: V3, dt: f32, k0: u64, k1: u64, term: f32) -> Rgba {
        let mut acc = [0.0f32; 4];
        for k in k0..=k1 {
            let t = k as f32 * dt;
            let w = [
                eye[0] + dir[0] * t,
                eye[1] + dir[1] * t,
                eye[2] + dir[2] * t,
            ];
            let p = self.vs.to_voxel(w);
            if !(p[0] >= self.slo[0]
                && p[0] < self.shi[0]
                && p[1] >= self.slo[1]
                && p[1] < self.shi[1]
                && p[2] >= self.slo[2]
                && p[2] < self.shi[2])
            {
                continue;
            }
            let (v, g) = self.sample(p);
            let mut c = self.classify(v);
            if self.shading && c[3] > 0.0 {
                c = shade(c, g, dir);
            }
            let tr = 1.0 - acc[3];
            acc = [
                acc[0] + tr * c[0],
                acc[1] + tr * c[1],
                acc[2] + tr * c[2],
                acc[3] + tr * c[3],
            ];
            if acc[3] > term {
                break;
            }
        }
        acc
    }

    /// Trilinear sample at voxel position `p` (global coordinates, inside the owned region),
    /// and the gradient of the trilinear interpolant there (per voxel).
    #[inline]
    fn sample(&self, p: V3) -> (f32, V3) {
        let f = p.map(f32::floor);
        let fr = [p[0] - f[0], p[1] - f[1], p[2] - f[2]];
        // Global index minus the ghost origin: integer arithmetic, identical for every brick.
        let i = [0, 1, 2].map(|a| (f[a] as usize - self.glo[a]).min(self.gd[a] - 2));
        let (sx, sy) = (1, self.gd[0]);
        let sz = self.gd[0] * self.gd[1];
        let base = i[2] * sz + i[1] * sy + i[0];
        let v = self.voxels;
        let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
        let (v000, v100) = (v[base], v[base + sx]);
        let (v010, v110) = (v[base + sy], v[base + sy + sx]);
        let (v001, v101) = (v[base + sz], v[base + sz + sx]);
        let (v011, v111) = (v[base + sz + sy], v[base + sz + sy + sx]);
        let c00 = lerp(v000, v100, fr[0]);
        let c10 = lerp(v010, v110, fr[0]);
        let c01 = lerp(v001, v101, fr[0]);
        let c11 = lerp(v011, v111, fr[0]);
        let c0 = lerp(c00, c10, fr[1]);
        let c1 = lerp(c01, c11, fr[1]);
        let value = lerp(c0, c1, fr[2]);
        if !self.shading {
            return (value, [0.0; 3]);
        }
        let gx = lerp(
            lerp(v100 - v000, v110 - v010, fr[1]),
            lerp(v101 - v001, v111 - v011, fr[1]),
            fr[2],
        );
        let gy = lerp(c10 - c00, c11 - c01, fr[2]);
        (value, [gx, gy, c1 - c0])
    }

    /// Premultiplied, step-corrected colour of a value (linear interpolation in the LUT).
    #[inline]
    fn classify(&self, v: f32) -> Rgba {
        let s = v.clamp(0.0, 1.0) * (LUT_SIZE - 1) as f32;
        let i = (s as usize).min(LUT_SIZE - 2);
        let t = s - i as f32;
        let (a, b) = (self.lut[i], self.lut[i + 1]);
        [0, 1, 2, 3].map(|c| a[c] + (b[c] - a[c]) * t)
    }
}
