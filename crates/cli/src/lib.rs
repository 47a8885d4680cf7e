//! The `fragmenta` command line (placeholder, being written).
use std::process::ExitCode;
/// Entry point of the `fragmenta` binary.
pub fn main() -> ExitCode { ExitCode::SUCCESS }
