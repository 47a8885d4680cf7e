//! Behavioural tests of the volume rendering core.
#![allow(clippy::needless_range_loop)] // axis loops index several parallel arrays

use std::io::Write;
use std::path::Path;

use fragmenta_volren::*;
use proptest::prelude::*;

const ENGINE: &str = "/work/shared/data/volumes/engine_256x256x128_uint8.raw.gz";

fn cam(az: f32, el: f32, w: u32, h: u32) -> Camera {
    Camera {
        azimuth: az,
        elevation: el,
        distance: 2.4,
        fov_y: 35.0,
        width: w,
        height: h,
    }
}

/// Renders every brick of `bricks(dims, n)`: (bricks, partials indexed by brick id).
fn render_bricks(
    src: &VolumeSource,
    n: usize,
    c: &Camera,
    tf: &TransferFunction,
    params: &RenderParams,
) -> (Vec<Brick>, Vec<PartialImage>) {
    let bs = bricks(src.dims(), n);
    let parts = bs
        .iter()
        .map(|b| render_brick(&load_brick(src, b).unwrap(), c, tf, params))
        .collect();
    (bs, parts)
}

fn direct(bs: &[Brick], parts: &[PartialImage], c: &Camera) -> Image {
    let order = visibility_order(bs, c);
    let refs: Vec<&PartialImage> = order.iter().map(|&i| &parts[i]).collect();
    composite_direct(&refs, c.width, c.height)
}

/// (fraction of pixels within 1/255 on every channel, max abs channel difference).
fn compare(a: &Image, b: &Image) -> (f64, f32) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let mut ok = 0usize;
    let mut max = 0f32;
    for (p, q) in a.pixels.iter().zip(&b.pixels) {
        let d = (0..4).map(|c| (p[c] - q[c]).abs()).fold(0f32, f32::max);
        max = max.max(d);
        if d <= 1.0 / 255.0 {
            ok += 1;
        }
    }
    (ok as f64 / a.pixels.len() as f64, max)
}

fn coverage(img: &Image) -> f64 {
    img.pixels.iter().filter(|p| p[3] > 0.01).count() as f64 / img.pixels.len() as f64
}

/// Checks direct and binary-swap compositing of 1..=4 bricks against the single-host image.
fn check_distributed(src: &VolumeSource, c: &Camera, params: &RenderParams, counts: &[usize]) {
    let tf = TransferFunction::preset("ct").unwrap();
    let (b1, p1) = render_bricks(src, 1, c, &tf, params);
    let single = direct(&b1, &p1, c);
    assert!(coverage(&single) > 0.05, "camera {c:?} sees nothing");
    for &n in counts {
        let (bs, parts) = render_bricks(src, n, c, &tf, params);
        let d = direct(&bs, &parts, c);
        let order = visibility_order(&bs, c);
        let (s, _) = binary_swap_simulate(&parts, &order, c.width, c.height).unwrap();
        for (name, img) in [("direct", &d), ("binary-swap", &s)] {
            let (frac, max) = compare(&single, img);
            assert!(
                frac >= 0.999,
                "{name}, {n} bricks, camera {c:?}: only {frac} of pixels within 1/255 (max {max})"
            );
            // The documented bound: at most 1 - early_termination per channel.
            let bound = (1.0 - params.early_termination).max(0.0) + 1e-4;
            assert!(max <= bound, "{name}, {n} bricks: max diff {max} > {bound}");
        }
    }
}

#[test]
fn over_is_exact_on_binary_values() {
    assert_eq!(
        over([0.0, 0.25, 0.5, 0.5], [0.5, 0.5, 0.5, 1.0]),
        [0.25, 0.5, 0.75, 1.0]
    );
    assert_eq!(over([0.0; 4], [0.1, 0.2, 0.3, 0.4]), [0.1, 0.2, 0.3, 0.4]);
    assert_eq!(over([0.1, 0.2, 0.3, 1.0], [0.9; 4]), [0.1, 0.2, 0.3, 1.0]);
}

#[test]
fn distributed_equals_single_host_for_1_to_4_bricks() {
    let src = VolumeSource::marschner_lobb(32).unwrap();
    let params = RenderParams::default();
    for (az, el) in [(35.0, 25.0), (200.0, -40.0), (110.0, 75.0), (0.0, 0.0)] {
        check_distributed(&src, &cam(az, el, 48, 40), &params, &[1, 2, 3, 4]);
    }
}

#[test]
fn classic_099_termination_stays_within_documented_bound() {
    let src = VolumeSource::marschner_lobb(32).unwrap();
    let params = RenderParams {
        early_termination: 0.99,
        ..RenderParams::default()
    };
    let tf = TransferFunction::preset("ct").unwrap();
    let c = cam(35.0, 25.0, 48, 40);
    let (b1, p1) = render_bricks(&src, 1, &c, &tf, &params);
    let single = direct(&b1, &p1, &c);
    for n in [2, 3, 4] {
        let (bs, parts) = render_bricks(&src, n, &c, &tf, &params);
        let (_, max) = compare(&single, &direct(&bs, &parts, &c));
        assert!(max <= 0.01 + 1e-4, "{n} bricks: max diff {max}");
    }
}

#[test]
fn without_early_termination_distributed_is_exact_up_to_rounding() {
    let src = VolumeSource::MarschnerLobb { dims: [30, 24, 36] };
    let params = RenderParams {
        early_termination: 2.0,
        ..RenderParams::default()
    };
    let tf = TransferFunction::preset("fire").unwrap();
    let c = cam(300.0, 20.0, 40, 36);
    let (b1, p1) = render_bricks(&src, 1, &c, &tf, &params);
    let single = direct(&b1, &p1, &c);
    for n in [2, 5, 7] {
        let (bs, parts) = render_bricks(&src, n, &c, &tf, &params);
        let (_, max) = compare(&single, &direct(&bs, &parts, &c));
        assert!(max < 1e-5, "{n} bricks: max diff {max}");
    }
}

#[test]
fn odd_image_sizes_509x503_and_1x1() {
    let src = VolumeSource::marschner_lobb(24).unwrap();
    let params = RenderParams::default();
    check_distributed(&src, &cam(35.0, 25.0, 509, 503), &params, &[3]);
    for (az, el) in [(10.0, 10.0), (135.0, -30.0), (250.0, 60.0)] {
        let mut c = cam(az, el, 1, 1);
        c.distance = 1.2;
        check_distributed(&src, &c, &params, &[1, 2, 3, 4]);
    }
}

/// Cameras on every side of the volume: the 6 axis directions and some diagonals.
fn cameras_all_around() -> Vec<Camera> {
    let mut v = Vec::new();
    for (az, el) in [
        (0.0, 0.0),
        (90.0, 0.0),
        (180.0, 0.0),
        (270.0, 0.0),
        (0.0, 90.0),
        (0.0, -90.0),
        (45.0, 35.26),
        (135.0, -35.26),
        (225.0, 20.0),
        (315.0, -60.0),
        (12.0, 5.0),
    ] {
        v.push(cam(az, el, 24, 24));
        let mut inside = cam(az, el, 24, 24);
        inside.distance = 0.3; // eye inside the volume
        v.push(inside);
    }
    v
}

#[test]
fn visibility_order_front_to_back_for_cameras_on_every_side() {
    let dims = [40, 32, 24];
    let (wlo, whi) = world_box(dims);
    let vox =
        |w: [f32; 3]| [0, 1, 2].map(|a| (w[a] - wlo[a]) / (whi[a] - wlo[a]) * (dims[a] - 1) as f32);
    for n in 2..=9 {
        let bs = bricks(dims, n);
        for c in cameras_all_around() {
            let order = visibility_order(&bs, &c);
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            let pos: Vec<usize> = (0..n)
                .map(|b| order.iter().position(|&o| o == b).unwrap())
                .collect();
            let eye = vox(c.eye());
            // Face-adjacent bricks: the one on the eye's side of the shared face comes first.
            for a in &bs {
                for b in &bs {
                    for ax in 0..3 {
                        let shared = a.hi[ax] == b.lo[ax]
                            && (0..3)
                                .filter(|&o| o != ax)
                                .all(|o| a.lo[o] < b.hi[o] && b.lo[o] < a.hi[o]);
                        if shared && eye[ax] != a.hi[ax] as f32 {
                            let a_near = eye[ax] < a.hi[ax] as f32;
                            assert_eq!(
                                pos[a.id] < pos[b.id],
                                a_near,
                                "n={n} camera {c:?}: bricks {} and {} (axis {ax})",
                                a.id,
                                b.id
                            );
                        }
                    }
                }
            }
            // Along sampled rays from the eye, bricks are entered in visibility order.
            for i in 0..7 {
                for j in 0..7 {
                    let target = [0, 1, 2]
                        .map(|a| (dims[a] - 1) as f32 * [i, j, (i * 3 + j) % 7][a] as f32 / 6.0);
                    let d = [0, 1, 2].map(|a| target[a] - eye[a]);
                    let mut hits: Vec<(f32, usize)> = bs
                        .iter()
                        .filter_map(|b| {
                            let (mut t0, mut t1) = (0f32, f32::MAX);
                            for a in 0..3 {
                                let (lo, hi) = (b.lo[a] as f32, b.hi[a] as f32);
                                if d[a].abs() < 1e-9 {
                                    if eye[a] < lo || eye[a] > hi {
                                        return None;
                                    }
                                    continue;
                                }
                                let (ta, tb) = ((lo - eye[a]) / d[a], (hi - eye[a]) / d[a]);
                                t0 = t0.max(ta.min(tb));
                                t1 = t1.min(ta.max(tb));
                            }
                            (t1 > t0 + 1e-4).then_some((t0, b.id))
                        })
                        .collect();
                    hits.sort_by(|x, y| x.0.total_cmp(&y.0));
                    for w in hits.windows(2) {
                        assert!(
                            pos[w[0].1] < pos[w[1].1],
                            "n={n} camera {c:?}: ray enters {} before {} but order is {order:?}",
                            w[0].1,
                            w[1].1
                        );
                    }
                }
            }
        }
    }
}

fn check_bricks_cover_once(dims: [u32; 3], n: usize) {
    let bs = bricks(dims, n);
    // Exactly `n` bricks whenever every axis has at least `n` voxels; a tiny volume may give
    // fewer (a node one voxel long on its longest axis is not split), never more.
    if dims.iter().all(|&d| d as usize >= n) {
        assert_eq!(bs.len(), n.max(1));
    } else {
        assert!(
            (1..=n.max(1)).contains(&bs.len()),
            "{} bricks for n = {n}",
            bs.len()
        );
    }
    let mut count = vec![0u8; dims.iter().map(|&d| d as usize).product()];
    for (id, b) in bs.iter().enumerate() {
        assert_eq!(b.id, id);
        for a in 0..3 {
            assert!(b.lo[a] < b.hi[a]);
            assert_eq!(b.ghost_lo[a], b.lo[a].saturating_sub(1));
            assert_eq!(b.ghost_hi[a], (b.hi[a] + 1).min(dims[a]));
        }
        for k in b.lo[2]..b.hi[2] {
            for j in b.lo[1]..b.hi[1] {
                for i in b.lo[0]..b.hi[0] {
                    count[((k * dims[1] + j) * dims[0] + i) as usize] += 1;
                }
            }
        }
    }
    assert!(
        count.iter().all(|&c| c == 1),
        "{dims:?} / {n}: not covered exactly once"
    );
}

#[test]
fn bricks_cover_the_volume_exactly_once() {
    for n in 1..=9 {
        for dims in [[24, 24, 24], [40, 17, 9], [2, 2, 30], [33, 64, 5]] {
            check_bricks_cover_once(dims, n);
        }
    }
    check_bricks_cover_once([64, 48, 32], 16);
    // Balanced split: the 3 bricks of a cube are about a third, two sixths.
    let b = bricks([30, 30, 30], 3);
    assert_eq!((b[0].lo[0], b[0].hi[0]), (0, 10));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn prop_bricks_cover_once(x in 2u32..20, y in 2u32..20, z in 2u32..20, n in 1usize..12) {
        check_bricks_cover_once([x, y, z], n);
    }

    #[test]
    fn prop_plan_owns_each_pixel_once(p in 1usize..40, w in 1u32..70, h in 1u32..70) {
        check_plan(p, w, h);
    }
}

fn check_plan(p: usize, w: u32, h: u32) {
    let plan = binary_swap_plan(p);
    assert_eq!(plan.ranks, p);
    // Groups partition the ranks, in order, one or two each, 2^floor(log2 p) of them.
    let flat: Vec<usize> = plan.groups.iter().flatten().copied().collect();
    assert_eq!(flat, (0..p).collect::<Vec<_>>());
    assert!(
        plan.groups.len().is_power_of_two() && plan.groups.len() <= p && p < 2 * plan.groups.len()
    );
    assert_eq!(plan.folds.len(), p - plan.groups.len());
    let regions = plan.final_regions(w, h);
    let mut owned = vec![0u32; (w * h) as usize];
    for r in &regions {
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                owned[(y * w + x) as usize] += 1;
            }
        }
    }
    assert!(
        owned.iter().all(|&c| c == 1),
        "p={p} {w}x{h}: pixel not owned exactly once"
    );
    for f in &plan.folds {
        assert!(regions[f.from].is_empty());
    }
}

#[test]
fn binary_swap_plan_every_pixel_owned_once_p1_to_9() {
    for p in 1..=9 {
        for (w, h) in [(1, 1), (7, 5), (64, 64), (509, 503), (1, 9)] {
            check_plan(p, w, h);
        }
        assert_eq!(
            binary_swap_plan(p).rounds.len(),
            (p as f64).log2().floor() as usize
        );
    }
    // 3 ranks: brick tree {0} | {1, 2}; rank 2 folds into 1, then 0 and 1 swap.
    let plan = binary_swap_plan(3);
    assert_eq!(plan.folds, vec![Fold { from: 2, to: 1 }]);
    assert_eq!(plan.rounds, vec![vec![Exchange { low: 0, high: 1 }]]);
}

#[test]
fn binary_swap_bytes_and_order_checks() {
    let src = VolumeSource::marschner_lobb(24).unwrap();
    let tf = TransferFunction::preset("grayscale").unwrap();
    let c = cam(20.0, 30.0, 32, 32);
    let (bs, parts) = render_bricks(&src, 4, &c, &tf, &RenderParams::default());
    let order = visibility_order(&bs, &c);
    let (_, bytes) = binary_swap_simulate(&parts, &order, 32, 32).unwrap();
    assert_eq!(bytes.len(), 4);
    // Every rank receives something; rank 0 also gathers; nobody gets more than 2 frames.
    assert!(
        bytes.iter().all(|&b| b > 0 && b <= 2 * 32 * 32 * 16),
        "{bytes:?}"
    );
    let d = direct_bytes_received(&parts, 0);
    assert_eq!(
        d[0],
        parts[1..]
            .iter()
            .map(|p| p.rect.area() as u64 * 16)
            .sum::<u64>()
    );
    assert!(d[1..].iter().all(|&b| b == 0));
    // An order that contradicts the kd groups is refused, as is a non-permutation.
    assert!(binary_swap_simulate(&parts, &[0, 2, 1, 3], 32, 32).is_err());
    assert!(binary_swap_simulate(&parts, &[0, 1, 1, 3], 32, 32).is_err());
    assert!(binary_swap_simulate(&parts[..3], &order, 32, 32).is_err());
}

#[test]
fn partial_images_cover_only_their_brick() {
    let src = VolumeSource::marschner_lobb(32).unwrap();
    let tf = TransferFunction::preset("ct").unwrap();
    let c = cam(0.0, 0.0, 64, 64); // looking along -x: the x-split bricks overlap on screen
    let (_, parts) = render_bricks(&src, 2, &c, &tf, &RenderParams::default());
    let full = Rect::full(64, 64);
    assert!(parts.iter().all(|p| p.pixels.len() == p.rect.area()));
    // Split across y or z for 2 bricks of a cube: x first by tie-break -> same screen rect
    // from the front; from above, a y or z split gives rects smaller than the frame.
    let top = cam(0.0, 89.0, 64, 64);
    let src2 = VolumeSource::MarschnerLobb { dims: [24, 40, 24] }; // split along y
    let (bs, parts2) = render_bricks(&src2, 2, &top, &tf, &RenderParams::default());
    assert_eq!(bs[0].path[0].axis, 1);
    assert!(
        parts2.iter().all(|p| p.rect.area() < full.area() * 3 / 4),
        "{:?}",
        parts2.iter().map(|p| p.rect).collect::<Vec<_>>()
    );
    assert!(parts.iter().all(|p| !p.rect.is_empty()));
}

#[test]
fn marschner_lobb_brick_holds_only_its_voxels() {
    let src = VolumeSource::MarschnerLobb { dims: [20, 16, 12] };
    let bs = bricks(src.dims(), 5);
    let b = &bs[3];
    let data = load_brick(&src, b).unwrap();
    assert_eq!(data.voxels.len(), b.ghost_voxel_count());
    let gd = b.ghost_dims();
    let coord = |i: u32, a: usize| -1.0 + 2.0 * f64::from(i) / f64::from(src.dims()[a] - 1);
    for k in 0..gd[2] {
        for j in 0..gd[1] {
            for i in 0..gd[0] {
                let (gi, gj, gk) = (i + b.ghost_lo[0], j + b.ghost_lo[1], k + b.ghost_lo[2]);
                let want = marschner_lobb(coord(gi, 0), coord(gj, 1), coord(gk, 2)) as f32;
                assert_eq!(data.voxels[((k * gd[1] + j) * gd[0] + i) as usize], want);
            }
        }
    }
    assert!((marschner_lobb(0.0, 0.0, 1.0) - 0.25 * 2.0 / 2.5).abs() < 1e-12);
    // Byte round trip (as for shared memory), and length checking.
    let bytes = data.as_bytes().to_vec();
    assert_eq!(bytes.len(), data.voxels.len() * 4);
    let back = BrickData::from_bytes(data.header.clone(), &bytes).unwrap();
    assert_eq!(back, data);
    let unaligned = [&[0u8][..], &bytes].concat();
    assert_eq!(
        BrickData::from_bytes(data.header.clone(), &unaligned[1..]).unwrap(),
        data
    );
    assert!(matches!(
        BrickData::from_bytes(data.header.clone(), &bytes[1..]),
        Err(VolrenError::BadBrickBytes(_))
    ));
    // A brick of another volume size is refused.
    let other = &bricks([8, 8, 8], 1)[0];
    assert!(matches!(
        load_brick(&src, other),
        Err(VolrenError::InvalidArgument(_))
    ));
}

#[test]
fn dims_and_type_parsing_errors() {
    assert_eq!(parse_dims("256x256x128").unwrap(), [256, 256, 128]);
    assert_eq!(parse_dims(" 4X5x6 ").unwrap(), [4, 5, 6]);
    for bad in [
        "",
        "256x256",
        "1x2x3x4",
        "ax2x2",
        "2x-1x2",
        "1x4x4",
        "0x0x0",
        "99999999999x2x2",
    ] {
        assert!(
            matches!(parse_dims(bad), Err(VolrenError::InvalidDims { .. })),
            "{bad:?} accepted"
        );
    }
    assert_eq!("u8".parse::<VoxelType>().unwrap(), VoxelType::U8);
    assert_eq!("UINT16".parse::<VoxelType>().unwrap(), VoxelType::U16);
    assert_eq!("float32".parse::<VoxelType>().unwrap(), VoxelType::F32);
    assert!(matches!(
        "i32".parse::<VoxelType>(),
        Err(VolrenError::InvalidVoxelType(_))
    ));
    assert!(VolumeSource::raw("x.raw", "2x2", "u8").is_err());
    assert!(VolumeSource::raw("x.raw", "2x2x2", "u7").is_err());
    assert!(matches!(
        TransferFunction::preset("neon"),
        Err(VolrenError::UnknownPreset(_))
    ));
    assert!(VolumeSource::marschner_lobb(1).is_err());
}

fn write(path: &Path, bytes: &[u8], gzip: bool) {
    let mut f = std::fs::File::create(path).unwrap();
    if gzip {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    } else {
        f.write_all(bytes).unwrap();
    }
}

#[test]
fn raw_loader_types_sub_boxes_gzip_and_size_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let dims = [6u32, 5, 4];
    let n = 6 * 5 * 4;
    let u8s: Vec<u8> = (0..n).map(|i| (i * 2) as u8).collect();
    let plain = dir.path().join("v.raw");
    let by_name = dir.path().join("v.raw.gz");
    let by_magic = dir.path().join("v.bin");
    write(&plain, &u8s, false);
    write(&by_name, &u8s, true);
    write(&by_magic, &u8s, true);
    let bs = bricks(dims, 3);
    for path in [&plain, &by_name, &by_magic] {
        let src = VolumeSource::raw(path, "6x5x4", "u8").unwrap();
        for b in &bs {
            let d = load_brick(&src, b).unwrap();
            let gd = b.ghost_dims();
            let (i, j, k) = (gd[0] - 1, gd[1] - 1, gd[2] - 1);
            let global = ((k + b.ghost_lo[2]) * 5 + j + b.ghost_lo[1]) * 6 + i + b.ghost_lo[0];
            assert_eq!(d.voxels[d.voxels.len() - 1], (global * 2) as f32 / 255.0);
            assert_eq!(
                d.voxels[0],
                ((b.ghost_lo[2] * 5 + b.ghost_lo[1]) * 6 + b.ghost_lo[0]) as f32 * 2.0 / 255.0
            );
        }
    }
    // u16 and f32 normalisation (little-endian; f32 clamped).
    let u16p = dir.path().join("v16.raw");
    let vals: Vec<u8> = (0..n)
        .flat_map(|i| if i == 0 { 65535u16 } else { i as u16 * 300 }.to_le_bytes())
        .collect();
    write(&u16p, &vals, false);
    let d = load_brick(
        &VolumeSource::raw(&u16p, "6x5x4", "u16").unwrap(),
        &bricks(dims, 1)[0],
    )
    .unwrap();
    assert_eq!(d.voxels[0], 1.0);
    assert_eq!(d.voxels[1], 300.0 / 65535.0);
    let f32p = dir.path().join("vf.raw");
    let vals: Vec<u8> = (0..n)
        .flat_map(|i| [-1.0f32, 0.25, 7.0][i % 3].to_le_bytes())
        .collect();
    write(&f32p, &vals, false);
    let d = load_brick(
        &VolumeSource::raw(&f32p, "6x5x4", "f32").unwrap(),
        &bricks(dims, 1)[0],
    )
    .unwrap();
    assert_eq!(&d.voxels[..3], &[0.0, 0.25, 1.0]);
    // Size mismatch: wrong dims, wrong type, truncated gzip content.
    for (p, dims, ty) in [
        (&plain, "6x5x5", "u8"),
        (&plain, "6x5x4", "u16"),
        (&by_name, "7x5x4", "u8"),
    ] {
        let src = VolumeSource::raw(p, dims, ty).unwrap();
        let err = load_brick(&src, &bricks(src.dims(), 1)[0]).unwrap_err();
        assert!(matches!(err, VolrenError::SizeMismatch { .. }), "{err}");
    }
    let missing = VolumeSource::raw(dir.path().join("nope.raw"), "6x5x4", "u8").unwrap();
    assert!(matches!(
        load_brick(&missing, &bricks(dims, 1)[0]),
        Err(VolrenError::Io { .. })
    ));
}

#[test]
fn engine_sample_file_loads_and_renders() {
    if !Path::new(ENGINE).exists() {
        println!("skipping: {ENGINE} is absent");
        return;
    }
    let src = VolumeSource::raw(ENGINE, "256x256x128", "u8").unwrap();
    let bs = bricks(src.dims(), 8);
    let b = &bs[5];
    let d = load_brick(&src, b).unwrap();
    assert_eq!(d.voxels.len(), b.ghost_voxel_count());
    assert!(d.voxels.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(
        d.voxels.iter().any(|&v| v > 0.5),
        "engine brick has no dense material"
    );
    let c = cam(30.0, 30.0, 24, 24);
    let p = render_brick(
        &d,
        &c,
        &TransferFunction::preset("ct").unwrap(),
        &RenderParams::default(),
    );
    assert!(!p.rect.is_empty() && p.rect.area() < 24 * 24);
}

#[test]
fn transfer_function_opacity_correction() {
    let tf = TransferFunction::preset("fire").unwrap();
    assert_eq!(tf.lut.len(), LUT_SIZE);
    let one = tf.corrected(1.0);
    let half = tf.corrected(0.5);
    for i in 0..LUT_SIZE {
        let a = tf.lut[i][3];
        assert!((one[i][3] - a).abs() < 1e-6);
        assert!((half[i][3] - (1.0 - (1.0 - a).powf(0.5))).abs() < 1e-6);
        // Premultiplied.
        assert!((half[i][0] - tf.lut[i][0] * half[i][3]).abs() < 1e-6);
    }
    for name in TransferFunction::PRESETS {
        let t = TransferFunction::preset(name).unwrap();
        assert_eq!(t.lut[0][3], 0.0, "{name}: air must be transparent");
        assert!(
            t.lut[LUT_SIZE - 1][3] > 0.2,
            "{name}: dense material must be visible"
        );
    }
}

#[test]
fn png_is_straight_colour_over_background() {
    let img = Image {
        width: 2,
        height: 1,
        pixels: vec![[0.5, 0.0, 0.25, 0.5], [0.0; 4]],
    };
    assert_eq!(img.to_rgb8([0, 0, 255]), vec![128, 0, 191, 0, 0, 255]);
    let png_bytes = img.to_png([0, 0, 255]).unwrap();
    let dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (2, 1));
    assert_eq!(&buf[..6], &[128, 0, 191, 0, 0, 255]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.png");
    img.write_png(&path, [0, 0, 0]).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    // A folder that does not exist is a write error naming the file, not a read error.
    let missing = dir.path().join("none/x.png");
    let err = img.write_png(&missing, [0, 0, 0]).unwrap_err();
    assert!(
        matches!(&err, VolrenError::Write { path, .. } if *path == missing),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("cannot write"), "{err}");
}

#[test]
fn trimmed_partials_travel_and_composite_unchanged() {
    let src = VolumeSource::marschner_lobb(24).unwrap();
    let tf = TransferFunction::preset("ct").unwrap();
    let c = cam(30.0, 20.0, 57, 43);
    let (bs, parts) = render_bricks(&src, 3, &c, &tf, &RenderParams::default());
    let trimmed: Vec<PartialImage> = parts.iter().cloned().map(PartialImage::trimmed).collect();
    for (p, t) in parts.iter().zip(&trimmed) {
        assert_eq!(t.pixels.len(), t.rect.area());
        assert!(t.rect.area() <= p.rect.area());
        assert_eq!(t.rect.intersect(&p.rect), t.rect, "trimming only shrinks");
        // The wire encoding round-trips exactly.
        assert_eq!(&PartialImage::from_wire(57, 43, &t.to_wire()).unwrap(), t);
    }
    assert_eq!(direct(&bs, &trimmed, &c), direct(&bs, &parts, &c));
    // A transparent partial trims to nothing.
    let empty = PartialImage {
        width: 4,
        height: 4,
        rect: Rect::full(4, 4),
        pixels: vec![[0.0; 4]; 16],
    }
    .trimmed();
    assert!(empty.rect.is_empty() && empty.pixels.is_empty());
    // Wire bytes that do not fit the image or their rectangle are refused.
    let wire = trimmed[0].to_wire();
    assert!(PartialImage::from_wire(8, 8, &wire).is_err());
    assert!(PartialImage::from_wire(57, 43, &wire[..wire.len() - 4]).is_err());
    assert!(PartialImage::from_wire(57, 43, &wire[..10]).is_err());
}

#[test]
fn blend_behind_and_paste_work_on_sub_rectangles() {
    let mut img = Image {
        width: 3,
        height: 2,
        pixels: vec![[0.0, 0.25, 0.5, 0.5]; 6],
    };
    let back = PartialImage {
        width: 3,
        height: 2,
        rect: Rect {
            x0: 1,
            y0: 1,
            x1: 3,
            y1: 2,
        },
        pixels: vec![[0.5, 0.5, 0.5, 1.0]; 2],
    };
    img.blend_behind(&back);
    assert_eq!(img.get(0, 1), [0.0, 0.25, 0.5, 0.5]);
    assert_eq!(img.get(1, 1), [0.25, 0.5, 0.75, 1.0]);
    assert_eq!(img.get(2, 1), [0.25, 0.5, 0.75, 1.0]);
    assert_eq!(img.get(2, 0), [0.0, 0.25, 0.5, 0.5]);
    img.paste(&back);
    assert_eq!(img.get(1, 1), [0.5, 0.5, 0.5, 1.0]);
    assert_eq!(img.get(0, 1), [0.0, 0.25, 0.5, 0.5]);
}

#[test]
fn fitted_camera_frames_the_whole_volume() {
    let tf = TransferFunction::from_points(&[(0.0, [1.0, 1.0, 1.0, 0.5]), (1.0, [1.0; 4])]);
    let params = RenderParams {
        shading: false,
        ..RenderParams::default()
    };
    for dims in [[24, 24, 24], [32, 32, 12], [10, 30, 20]] {
        let src = VolumeSource::MarschnerLobb { dims };
        for (az, el, w, h) in [
            (35.0, 50.0, 40, 40),
            (0.0, 0.0, 60, 30),
            (200.0, -80.0, 30, 60),
        ] {
            let c = cam(az, el, w, h).fitted(dims);
            let (bs, parts) = render_bricks(&src, 1, &c, &tf, &params);
            let img = direct(&bs, &parts, &c);
            // Every voxel is visible: the volume's silhouette must stay off the image border
            // and still fill a good part of it.
            for x in 0..w {
                for y in [0, h - 1] {
                    assert_eq!(img.get(x, y)[3], 0.0, "{dims:?} {c:?}: ({x},{y})");
                }
            }
            for y in 0..h {
                for x in [0, w - 1] {
                    assert_eq!(img.get(x, y)[3], 0.0, "{dims:?} {c:?}: ({x},{y})");
                }
            }
            assert!(coverage(&img) > 0.08, "{dims:?} {c:?}: {}", coverage(&img));
        }
    }
}

#[test]
fn binary_swap_schedule_publishes_before_each_step() {
    // 3 ranks: rank 2 folds into rank 1, then ranks 0 and 1 swap halves.
    let order = [2, 1, 0];
    let s = binary_swap_schedule(&order, 10, 4).unwrap();
    assert_eq!(s.steps.len(), 2);
    let fold = s.steps[0].transfers[0];
    assert_eq!((fold.from, fold.to), (2, 1));
    assert!(fold.sender_in_front, "rank 2 is first in the order");
    assert_eq!(s.steps[0].regions[2], Rect::default());
    // Rank 2 sends right after rendering; rank 1 only after its fold; rank 0 skips the fold.
    assert_eq!(s.next_send(2, None).map(|(st, _)| st), Some(0));
    assert_eq!(s.next_send(1, None), None);
    assert_eq!(s.next_send(1, Some(0)).map(|(st, _)| st), Some(1));
    assert_eq!(s.next_send(0, None).map(|(st, _)| st), Some(1));
    let round = &s.steps[1].transfers;
    let to_1 = round.iter().find(|t| t.to == 1).unwrap();
    assert_eq!(to_1.from, 0);
    assert!(!to_1.sender_in_front, "rank 0 is behind ranks 2 and 1");
    assert_eq!(
        s.final_regions(),
        vec![
            Rect {
                x0: 0,
                y0: 0,
                x1: 5,
                y1: 4
            },
            Rect {
                x0: 5,
                y0: 0,
                x1: 10,
                y1: 4
            },
            Rect::default()
        ]
    );
    // One rank: nothing to do, rank 0 holds the whole image.
    let one = binary_swap_schedule(&[0], 7, 3).unwrap();
    assert!(one.steps.is_empty());
    assert_eq!(one.final_regions(), vec![Rect::full(7, 3)]);
    assert!(binary_swap_schedule(&[], 7, 3).is_err());
    assert!(binary_swap_schedule(&[0, 0], 7, 3).is_err());
}
