//! Two processes sharing a typed array through Fast I/O, zero-copy.
//!
//! Run with no arguments: the process starts a [`ContextServer`] (as a host's runtime would),
//! spawns itself as a child client that creates, fills and publishes a 4×4 `f32` matrix, then
//! gets the publication, maps it for reading, checks and prints it.
//!
//! ```text
//! cargo run -p fragmenta-fastio --example fastio_two_process
//! ```

use std::error::Error;
use std::process::Command;

use fragmenta_fastio::{ContextServer, ElementType, FastIo, RemoteContext};

const NAME: &str = "example/matrix";
const N: u64 = 4;

fn child(socket: &str) -> Result<(), Box<dyn Error>> {
    let ctx = RemoteContext::connect(socket)?;
    let mut a = ctx.create(N * N * 4)?;
    a.set_type_and_dimensions(ElementType::F32, &[N, N])?;
    {
        let mut w = a.map_write()?;
        for (i, x) in w.as_mut_slice::<f32>()?.iter_mut().enumerate() {
            *x = (i * i) as f32;
        }
    } // unmapped here
    ctx.publish(&a, NAME)?;
    println!("child {}: published {NAME:?}", std::process::id());
    Ok(()) // releasing our handle; the publication keeps the memory alive
}

fn parent() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("fragmenta-fastio-example-{}", std::process::id()));
    let server = ContextServer::start(dir.join("fastio.sock"), 64 << 20)?;
    let status = Command::new(std::env::current_exe()?)
        .arg("child")
        .arg(server.socket_path())
        .status()?;
    if !status.success() {
        return Err(format!("child failed: {status}").into());
    }
    let ctx = server.context();
    let a = ctx.get(NAME)?;
    println!(
        "parent {}: got {NAME:?}: {:?} {:?}, {} bytes",
        std::process::id(),
        a.element_type(),
        a.dims(),
        a.size()
    );
    let r = a.map_read()?;
    let values = r.as_slice::<f32>()?;
    for row in values.chunks(N as usize) {
        println!("  {row:?}");
    }
    let expected: Vec<f32> = (0..N * N).map(|i| (i * i) as f32).collect();
    if values != expected.as_slice() {
        return Err("values differ from what the child wrote".into());
    }
    println!(
        "ok: {} values written by the child, read zero-copy",
        values.len()
    );
    drop(r);
    a.free()?;
    drop(server);
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, role, socket] if role == "child" => child(socket),
        [_] => parent(),
        _ => Err("usage: fastio_two_process [child SOCKET]".into()),
    }
}
