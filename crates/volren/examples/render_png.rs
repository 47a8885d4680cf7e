//! Renders a volume to a PNG, optionally split into bricks and composited.
//!
//! ```text
//! cargo run --release -p fragmenta-volren --example render_png -- \
//!     [--volume FILE --dims XxYxZ --type u8|u16|f32] [--size N] [--preset ct|fire|grayscale]
//!     [--azimuth DEG] [--elevation DEG] [--distance D] [--fov DEG] [--width W] [--height H]
//!     [--bricks N] [--swap] [--out FILE]
//! ```

use std::time::Instant;

use fragmenta_volren::*;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |k: &str, d: f32| -> Result<f32, Box<dyn std::error::Error>> {
        Ok(match get(k) {
            Some(v) => v.parse()?,
            None => d,
        })
    };
    let source = match get("--volume") {
        Some(path) => VolumeSource::raw(
            path,
            &get("--dims").ok_or("--volume needs --dims XxYxZ")?,
            &get("--type").unwrap_or_else(|| "u8".into()),
        )?,
        None => VolumeSource::marschner_lobb(num("--size", 128.0)? as u32)?,
    };
    let def = Camera::default();
    let camera = Camera {
        azimuth: num("--azimuth", def.azimuth)?,
        elevation: num("--elevation", def.elevation)?,
        distance: num("--distance", def.distance)?,
        fov_y: num("--fov", def.fov_y)?,
        width: num("--width", def.width as f32)? as u32,
        height: num("--height", def.height as f32)? as u32,
    };
    let tf = TransferFunction::preset(&get("--preset").unwrap_or_else(|| "ct".into()))?;
    let params = RenderParams::default();
    let n = num("--bricks", 1.0)? as usize;
    let out = get("--out").unwrap_or_else(|| "/tmp/volren_test.png".into());

    let t = Instant::now();
    let bs = bricks(source.dims(), n);
    let partials: Vec<PartialImage> = bs
        .iter()
        .map(|b| load_brick(&source, b).map(|d| render_brick(&d, &camera, &tf, &params)))
        .collect::<Result<_>>()?;
    let order = visibility_order(&bs, &camera);
    let image = if args.iter().any(|a| a == "--swap") {
        binary_swap_simulate(&partials, &order, camera.width, camera.height)?.0
    } else {
        let refs: Vec<&PartialImage> = order.iter().map(|&i| &partials[i]).collect();
        composite_direct(&refs, camera.width, camera.height)
    };
    image.write_png(&out, [16, 18, 24])?;
    println!("{out}: {} bricks, {:?}", bs.len(), t.elapsed());
    Ok(())
}
