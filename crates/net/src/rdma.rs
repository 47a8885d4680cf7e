//! The RDMA result path: how a remote fragment's result buffer reaches the initiator's buffer.
//!
//! [`RdmaPath`] is the transport seam. [`QuicPath`] moves the bytes over the host pair's QUIC
//! connection, reading them straight into the receiver's buffer; a verbs implementation (RDMA
//! write into the registered receive buffer, completion over QUIC) goes beside it. [`probe`]
//! looks for RDMA devices at run time (with the `rdma` feature, through libibverbs), and
//! [`select`] picks the path: today always QUIC, with the reason logged, so behaviour is
//! identical with or without RDMA hardware.

use crate::transport::{RecvStream, SendStream};
use fragmenta_job::RdmaBuffer;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future returned by [`RdmaPath`] methods.
pub type PathFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// Bytes handed to the transport per write by [`QuicPath`] (the buffer's lock is not held
/// across an await, so the bytes go out in slices).
const SLICE: usize = 4 << 20;

/// What the run-time probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RdmaSupport {
    /// RDMA devices are present (their names).
    Available(Vec<String>),
    /// No usable RDMA: why.
    Unavailable(String),
}

/// Moves RDMA result bytes between hosts. Implementations must deliver exactly the sender's
/// bytes into the start of the receiver's buffer.
pub trait RdmaPath: Send + Sync {
    /// A short name for logs ("quic", "verbs").
    fn name(&self) -> &'static str;

    /// Sends the bytes of `buffer` on `stream` (after the frame header the caller wrote).
    fn send<'a>(&'a self, stream: &'a mut SendStream, buffer: &'a RdmaBuffer)
        -> PathFuture<'a, ()>;

    /// Receives `len` bytes from `stream` into the start of `buffer`, giving both back. Runs
    /// the copy where blocking on the buffer's lock cannot stall the reactor.
    fn receive(
        &self,
        stream: RecvStream,
        buffer: RdmaBuffer,
        len: usize,
    ) -> PathFuture<'static, (RecvStream, RdmaBuffer)>;
}

/// The RDMA path over QUIC: the fallback wherever verbs are not available.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuicPath;

impl RdmaPath for QuicPath {
    fn name(&self) -> &'static str {
        "quic"
    }

    fn send<'a>(
        &'a self,
        stream: &'a mut SendStream,
        buffer: &'a RdmaBuffer,
    ) -> PathFuture<'a, ()> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            let len = buffer.len();
            let mut offset = 0;
            while offset < len {
                let end = (offset + SLICE).min(len);
                let slice = buffer.read()[offset..end].to_vec();
                stream.write_all(&slice).await?;
                offset = end;
            }
            Ok(())
        })
    }

    fn receive(
        &self,
        mut stream: RecvStream,
        buffer: RdmaBuffer,
        len: usize,
    ) -> PathFuture<'static, (RecvStream, RdmaBuffer)> {
        Box::pin(async move {
            if len > buffer.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "RDMA result of {len} bytes for a receive buffer of {} bytes",
                        buffer.len()
                    ),
                ));
            }
            let handle = tokio::runtime::Handle::current();
            // The buffer's write lock is not `Send`: read on the blocking pool, straight into
            // the buffer.
            let (stream, read) = tokio::task::spawn_blocking(move || {
                use tokio::io::AsyncReadExt;
                let read = {
                    let mut bytes = buffer.write();
                    handle.block_on(stream.read_exact(&mut bytes[..len]))
                };
                (stream, read.map(|_| buffer))
            })
            .await
            .map_err(io::Error::other)?;
            let buffer = read?;
            buffer.set_filled(len);
            Ok((stream, buffer))
        })
    }
}

/// Looks for RDMA devices. Without the `rdma` feature there is nothing to look with.
pub fn probe() -> RdmaSupport {
    #[cfg(feature = "rdma")]
    {
        verbs::devices()
    }
    #[cfg(not(feature = "rdma"))]
    {
        RdmaSupport::Unavailable("built without the `rdma` feature".into())
    }
}

/// The path this host uses for RDMA results, from what [`probe`] found. Devices or not, the
/// verbs data path is not part of this build yet, so results travel over QUIC; the choice and
/// its reason are logged once.
pub fn select(support: &RdmaSupport) -> Arc<dyn RdmaPath> {
    match support {
        RdmaSupport::Available(devices) => tracing::info!(
            ?devices,
            "RDMA devices found; results use the QUIC path (verbs data path not built)"
        ),
        RdmaSupport::Unavailable(reason) => {
            tracing::debug!(%reason, "no RDMA: results use the QUIC path")
        }
    }
    Arc::new(QuicPath)
}

#[cfg(feature = "rdma")]
mod verbs {
    //! The libibverbs calls of the probe (Debian: libibverbs-dev).
    use super::RdmaSupport;
    use std::ffi::{c_char, c_int, c_void, CStr};

    #[link(name = "ibverbs")]
    extern "C" {
        fn ibv_get_device_list(num_devices: *mut c_int) -> *mut *mut c_void;
        fn ibv_free_device_list(list: *mut *mut c_void);
        fn ibv_get_device_name(device: *mut c_void) -> *const c_char;
    }

    pub(super) fn devices() -> RdmaSupport {
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer; the call allocates a NULL-terminated array or
        // returns NULL with errno set.
        let list = unsafe { ibv_get_device_list(&mut n) };
        if list.is_null() {
            let err = std::io::Error::last_os_error();
            return RdmaSupport::Unavailable(format!("ibv_get_device_list failed: {err}"));
        }
        let mut names = Vec::new();
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: `list` holds `n` device pointers (then NULL), alive until freed below.
            let dev = unsafe { *list.add(i) };
            if dev.is_null() {
                break;
            }
            // SAFETY: `dev` is a device of the list; the name is a NUL-terminated string owned
            // by the device, copied before the list is freed.
            let name = unsafe { ibv_get_device_name(dev) };
            if !name.is_null() {
                // SAFETY: non-NULL, NUL-terminated (libibverbs contract), alive until the free.
                names.push(
                    unsafe { CStr::from_ptr(name) }
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        // SAFETY: `list` came from ibv_get_device_list and is freed once.
        unsafe { ibv_free_device_list(list) };
        if names.is_empty() {
            RdmaSupport::Unavailable("no RDMA device found by libibverbs".into())
        } else {
            RdmaSupport::Available(names)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reports_why_there_is_no_rdma_here() {
        // No machine this project tests on has RDMA hardware: the probe must say so with a
        // reason, with or without the feature, and the selected path is QUIC.
        match probe() {
            RdmaSupport::Unavailable(reason) => {
                assert!(!reason.is_empty());
                if cfg!(feature = "rdma") {
                    assert!(!reason.contains("feature"), "{reason}");
                } else {
                    assert!(reason.contains("`rdma` feature"), "{reason}");
                }
            }
            RdmaSupport::Available(devices) => {
                println!("RDMA devices present: {devices:?}");
            }
        }
        assert_eq!(select(&probe()).name(), "quic");
    }
}
