//! `fragmenta pipeline check FILE` and `fragmenta pipeline run FILE ...`: typed operator
//! pipelines (Clara api-version 0.5.0) from the command line.
//!
//! `run` starts one operator process per operator. With `-- PROG ARGS...` every operator
//! process is `PROG ARGS...` (a user's operator binary calling
//! `fragmenta_pipeline::process::operator_main`); without it the `fragmenta` binary itself is
//! the operator binary, with the operators built into it (the passthrough pipeline's).
//! `--threads` runs the built-in operators as threads of this process instead.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use fragmenta_fastio::LocalContext;
use fragmenta_pipeline::process::{operator_main, run_processes};
use fragmenta_pipeline::{passthrough, OperatorRegistry, Pipeline, PipelineDef, RunOptions};

/// The operators built into the `fragmenta` binary.
fn builtin() -> OperatorRegistry {
    passthrough::registry()
}

/// When this process was started as an operator process by a pipeline driver, runs that
/// operator and returns the exit code; `None` otherwise.
pub(crate) fn operator_process() -> Option<ExitCode> {
    operator_main(&builtin()).map(|code| ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    #[command(subcommand)]
    command: PipelineCommand,
}

#[derive(Debug, Subcommand)]
enum PipelineCommand {
    /// Validate a pipeline definition: prints every error (path, line, operator, port) and
    /// exits with status 1 if there is any.
    Check {
        /// The pipeline definition (YAML).
        file: PathBuf,
    },
    /// Run a pipeline: one process per operator, sharing this host's Fast I/O context.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The pipeline definition (YAML).
    file: PathBuf,
    /// The payload: a file or folder, read by every stream input without `from`.
    #[arg(long, value_name = "PATH")]
    payload: PathBuf,
    /// The output folder (stream outputs go to operators/<operator>/<output>/).
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    /// Run the built-in operators as threads of this process instead of processes.
    #[arg(long, conflicts_with = "command")]
    threads: bool,
    /// Seconds an operator may execute before it is faulted.
    #[arg(long, value_name = "S", default_value_t = 600)]
    operator_timeout: u64,
    /// Seconds the whole run may take.
    #[arg(long, value_name = "S", default_value_t = 3600)]
    timeout: u64,
    /// Capacity of the Fast I/O context the operators share, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 4096)]
    fastio_mib: u64,
    /// The operator program and its arguments (default: this binary's built-in operators).
    #[arg(last = true, value_name = "PROG")]
    command: Vec<OsString>,
}

pub(crate) fn run(args: PipelineArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PipelineCommand::Check { file } => match PipelineDef::load(&file) {
            Ok(def) => {
                println!(
                    "{}: pipeline {} (api-version {}) with {} operators is valid",
                    file.display(),
                    def.name,
                    def.api_version,
                    def.operators.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {} error(s)", file.display(), e.errors.len());
                for err in &e.errors {
                    eprintln!("{err}");
                }
                Ok(ExitCode::FAILURE)
            }
        },
        PipelineCommand::Run(a) => {
            let def = match PipelineDef::load(&a.file) {
                Ok(def) => def,
                Err(e) => {
                    eprintln!("{}: {e}", a.file.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            let opts = RunOptions::new(&a.payload, &a.output)
                .operator_timeout(Duration::from_secs(a.operator_timeout))
                .run_timeout(Duration::from_secs(a.timeout));
            let ctx = LocalContext::new(a.fastio_mib.saturating_mul(1 << 20));
            let report = if a.command.is_empty() {
                // The built-in operators: check the binding before anything runs.
                let pipeline = match Pipeline::new(def, builtin()) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("{}: {e}", a.file.display());
                        return Ok(ExitCode::FAILURE);
                    }
                };
                if a.threads {
                    pipeline.run(&ctx, &opts)?
                } else {
                    let me = std::env::current_exe().context("locating this binary")?;
                    pipeline.run_processes(&ctx, &[me.into_os_string()], &opts)?
                }
            } else {
                run_processes(&def, &ctx, &a.command, &opts)?
            };
            print!("{report}");
            Ok(if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
