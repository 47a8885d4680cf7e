//! Clara's FastIO passthrough pipeline (`crates/pipeline/pipelines/passthrough.yaml`): a NIfTI
//! volume goes into a Fast I/O Variable, out to a NumPy `.npz`, and is compared with the
//! original voxel for voxel.
//!
//! ```text
//! cargo run --release --example passthrough                          # generated NIfTI, threads
//! cargo run --release --example passthrough -- --payload FILE.nii.gz # a real one
//! cargo run --release --example passthrough -- --processes           # one process per operator
//! # the same binary as the operator program of `fragmenta pipeline run`:
//! cargo build --release --example passthrough --bin fragmenta
//! target/release/fragmenta pipeline run crates/pipeline/pipelines/passthrough.yaml \
//!     --payload FILE.nii.gz --output out -- target/release/examples/passthrough
//! ```
//!
//! Prints the report of every operator and the verdict; exits with status 1 unless the verdict
//! is `true`.

use std::path::PathBuf;
use std::process::ExitCode;

use fragmenta::pipeline::passthrough::{self, PASSTHROUGH_YAML, VERDICT_FILE};
use fragmenta::pipeline::process::operator_main;
use fragmenta::pipeline::{stream_dir, Pipeline, PipelineDef, RunOptions};
use fragmenta::LocalContext;

fn main() -> ExitCode {
    // Started by a pipeline driver as one of its operator processes: be that operator.
    if let Some(code) = operator_main(&passthrough::registry()) {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("passthrough: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let mut payload: Option<PathBuf> = None;
    let mut output: Option<PathBuf> = None;
    let mut processes = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--payload" => payload = Some(args.next().ok_or("--payload needs a path")?.into()),
            "--output" => output = Some(args.next().ok_or("--output needs a folder")?.into()),
            "--processes" => processes = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let scratch = tempfile::tempdir()?;
    let payload = match payload {
        Some(p) => p,
        None => {
            let p = scratch.path().join("generated.nii.gz");
            passthrough::write_test_nifti(&p, [64, 48, 32])?;
            println!(
                "payload: a generated 64x48x32 float32 NIfTI ({})",
                p.display()
            );
            p
        }
    };
    let output = output.unwrap_or_else(|| scratch.path().join("out"));
    let pipeline = Pipeline::new(
        PipelineDef::parse(PASSTHROUGH_YAML)?,
        passthrough::registry(),
    )?;
    let ctx = LocalContext::new(4 << 30);
    let opts = RunOptions::new(&payload, &output);
    let report = if processes {
        let me = std::env::current_exe()?;
        pipeline.run_processes(&ctx, &[me.into_os_string()], &opts)?
    } else {
        pipeline.run(&ctx, &opts)?
    };
    print!("{report}");
    let verdict_file =
        stream_dir(&output, "compare-original-to-output", "truth-val").join(VERDICT_FILE);
    let verdict = std::fs::read_to_string(&verdict_file).unwrap_or_default();
    println!("truth-val ({}): {verdict}", verdict_file.display());
    Ok(report.succeeded() && verdict == "true")
}
