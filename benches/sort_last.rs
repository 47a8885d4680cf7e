//! Sort-last rendering figures (run with `cargo bench --bench sort_last`).
//!
//! Starts 8 host processes on this machine (this program again, through the launcher) and, on
//! host 0, prints:
//! - the frame time (render + composite, bricks already loaded) of the Marschner-Lobb 256^3
//!   volume at 768x768 on 4 hosts, for both compositing strategies, against a single-host
//!   render of the same volume and image size in one process (one brick, no framework), and
//!   the same frame on 1 host through the framework (target: 4 hosts ≤ 1.5x single host);
//! - the bytes received by the busiest host, direct vs binary swap, at 2, 4 and 8 hosts.
//!
//! Hosts outside the set a measurement uses stay idle. Options: `--size N`, `--image WxH`,
//! `--frames N` (frames per timing, the best one reported: on a shared machine the spread is
//! other processes' noise).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fragmenta::{Cluster, ExecuteError, FragmentedJob, JobReport};
use fragmenta_volren::{
    bricks, composite_direct, load_brick, render_brick, Camera, Compositing, FreePublications,
    JobRunner, LoadBricks, RenderBricks, RenderParams, SortLast, SwapStep, TransferFunction,
    VolumeSource,
};

/// Host processes started for the figures.
const HOSTS: usize = 8;

struct OnCluster<'a>(&'a Cluster);

impl JobRunner for OnCluster<'_> {
    fn run<J: FragmentedJob>(&self, job: &Arc<J>, count: usize) -> Result<JobReport, ExecuteError> {
        self.0.execute(job, count)
    }
}

type BoxError = Box<dyn std::error::Error>;

/// Benchmark settings from the command line (cargo adds `--bench`, which is ignored).
struct Settings {
    size: u32,
    width: u32,
    height: u32,
    frames: usize,
}

fn settings() -> Result<Settings, BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let size = match value("--size") {
        Some(v) => v.parse().map_err(|e| format!("--size {v:?}: {e}"))?,
        None => 256,
    };
    let (width, height) = match value("--image") {
        Some(v) => {
            let (w, h) = v
                .split_once('x')
                .ok_or_else(|| format!("--image {v:?}: expected WIDTHxHEIGHT"))?;
            (
                w.parse().map_err(|e| format!("--image {v:?}: {e}"))?,
                h.parse().map_err(|e| format!("--image {v:?}: {e}"))?,
            )
        }
        None => (768, 768),
    };
    let frames = match value("--frames") {
        Some(v) => v.parse().map_err(|e| format!("--frames {v:?}: {e}"))?,
        None => 5,
    };
    Ok(Settings {
        size,
        width,
        height,
        frames: usize::max(frames, 1),
    })
}

fn main() -> ExitCode {
    let result = if std::env::var_os(fragmenta_config::CONFIG_ENV).is_none() {
        launch()
    } else {
        host()
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sort_last bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts [`HOSTS`] copies of this program as a cluster on this machine.
fn launch() -> Result<ExitCode, BoxError> {
    let exe = std::env::current_exe()?;
    let opts = fragmenta_cli::LaunchOptions::new(HOSTS, exe, std::env::args_os().skip(1));
    let code = fragmenta_cli::launch(opts)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The best of several timings: on a shared machine the others are mostly noise.
fn best(v: Vec<Duration>) -> Duration {
    v.into_iter().min().unwrap_or_default()
}

fn host() -> Result<ExitCode, BoxError> {
    let s = settings()?;
    let cluster = Cluster::builder()
        .register::<LoadBricks>()
        .register::<RenderBricks>()
        .register::<SwapStep>()
        .register::<FreePublications>()
        .join()?;
    if !cluster.is_primary() {
        cluster.serve()?;
        return Ok(ExitCode::SUCCESS);
    }
    let me = cluster.host_id();
    let mut hosts = vec![me];
    hosts.extend(cluster.hosts().into_iter().filter(|&h| h != me));
    let runner = OnCluster(&cluster);
    let src = VolumeSource::marschner_lobb(s.size)?;
    let camera = Camera {
        azimuth: 35.0,
        elevation: 50.0,
        width: s.width,
        height: s.height,
        ..Camera::default()
    }
    .fitted(src.dims());
    let tf = TransferFunction::preset("ct")?;
    let params = RenderParams::default();
    println!(
        "sort_last bench: Marschner-Lobb {}^3, {}x{}, preset ct, {} host processes on {} cores, \
         best of {} frames",
        s.size,
        s.width,
        s.height,
        hosts.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        s.frames
    );

    // Single host, no framework: one brick, rendered and composited in this process.
    let whole = &bricks(src.dims(), 1)[0];
    let data = load_brick(&src, whole)?;
    let single_frame = || {
        let t = Instant::now();
        let part = render_brick(&data, &camera, &tf, &params);
        let image = composite_direct(&[&part], camera.width, camera.height);
        (t.elapsed(), image)
    };
    let _ = single_frame();
    let single = best((0..s.frames).map(|_| single_frame().0).collect());
    drop(data);
    println!(
        "single host, one process (no framework): {:>8.1} ms per frame",
        ms(single)
    );

    for n in [1usize, 4] {
        if hosts.len() < n {
            continue;
        }
        let sl = SortLast::new(src.clone(), hosts[..n].to_vec())?;
        let load = sl.load(&runner)?;
        for c in Compositing::ALL {
            if n == 1 && c == Compositing::BinarySwap {
                continue; // the same as direct on one host
            }
            sl.render(&runner, &camera, &tf, &params, c)?; // warm-up
                                                           // The best frame, with its own split into ray casting and the rest.
            let mut frames = Vec::new();
            for _ in 0..s.frames {
                let f = sl.render(&runner, &camera, &tf, &params, c)?;
                frames.push((f.elapsed, f.render));
            }
            let (e, r) = frames.into_iter().min().unwrap_or_default();
            println!(
                "{n} host(s), {c:<11}: {:>8.1} ms per frame (slowest brick {:.1} ms, composite \
                 {:.1} ms) = {:.2}x single host{}",
                ms(e),
                ms(r),
                ms(e.saturating_sub(r)),
                e.as_secs_f64() / single.as_secs_f64(),
                if n == 4 { " (target <= 1.5x)" } else { "" }
            );
        }
        println!("  (load on {n} host(s): {:.1} ms)", ms(load.elapsed));
        sl.unload(&runner)?;
    }

    println!(
        "bytes received by the busiest host (frame = {} B as f32 RGBA):",
        { u64::from(s.width) * u64::from(s.height) * 16 }
    );
    for n in [2usize, 4, 8] {
        if hosts.len() < n {
            continue;
        }
        let sl = SortLast::new(src.clone(), hosts[..n].to_vec())?;
        sl.load(&runner)?;
        let mut line = format!("  {n} hosts:");
        for c in Compositing::ALL {
            let f = sl.render(&runner, &camera, &tf, &params, c)?;
            let (h, b) = f.busiest();
            line.push_str(&format!(
                "  {c} {:>10} B ({h}, frame {:.1} ms)",
                b,
                ms(f.elapsed)
            ));
        }
        println!("{line}");
        sl.unload(&runner)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
