//! Thread mode: every operator on a thread of this process, sharing one [`LocalContext`].

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fragmenta_fastio::{Allocation, FastIo, LocalContext};

use crate::driver::{new_run_id, prepare_dirs, Pipeline, RunOptions, RunReport, Schedule};
use crate::error::RunError;
use crate::exec::{self, Layout};

enum Event {
    Prepared(Result<(), String>),
    Executed(Result<Vec<(String, Allocation)>, String>),
    Exited,
}

/// How long the driver waits, after the last operator's end, for operator threads to return
/// from `cleanup`.
const CLEANUP_GRACE: Duration = Duration::from_secs(5);

impl Pipeline {
    /// Runs the pipeline with one thread per operator, its variables in `ctx`.
    ///
    /// Every operator is started (and prepared) at once; each executes when the operators it
    /// reads from have completed. A thread still executing past its timeout cannot be stopped:
    /// it is faulted, its outputs are never published, and it is left to return on its own
    /// (what it holds returns to the context then).
    pub fn run(&self, ctx: &LocalContext, opts: &RunOptions) -> Result<RunReport, RunError> {
        let def = Arc::clone(&self.def);
        prepare_dirs(&def, opts)?;
        let layout = Layout {
            run: new_run_id(),
            host: None,
            payload: opts.payload.clone(),
            output: opts.output.clone(),
        };
        let n = def.operators.len();
        let (tx, rx) = mpsc::channel::<(usize, Event)>();
        let mut go: Vec<Option<mpsc::Sender<bool>>> = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (go_tx, go_rx) = mpsc::channel::<bool>();
            go.push(Some(go_tx));
            let tx = tx.clone();
            let def = Arc::clone(&def);
            let layout = layout.clone();
            let fastio: Arc<dyn FastIo> = Arc::new(ctx.clone());
            let registry = self.registry.clone();
            let name = def.operators[i].name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("op-{name}"))
                .spawn(move || {
                    let send = |e| {
                        let _ = tx.send((i, e));
                    };
                    let Some(mut op) = registry.instantiate(&def.operators[i]) else {
                        send(Event::Prepared(Err("no operator bound".into())));
                        send(Event::Exited);
                        return;
                    };
                    let prepared = exec::prepare(op.as_mut(), &name, &layout.run);
                    let ok = prepared.is_ok();
                    send(Event::Prepared(prepared));
                    if ok && go_rx.recv() == Ok(true) {
                        let get = |_: usize, var: &str| fastio.get(var).map_err(|e| e.to_string());
                        let r =
                            exec::execute(op.as_mut(), &def, i, &layout, Arc::clone(&fastio), &get);
                        send(Event::Executed(r));
                    }
                    exec::cleanup(op.as_mut(), &name);
                    send(Event::Exited);
                });
            match spawned {
                Ok(h) => threads.push(Some(h)),
                Err(source) => {
                    // Threads already started see their go channel close: they clean up.
                    drop(go);
                    return Err(RunError::Spawn {
                        command: format!("thread for operator {}", self.def.operators[i].name),
                        source,
                    });
                }
            }
        }
        drop(tx);
        let mut sched = Schedule::new(&def, opts, Instant::now());
        let mut exited = vec![false; n];
        let release = |go: &mut Vec<Option<mpsc::Sender<bool>>>, i: usize, run: bool| {
            if let Some(g) = go[i].take() {
                let _ = g.send(run);
            }
        };
        while !sched.finished() {
            for i in sched.take_ready(Instant::now()) {
                release(&mut go, i, true);
            }
            if sched.finished() {
                break;
            }
            let wait = sched
                .next_deadline()
                .saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok((i, Event::Prepared(Ok(())))) => sched.on_prepared(i),
                Ok((i, Event::Prepared(Err(m)))) => {
                    for s in sched.on_faulted(i, m) {
                        release(&mut go, s, false);
                    }
                }
                Ok((i, Event::Executed(Ok(outputs)))) => {
                    if sched.state(i) != crate::OperatorState::Running {
                        continue; // timed out already: its outputs are dropped unpublished
                    }
                    match publish(ctx, &outputs) {
                        Ok(()) => {
                            sched.on_completed(i);
                            for r in sched.take_ready(Instant::now()) {
                                release(&mut go, r, true);
                            }
                            drop(outputs);
                        }
                        Err(m) => {
                            for s in sched.on_faulted(i, m) {
                                release(&mut go, s, false);
                            }
                        }
                    }
                }
                Ok((i, Event::Executed(Err(m)))) => {
                    for s in sched.on_faulted(i, m) {
                        release(&mut go, s, false);
                    }
                }
                Ok((i, Event::Exited)) => {
                    exited[i] = true;
                    if let Some(h) = threads[i].take() {
                        let _ = h.join();
                    }
                    if sched.state(i) == crate::OperatorState::Running {
                        for s in
                            sched.on_faulted(i, "operator thread ended without a result".into())
                        {
                            release(&mut go, s, false);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let (faulted, skipped) = sched.expire(Instant::now());
                    for i in faulted {
                        // Still executing: not waited for (it returns when it returns).
                        exited[i] = true;
                    }
                    for s in skipped {
                        release(&mut go, s, false);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Operators that never ran are told so (they clean up and end).
        for i in 0..n {
            release(&mut go, i, false);
        }
        let grace = sched.run_deadline().min(Instant::now() + CLEANUP_GRACE);
        while exited.iter().any(|e| !e) {
            let wait = grace.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok((i, Event::Exited)) => {
                    exited[i] = true;
                    if let Some(h) = threads[i].take() {
                        let _ = h.join();
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        exec::free_run(ctx, &def, &layout.run);
        Ok(sched.into_report(layout.run, opts.output.clone()))
    }
}

/// Publishes an operator's outputs; on failure withdraws what was published of them.
///
/// The caller drops the handles after announcing the result: in an operator process that
/// unmaps the memory, which for a large variable takes longer than the whole handoff.
pub(crate) fn publish(ctx: &dyn FastIo, outputs: &[(String, Allocation)]) -> Result<(), String> {
    for (name, alloc) in outputs {
        if let Err(e) = ctx.publish(alloc, name) {
            for (n, _) in outputs {
                if let Ok(a) = ctx.get(n) {
                    let _ = a.free();
                }
            }
            return Err(format!("publishing output {name} failed: {e}"));
        }
    }
    Ok(())
}
