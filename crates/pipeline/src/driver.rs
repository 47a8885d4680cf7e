//! The driver's bookkeeping, shared by every mode (sans-IO: the runners feed it events and the
//! time, it says which operators may start and which are faulted or skipped), the run report,
//! run options, and the bound [`Pipeline`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{InvalidPipeline, RunError};
use crate::model::{PipelineDef, PortType};
use crate::operator::{Operator, OperatorRegistry, PortSpec};
use crate::{exec, InputDef, OperatorDef, OutputDef, Site};

/// The state of an operator in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperatorState {
    /// Not started (or preparing, waiting for its inputs).
    Pending,
    /// Executing.
    Running,
    /// `execute` returned `Ok` and its outputs are published.
    Completed,
    /// Failed, panicked, timed out or died; see its messages.
    Faulted,
    /// Not run because an operator it depends on faulted (named in its messages).
    Skipped,
}

impl OperatorState {
    fn is_terminal(self) -> bool {
        matches!(
            self,
            OperatorState::Completed | OperatorState::Faulted | OperatorState::Skipped
        )
    }
}

/// What happened to one operator in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorReport {
    /// The operator's name.
    pub name: String,
    /// Its final state.
    pub state: OperatorState,
    /// When it started executing (its inputs were ready).
    pub started: Option<SystemTime>,
    /// When it completed, faulted or was skipped.
    pub ended: Option<SystemTime>,
    /// Fault or skip reasons.
    pub messages: Vec<String>,
}

/// The result of a run: one report per operator, in definition order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The run's id (part of every variable name of the run).
    pub run: String,
    /// The output folder.
    pub output: PathBuf,
    /// Per operator.
    pub operators: Vec<OperatorReport>,
}

impl RunReport {
    /// The report of operator `name`.
    pub fn operator(&self, name: &str) -> Option<&OperatorReport> {
        self.operators.iter().find(|o| o.name == name)
    }

    /// Whether every operator completed.
    pub fn succeeded(&self) -> bool {
        self.operators
            .iter()
            .all(|o| o.state == OperatorState::Completed)
    }
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for o in &self.operators {
            let took = match (o.started, o.ended) {
                (Some(s), Some(e)) => e
                    .duration_since(s)
                    .map(|d| format!(" in {:.3} s", d.as_secs_f64()))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            write!(f, "{:<32} {:?}{took}", o.name, o.state)?;
            for m in &o.messages {
                write!(f, "\n    {m}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Default time an operator may execute: 10 minutes.
pub const DEFAULT_OPERATOR_TIMEOUT: Duration = Duration::from_secs(600);
/// Default time a run may take: 1 hour.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(3600);

/// How to run a pipeline.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The payload: a file or a folder, the path of every stream input without `from`.
    pub payload: PathBuf,
    /// The output folder: stream outputs go to `operators/<operator>/<output>/` under it.
    pub output: PathBuf,
    /// Longest an operator may execute before it is faulted.
    pub operator_timeout: Duration,
    /// Longest the whole run may take: then running operators are faulted and pending ones
    /// skipped.
    pub run_timeout: Duration,
}

impl RunOptions {
    /// Options with the default timeouts.
    pub fn new(payload: impl Into<PathBuf>, output: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            payload: payload.into(),
            output: output.into(),
            operator_timeout: DEFAULT_OPERATOR_TIMEOUT,
            run_timeout: DEFAULT_RUN_TIMEOUT,
        }
    }

    /// Sets the operator timeout.
    pub fn operator_timeout(mut self, t: Duration) -> RunOptions {
        self.operator_timeout = t;
        self
    }

    /// Sets the run timeout.
    pub fn run_timeout(mut self, t: Duration) -> RunOptions {
        self.run_timeout = t;
        self
    }
}

/// A new run id, unique on this host: seconds, process and a counter.
pub(crate) fn new_run_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "{secs:x}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Checks the payload and creates the output folders of every stream output.
pub(crate) fn prepare_dirs(def: &PipelineDef, opts: &RunOptions) -> Result<(), RunError> {
    let reads_payload = def
        .operators
        .iter()
        .flat_map(|o| &o.inputs)
        .any(|i| i.from.is_none());
    if reads_payload && !opts.payload.exists() {
        return Err(RunError::NoPayload(opts.payload.display().to_string()));
    }
    let mk = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| RunError::Output {
            path: p.display().to_string(),
            source,
        })
    };
    mk(&opts.output)?;
    for op in &def.operators {
        for out in &op.outputs {
            if matches!(out.ty, PortType::Stream { .. }) {
                mk(&exec::stream_dir(&opts.output, &op.name, &out.name))?;
            }
        }
    }
    Ok(())
}

/// The driver's state machine: operator states, readiness, skips and deadlines.
#[derive(Debug)]
pub(crate) struct Schedule {
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    prepared: Vec<bool>,
    started: Vec<Option<Instant>>,
    reports: Vec<OperatorReport>,
    operator_timeout: Duration,
    run_deadline: Instant,
    run_timeout: Duration,
}

impl Schedule {
    pub(crate) fn new(def: &PipelineDef, opts: &RunOptions, now: Instant) -> Schedule {
        let n = def.operators.len();
        let deps: Vec<Vec<usize>> = (0..n).map(|i| def.deps(i).to_vec()).collect();
        let mut dependents = vec![Vec::new(); n];
        for (i, d) in deps.iter().enumerate() {
            for &p in d {
                dependents[p].push(i);
            }
        }
        Schedule {
            deps,
            dependents,
            prepared: vec![false; n],
            started: vec![None; n],
            reports: def
                .operators
                .iter()
                .map(|o| OperatorReport {
                    name: o.name.clone(),
                    state: OperatorState::Pending,
                    started: None,
                    ended: None,
                    messages: Vec::new(),
                })
                .collect(),
            operator_timeout: opts.operator_timeout,
            run_deadline: now + opts.run_timeout,
            run_timeout: opts.run_timeout,
        }
    }

    pub(crate) fn state(&self, i: usize) -> OperatorState {
        self.reports[i].state
    }

    /// Operator `i` has prepared and waits for its inputs.
    pub(crate) fn on_prepared(&mut self, i: usize) {
        self.prepared[i] = true;
    }

    /// The operators that may start now (prepared, every producer completed); they are marked
    /// running.
    pub(crate) fn take_ready(&mut self, now: Instant) -> Vec<usize> {
        let ready: Vec<usize> = (0..self.reports.len())
            .filter(|&i| {
                self.reports[i].state == OperatorState::Pending
                    && self.prepared[i]
                    && self.deps[i]
                        .iter()
                        .all(|&p| self.reports[p].state == OperatorState::Completed)
            })
            .collect();
        for &i in &ready {
            self.reports[i].state = OperatorState::Running;
            self.reports[i].started = Some(SystemTime::now());
            self.started[i] = Some(now);
        }
        ready
    }

    /// Operator `i` completed (only a running operator can).
    pub(crate) fn on_completed(&mut self, i: usize) -> bool {
        if self.reports[i].state != OperatorState::Running {
            return false;
        }
        self.reports[i].state = OperatorState::Completed;
        self.reports[i].ended = Some(SystemTime::now());
        true
    }

    /// Operator `i` faulted with `message`; returns the operators newly skipped because of it.
    pub(crate) fn on_faulted(&mut self, i: usize, message: String) -> Vec<usize> {
        if self.reports[i].state.is_terminal() {
            return Vec::new();
        }
        self.reports[i].state = OperatorState::Faulted;
        self.reports[i].ended = Some(SystemTime::now());
        self.reports[i].messages.push(message);
        let name = self.reports[i].name.clone();
        self.skip_downstream(i, &format!("skipped: upstream operator `{name}` faulted"))
    }

    fn skip_downstream(&mut self, i: usize, why: &str) -> Vec<usize> {
        let mut skipped = Vec::new();
        let mut stack = self.dependents[i].clone();
        while let Some(d) = stack.pop() {
            if self.reports[d].state == OperatorState::Pending {
                self.reports[d].state = OperatorState::Skipped;
                self.reports[d].ended = Some(SystemTime::now());
                self.reports[d].messages.push(why.to_owned());
                skipped.push(d);
                stack.extend(self.dependents[d].iter().copied());
            }
        }
        skipped.sort_unstable();
        skipped
    }

    /// When the next timeout falls.
    pub(crate) fn next_deadline(&self) -> Instant {
        self.started
            .iter()
            .zip(&self.reports)
            .filter(|(_, r)| r.state == OperatorState::Running)
            .filter_map(|(s, _)| s.map(|s| s + self.operator_timeout))
            .fold(self.run_deadline, Instant::min)
    }

    /// Applies the timeouts due at `now`; returns (faulted, skipped) operators.
    pub(crate) fn expire(&mut self, now: Instant) -> (Vec<usize>, Vec<usize>) {
        let mut faulted = Vec::new();
        let mut skipped = Vec::new();
        let run_over = now >= self.run_deadline;
        for i in 0..self.reports.len() {
            let over = self.started[i].is_some_and(|s| now >= s + self.operator_timeout);
            if self.reports[i].state == OperatorState::Running && (over || run_over) {
                let why = if over {
                    format!(
                        "timed out after {:?} (operator timeout)",
                        self.operator_timeout
                    )
                } else {
                    format!("timed out: the run took longer than {:?}", self.run_timeout)
                };
                skipped.extend(self.on_faulted(i, why));
                faulted.push(i);
            }
        }
        if run_over {
            for i in 0..self.reports.len() {
                if self.reports[i].state == OperatorState::Pending {
                    // Waiting on nothing that faulted: the run's time is up.
                    self.reports[i].state = OperatorState::Skipped;
                    self.reports[i].ended = Some(SystemTime::now());
                    self.reports[i].messages.push(format!(
                        "skipped: the run took longer than {:?}",
                        self.run_timeout
                    ));
                    skipped.push(i);
                }
            }
        }
        (faulted, skipped)
    }

    pub(crate) fn finished(&self) -> bool {
        self.reports.iter().all(|r| r.state.is_terminal())
    }

    pub(crate) fn run_deadline(&self) -> Instant {
        self.run_deadline
    }

    pub(crate) fn into_report(self, run: String, output: PathBuf) -> RunReport {
        RunReport {
            run,
            output,
            operators: self.reports,
        }
    }
}

/// A validated definition with every operator bound to Rust code: ready to run in any mode.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub(crate) def: Arc<PipelineDef>,
    pub(crate) registry: OperatorRegistry,
}

impl Pipeline {
    /// Binds `def`'s operators through `registry`; refuses an unbound operator or one whose
    /// declared ports disagree with the definition (naming the port).
    pub fn new(def: PipelineDef, registry: OperatorRegistry) -> Result<Pipeline, InvalidPipeline> {
        registry.check(&def)?;
        Ok(Pipeline {
            def: Arc::new(def),
            registry,
        })
    }

    /// Parses, validates and binds the YAML file `path`.
    pub fn load(
        path: impl AsRef<Path>,
        registry: OperatorRegistry,
    ) -> Result<Pipeline, InvalidPipeline> {
        Pipeline::new(PipelineDef::load(path)?, registry)
    }

    /// A pipeline assembled in code from operators and their declared ports.
    pub fn builder(name: &str) -> PipelineBuilder {
        PipelineBuilder {
            name: name.to_owned(),
            ops: Vec::new(),
            registry: OperatorRegistry::new(),
        }
    }

    /// The definition.
    pub fn definition(&self) -> &PipelineDef {
        &self.def
    }

    /// The registry the operators are bound through.
    pub fn registry(&self) -> &OperatorRegistry {
        &self.registry
    }
}

/// An operator being assembled: name, inputs (with their producers), outputs, host.
type BuilderOp = (
    String,
    Vec<(PortSpec, Option<String>)>,
    Vec<PortSpec>,
    Option<u32>,
);

/// Assembles a [`Pipeline`] in code; validated by the same rules as YAML.
pub struct PipelineBuilder {
    name: String,
    ops: Vec<BuilderOp>,
    registry: OperatorRegistry,
}

impl std::fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.name)
            .finish()
    }
}

impl PipelineBuilder {
    /// Adds operator `name`, made by `make`, with the ports it declares (inputs read the
    /// payload until connected with [`PipelineBuilder::from`]).
    pub fn operator<O, F>(mut self, name: &str, make: F) -> PipelineBuilder
    where
        O: Operator + 'static,
        F: Fn() -> O + Send + Sync + 'static,
    {
        let ports = make().ports();
        self.ops.push((
            name.to_owned(),
            ports.inputs.into_iter().map(|p| (p, None)).collect(),
            ports.outputs,
            None,
        ));
        self.registry = self.registry.register(name, make);
        self
    }

    /// Connects input `input` (its name, or a stream's path) of the last added operator to
    /// the output of the same name of operator `from`.
    pub fn from(mut self, input: &str, from: &str) -> PipelineBuilder {
        if let Some((_, inputs, _, _)) = self.ops.last_mut() {
            for (spec, f) in inputs.iter_mut() {
                if spec.name.as_deref() == Some(input) || spec.path.as_deref() == Some(input) {
                    *f = Some(from.to_owned());
                }
            }
        }
        self
    }

    /// Places the last added operator on cluster host `host` (`x-fragmenta: {host: N}`).
    pub fn on_host(mut self, host: u32) -> PipelineBuilder {
        if let Some(op) = self.ops.last_mut() {
            op.3 = Some(host);
        }
        self
    }

    /// Validates and binds.
    pub fn build(self) -> Result<Pipeline, InvalidPipeline> {
        let operators = self
            .ops
            .into_iter()
            .enumerate()
            .map(|(k, (name, inputs, outputs, host))| {
                let site = |path: String, port: Option<&str>| Site {
                    operator: Some(name.clone()),
                    port: port.map(str::to_owned),
                    path,
                    line: None,
                };
                OperatorDef {
                    inputs: inputs
                        .into_iter()
                        .enumerate()
                        .map(|(j, (p, from))| InputDef {
                            site: site(
                                format!("operators[{k}].input[{j}]"),
                                p.name.as_deref().or(p.path.as_deref()),
                            ),
                            name: p.name,
                            from,
                            path: p.path,
                            ty: p.ty,
                        })
                        .collect(),
                    outputs: outputs
                        .into_iter()
                        .enumerate()
                        .map(|(j, p)| OutputDef {
                            site: site(format!("operators[{k}].output[{j}]"), p.name.as_deref()),
                            name: p.name.unwrap_or_default(),
                            path: p.path,
                            ty: p.ty,
                        })
                        .collect(),
                    site: site(format!("operators[{k}]"), None),
                    description: None,
                    container: None,
                    host,
                    name,
                }
            })
            .collect();
        let def = PipelineDef::validated(PipelineDef::assembled(self.name, operators))?;
        Pipeline::new(def, self.registry)
    }
}
