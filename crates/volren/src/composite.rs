//! Visibility order and direct (gather-to-initiator) compositing.

use crate::brick::Brick;
use crate::camera::{Camera, VolumeSpace};
use crate::image::{Image, PartialImage};

/// Front-to-back order of `bricks` (indices into the slice) for `camera`, exact for bricks
/// from one [`crate::bricks`] call: the kd split tree stored in each brick's `path` is
/// traversed from the root, visiting at every split plane first the side the eye is on.
/// (An eye exactly on a plane may take either side; both are correct.)
pub fn visibility_order(bricks: &[Brick], camera: &Camera) -> Vec<usize> {
    let Some(first) = bricks.first() else {
        return Vec::new();
    };
    let eye = VolumeSpace::new(first.volume_dims).to_voxel(camera.eye());
    let mut out = Vec::with_capacity(bricks.len());
    traverse(bricks, (0..bricks.len()).collect(), 0, eye, &mut out);
    out
}

fn traverse(bricks: &[Brick], idx: Vec<usize>, depth: usize, eye: [f32; 3], out: &mut Vec<usize>) {
    if idx.len() <= 1 {
        out.extend(idx);
        return;
    }
    // Bricks whose path ends here (only possible for inconsistent inputs) go first.
    let (ended, rest): (Vec<usize>, Vec<usize>) = idx
        .into_iter()
        .partition(|&i| bricks[i].path.len() <= depth);
    out.extend(ended);
    let Some(&r0) = rest.first() else {
        return;
    };
    let s = bricks[r0].path[depth];
    let (high, low): (Vec<usize>, Vec<usize>) =
        rest.into_iter().partition(|&i| bricks[i].path[depth].high);
    let (near, far) = if eye[usize::from(s.axis)] >= s.pos as f32 {
        (high, low)
    } else {
        (low, high)
    };
    traverse(bricks, near, depth + 1, eye, out);
    traverse(bricks, far, depth + 1, eye, out);
}

/// Composites partial images given front to back into a full-frame premultiplied image
/// (`front over back`, starting from transparent).
pub fn composite_direct(partials_in_order: &[&PartialImage], width: u32, height: u32) -> Image {
    let mut img = Image::transparent(width, height);
    for p in partials_in_order {
        img.blend_behind(p);
    }
    img
}

/// Bytes received per rank by direct compositing, where `partials[r]` is rank `r`'s partial
/// image and rank `initiator` receives every other rank's partial (16 bytes per pixel of its
/// rectangle; its own partial stays local).
pub fn direct_bytes_received(partials: &[PartialImage], initiator: usize) -> Vec<u64> {
    let mut bytes = vec![0u64; partials.len()];
    if let Some(b) = bytes.get_mut(initiator) {
        *b = partials
            .iter()
            .enumerate()
            .filter(|&(r, _)| r != initiator)
            .map(|(_, p)| p.wire_bytes())
            .sum();
    }
    bytes
}
