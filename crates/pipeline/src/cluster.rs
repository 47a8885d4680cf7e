//! Cluster mode: operators placed on the hosts of a fragmenta cluster. Each operator whose
//! inputs are ready runs as a one-fragment USER_DEFINED job ([`OperatorJob`]) on its host
//! (`x-fragmenta: {host: N}`; the initiating host when absent). It publishes its outputs in
//! that host's Fast I/O context and reads its inputs with `Transaction::fetch` from the hosts
//! of their producers (a zero-copy `get` on its own host, a copy over QUIC from another).
//! When the run ends a [`FreeJob`] frees the run's variables on every host.
//!
//! Every host must register the two job types
//! (`ClusterBuilder::register::<OperatorJob>().register::<FreeJob>()`) and bind the operators
//! with [`install_registry`]. Stream ports are paths: every host must see the payload and the
//! output folder at the same paths (one machine, or a shared file system).

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use fragmenta_fastio::FastIo;
use fragmenta_job::{
    ClassId, ExecutionContext, FragmentedJob, HostId, ResultReader, ResultWriter, SchedulingMode,
    Transaction,
};
use fragmenta_runtime::{Cluster, JobHandle};
use serde::{Deserialize, Serialize};

use crate::driver::{new_run_id, prepare_dirs, Pipeline, RunOptions, RunReport, Schedule};
use crate::error::RunError;
use crate::exec::{self, Layout};
use crate::model::PipelineDef;
use crate::operator::OperatorRegistry;

static REGISTRY: RwLock<Option<OperatorRegistry>> = RwLock::new(None);

/// Binds the operators this process runs for cluster jobs (call on every host).
pub fn install_registry(registry: OperatorRegistry) {
    *REGISTRY.write().unwrap_or_else(PoisonError::into_inner) = Some(registry);
}

/// How often the driver looks at its operator jobs.
const POLL: Duration = Duration::from_millis(2);

/// One operator of a run, as a one-fragment job on its host.
#[derive(Serialize, Deserialize)]
pub struct OperatorJob {
    definition: String,
    operator: usize,
    run: String,
    payload: PathBuf,
    output: PathBuf,
    /// The host of every operator of the pipeline (where its outputs are published).
    hosts: Vec<u32>,
    #[serde(skip)]
    outcome: Mutex<Option<Result<(), String>>>,
}

impl OperatorJob {
    fn run(&self, tx: &Transaction) -> Result<(), String> {
        let registry = REGISTRY
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or("no operator registry installed on this host")?;
        let def = PipelineDef::parse(&self.definition).map_err(|e| e.to_string())?;
        let opdef = def
            .operators
            .get(self.operator)
            .ok_or("the job names no operator of its pipeline")?;
        let mut op = registry
            .instantiate(opdef)
            .ok_or_else(|| format!("no operator registered for `{}` on this host", opdef.name))?;
        let ctx = tx
            .fastio()
            .ok_or("this host has no Fast I/O context")?
            .clone();
        let layout = Layout {
            run: self.run.clone(),
            host: Some(tx.host().0),
            payload: self.payload.clone(),
            output: self.output.clone(),
        };
        exec::prepare(op.as_mut(), &opdef.name, &self.run)?;
        let get = |producer: usize, name: &str| {
            let host = self
                .hosts
                .get(producer)
                .copied()
                .ok_or("unknown producer")?;
            tx.fetch(HostId(host), name)
                .map_err(|e| format!("fetch from host {host}: {e}"))
        };
        let fastio: Arc<dyn FastIo> = Arc::new(ctx.clone());
        let result = exec::execute(op.as_mut(), &def, self.operator, &layout, fastio, &get)
            .and_then(|outputs| {
                if tx.is_cancelled() {
                    // Timed out meanwhile: the driver has moved on; publish nothing.
                    return Err("cancelled".to_owned());
                }
                crate::thread::publish(&ctx, &outputs)
            });
        exec::cleanup(op.as_mut(), &opdef.name);
        result
    }

    fn set(&self, outcome: Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }
}

impl FragmentedJob for OperatorJob {
    const CLASS_ID: ClassId = ClassId::from_name("fragmenta.pipeline.operator");

    fn execute_fragment(&self, tx: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        self.set(self.run(tx));
    }

    fn execute_fragment_remote(
        &self,
        result: &mut ResultWriter<'_>,
        tx: &Transaction,
        _: usize,
        _: usize,
        _: &ExecutionContext,
    ) -> std::io::Result<()> {
        let bytes = match self.run(tx) {
            Ok(()) => vec![0],
            Err(m) => std::iter::once(1).chain(m.into_bytes()).collect(),
        };
        result.write_chunk(bytes)
    }

    fn receive_remote_result(&self, r: &mut ResultReader, _: &Transaction, _: usize, _: usize) {
        let mut bytes = Vec::new();
        if r.read_to_end(&mut bytes).is_err() || bytes.is_empty() {
            return; // the final, empty chunk
        }
        self.set(match bytes[0] {
            0 => Ok(()),
            _ => Err(String::from_utf8_lossy(&bytes[1..]).into_owned()),
        });
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }

    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        if let (Some(slot), Some(&host)) = (slots.first_mut(), self.hosts.get(self.operator)) {
            *slot = HostId(host);
        }
    }
}

/// Frees the variables of a run on every host (one fragment per host).
#[derive(Serialize, Deserialize)]
pub struct FreeJob {
    definition: String,
    run: String,
    hosts: Vec<u32>,
}

impl FragmentedJob for FreeJob {
    const CLASS_ID: ClassId = ClassId::from_name("fragmenta.pipeline.free");

    fn execute_fragment(&self, tx: &Transaction, _: usize, _: usize, _: &ExecutionContext) {
        if let (Some(ctx), Ok(def)) = (tx.fastio(), PipelineDef::parse(&self.definition)) {
            exec::free_run(ctx, &def, &self.run);
        }
    }

    fn scheduling_mode(&self) -> SchedulingMode {
        SchedulingMode::UserDefined
    }

    fn assign_fragments_to_hosts(&self, slots: &mut [HostId]) {
        for (slot, &h) in slots.iter_mut().zip(&self.hosts) {
            *slot = HostId(h);
        }
    }
}

impl Pipeline {
    /// Runs the pipeline on `cluster` (see the module docs): installs this pipeline's
    /// registry on this host for the operators that run here; other hosts install theirs.
    pub fn run_cluster(&self, cluster: &Cluster, opts: &RunOptions) -> Result<RunReport, RunError> {
        install_registry(self.registry.clone());
        run_cluster(&self.def, cluster, opts)
    }
}

/// Runs `def` on `cluster`, each ready operator as an [`OperatorJob`] on its host.
pub fn run_cluster(
    def: &PipelineDef,
    cluster: &Cluster,
    opts: &RunOptions,
) -> Result<RunReport, RunError> {
    prepare_dirs(def, opts)?;
    let run = new_run_id();
    let here = cluster.host_id().0;
    let hosts: Vec<u32> = def
        .operators
        .iter()
        .map(|o| o.host.unwrap_or(here))
        .collect();
    let known = cluster.hosts();
    let definition = def.to_yaml();
    let n = def.operators.len();
    let mut sched = Schedule::new(def, opts, Instant::now());
    let mut running: Vec<Option<(Arc<OperatorJob>, JobHandle)>> = (0..n).map(|_| None).collect();
    for (i, &h) in hosts.iter().enumerate() {
        if known.contains(&HostId(h)) {
            sched.on_prepared(i);
        } else {
            sched.on_faulted(i, format!("host {h} is not a host of the cluster"));
        }
    }
    let payload = std::path::absolute(&opts.payload).unwrap_or_else(|_| opts.payload.clone());
    let output = std::path::absolute(&opts.output).unwrap_or_else(|_| opts.output.clone());
    while !sched.finished() {
        for i in sched.take_ready(Instant::now()) {
            let job = Arc::new(OperatorJob {
                definition: definition.clone(),
                operator: i,
                run: run.clone(),
                payload: payload.clone(),
                output: output.clone(),
                hosts: hosts.clone(),
                outcome: Mutex::new(None),
            });
            match cluster.submit(&job, 1) {
                Ok(handle) => running[i] = Some((job, handle)),
                Err(e) => {
                    sched.on_faulted(i, format!("the cluster refused the operator's job: {e}"));
                }
            }
        }
        for i in 0..n {
            let finished = running[i].as_ref().is_some_and(|(_, h)| h.is_finished());
            if !finished {
                continue;
            }
            let Some((job, handle)) = running[i].take() else {
                continue;
            };
            let outcome = job
                .outcome
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            match (handle.wait(), outcome) {
                (Ok(report), Some(Ok(()))) if report.is_complete() => {
                    sched.on_completed(i);
                }
                (_, Some(Err(m))) => {
                    sched.on_faulted(i, m);
                }
                (Ok(report), None) => {
                    let why = report
                        .failures
                        .first()
                        .map(|f| {
                            format!(
                                "the operator's job failed on host {}: {:?}",
                                hosts[i], f.reason
                            )
                        })
                        .unwrap_or_else(|| {
                            format!("the operator's job did not run on host {}", hosts[i])
                        });
                    sched.on_faulted(i, why);
                }
                (Err(e), _) => {
                    sched.on_faulted(i, format!("the operator's job failed: {e}"));
                }
                (Ok(_), Some(Ok(()))) => {
                    sched.on_faulted(i, "the operator's job did not complete".to_owned());
                }
            }
        }
        let (faulted, _) = sched.expire(Instant::now());
        for i in faulted {
            if let Some((_, handle)) = running[i].take() {
                handle.cancel();
            }
        }
        if !sched.finished() {
            std::thread::sleep(POLL);
        }
    }
    let free = Arc::new(FreeJob {
        definition,
        run: run.clone(),
        hosts: known.iter().map(|h| h.0).collect(),
    });
    if let Err(e) = cluster.execute(&free, known.len()) {
        tracing::warn!(error = %e, "freeing the run's variables failed");
    }
    Ok(sched.into_report(run, opts.output.clone()))
}
