//! Sort-last volume rendering on a cluster: every host generates (or reads) its brick of the
//! volume into its Fast I/O store, ray casts it where it lives, and the partial images are
//! composited in visibility order, directly on the initiator or by binary swap.
//!
//! ```text
//! cargo run --release --example sort_last                        # Marschner-Lobb 256^3, 4 hosts
//! cargo run --release --example sort_last -- --composite binary-swap --hosts 3
//! cargo run --release --example sort_last -- --volume ../shared/data/volumes/engine_256x256x128_uint8.raw.gz \
//!     --dims 256x256x128 --type u8 --tf ct --out engine.png
//! fragmenta launch -n 4 -- target/release/examples/sort_last    # hosts from the launcher
//! FRAGMENTA_SECRET_FILE=~/.fragmenta-secret srun -n 4 target/release/examples/sort_last
//! ```
//!
//! With no cluster in the environment the program starts `--hosts` copies of itself on this
//! machine (like `fragmenta launch -n 4`); host 0 renders and the others serve. It writes the
//! image (`sort_last.png`) and prints one timing line: load, render (the slowest brick's ray
//! casting), composite (everything else until the image is on host 0), total, and the bytes
//! received by the busiest host.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use fragmenta::{Cluster, ExecuteError, FragmentedJob, JobReport};
use fragmenta_volren::{
    Camera, Compositing, FreePublications, JobRunner, LoadBricks, RenderBricks, RenderParams,
    SortLast, SwapStep, TransferFunction, VolumeSource, VoxelType, MAX_IMAGE_SIDE,
};

/// Sort-last volume rendering on a fragmenta cluster.
#[derive(Parser, Debug)]
#[command(
    name = "sort_last",
    about = "Sort-last volume rendering on a fragmenta cluster: each host renders its brick, \
             the partial images are composited in visibility order"
)]
struct Args {
    /// Edge length of the Marschner-Lobb volume (voxels per axis).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..=2048))]
    size: u32,
    /// Image size, WIDTHxHEIGHT.
    #[arg(long, default_value = "768x768", value_parser = parse_image)]
    image: (u32, u32),
    /// Camera azimuth around the vertical axis, degrees.
    #[arg(long, default_value_t = 35.0, allow_negative_numbers = true, value_parser = parse_azimuth)]
    azimuth: f32,
    /// Camera elevation above the horizontal plane, degrees (-90..=90).
    #[arg(long, default_value_t = 50.0, allow_negative_numbers = true, value_parser = parse_elevation)]
    elevation: f32,
    /// Camera distance from the volume centre (the volume's longest side is 1); default: the
    /// volume fills the view.
    #[arg(long, value_parser = parse_distance)]
    distance: Option<f32>,
    /// Transfer function preset: ct, fire or grayscale.
    #[arg(long, default_value = "ct", value_parser = parse_tf)]
    tf: TransferFunction,
    /// Compositing: direct or binary-swap.
    #[arg(long, default_value = "direct", value_parser = parse_compositing)]
    composite: Compositing,
    /// Hosts to start on this machine when no cluster is configured in the environment.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    hosts: u32,
    /// A raw volume file (x fastest, little-endian; gzip accepted) instead of Marschner-Lobb.
    #[arg(long, requires = "dims")]
    volume: Option<PathBuf>,
    /// Size of the raw volume, XxYxZ.
    #[arg(long, requires = "volume", value_parser = parse_dims)]
    dims: Option<[u32; 3]>,
    /// Voxel type of the raw volume: u8, u16 or f32.
    #[arg(long = "type", default_value = "u8", value_parser = parse_voxel)]
    voxel: VoxelType,
    /// Background colour behind the volume, RRGGBB.
    #[arg(long, default_value = "101218", value_parser = parse_colour)]
    background: [u8; 3],
    /// Output PNG.
    #[arg(long, default_value = "sort_last.png")]
    out: PathBuf,
}

fn parse_image(s: &str) -> Result<(u32, u32), String> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let [w, h] = parts[..] else {
        return Err(format!("{s:?}: expected WIDTHxHEIGHT, like 768x768"));
    };
    let side = |v: &str| match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_IMAGE_SIDE).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: {v:?} is not a side of 1..={MAX_IMAGE_SIDE} pixels"
        )),
    };
    Ok((side(w)?, side(h)?))
}

fn parse_azimuth(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not an angle in degrees")),
    }
}

/// Checks before any work that the picture can be written where `--out` says: its folder
/// exists and takes a new file.
fn check_out(out: &Path) -> Result<(), String> {
    let folder = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!(
            "--out {}: the folder {} does not exist",
            out.display(),
            folder.display()
        ));
    }
    if out.is_dir() {
        return Err(format!("--out {} is a folder", out.display()));
    }
    tempfile::NamedTempFile::new_in(folder)
        .map(drop)
        .map_err(|e| {
            format!(
                "--out {}: cannot write in {}: {e}",
                out.display(),
                folder.display()
            )
        })
}

fn parse_elevation(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if (-90.0..=90.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not an angle in -90..=90 degrees")),
    }
}

fn parse_distance(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive distance")),
    }
}

fn parse_tf(s: &str) -> Result<TransferFunction, String> {
    TransferFunction::preset(s).map_err(|e| e.to_string())
}

fn parse_compositing(s: &str) -> Result<Compositing, String> {
    s.parse()
        .map_err(|e: fragmenta_volren::SortLastError| e.to_string())
}

fn parse_dims(s: &str) -> Result<[u32; 3], String> {
    fragmenta_volren::parse_dims(s).map_err(|e| e.to_string())
}

fn parse_voxel(s: &str) -> Result<VoxelType, String> {
    s.parse()
        .map_err(|e: fragmenta_volren::VolrenError| e.to_string())
}

fn parse_colour(s: &str) -> Result<[u8; 3], String> {
    let hex = s.trim().trim_start_matches('#');
    let bad = || format!("{s:?} is not a colour RRGGBB, like 101218");
    if hex.len() != 6 || !hex.is_ascii() {
        return Err(bad());
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
    Ok([byte(0)?, byte(2)?, byte(4)?])
}

/// Runs the sort-last jobs on this program's cluster.
struct OnCluster<'a>(&'a Cluster);

impl JobRunner for OnCluster<'_> {
    fn run<J: FragmentedJob>(&self, job: &Arc<J>, count: usize) -> Result<JobReport, ExecuteError> {
        self.0.execute(job, count)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // RUST_LOG=fragmenta_runtime=debug shows links, jobs and fragment blocks with their ids.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    // A config file, or a launcher that started several processes (srun, mpirun): the cluster
    // is already there, this process is one of its hosts.
    let configured = std::env::var_os(fragmenta_config::CONFIG_ENV).is_some()
        || matches!(fragmenta_config::launcher::detect(), Ok(Some(l)) if l.size > 1);
    // Rendering can take a while: say now, not after it, that the picture cannot be written.
    if let Err(e) = check_out(&args.out) {
        eprintln!("sort_last: error: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &args.volume {
        // Every host reads the file; say at once if it cannot be read here.
        if let Err(e) = std::fs::File::open(path) {
            eprintln!("sort_last: error: --volume {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    let result = if !configured && args.hosts > 1 {
        start_hosts(args.hosts as usize)
    } else {
        run(&args)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sort_last: error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Starts `n` copies of this program as the hosts of a cluster on this machine and waits for
/// them; the exit code is host 0's.
fn start_hosts(n: usize) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let opts = fragmenta_cli::LaunchOptions::new(n, exe, std::env::args_os().skip(1));
    let code = fragmenta_cli::launch(opts)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let cluster = Cluster::builder()
        .register::<LoadBricks>()
        .register::<RenderBricks>()
        .register::<SwapStep>()
        .register::<FreePublications>()
        .join()?;
    if !cluster.is_primary() {
        // Every host runs this program; all but the primary serve fragments until it is done.
        cluster.serve()?;
        return Ok(ExitCode::SUCCESS);
    }
    let source = match (&args.volume, args.dims) {
        (Some(path), Some(dims)) => VolumeSource::Raw {
            path: path.clone(),
            dims,
            voxel: args.voxel,
        },
        _ => VolumeSource::marschner_lobb(args.size)?,
    };
    // Rank 0 is this host (it gathers the image); the others follow in id order.
    let me = cluster.host_id();
    let mut hosts = vec![me];
    hosts.extend(cluster.hosts().into_iter().filter(|&h| h != me));
    let sl = SortLast::new(source.clone(), hosts)?;
    let (width, height) = args.image;
    let camera = Camera {
        azimuth: args.azimuth,
        elevation: args.elevation,
        width,
        height,
        ..Camera::default()
    };
    let camera = match args.distance {
        Some(distance) => Camera { distance, ..camera },
        None => camera.fitted(source.dims()),
    };
    let runner = OnCluster(&cluster);
    let what = match &source {
        VolumeSource::MarschnerLobb { dims } => format!("Marschner-Lobb {}^3", dims[0]),
        VolumeSource::Raw { path, dims, .. } => {
            format!("{} ({}x{}x{})", path.display(), dims[0], dims[1], dims[2])
        }
    };
    println!(
        "sort_last: {what} on {} host(s), {width}x{height}, {} compositing",
        sl.hosts().len(),
        args.composite
    );

    let start = Instant::now();
    let load = sl.load(&runner)?;
    let frame = sl.render(
        &runner,
        &camera,
        &args.tf,
        &RenderParams::default(),
        args.composite,
    )?;
    let total = start.elapsed();
    sl.unload(&runner)?;
    frame.image.write_png(&args.out, args.background)?;
    let (busiest, bytes) = frame.busiest();
    println!(
        "load {:.3} s | render {:.3} s (slowest brick) | composite {:.3} s | total {:.3} s | \
         busiest host {busiest} received {:.2} MB",
        load.elapsed.as_secs_f64(),
        frame.render.as_secs_f64(),
        frame.composite().as_secs_f64(),
        total.as_secs_f64(),
        bytes as f64 / 1e6
    );
    println!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}
