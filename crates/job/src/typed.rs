//! Typed results: a job whose fragments return serde values, merged by one method on the
//! initiator whether the fragment ran there or on another host.

use crate::{
    ClassId, ExecutionContext, FragmentedJob, HostId, ResultReader, ResultWriter, SchedulingMode,
    Transaction,
};
use serde::{de::DeserializeOwned, Serialize};
use std::ops::Range;

/// What a fragment of a [`TypedJob`] is told: which one it is and where it runs.
#[derive(Clone, Copy, Debug)]
pub struct Fragment<'a> {
    /// The fragment's index, `0..count`.
    pub index: usize,
    /// Fragments in the job.
    pub count: usize,
    /// The job's scope on the host it runs on (Fast I/O, fetch, nested jobs).
    pub transaction: &'a Transaction,
    /// Where and how it runs (host, worker, GPUs, cancellation).
    pub context: &'a ExecutionContext,
}

impl Fragment<'_> {
    /// This fragment's share of `0..len` when `len` items are split as evenly as possible over
    /// the job's fragments in order: the shares of fragments `0..count` are disjoint, ascending
    /// and cover `0..len`, and their sizes differ by at most one.
    pub fn share(&self, len: usize) -> Range<usize> {
        share(len, self.index, self.count)
    }

    /// The host the fragment runs on.
    pub fn host(&self) -> HostId {
        self.context.host()
    }

    /// Whether the job was cancelled: a long fragment should stop early when this is true.
    pub fn is_cancelled(&self) -> bool {
        self.context.is_cancelled()
    }
}

/// Share `index` of `count` of `0..len` (see [`Fragment::share`]); empty when `index >= count`.
pub fn share(len: usize, index: usize, count: usize) -> Range<usize> {
    if index >= count {
        return len..len;
    }
    let (base, extra) = (len / count, len % count);
    // The first `extra` shares hold one item more.
    let start = index * base + index.min(extra);
    let size = base + usize::from(index < extra);
    start..start + size
}

/// A fragmented job with typed results: each fragment [`run`](Self::run)s to a serde value,
/// and the initiator's original instance gets every value through [`merge`](Self::merge), once
/// per fragment, wherever the fragment ran. A local fragment's value is handed over as it is;
/// a remote fragment's value travels as one result chunk (bincode) and is merged when it
/// arrives, exactly once even when the fragment runs again after a host failure.
///
/// Every `TypedJob` is a [`FragmentedJob`], so it is submitted, scheduled and registered like
/// one (put `#[fragmenta::job]` on the impl block). Jobs that stream large results without a
/// copy implement [`FragmentedJob`] and its byte path instead.
///
/// ```
/// use fragmenta_job::*;
/// use serde::{Deserialize, Serialize};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct SumOfSquares {
///     #[serde(skip)]
///     total: AtomicU64,
/// }
///
/// impl TypedJob for SumOfSquares {
///     const CLASS_ID: ClassId = ClassId::from_name("example.typed.sum-of-squares");
///     type Output = u64;
///     fn run(&self, f: &Fragment<'_>) -> u64 {
///         (f.index * f.index) as u64
///     }
///     fn merge(&self, _index: usize, square: u64) {
///         self.total.fetch_add(square, Ordering::Relaxed);
///     }
/// }
/// ```
pub trait TypedJob: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable identifier of this job type, the same on every host
    /// ([`FragmentedJob::CLASS_ID`]).
    const CLASS_ID: ClassId;

    /// What one fragment produces.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Runs one fragment, on the original instance when it runs on the initiator and on the
    /// host's replica elsewhere. Fragments run in parallel. A panic fails the fragment (it is
    /// not merged).
    fn run(&self, fragment: &Fragment<'_>) -> Self::Output;

    /// Receives the value of fragment `index`, on the initiator's original instance, once per
    /// fragment that completed. Calls may come from several threads at once (local fragments
    /// merge where they ran, remote ones where their result arrives), in any order: keep the
    /// merged state behind a `Mutex` or in atomics.
    ///
    /// A remote value that does not decode as [`Output`](Self::Output) (a host running
    /// another build of the program) is not merged; the delivery panics with a message that
    /// names the fragment and the decoder's error.
    fn merge(&self, index: usize, output: Self::Output);

    /// The scheduling mode ([`FragmentedJob::scheduling_mode`]). Default: LOCAL.
    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::Local
    }

    /// CPU load of one fragment ([`FragmentedJob::cpu_load`]). Default 1.0.
    fn cpu_load(&self) -> f32 {
        1.0
    }

    /// GPU load of one fragment ([`FragmentedJob::gpu_load`]). Default 0.0.
    fn gpu_load(&self) -> f32 {
        0.0
    }

    /// Priority among waiting fragments, smaller first ([`FragmentedJob::priority`]).
    /// Default 0.
    fn priority(&self) -> i8 {
        0
    }

    /// Most fragments running at once per host, 0 for no limit
    /// ([`FragmentedJob::thread_limit`]). Default 0.
    fn thread_limit(&self) -> usize {
        0
    }

    /// Host of each fragment for USER_DEFINED jobs
    /// ([`FragmentedJob::assign_fragments_to_hosts`]). Default: assigns nothing.
    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        let _ = slots;
    }

    /// Called on the original and each replica when the job is cancelled
    /// ([`FragmentedJob::cancel`]). Default: does nothing.
    fn cancel(&self) {}
}

impl<T: TypedJob> FragmentedJob for T {
    const CLASS_ID: ClassId = <T as TypedJob>::CLASS_ID;

    fn execute_fragment(
        &self,
        transaction: &Transaction,
        index: usize,
        count: usize,
        context: &ExecutionContext,
    ) {
        let output = self.run(&Fragment {
            index,
            count,
            transaction,
            context,
        });
        self.merge(index, output);
    }

    fn execute_fragment_remote(
        &self,
        result: &mut ResultWriter<'_>,
        transaction: &Transaction,
        index: usize,
        count: usize,
        context: &ExecutionContext,
    ) -> std::io::Result<()> {
        let output = self.run(&Fragment {
            index,
            count,
            transaction,
            context,
        });
        result.write_value(&output)
    }

    fn receive_remote_result(
        &self,
        result: &mut ResultReader,
        _transaction: &Transaction,
        index: usize,
        _count: usize,
    ) {
        match result.read_value::<T::Output>() {
            Ok(output) => self.merge(index, output),
            Err(e) => panic!(
                "the result of fragment {index} is not a {}: {e}",
                std::any::type_name::<T::Output>()
            ),
        }
    }

    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        TypedJob::assign_fragments_to_hosts(self, slots);
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        TypedJob::scheduling_mode(self)
    }

    fn cpu_load(&self) -> f32 {
        TypedJob::cpu_load(self)
    }

    fn gpu_load(&self) -> f32 {
        TypedJob::gpu_load(self)
    }

    fn cancel(&self) {
        TypedJob::cancel(self);
    }

    fn priority(&self) -> i8 {
        TypedJob::priority(self)
    }

    fn thread_limit(&self) -> usize {
        TypedJob::thread_limit(self)
    }

    /// Each fragment's value is merged on its own: any order will do.
    fn allow_non_sequential_chunks(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CancelToken, JobId};
    use serde::Deserialize;
    use std::sync::Mutex;

    type Merged = Mutex<Vec<(usize, Vec<(String, u32)>)>>;

    #[derive(Serialize, Deserialize, Default)]
    struct Words {
        text: Vec<String>,
        #[serde(skip)]
        merged: Merged,
    }

    impl TypedJob for Words {
        const CLASS_ID: ClassId = ClassId::from_name("test.typed.words");
        type Output = Vec<(String, u32)>;
        fn run(&self, f: &Fragment<'_>) -> Self::Output {
            self.text[f.share(self.text.len())]
                .iter()
                .map(|w| (w.clone(), w.len() as u32))
                .collect()
        }
        fn merge(&self, index: usize, output: Self::Output) {
            self.merged.lock().unwrap().push((index, output));
        }
    }

    fn tx() -> Transaction {
        Transaction::new(
            HostId(0),
            JobId {
                initiator: HostId(0),
                seq: 1,
            },
            CancelToken::new(),
        )
    }

    fn ctx() -> ExecutionContext {
        ExecutionContext::new(HostId(1), 0, vec![], CancelToken::new())
    }

    #[test]
    fn local_and_remote_fragments_reach_the_same_merge_with_the_same_value() {
        let job = Words {
            text: ["a", "bb", "ccc", "dddd", "eeeee"]
                .map(String::from)
                .to_vec(),
            ..Words::default()
        };
        // Fragment 0 locally, fragment 1 "remotely": on a replica, through the result bytes.
        job.execute_fragment(&tx(), 0, 2, &ctx());
        let replica: Words = bincode::serde::decode_from_slice(
            &bincode::serde::encode_to_vec(&job, bincode::config::standard()).unwrap(),
            bincode::config::standard(),
        )
        .unwrap()
        .0;
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut writer = ResultWriter::new(&mut chunks);
        replica
            .execute_fragment_remote(&mut writer, &tx(), 1, 2, &ctx())
            .unwrap();
        assert_eq!(writer.finish().unwrap(), 1, "one value, one chunk");
        assert!(
            replica.merged.lock().unwrap().is_empty(),
            "replicas never merge"
        );
        let mut reader = ResultReader::new(0, chunks.remove(0));
        job.receive_remote_result(&mut reader, &tx(), 1, 2);
        let merged = job.merged.lock().unwrap();
        let pair = |w: &str| (w.to_string(), w.len() as u32);
        assert_eq!(
            *merged,
            vec![
                (0, vec![pair("a"), pair("bb"), pair("ccc")]),
                (1, vec![pair("dddd"), pair("eeeee")]),
            ]
        );
        assert!(FragmentedJob::allow_non_sequential_chunks(&job));
        assert_eq!(
            <Words as FragmentedJob>::CLASS_ID,
            ClassId::from_name("test.typed.words")
        );
    }

    #[test]
    #[should_panic(expected = "the result of fragment 3 is not a")]
    fn a_result_that_does_not_decode_is_not_merged() {
        let job = Words::default();
        let mut reader = ResultReader::new(0, vec![0xff, 0xff]);
        job.receive_remote_result(&mut reader, &tx(), 3, 4);
    }

    #[test]
    fn shares_cover_the_range_in_order_and_differ_by_at_most_one() {
        for (len, count) in [(0, 3), (10, 3), (3, 10), (7, 7), (1000, 64)] {
            let shares: Vec<Range<usize>> = (0..count).map(|i| share(len, i, count)).collect();
            assert_eq!(shares[0].start, 0);
            assert_eq!(shares[count - 1].end, len);
            for w in shares.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let sizes: Vec<usize> = shares.iter().map(|r| r.len()).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{len}/{count}: {sizes:?}");
        }
        assert_eq!(share(10, 5, 3), 10..10);
    }
}
