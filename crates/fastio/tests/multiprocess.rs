//! Real multi-process tests: the test process runs the [`ContextServer`] (as the host runtime
//! would) and re-executes this test binary as client processes (`child_main`, selected by the
//! `FASTIO_TEST_CHILD` variable). A child executes commands read from stdin and answers each
//! with one line starting with `@@ ` on stdout.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fragmenta_fastio::{
    Allocation, ContextServer, ElementType, FastIo, FastIoError, RemoteContext, WriteGuard,
};

const CHILD_ENV: &str = "FASTIO_TEST_CHILD";

/// Entry point of a child process; does nothing in a normal test run.
#[test]
fn child_main() {
    let Ok(socket) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ctx = RemoteContext::connect(socket).unwrap();
    // Handles live for the whole process; leaking them gives guards a 'static borrow.
    let mut allocs: Vec<&'static Allocation> = Vec::new();
    let mut held: Vec<WriteGuard<'static>> = Vec::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            // Create, fill with i * 0.5 and publish a typed f32 array of n elements.
            ["publish_f32", name, n] => {
                let n: u64 = n.parse().unwrap();
                let mut a = ctx.create(n * 4).unwrap();
                a.set_type_and_dimensions(ElementType::F32, &[n]).unwrap();
                {
                    let mut w = a.map_write().unwrap();
                    for (i, x) in w.as_mut_slice::<f32>().unwrap().iter_mut().enumerate() {
                        *x = i as f32 * 0.5;
                    }
                }
                ctx.publish(&a, name).unwrap();
                allocs.push(Box::leak(Box::new(a)));
                "ok".to_string()
            }
            ["create", n] => {
                allocs.push(Box::leak(Box::new(ctx.create(n.parse().unwrap()).unwrap())));
                "ok".to_string()
            }
            ["get", name] => match ctx.get(name) {
                Ok(a) => {
                    allocs.push(Box::leak(Box::new(a)));
                    "ok".to_string()
                }
                Err(e) => format!("{e:?}"),
            },
            // Read element i (f32) of the last handle.
            ["read", i] => match allocs.last().unwrap().map_read() {
                Ok(r) => format!(
                    "{}",
                    r.as_slice::<f32>().unwrap()[i.parse::<usize>().unwrap()]
                ),
                Err(e) => format!("{e:?}"),
            },
            ["write", i, v] => match allocs.last().unwrap().map_write() {
                Ok(mut w) => {
                    w.as_mut_slice::<f32>().unwrap()[i.parse::<usize>().unwrap()] =
                        v.parse().unwrap();
                    "ok".to_string()
                }
                Err(e) => format!("{e:?}"),
            },
            // Map the last handle for writing and keep the guard.
            ["hold_write"] => match allocs.last().unwrap().map_write() {
                Ok(w) => {
                    held.push(w);
                    "ok".to_string()
                }
                Err(e) => format!("{e:?}"),
            },
            ["exit"] => std::process::exit(0),
            _ => format!("unknown command {line:?}"),
        };
        // Straight to the stdout handle: the test harness may capture `println!`.
        let mut out = std::io::stdout().lock();
        writeln!(out, "@@ {answer}").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0);
}

struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ChildProc {
    fn spawn(server: &ContextServer) -> ChildProc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, server.socket_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        ChildProc {
            child,
            stdin,
            stdout,
        }
    }

    fn cmd(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "child exited"
            );
            // The harness may print "test child_main ... " without a newline first.
            if let Some(at) = line.find("@@ ") {
                return line[at + 3..].trim_end().to_string();
            }
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(capacity: u64) -> (tempfile::TempDir, ContextServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = ContextServer::start(dir.path().join("run/fastio.sock"), capacity).unwrap();
    (dir, server)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn child_publishes_typed_array_parent_reads_it_zero_copy() {
    let (_dir, server) = start_server(64 << 20);
    let mut child = ChildProc::spawn(&server);
    assert_eq!(child.cmd("publish_f32 xs 4096"), "ok");

    // The parent uses its own client connection, like any other process would.
    let parent = RemoteContext::connect(server.socket_path()).unwrap();
    let xs = parent.get("xs").unwrap();
    assert_eq!(
        (xs.element_type(), xs.dims(), xs.size()),
        (Some(ElementType::F32), &[4096][..], 16384)
    );
    {
        let r = xs.map_read().unwrap();
        let values = r.as_slice::<f32>().unwrap();
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as f32 * 0.5));
    }

    // A write by the parent is visible to the child after it re-maps, and vice versa.
    xs.map_write().unwrap().as_mut_slice::<f32>().unwrap()[7] = 123.25;
    assert_eq!(child.cmd("read 7"), "123.25");
    assert_eq!(child.cmd("write 8 -1.5"), "ok");
    assert_eq!(xs.map_read().unwrap().as_slice::<f32>().unwrap()[8], -1.5);

    // Locks hold across processes: parent writing blocks the child's read and write...
    let w = xs.map_write().unwrap();
    assert_eq!(child.cmd("read 0"), "MapConflict");
    assert_eq!(child.cmd("write 0 1"), "MapConflict");
    drop(w);
    // ...and the child writing blocks the parent's read.
    assert_eq!(child.cmd("hold_write"), "ok");
    assert_eq!(xs.map_read().unwrap_err(), FastIoError::MapConflict);
    assert_eq!(xs.map_write().unwrap_err(), FastIoError::MapConflict);
    // A clean exit of the writer also releases its lock.
    writeln!(child.stdin, "exit").unwrap();
    assert!(child.child.wait().unwrap().success());
    wait_for("the child's lock to go", || xs.map_read().is_ok());
}

#[test]
fn sigkilled_client_loses_its_memory_and_locks() {
    let (_dir, server) = start_server(64 << 20);
    let runtime = server.context();
    let mut shared = runtime.create(4096).unwrap();
    shared
        .set_type_and_dimensions(ElementType::F32, &[1024])
        .unwrap();
    runtime.publish(&shared, "shared").unwrap();

    let mut child = ChildProc::spawn(&server);
    assert_eq!(child.cmd("create 1000000"), "ok");
    assert_eq!(child.cmd("create 2000000"), "ok");
    assert_eq!(child.cmd("get shared"), "ok");
    assert_eq!(child.cmd("hold_write"), "ok");
    assert_eq!(server.stats().used, 3_004_096);
    assert_eq!(shared.map_read().unwrap_err(), FastIoError::MapConflict);

    child.child.kill().unwrap(); // SIGKILL: no destructor runs in the child.
    child.child.wait().unwrap();

    wait_for("the server to notice the crash", || {
        server.connections() == 0
    });
    let stats = server.stats();
    assert_eq!((stats.used, stats.allocations, stats.handles), (4096, 1, 1));
    assert_eq!(stats.available(), (64 << 20) - 4096);
    // The write lock died with the child.
    shared.map_write().unwrap().as_mut_slice::<f32>().unwrap()[0] = 1.0;
    drop(shared);
    // The publication survives its publisher's handles.
    assert_eq!(runtime.get("shared").unwrap().size(), 4096);
}
