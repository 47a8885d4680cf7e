//! Running one operator: the operator side of every mode (a thread, an operator process, a
//! cluster fragment). Builds its variables, holds read maps on its inputs while it runs,
//! checks its outputs, and hands them back for publication.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fragmenta_fastio::{Allocation, FastIo, ReadGuard};

use crate::model::{Dim, InputDef, PipelineDef, PortType, Shape};
use crate::operator::{ExecuteContext, Input, Operator, Output, PrepareContext, StreamPort};

/// The Fast I/O publication name of output `output` of operator `op` in run `run`.
pub fn variable_name(run: &str, op: &str, output: &str) -> String {
    format!("fragmenta-pipeline/{run}/{op}/{output}")
}

/// The folder of stream output `output` of operator `op` under a run's output folder
/// (`DIR/operators/<op>/<output>`, as Clara lays out payloads).
pub fn stream_dir(output_root: &Path, op: &str, output: &str) -> PathBuf {
    output_root.join("operators").join(op).join(output)
}

/// Where a run's files are.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) run: String,
    pub(crate) host: Option<u32>,
    pub(crate) payload: PathBuf,
    pub(crate) output: PathBuf,
}

/// The message of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let text = p
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("panicked: {text}")
}

/// Calls `prepare`, turning an error or a panic into a message.
pub(crate) fn prepare(op: &mut dyn Operator, name: &str, run: &str) -> Result<(), String> {
    let ctx = PrepareContext {
        operator: name,
        run,
    };
    match catch_unwind(AssertUnwindSafe(|| op.prepare(&ctx))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("prepare failed: {e}")),
        Err(p) => Err(format!("prepare {}", panic_message(p.as_ref()))),
    }
}

/// Calls `cleanup`, logging a panic.
pub(crate) fn cleanup(op: &mut dyn Operator, name: &str) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(|| op.cleanup())) {
        tracing::warn!(operator = name, "cleanup {}", panic_message(p.as_ref()));
    }
}

/// Whether published dims fit a declared shape.
fn fits(shape: &Shape, dims: &[u64]) -> bool {
    shape.0.len() == dims.len()
        && shape.0.iter().zip(dims).all(|(s, &d)| match s {
            Dim::Fixed(n) => *n == d,
            Dim::Dynamic => d > 0,
        })
}

/// Runs `execute` of operator `index` of `def`. `get` returns the memory of an input (the
/// producer's index and the variable's name); returns the outputs to publish, by name.
pub(crate) fn execute(
    op: &mut dyn Operator,
    def: &PipelineDef,
    index: usize,
    layout: &Layout,
    ctx: Arc<dyn FastIo>,
    get: &dyn Fn(usize, &str) -> Result<Allocation, String>,
) -> Result<Vec<(String, Allocation)>, String> {
    let opdef = &def.operators[index];
    let mut inputs = Vec::new();
    let mut stream_inputs = Vec::new();
    for input in &opdef.inputs {
        match (&input.ty, def.producer(input)) {
            (PortType::Array { element, shape }, Some(p)) => {
                let alloc = fetch_input(def, input, p, layout, get, shape, *element)?;
                inputs.push(Input {
                    port: input.key().to_owned(),
                    element: *element,
                    alloc,
                });
            }
            (PortType::Stream { .. }, Some(p)) => {
                let name = input.name.as_deref().unwrap_or_default();
                stream_inputs.push(StreamPort {
                    name: input.name.clone(),
                    path: input.path.clone(),
                    dir: stream_dir(&layout.output, &def.operators[p].name, name),
                });
            }
            (_, None) => stream_inputs.push(StreamPort {
                name: input.name.clone(),
                path: input.path.clone(),
                dir: layout.payload.clone(),
            }),
        }
    }
    let mut outputs = Vec::new();
    let mut stream_outputs = Vec::new();
    for output in &opdef.outputs {
        match &output.ty {
            PortType::Array { element, shape } => outputs.push(
                Output::new(&output.name, *element, shape.clone(), Arc::clone(&ctx))
                    .map_err(|e| format!("cannot pre-allocate output: {e}"))?,
            ),
            PortType::Stream { .. } => stream_outputs.push(StreamPort {
                name: Some(output.name.clone()),
                path: output.path.clone(),
                dir: stream_dir(&layout.output, &opdef.name, &output.name),
            }),
        }
    }
    let ectx = ExecuteContext {
        operator: &opdef.name,
        host: layout.host,
        run: &layout.run,
        inputs,
        outputs,
        stream_inputs,
        stream_outputs,
    };
    // Inputs are read-only while the operator runs: these maps make every write map on their
    // memory, from any handle in any process, fail with MapConflict.
    let held: Vec<ReadGuard<'_>> = ectx
        .inputs
        .iter()
        .map(|i| {
            i.alloc
                .map_read()
                .map_err(|e| format!("input `{}` cannot be mapped: {e}", i.port))
        })
        .collect::<Result<_, _>>()?;
    let result = catch_unwind(AssertUnwindSafe(|| op.execute(&ectx)));
    drop(held);
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(p) => return Err(panic_message(p.as_ref())),
    }
    let mut publish = Vec::new();
    for out in ectx.outputs {
        let Output { port, alloc, .. } = out;
        match alloc.into_inner() {
            Some(a) => publish.push((variable_name(&layout.run, &opdef.name, &port), a)),
            None => {
                return Err(format!(
                    "dynamic output `{port}` was not allocated by execute"
                ))
            }
        }
    }
    Ok(publish)
}

fn fetch_input(
    def: &PipelineDef,
    input: &InputDef,
    producer: usize,
    layout: &Layout,
    get: &dyn Fn(usize, &str) -> Result<Allocation, String>,
    shape: &Shape,
    element: fragmenta_fastio::ElementType,
) -> Result<Allocation, String> {
    let name = input.name.as_deref().unwrap_or_default();
    let var = variable_name(&layout.run, &def.operators[producer].name, name);
    let alloc = get(producer, &var).map_err(|e| format!("input `{name}`: {e}"))?;
    if alloc.element_type() != Some(element) || !fits(shape, alloc.dims()) {
        return Err(format!(
            "input `{name}`: the published variable is {:?} {:?}, the port declares {}",
            alloc.element_type(),
            alloc.dims(),
            input.ty
        ));
    }
    Ok(alloc)
}

/// Frees every variable of run `run` that is still published in `ctx`; returns how many.
pub(crate) fn free_run(ctx: &dyn FastIo, def: &PipelineDef, run: &str) -> usize {
    let mut freed = 0;
    for op in &def.operators {
        for out in op
            .outputs
            .iter()
            .filter(|o| matches!(o.ty, PortType::Array { .. }))
        {
            if let Ok(a) = ctx.get(&variable_name(run, &op.name, &out.name)) {
                match a.free() {
                    Ok(()) => freed += 1,
                    Err(e) => {
                        tracing::warn!(operator = %op.name, output = %out.name, error = %e, "freeing a variable failed")
                    }
                }
            }
        }
    }
    freed
}
