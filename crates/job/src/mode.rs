//! Scheduling modes.

use serde::{Deserialize, Serialize};

/// How the fragments of a job are placed on hosts. Mirrors `IFragmented_job::Scheduling_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SchedulingMode {
    /// All fragments run on the initiating host (DiCE `LOCAL`). `serialize`, `deserialize` and
    /// the remote methods are never called.
    #[default]
    Local,
    /// Fragments are spread over all hosts of the cluster, the initiator included, balanced by
    /// free capacity (DiCE `CLUSTER`). A fragment whose host fails is reassigned to another host.
    Cluster,
    /// At most one fragment per remote host of the initiator's sub-cluster (DiCE
    /// `ONCE_PER_HOST`). A count of 0 means exactly one per remote host. Not allowed for jobs
    /// with a GPU load.
    OncePerHost,
    /// [`FragmentedJob::assign_fragments_to_hosts`](crate::FragmentedJob::assign_fragments_to_hosts)
    /// decides (DiCE `USER_DEFINED`). Fragments on unknown hosts are skipped; fragments of a host
    /// that fails are reported failed, not reassigned.
    UserDefined,
}
