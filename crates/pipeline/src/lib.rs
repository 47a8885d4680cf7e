//! # fragmenta-pipeline: typed operator pipelines over Fast I/O Variables
//!
//! Modelled on the Clara Pipeline Driver with Fast I/O Variables (pipeline api-version 0.5.0).
//! This crate owns the pipeline definition (YAML, validated before anything runs), the Rust
//! operator life cycle, the Fast I/O Variables operators exchange, and the driver that orders
//! operators by their data flow, in three modes: threads of one process ([`Pipeline::run`]),
//! one process per operator on one host ([`process`]), and operators on the hosts of a
//! fragmenta cluster ([`cluster`]). It does not own memory (the `fastio` crate), moving data
//! between hosts (`Transaction::fetch` of the job API), or scheduling fragments (the runtime).
//!
//! ## The definition
//!
//! ```yaml
//! api-version: 0.5.0
//! name: example
//! operators:
//! - name: producer
//!   container: {image: my/producer}     # binds the Rust operator (else: the name)
//!   input:
//!   - {path: /input, type: stream, element-type: nifti}   # the payload
//!   output:
//!   - {name: values, type: array, element-type: float32, shape: [1, -1]}
//! - name: consumer
//!   x-fragmenta: {host: 1}               # cluster mode: run on host 1
//!   input:
//!   - {from: producer, name: values, type: array, element-type: float32, shape: [1, -1]}
//!   output:
//!   - {name: report, path: /output, type: stream, element-type: txt}
//! ```
//!
//! Port types: `array` (a Fast I/O variable: `element-type` and `shape`, no `path`), `string`
//! (uint8 `[-1]`), a primitive (`float32` = array of shape `[1]`), `stream` (a path on disk;
//! `path` required, free-form `element-type`). Element types: `u8`/`uint8` ... `f64`/`float64`.
//! A shape dimension of `-1` or `0` is fixed at run time.
//!
//! ## Operators
//!
//! ```
//! use fragmenta_fastio::ElementType;
//! use fragmenta_pipeline::{ExecuteContext, Operator, OperatorResult, PortSpec, Ports};
//!
//! struct Double;
//!
//! impl Operator for Double {
//!     fn ports(&self) -> Ports {
//!         Ports::new()
//!             .input(PortSpec::array("xs", ElementType::F32, &[-1]))
//!             .output(PortSpec::array("ys", ElementType::F32, &[-1]))
//!     }
//!     fn execute(&mut self, ctx: &ExecuteContext<'_>) -> OperatorResult {
//!         let xs = ctx.input("xs")?;
//!         let ys = ctx.output("ys")?;
//!         ys.allocate(xs.dims())?; // a dynamic output: allocated once, by the operator
//!         let (r, mut w) = (xs.read()?, ys.write()?);
//!         for (y, x) in w.as_mut_slice::<f32>()?.iter_mut().zip(r.as_slice::<f32>()?) {
//!             *y = 2.0 * x;
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! ## Decisions where Clara is silent
//!
//! - **Every rule is checked before anything runs**: unknown keys (except `x-...`), missing or
//!   mistyped fields, port types, element types, shapes, paths, names (1 to
//!   [`MAX_NAME_LEN`] bytes, unique per pipeline and per operator's inputs and outputs),
//!   connections (the producer and output exist, port type, element type and shape equal), and
//!   cycles. All errors are collected ([`InvalidPipeline`]), each naming the operator, the port,
//!   the element's path (`operators[1].input[0].shape`) and its YAML line (found for block-style
//!   YAML; flow-style elements get the nearest enclosing line). Binding refuses an operator
//!   without Rust code, or whose declared [`Ports`] differ from the definition.
//! - **Ports are named** by `name` (arrays, outputs) or `path` (stream inputs). An array input
//!   always comes `from` an operator; stream inputs without `from` are the payload (a file or a
//!   folder). A stream output is the folder `OUTPUT/operators/<operator>/<output>/`, created by
//!   the driver; an input reading it gets that folder.
//! - **Variables**: the publication of output `o` of operator `op` in run `r` is
//!   `fragmenta-pipeline/<r>/<op>/<o>` ([`variable_name`]); run ids are unique per host, so runs
//!   never collide. A fixed-shape output is created before `execute`; a dynamic one by
//!   [`Output::allocate`], once, with the declared rank, the fixed dimensions unchanged and
//!   every run-time dimension positive ([`VariableError`]). Outputs are published when
//!   `execute` returns `Ok`; a dynamic output left unallocated faults the operator. Inputs are
//!   read-only: while an operator runs the driver holds a read map on each of its inputs, so a
//!   write map from anywhere fails with `MapConflict`. Typed views are checked against the
//!   declared element type. When the run ends, successful or not, every variable of the run is
//!   freed (unpublished memory of a faulted operator is released with its handles).
//! - **Life cycle**: every operator is started and `prepare`d when the run starts (in cluster
//!   mode: when its job starts on its host), `execute`s once every operator it reads from has
//!   completed (independent ones at the same time), and is always `cleanup`ed. An error or a
//!   panic in `prepare` or `execute` faults the operator with its message; every operator
//!   downstream of it is skipped, naming it.
//! - **Timeouts**: an operator executing longer than [`RunOptions::operator_timeout`] (default
//!   10 min), or still running when the run exceeds [`RunOptions::run_timeout`] (default 1 h),
//!   is faulted; operators still waiting then are skipped. Operator processes are killed
//!   (SIGKILL); a thread cannot be stopped, so its late outputs are dropped unpublished; a
//!   cluster job is cancelled and publishes nothing.
//! - **Process mode** (see [`process`]): a process that dies is faulted at once
//!   (`operator process killed by signal 9`); the driver waits for operators' connections to
//!   close before it returns, so their memory is back in the context.

pub mod cluster;
mod driver;
mod error;
mod exec;
mod locate;
mod model;
mod operator;
pub mod passthrough;
pub mod process;
mod thread;

pub use crate::driver::{
    OperatorReport, OperatorState, Pipeline, PipelineBuilder, RunOptions, RunReport,
    DEFAULT_OPERATOR_TIMEOUT, DEFAULT_RUN_TIMEOUT,
};
pub use crate::error::{DefinitionError, InvalidPipeline, Mismatch, RunError, Site, VariableError};
pub use crate::exec::{stream_dir, variable_name};
pub use crate::model::{
    element_type_name, parse_element_type, ApiVersion, Container, Dim, InputDef, OperatorDef,
    OutputDef, PipelineDef, PortType, Shape, MAX_NAME_LEN, MAX_OPERATORS, MAX_PORTS,
};
pub use crate::operator::{
    ExecuteContext, Input, Operator, OperatorRegistry, OperatorResult, Output, PortSpec, Ports,
    PrepareContext, View, ViewMut,
};
