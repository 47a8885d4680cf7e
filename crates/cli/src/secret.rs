//! `fragmenta secret`: a new cluster secret, for clusters formed by `srun` or `mpirun` with no
//! configuration file (see `fragmenta_net::secret`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use fragmenta_net::secret::{ClusterSecret, SECRET_ENV, SECRET_FILE_ENV};

/// Arguments of `fragmenta secret`.
#[derive(Debug, Args)]
pub(crate) struct SecretArgs {
    /// Write the secret to this new file (mode 0600; an existing file is not replaced) and
    /// print how to use it. Without it, print `export FRAGMENTA_SECRET=<hex>`.
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

pub(crate) fn run(args: SecretArgs) -> anyhow::Result<()> {
    let secret = ClusterSecret::generate()?;
    match args.file {
        Some(path) => {
            secret
                .write_file(&path)
                .with_context(|| format!("cannot create the secret file {}", path.display()))?;
            let shown = std::path::absolute(&path).unwrap_or(path);
            eprintln!(
                "wrote a new cluster secret to {} (mode 0600); give it to every process:",
                shown.display()
            );
            println!("export {SECRET_FILE_ENV}={}", shown.display());
        }
        None => {
            eprintln!(
                "a new cluster secret; prefer a file (`fragmenta secret FILE`): sbatch stores \
                 the job's environment in the controller's state"
            );
            println!("export {SECRET_ENV}={}", secret.to_hex());
        }
    }
    Ok(())
}
