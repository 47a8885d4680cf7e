//! Pipeline benchmarks, each figure printed beside its limit (`harness = false`; this binary
//! is also its own operator program):
//!
//! 1. handing a Fast I/O Variable from one operator process to the next, 4 KiB vs 1 GiB: from
//!    the producer returning from `execute` (its bytes written) to the consumer holding the
//!    mapped input (first and last byte read). Limit: the 1 GiB handoff at most 1.5x the
//!    4 KiB one (no copy);
//! 2. the whole passthrough pipeline on the NIfTI in thread mode, in process mode, and as a
//!    plain chain of Rust functions doing the same reads and writes.
//!
//! ```text
//! cargo bench -p fragmenta-pipeline --bench pipeline
//! ```

use std::ffi::OsString;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fragmenta_fastio::{ElementType, LocalContext};
use fragmenta_pipeline::passthrough::{self, NPZ_FILE, PASSTHROUGH_YAML, VERDICT_FILE};
use fragmenta_pipeline::process::{operator_main, run_processes};
use fragmenta_pipeline::{
    ExecuteContext, Operator, OperatorRegistry, OperatorResult, Pipeline, PipelineDef, PortSpec,
    Ports, RunOptions,
};

const LOG_ENV: &str = "PIPELINE_BENCH_LOG";
const REAL_NIFTI: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/data/nifti/avg152T1_LR_nifti.nii.gz"
);
const RUNS: usize = 7;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn log_dir() -> Result<PathBuf, String> {
    std::env::var_os(LOG_ENV)
        .map(PathBuf::from)
        .ok_or_else(|| "no log dir".to_owned())
}

/// Fills a dynamic uint8 output of the size in `PIPELINE_BENCH_BYTES`, then notes the time.
struct Produce;

impl Operator for Produce {
    fn ports(&self) -> Ports {
        Ports::new().output(PortSpec::array("data", ElementType::U8, &[-1]))
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let bytes: u64 = std::env::var("PIPELINE_BENCH_BYTES")?.parse()?;
        let out = ctx.output("data")?;
        out.allocate(&[bytes])?;
        out.write()?.bytes_mut().fill(0x5A);
        std::fs::write(log_dir()?.join("produced"), now_ns().to_string())?;
        Ok(())
    }
}

/// Maps its input, reads the first and last byte, notes the time.
struct Consume;

impl Operator for Consume {
    fn ports(&self) -> Ports {
        Ports::new().input(PortSpec::array("data", ElementType::U8, &[-1]))
    }
    fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
        let input = ctx.input("data")?;
        let r = input.read()?;
        let b = r.bytes();
        if b.first() != Some(&0x5A) || b.last() != Some(&0x5A) {
            return Err("wrong bytes".into());
        }
        let t = now_ns();
        drop(r);
        std::fs::write(log_dir()?.join("consumed"), t.to_string())?;
        Ok(())
    }
}

fn registry() -> OperatorRegistry {
    passthrough::registry()
        .register("produce", || Produce)
        .register("consume", || Consume)
}

const HANDOFF: &str = "\
api-version: 0.5.0
name: handoff
operators:
- name: produce
  output:
  - name: data
    type: array
    element-type: uint8
    shape: [-1]
- name: consume
  input:
  - from: produce
    name: data
    type: array
    element-type: uint8
    shape: [-1]
";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn handoff(bytes: u64, me: &[OsString]) -> Result<Duration, Box<dyn std::error::Error>> {
    let def = PipelineDef::parse(HANDOFF)?;
    let ctx = LocalContext::new(2 << 30);
    let dir = tempfile::tempdir()?;
    std::env::set_var(LOG_ENV, dir.path());
    std::env::set_var("PIPELINE_BENCH_BYTES", bytes.to_string());
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let report = run_processes(&def, &ctx, me, &RunOptions::new(dir.path(), dir.path()))?;
        if !report.succeeded() {
            return Err(format!("handoff run failed:\n{report}").into());
        }
        let read = |n: &str| -> Result<u128, Box<dyn std::error::Error>> {
            Ok(std::fs::read_to_string(dir.path().join(n))?
                .trim()
                .parse()?)
        };
        let (p, c) = (read("produced")?, read("consumed")?);
        times.push(Duration::from_nanos(u64::try_from(c.saturating_sub(p))?));
    }
    Ok(median(times))
}

/// The passthrough as plain Rust functions: the same file reads and writes, no pipeline.
fn plain_chain(payload: &Path, out: &Path) -> Result<bool, Box<dyn std::error::Error>> {
    let volume = passthrough::read_nifti(&passthrough::find_nifti(payload)?)?;
    let dims: Vec<usize> = std::iter::once(1)
        .chain(volume.shape().iter().copied())
        .collect();
    let c_order: Vec<f32> = volume.iter().copied().collect();
    let shape: Vec<i32> = dims.iter().map(|&d| d as i32).collect();
    if shape.iter().map(|&d| d as usize).collect::<Vec<_>>() != dims {
        return Err("shape".into());
    }
    let view = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(&dims), &c_order)?;
    let npz_dir = out.join("npz");
    std::fs::create_dir_all(&npz_dir)?;
    let mut npz =
        ndarray_npy::NpzWriter::new(BufWriter::new(File::create(npz_dir.join(NPZ_FILE))?));
    npz.add_array("segmentation", &view)?;
    npz.finish()?;
    let equal = passthrough::npz_equals_nifti(&npz_dir, &passthrough::find_nifti(payload)?)?;
    std::fs::write(out.join(VERDICT_FILE), if equal { "true" } else { "false" })?;
    Ok(equal)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(code) = operator_main(&registry()) {
        std::process::exit(code);
    }
    let me = vec![std::env::current_exe()?.into_os_string()];

    let small = handoff(4 << 10, &me)?;
    let large = handoff(1 << 30, &me)?;
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    println!("handoff between operator processes (median of {RUNS}):");
    println!("  4 KiB: {:8.3} ms", ms(small));
    println!("  1 GiB: {:8.3} ms", ms(large));
    println!(
        "  1 GiB / 4 KiB = {ratio:.2}x (limit 1.50x) {}",
        if ratio <= 1.5 { "ok" } else { "OVER LIMIT" }
    );

    let scratch = tempfile::tempdir()?;
    let payload = if Path::new(REAL_NIFTI).exists() {
        PathBuf::from(REAL_NIFTI)
    } else {
        println!("real NIfTI {REAL_NIFTI} is absent: using a generated 91x109x91 volume");
        let p = scratch.path().join("generated.nii.gz");
        passthrough::write_test_nifti(&p, [91, 109, 91])?;
        p
    };
    let pipeline = Pipeline::new(
        PipelineDef::parse(PASSTHROUGH_YAML)?,
        passthrough::registry(),
    )?;
    let ctx = LocalContext::new(1 << 30);
    let mut thread_t = Vec::new();
    let mut process_t = Vec::new();
    let mut plain_t = Vec::new();
    for i in 0..RUNS {
        let out = scratch.path().join(format!("run-{i}"));
        let opts = RunOptions::new(&payload, out.join("threads"));
        let t0 = Instant::now();
        let r = pipeline.run(&ctx, &opts)?;
        thread_t.push(t0.elapsed());
        let opts = RunOptions::new(&payload, out.join("processes"));
        let t0 = Instant::now();
        let p = pipeline.run_processes(&ctx, &me, &opts)?;
        process_t.push(t0.elapsed());
        let t0 = Instant::now();
        let equal = plain_chain(&payload, &out.join("plain"))?;
        plain_t.push(t0.elapsed());
        if !(r.succeeded() && p.succeeded() && equal) {
            return Err(format!("a passthrough run failed:\n{r}\n{p}").into());
        }
    }
    let (t, p, c) = (median(thread_t), median(process_t), median(plain_t));
    println!(
        "passthrough pipeline on {} (median of {RUNS}):",
        payload.display()
    );
    println!("  plain Rust function chain: {:8.2} ms", ms(c));
    println!(
        "  thread mode:               {:8.2} ms ({:.2}x the chain)",
        ms(t),
        ms(t) / ms(c)
    );
    println!(
        "  process mode:              {:8.2} ms ({:.2}x the chain)",
        ms(p),
        ms(p) / ms(c)
    );
    Ok(())
}
