//! Process mode: one operator process per operator on this host. The driver serves the
//! host's Fast I/O context on a Unix socket; every operator process connects to it, so
//! variables pass between processes without a copy (the memory is mapped, never sent).
//!
//! The driver starts every operator process at once with the same command, telling each which
//! operator it is through the environment ([`ENV_OPERATOR`] and the other `ENV_*` values). The
//! process runs [`operator_main`]: it connects, prepares, then waits on its standard input for
//! the driver's word: `execute` once the operators it reads from have completed (it then
//! executes, publishes its outputs, cleans up and exits 0), or `skip` (it cleans up and exits).
//! It reports the outcome in a status file: the operator is completed as soon as it reports
//! that its outputs are published (its consumers start while it cleans up and exits). A
//! process that dies (a signal, an exit without a status) is faulted at once; one that runs past
//! its timeout is killed (SIGKILL) and faulted.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fragmenta_fastio::{FastIo, LocalContext, RemoteContext};

use crate::driver::{new_run_id, prepare_dirs, RunOptions, RunReport, Schedule};
use crate::error::RunError;
use crate::exec::{self, Layout};
use crate::model::PipelineDef;
use crate::operator::OperatorRegistry;
use crate::OperatorState;

/// Environment: the name of the operator this process runs.
pub const ENV_OPERATOR: &str = "FRAGMENTA_PIPELINE_OPERATOR";
/// Environment: the pipeline definition (a YAML file).
pub const ENV_DEFINITION: &str = "FRAGMENTA_PIPELINE_DEFINITION";
/// Environment: the Fast I/O socket to connect to.
pub const ENV_SOCKET: &str = "FRAGMENTA_PIPELINE_SOCKET";
/// Environment: the run id.
pub const ENV_RUN: &str = "FRAGMENTA_PIPELINE_RUN";
/// Environment: the payload path.
pub const ENV_PAYLOAD: &str = "FRAGMENTA_PIPELINE_PAYLOAD";
/// Environment: the output folder.
pub const ENV_OUTPUT: &str = "FRAGMENTA_PIPELINE_OUTPUT";
/// Environment: the file the process writes its outcome to.
pub const ENV_STATUS: &str = "FRAGMENTA_PIPELINE_STATUS";

/// How often the driver looks at its operator processes.
const POLL: Duration = Duration::from_millis(2);
/// How long the driver waits for skipped processes to clean up and for the context to see
/// every operator connection close, after the last operator ended.
const GRACE: Duration = Duration::from_secs(5);
/// Longest status message read back from an operator process.
const MAX_STATUS: u64 = 64 * 1024;

/// Exit code of an operator process whose operator faulted.
pub const EXIT_FAULTED: i32 = 3;
/// Exit code of an operator process that could not start its operator (bad environment,
/// unknown operator, unreachable context).
pub const EXIT_SETUP: i32 = 4;

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    status: PathBuf,
    done: bool,
}

impl Proc {
    fn tell(&mut self, word: &str) {
        if let Some(mut s) = self.stdin.take() {
            let _ = writeln!(s, "{word}");
        }
    }
}

/// Runs `def` with one process per operator: `command[0]` with arguments `command[1..]`,
/// a program that calls [`operator_main`] (for example the user's operator binary, or the
/// current executable). The driver serves `ctx` while the run lasts.
pub fn run_processes(
    def: &PipelineDef,
    ctx: &LocalContext,
    command: &[OsString],
    opts: &RunOptions,
) -> Result<RunReport, RunError> {
    let Some((program, args)) = command.split_first() else {
        return Err(RunError::Spawn {
            command: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no operator command"),
        });
    };
    prepare_dirs(def, opts)?;
    let run = new_run_id();
    let scratch = tempfile::Builder::new()
        .prefix("fragmenta-pipeline-")
        .tempdir()
        .map_err(|source| RunError::Output {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
    {
        use std::os::unix::fs::PermissionsExt;
        // The socket's folder must be this user's alone.
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o700)).map_err(
            |source| RunError::Output {
                path: scratch.path().display().to_string(),
                source,
            },
        )?;
    }
    let definition = scratch.path().join("pipeline.yaml");
    std::fs::write(&definition, def.to_yaml()).map_err(|source| RunError::Output {
        path: definition.display().to_string(),
        source,
    })?;
    let server = ctx.serve(scratch.path().join("fastio.sock"))?;
    let payload = absolute(&opts.payload);
    let output = absolute(&opts.output);
    let n = def.operators.len();
    let mut sched = Schedule::new(def, opts, Instant::now());
    let mut procs: Vec<Option<Proc>> = Vec::with_capacity(n);
    for (i, op) in def.operators.iter().enumerate() {
        let status = scratch.path().join(format!("status-{i}"));
        let spawned = Command::new(program)
            .args(args)
            .env(ENV_OPERATOR, &op.name)
            .env(ENV_DEFINITION, &definition)
            .env(ENV_SOCKET, server.socket_path())
            .env(ENV_RUN, &run)
            .env(ENV_PAYLOAD, &payload)
            .env(ENV_OUTPUT, &output)
            .env(ENV_STATUS, &status)
            .stdin(Stdio::piped())
            .spawn();
        match spawned {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                procs.push(Some(Proc {
                    child,
                    stdin,
                    status,
                    done: false,
                }));
                // The process prepares on its own; it reads its word only when prepared.
                sched.on_prepared(i);
            }
            Err(e) => {
                procs.push(None);
                let why = format!("cannot start {}: {e}", program.to_string_lossy());
                for s in sched.on_faulted(i, why) {
                    if let Some(p) = procs.get_mut(s).and_then(Option::as_mut) {
                        p.tell("skip");
                    }
                }
            }
        }
    }
    // Processes of operators skipped before their process existed.
    for (i, p) in procs.iter_mut().enumerate() {
        if let Some(p) = p {
            if sched.state(i) == OperatorState::Skipped {
                p.tell("skip");
            }
        }
    }
    while !sched.finished() {
        for i in sched.take_ready(Instant::now()) {
            if let Some(p) = procs[i].as_mut() {
                p.tell("execute");
            }
        }
        let mut skipped = Vec::new();
        for (i, p) in procs.iter_mut().enumerate() {
            let Some(p) = p.as_mut() else { continue };
            if p.done {
                continue;
            }
            // Completed once its outputs are published: its consumers need not wait for its
            // cleanup and exit (unmapping large variables takes a while).
            if sched.state(i) == OperatorState::Running
                && read_status(&p.status).as_deref() == Some("completed")
            {
                sched.on_completed(i);
            }
            match p.child.try_wait() {
                Ok(Some(status)) => {
                    p.done = true;
                    let said = read_status(&p.status);
                    match (sched.state(i), status.code(), said.as_deref()) {
                        (OperatorState::Running, Some(0), Some("completed")) => {
                            sched.on_completed(i);
                        }
                        (OperatorState::Skipped | OperatorState::Completed, _, _) => {}
                        (_, _, Some(s)) if s.starts_with("faulted: ") => {
                            skipped.extend(sched.on_faulted(i, s["faulted: ".len()..].to_owned()));
                        }
                        (_, code, _) => {
                            let why = match (code, status.signal()) {
                                (_, Some(sig)) => {
                                    format!("operator process killed by signal {sig}")
                                }
                                (Some(c), _) => format!(
                                    "operator process exited with status {c} without a result"
                                ),
                                _ => "operator process ended without a result".to_owned(),
                            };
                            skipped.extend(sched.on_faulted(i, why));
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    skipped.extend(
                        sched.on_faulted(i, format!("cannot wait for the operator process: {e}")),
                    );
                }
            }
        }
        let (faulted, more) = sched.expire(Instant::now());
        skipped.extend(more);
        for i in faulted {
            if let Some(p) = procs[i].as_mut() {
                let _ = p.child.kill();
                let _ = p.child.wait();
                p.done = true;
            }
        }
        for s in skipped {
            if let Some(p) = procs[s].as_mut() {
                p.tell("skip");
            }
        }
        if !sched.finished() {
            std::thread::sleep(POLL);
        }
    }
    // Every process not yet ended has been told to skip: give it time to clean up, then kill.
    let grace = Instant::now() + GRACE;
    for p in procs.iter_mut().flatten() {
        p.tell("skip");
        while !p.done {
            match p.child.try_wait() {
                Ok(Some(_)) | Err(_) => p.done = true,
                Ok(None) if Instant::now() >= grace => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    p.done = true;
                }
                Ok(None) => std::thread::sleep(POLL),
            }
        }
    }
    exec::free_run(ctx, def, &run);
    // The context releases a process's handles when it sees its connection close.
    while server.connections() > 0 && Instant::now() < grace {
        std::thread::sleep(POLL);
    }
    drop(server);
    Ok(sched.into_report(run, opts.output.clone()))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

fn read_status(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_STATUS)
        .read_to_string(&mut text)
        .ok()?;
    Some(text.trim_end().to_owned())
}

/// The entry point of an operator process: when this process was started by a driver as an
/// operator (its environment says which), runs that operator from `registry` and returns the
/// exit code to end the process with; otherwise returns `None` at once.
///
/// ```no_run
/// // First thing in `main`:
/// let registry = fragmenta_pipeline::passthrough::registry();
/// if let Some(code) = fragmenta_pipeline::process::operator_main(&registry) {
///     std::process::exit(code);
/// }
/// // ... not an operator process: the program's own work.
/// ```
pub fn operator_main(registry: &OperatorRegistry) -> Option<i32> {
    let operator = std::env::var(ENV_OPERATOR).ok()?;
    let var = |k: &str| std::env::var_os(k).map(PathBuf::from);
    let status = var(ENV_STATUS);
    // Written whole, then renamed: the driver never reads half a status.
    let write_status = |text: &str| {
        if let Some(s) = &status {
            let tmp = s.with_extension("tmp");
            if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, s)) {
                eprintln!(
                    "operator {operator}: cannot write status {}: {e}",
                    s.display()
                );
            }
        }
    };
    let setup = (|| -> Result<_, String> {
        let get = |k: &str| var(k).ok_or_else(|| format!("{k} is not set"));
        let def = PipelineDef::load(get(ENV_DEFINITION)?).map_err(|e| e.to_string())?;
        let (index, opdef) = def
            .operator(&operator)
            .ok_or_else(|| format!("the pipeline has no operator `{operator}`"))?;
        let op = registry
            .instantiate(opdef)
            .ok_or_else(|| format!("no operator registered for `{operator}`"))?;
        let ctx = RemoteContext::connect(get(ENV_SOCKET)?)
            .map_err(|e| format!("Fast I/O context: {e}"))?;
        let layout = Layout {
            run: std::env::var(ENV_RUN).map_err(|_| format!("{ENV_RUN} is not set"))?,
            host: None,
            payload: get(ENV_PAYLOAD)?,
            output: get(ENV_OUTPUT)?,
        };
        Ok((def, index, op, ctx, layout))
    })();
    let (def, index, mut op, ctx, layout) = match setup {
        Ok(s) => s,
        Err(e) => {
            write_status(&format!("faulted: {e}"));
            return Some(EXIT_SETUP);
        }
    };
    if let Err(e) = exec::prepare(op.as_mut(), &operator, &layout.run) {
        write_status(&format!("faulted: {e}"));
        exec::cleanup(op.as_mut(), &operator);
        return Some(EXIT_FAULTED);
    }
    let mut word = String::new();
    // One short word from the driver; anything longer is not a word of ours.
    let _ = std::io::Read::take(std::io::stdin().lock(), 64).read_line(&mut word);
    if word.trim() != "execute" {
        exec::cleanup(op.as_mut(), &operator);
        write_status("skipped");
        return Some(0);
    }
    let fastio: Arc<dyn FastIo> = Arc::new(ctx.clone());
    let get = |_: usize, name: &str| ctx.get(name).map_err(|e| e.to_string());
    let result = exec::execute(op.as_mut(), &def, index, &layout, fastio, &get)
        .and_then(|outputs| crate::thread::publish(&ctx, &outputs).map(|()| outputs));
    let code = match result {
        Ok(outputs) => {
            write_status("completed");
            // Only now unmap this process's view of the outputs.
            drop(outputs);
            0
        }
        Err(e) => {
            write_status(&format!("faulted: {e}"));
            EXIT_FAULTED
        }
    };
    exec::cleanup(op.as_mut(), &operator);
    Some(code)
}

impl crate::Pipeline {
    /// Runs the pipeline with one process per operator (see [`run_processes`]); `command`
    /// must bind the operators as this pipeline's registry does.
    pub fn run_processes(
        &self,
        ctx: &LocalContext,
        command: &[OsString],
        opts: &RunOptions,
    ) -> Result<RunReport, RunError> {
        run_processes(&self.def, ctx, command, opts)
    }
}
