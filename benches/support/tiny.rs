//! The no-op job both cluster benchmarks time: a fragment adds its index (locally, or as 8
//! bytes sent back from a remote host), and a variant that places every fragment on hosts 1-3.

use fragmenta::*;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Tiny {
    #[serde(skip)]
    pub(crate) sum: AtomicU64,
}

impl FragmentedJob for Tiny {
    const CLASS_ID: ClassId = ClassId::from_name("bench.tiny");
    fn execute_fragment(&self, _: &Transaction, i: usize, _: usize, _: &ExecutionContext) {
        self.sum.fetch_add(i as u64, Ordering::Relaxed);
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        _: &Transaction,
        i: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        out.write_all(&(i as u64).to_le_bytes())
    }
    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        let v = u64::from_le_bytes(r.bytes().try_into().unwrap_or([0; 8]));
        self.sum.fetch_add(v, Ordering::Relaxed);
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Cluster
    }
    fn allow_non_sequential_chunks(&self) -> bool {
        true
    }
}

/// [`Tiny`] with every fragment placed on a remote host, round-robin.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct RemoteTiny(pub(crate) Tiny);

impl FragmentedJob for RemoteTiny {
    const CLASS_ID: ClassId = ClassId::from_name("bench.remote-tiny");
    fn execute_fragment(&self, t: &Transaction, i: usize, c: usize, x: &ExecutionContext) {
        self.0.execute_fragment(t, i, c, x)
    }
    fn execute_fragment_remote(
        &self,
        out: &mut ResultWriter<'_>,
        t: &Transaction,
        i: usize,
        c: usize,
        x: &ExecutionContext,
    ) -> std::io::Result<()> {
        self.0.execute_fragment_remote(out, t, i, c, x)
    }
    fn receive_remote_result(&self, r: &mut ResultReader, t: &Transaction, i: usize, c: usize) {
        self.0.receive_remote_result(r, t, i, c)
    }
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (i, s) in slots.iter_mut().enumerate() {
            *s = HostId(1 + (i % 3) as u32);
        }
    }
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }
    fn allow_non_sequential_chunks(&self) -> bool {
        true
    }
}
