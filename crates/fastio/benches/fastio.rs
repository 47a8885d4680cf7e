//! Fast I/O benchmarks (prints figures; no assertions on time).
//!
//! A child process (this binary re-executed with `FASTIO_BENCH_CHILD`) publishes a 1 GiB, a
//! 4 KiB and a 256 MiB allocation; the parent measures
//! 1. `get` + `map_read` of the 1 GiB vs the 4 KiB publication (target ratio ≤ 1.5), and
//! 2. 256 MiB published by the child vs the same 256 MiB received from the child through a
//!    Unix socket stream (target ≥ 10x): the transfer (until every page is readable in this
//!    process: get + map + one read per page, against receiving into a buffer), and reading
//!    every byte (both then summed; memory-bandwidth bound).
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

/// Reads one byte of every 4 KiB page, so every page is mapped in this process.
fn touch_pages(bytes: &[u8]) -> u64 {
    bytes.iter().step_by(4096).map(|&b| u64::from(b)).sum()
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

    // 2. 256 MiB from the child. Two measures, each in the same run both ways:
    //    - transfer: until all 256 MiB are in this process's address space, readable with no
    //      further kernel work. Socket: received into a 256 MiB buffer (allocated and faulted
    //      in before the clock starts, the socket's best case). Fast I/O: get + map + one read
    //      per 4 KiB page, so the page tables are filled and nothing is left to fault later.
    //    - read every byte: the same, then the bytes summed (bounded by memory bandwidth on
    //      both sides, so this ratio cannot be large; printed for completeness).
    let mut landing = vec![0u8; STREAM as usize];
    let mut socket_times = Vec::new();
    let mut socket_sum_times = Vec::new();
    let mut socket_sum = 0;
    for _ in 0..SOCKET_ROUNDS {
        let (mut s, _) = listener.accept().expect("accept");
        let t = Instant::now();
        let mut got = 0usize;
        while got < landing.len() {
            let n = s.read(&mut landing[got..]).expect("read");
            assert!(n > 0, "child closed early");
            got += n;
        }
        let received = t.elapsed();
        socket_sum = sum(&landing);
        let summed = t.elapsed();
        socket_times.push(received);
        socket_sum_times.push(summed);
    }
    let socket = best(socket_times);
    let socket_summed = best(socket_sum_times);

    let mut touched = Vec::new();
    let mut summed = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let a = ctx.get("stream").expect("get");
        let g = a.map_read().expect("map");
        let pages = touch_pages(g.as_bytes());
        touched.push(t.elapsed());
        black_box(pages);
        drop(g);
        drop(a);
        let t = Instant::now();
        let a = ctx.get("stream").expect("get");
        let s = sum(a.map_read().expect("map").as_bytes());
        summed.push(t.elapsed());
        assert_eq!(s, socket_sum, "same bytes both ways");
    }
    let touched = best(touched);
    let summed = best(summed);
    println!(
        "shared-memory huge pages on this host: {} (/sys/kernel/mm/transparent_hugepage/shmem_enabled)",
        fragmenta_fastio::shmem_huge_pages().unwrap_or_else(|| "unknown".into())
    );
    println!(
        "256 MiB transfer, unix socket stream into a buffer : {:8.2} ms ({:.2} GB/s)",
        socket.as_secs_f64() * 1e3,
        gbps(STREAM, socket)
    );
    println!(
        "256 MiB transfer, fastio get+map+fault every page   : {:8.2} ms",
        touched.as_secs_f64() * 1e3
    );
    println!(
        "ratio transfer socket / fastio                      : {:8.1}x (target >= 10x)",
        socket.as_secs_f64() / touched.as_secs_f64()
    );
    println!(
        "256 MiB read every byte, socket receive + sum       : {:8.2} ms",
        socket_summed.as_secs_f64() * 1e3
    );
    println!(
        "256 MiB read every byte, fastio get+map+sum         : {:8.2} ms",
        summed.as_secs_f64() * 1e3
    );
    println!(
        "ratio read-every-byte socket / fastio               : {:8.1}x (memory-bandwidth bound)",
        socket_summed.as_secs_f64() / summed.as_secs_f64()
    );
    println!(
        "get+map alone (pages fault on first use)            : {:8.3} ms ({:.0}x less than the socket transfer)",
        big.as_secs_f64() * 1e3,
        socket.as_secs_f64() / big.as_secs_f64()
    );

    drop(child.stdin.take());
    let _ = child.wait();
}
