#!/bin/sh
# The sort-last example under Open MPI's mpirun: one 4-host fragmenta cluster, no config file.
#
#   cargo build --release --example sort_last --bin fragmenta
#   target/release/fragmenta secret ~/.fragmenta-secret     # once; a mode-0600 file
#   sh cluster-configs/launchers/sort_last.mpirun.sh
#
# Each rank is one host (host id = OMPI_COMM_WORLD_RANK; rank 0 renders). Open MPI gives no
# host list: rank 0 is found on the machine of mpirun's own URI (where Open MPI puts rank 0
# with its default mapping), or at FRAGMENTA_RENDEZVOUS=<host>[:port] when set; the port is
# FRAGMENTA_PORT or derived from the Open MPI job id. `-x` passes the secret's location to
# ranks on other machines. `--oversubscribe` lets 4 ranks share fewer cores; inside an sbatch
# job the same line works (Open MPI's variables win over the inherited SLURM_PROCID).
set -e
export FRAGMENTA_SECRET_FILE="${FRAGMENTA_SECRET_FILE:-$HOME/.fragmenta-secret}"
mpirun -np 4 --oversubscribe -x FRAGMENTA_SECRET_FILE \
  target/release/examples/sort_last --out sort-last-mpirun.png
