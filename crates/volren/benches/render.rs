//! Rendering and compositing figures (run with `cargo bench -p fragmenta-volren`).
//!
//! Prints: single-brick render time vs 4 bricks rendered one after the other (sum and max of
//! the per-brick times) for Marschner-Lobb 256^3 at 512x512, and the bytes received by the
//! busiest rank for direct compositing vs binary swap at 2, 4 and 8 ranks.

use std::time::{Duration, Instant};

use fragmenta_volren::*;

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn main() -> Result<()> {
    let size = 256;
    let src = VolumeSource::marschner_lobb(size)?;
    let camera = Camera::default();
    let tf = TransferFunction::preset("ct")?;
    let params = RenderParams::default();
    let (w, h) = (camera.width, camera.height);
    println!(
        "volren bench: Marschner-Lobb {size}^3, {w}x{h}, preset ct, step {} voxel, {} rayon threads",
        params.step_voxels,
        rayon::current_num_threads()
    );

    let whole = &bricks(src.dims(), 1)[0];
    let (data, load) = time(|| load_brick(&src, whole));
    let data = data?;
    let _warm = render_brick(&data, &camera, &tf, &params);
    let (_, single) = time(|| render_brick(&data, &camera, &tf, &params));
    println!("load 1 brick (whole volume): {load:?}");
    println!("render 1 brick:              {single:?}");
    drop(data);

    let bs = bricks(src.dims(), 4);
    let mut times = Vec::new();
    for b in &bs {
        let d = load_brick(&src, b)?;
        let (_, t) = time(|| render_brick(&d, &camera, &tf, &params));
        times.push(t);
    }
    let sum: Duration = times.iter().sum();
    let max = times.iter().max().copied().unwrap_or_default();
    println!("render 4 bricks sequentially: sum {sum:?}, max {max:?} (per brick {times:?})");

    println!(
        "bytes received by the busiest rank (f32 RGBA, 16 B/pixel; frame = {} B):",
        w as u64 * h as u64 * 16
    );
    for p in [2usize, 4, 8] {
        let bs = bricks(src.dims(), p);
        let mut partials = Vec::new();
        for b in &bs {
            partials.push(render_brick(&load_brick(&src, b)?, &camera, &tf, &params));
        }
        let order = visibility_order(&bs, &camera);
        let direct = direct_bytes_received(&partials, 0);
        let (c, t) = time(|| {
            let refs: Vec<&PartialImage> = order.iter().map(|&i| &partials[i]).collect();
            composite_direct(&refs, w, h)
        });
        let (swapped, ts) = time(|| binary_swap_simulate(&partials, &order, w, h));
        drop(c);
        let (_, swap) = swapped?;
        let mx = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
        println!(
            "  {p} ranks: direct {:>9} B (composite {t:?}), binary-swap {:>9} B (simulate {ts:?}); per rank swap {swap:?}",
            mx(&direct),
            mx(&swap)
        );
    }
    Ok(())
}
