//! Sort-last volume rendering for fragmenta: the rendering core, and the jobs and driver that
//! run it on a cluster (the `sort_last` example).
//!
//! Pipeline of one frame:
//!
//! 1. [`bricks`] splits the volume kd-style into `n` bricks (one per rank); each brick owns the
//!    voxel box `[lo, hi)` and stores a one-voxel ghost layer.
//! 2. [`load_brick`] produces only that brick's voxels from a [`VolumeSource`]
//!    (Marschner-Lobb or a raw file); [`BrickData::as_bytes`] / [`BrickData::from_bytes`]
//!    turn it into a flat buffer for shared memory.
//! 3. [`render_brick`] ray casts one brick into a [`PartialImage`] (its screen rectangle,
//!    premultiplied RGBA f32). Samples lie on a global grid `t_k = k * dt` along every ray
//!    and each sample is taken by exactly one brick, so compositing reproduces the
//!    single-host image (see [`RenderParams::early_termination`] for the one caveat).
//! 4. [`visibility_order`] orders bricks front to back by traversing their kd split tree;
//!    [`composite_direct`] or [`binary_swap_simulate`] (using [`binary_swap_plan`])
//!    composites the partials with [`over`].
//! 5. [`Image::to_png`] writes the result over an opaque background.
//!
//! On a cluster, [`distributed`] runs this pipeline as fragmenta jobs: [`SortLast`] loads one
//! brick per host into the host's Fast I/O store, renders each where it lives and composites
//! directly on the initiator or by binary swap between the hosts ([`Compositing`]).
//!
//! World space: the volume is a box whose longest side is 1, centred at the origin; voxel
//! `i` of an axis with `n` voxels sits at `-(n-1)/2 + i` voxel spacings.
//!
//! ```
//! use fragmenta_volren::*;
//! let source = VolumeSource::marschner_lobb(24).unwrap();
//! let camera = Camera::with_size(32, 32);
//! let tf = TransferFunction::preset("ct").unwrap();
//! let params = RenderParams::default();
//! let bs = bricks(source.dims(), 2);
//! let partials: Vec<PartialImage> = bs
//!     .iter()
//!     .map(|b| render_brick(&load_brick(&source, b).unwrap(), &camera, &tf, &params))
//!     .collect();
//! let order = visibility_order(&bs, &camera);
//! let front_to_back: Vec<&PartialImage> = order.iter().map(|&i| &partials[i]).collect();
//! let image = composite_direct(&front_to_back, 32, 32);
//! assert!(image.pixels.iter().any(|p| p[3] > 0.0));
//! ```

mod brick;
mod camera;
mod composite;
pub mod distributed;
mod error;
mod image;
mod render;
mod swap;
mod tf;
mod volume;

pub use brick::{bricks, load_brick, load_brick_into, Brick, BrickData, BrickHeader, Split};
pub use camera::{world_box, Camera};
pub use composite::{composite_direct, direct_bytes_received, visibility_order};
pub use distributed::{
    Compositing, Frame, FreePublications, JobRunner, LoadBricks, LoadReport, RenderBricks,
    SortLast, SortLastError, SwapStep, MAX_IMAGE_SIDE,
};
pub use error::{Result, VolrenError};
pub use image::{over, Image, PartialImage, Rect, Rgba};
pub use render::{render_brick, render_voxels, RenderParams};
pub use swap::{
    binary_swap_plan, binary_swap_schedule, binary_swap_simulate, split_region, Exchange, Fold,
    Plan, Schedule, Step, Transfer,
};
pub use tf::{ControlPoint, TransferFunction, LUT_SIZE};
pub use volume::{
    marschner_lobb, parse_dims, read_raw_bytes, validate_dims, VolumeSource, VoxelType, ML_A,
    ML_DEFAULT_SIZE, ML_FM,
};
