//! The logic of the `fragmenta` command line tool (the binary itself is `src/bin/fragmenta.rs`
//! of the root package and only calls [`main`]).
//!
//! ```text
//! fragmenta launch -n N [--config FILE] [--cores C] [--grace-ms MS] -- PROG ARGS...
//! fragmenta certs --config FILE [--validity-days DAYS] [--force]
//! fragmenta certs --out DIR --hosts 0,1,2 [--cluster NAME] [--validity-days DAYS] [--force]
//! fragmenta status --config FILE
//! fragmenta secret [FILE]
//! fragmenta pipeline check FILE
//! fragmenta pipeline run FILE --payload PATH --output DIR [--threads] [-- PROG ARGS...]
//! ```
//!
//! `launch` is also a library function, [`launch()`], so that tests and tools can start local
//! clusters. It owns process supervision only: what the children do is the runtime's business.

mod commands;
mod launch;
mod pipeline;
mod secret;
mod signals;

pub use launch::{launch, LaunchError, LaunchOptions, DEFAULT_GRACE};

use std::process::ExitCode;

/// Entry point of the `fragmenta` binary: parses the command line, runs the command, and
/// prints errors (with their causes) to stderr.
pub fn main() -> ExitCode {
    if let Some(code) = pipeline::operator_process() {
        return code;
    }
    commands::main()
}
