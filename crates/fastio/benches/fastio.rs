//! Fast I/O benchmarks (prints figures; no assertions on time).
//!
//! A child process (this binary re-executed with `FASTIO_BENCH_CHILD`) publishes a 1 GiB, a
//! 4 KiB and a 256 MiB allocation; the parent measures
//! 1. `get` + `map_read` of the 1 GiB vs the 4 KiB publication (target ratio ≤ 1.5), and
//! 2. reading 256 MiB published by the child (map + sum the bytes) vs receiving the same
//!    256 MiB from the child through a Unix socket stream and summing (target ≥ 10x).
//!
//! ```text
//! cargo bench -p fragmenta-fastio --bench fastio
//! ```

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fragmenta_fastio::{ContextServer, FastIo, RemoteContext};

const GIB: u64 = 1 << 30;
const STREAM: u64 = 256 << 20;
const SOCKET_ROUNDS: usize = 5;
const CHILD_ENV: &str = "FASTIO_BENCH_CHILD";

fn child(fastio_socket: &str, stream_socket: &str) {
    let ctx = RemoteContext::connect(fastio_socket).expect("connect");
    let big = ctx.create(GIB).expect("create 1 GiB");
    {
        // Touch every page once so the memory is real, not sparse.
        let mut w = big.map_write().expect("map");
        for page in w.as_mut_bytes().chunks_mut(4096) {
            page[0] = 1;
        }
    }
    ctx.publish(&big, "big").expect("publish");
    let small = ctx.create(4096).expect("create 4 KiB");
    small.map_write().expect("map").fill(1);
    ctx.publish(&small, "small").expect("publish");
    let stream = ctx.create(STREAM).expect("create 256 MiB");
    {
        let mut w = stream.map_write().expect("map");
        for (i, b) in w.as_mut_bytes().iter_mut().enumerate() {
            *b = i as u8;
        }
    }
    ctx.publish(&stream, "stream").expect("publish");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    // Serve the same 256 MiB over a socket stream, once per round.
    for _ in 0..SOCKET_ROUNDS {
        let mut s = UnixStream::connect(stream_socket).expect("connect stream");
        let r = stream.map_read().expect("map");
        for chunk in r.as_bytes().chunks(4 << 20) {
            s.write_all(chunk).expect("write");
        }
    }
    // Stay alive (holding our handles) until the parent closes stdin.
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
}

/// Sum of all bytes; blocks of 64 KiB summed in `u32` (no overflow: 65536 × 255 < 2³²) so
/// the compiler vectorises it and the sum runs near memory bandwidth.
fn sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(1 << 16)
        .map(|block| u64::from(block.iter().map(|&b| u32::from(b)).sum::<u32>()))
        .sum()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn get_map_once(ctx: &RemoteContext, name: &str) -> Duration {
    let t = Instant::now();
    let a = ctx.get(name).expect("get");
    let g = a.map_read().expect("map");
    black_box(g.as_bytes().as_ptr());
    let d = t.elapsed();
    drop(g);
    drop(a);
    d
}

/// Medians of `get` + `map_read` for two names, measured alternately so that noise from other
/// processes on the machine hits both alike.
fn get_map_latency(ctx: &RemoteContext, a: &str, b: &str, iters: usize) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
    for _ in 0..iters {
        ta.push(get_map_once(ctx, a));
        tb.push(get_map_once(ctx, b));
    }
    (median(ta), median(tb))
}

fn best(v: Vec<Duration>) -> Duration {
    v.into_iter().min().unwrap_or_default()
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (a, b) = spec.split_once('\n').expect("child spec");
        child(a, b);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let server = ContextServer::start(run.join("fastio.sock"), 2 * GIB).expect("server");
    let stream_path = run.join("stream.sock");
    let listener = UnixListener::bind(&stream_path).expect("bind");
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env(
            CHILD_ENV,
            format!(
                "{}\n{}",
                server.socket_path().display(),
                stream_path.display()
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line.trim(), "ready", "child failed to set up");

    let ctx = RemoteContext::connect(server.socket_path()).expect("connect");
    println!(
        "fastio benchmark (publisher and reader in different processes; throughput is best of 5)"
    );

    // 1. get + map_read latency, independent of size.
    let iters = 300;
    let _ = get_map_latency(&ctx, "small", "big", 20); // warm up
    let (small, big) = get_map_latency(&ctx, "small", "big", iters);
    println!(
        "get+map_read 4 KiB : {:8.1} µs (median of {iters})",
        small.as_secs_f64() * 1e6
    );
    println!(
        "get+map_read 1 GiB : {:8.1} µs (median of {iters})",
        big.as_secs_f64() * 1e6
    );
    println!(
        "ratio 1 GiB / 4 KiB: {:8.2}   (target <= 1.5)",
        big.as_secs_f64() / small.as_secs_f64()
    );

    // 2a. Socket stream: the child sends 256 MiB, we receive and sum.
    let mut buf = vec![0u8; 4 << 20];
    let mut socket_times = Vec::new();
    let mut socket_sum = 0;
    for _ in 0..SOCKET_ROUNDS {
        let (mut s, _) = listener.accept().expect("accept");
        let t = Instant::now();
        let mut total = 0u64;
        let mut acc = 0u64;
        loop {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            acc += sum(&buf[..n]);
            total += n as u64;
        }
        socket_times.push(t.elapsed());
        assert_eq!(total, STREAM);
        socket_sum = acc;
    }
    let socket = best(socket_times);

    // 2b. Fast I/O, cold: get + map + sum, the mapping created (and page tables filled) anew.
    let mut cold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let a = ctx.get("stream").expect("get");
        let s = sum(a.map_read().expect("map").as_bytes());
        cold.push(t.elapsed());
        assert_eq!(s, socket_sum, "same bytes both ways");
    }
    let cold = best(cold);
    // 2c. Fast I/O, warm: the handle (and so the one mapping per process) is kept.
    let held = ctx.get("stream").expect("get");
    let _ = sum(held.map_read().expect("map").as_bytes());
    let mut warm = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = sum(held.map_read().expect("map").as_bytes());
        warm.push(t.elapsed());
        assert_eq!(s, socket_sum);
    }
    let warm = best(warm);
    println!(
        "256 MiB via unix socket stream   : {:6.2} GB/s",
        gbps(STREAM, socket)
    );
    println!(
        "256 MiB via fastio get+map+sum   : {:6.2} GB/s (cold: new mapping)",
        gbps(STREAM, cold)
    );
    println!(
        "256 MiB via fastio map+sum       : {:6.2} GB/s (warm: mapping kept)",
        gbps(STREAM, warm)
    );
    println!(
        "ratio fastio / socket            : {:6.1}x cold, {:.1}x warm (target >= 10x)",
        socket.as_secs_f64() / cold.as_secs_f64(),
        socket.as_secs_f64() / warm.as_secs_f64()
    );

    println!(
        "time to make 256 MiB readable     : {:.1} µs get+map vs {:.1} ms socket transfer ({:.0}x)",
        big.as_secs_f64() * 1e6,
        socket.as_secs_f64() * 1e3,
        socket.as_secs_f64() / big.as_secs_f64()
    );

    drop(child.stdin.take());
    let _ = child.wait();
}
