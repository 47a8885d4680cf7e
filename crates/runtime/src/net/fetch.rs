//! Fast I/O fetch across hosts: `Transaction::fetch(host, name)` over the QUIC link, or, from
//! a host proven to be on the owner's machine, straight from the owner's context (one copy).
//!
//! The requester opens a bi stream and sends [`Request::Fetch`]; the owner of the publication
//! `get`s it, maps it for reading (so a writer cannot change it under the copy: a conflicting
//! map is refused, never read dirty), answers [`FetchReply::Found`] with the metadata, and
//! writes the raw bytes straight from its mapping. The requester creates an allocation of that
//! size in its own context (memory of that size freed earlier in the context is reused, its
//! pages already allocated), maps it for writing and reads the stream directly into it: the
//! only copies are the transport's own buffers.

use super::{Link, Net};
use fragmenta_fastio::{Allocation, FastIo, FastIoError, LocalContext};
use fragmenta_job::{CancelToken, Fetch, FetchError, HostId};
use fragmenta_net::handshake::{close_on_frame_error, CLOSE_PROTOCOL_ERROR};
use fragmenta_net::{Connection, RecvStream, SendStream};
use fragmenta_wire::messages::{FetchReply, Request};
use fragmenta_wire::{read_header, write_frame};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes handed to the transport per write when serving a fetch.
const SERVE_SLICE: usize = 4 << 20;
/// How often a fetch waiting for bytes looks at its job's cancellation.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The [`Fetch`] implementation the runtime attaches to every transaction of a networked host.
pub(crate) struct NetFetch {
    pub(crate) net: Weak<Net>,
}

impl Fetch for NetFetch {
    fn fetch(
        &self,
        host: HostId,
        name: &str,
        into: &LocalContext,
        reuse: Option<Allocation>,
        cancel: &CancelToken,
    ) -> Result<Allocation, FetchError> {
        let net = self.net.upgrade().ok_or(FetchError::UnknownHost(host))?;
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking inside a reactor would stall every connection of the host.
            return Err(FetchError::AsyncThread);
        }
        let link = net.wait_for_link(host, cancel);
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        let link = link.ok_or(FetchError::UnknownHost(host))?;
        if let Some(theirs) = link.shm.sender() {
            // The owner is a process of this machine whose context this host reaches (proven
            // on the link): copy straight from its memory, once.
            return fetch_same_machine(theirs, host, name, into, reuse);
        }
        let limits = net.limits;
        // The transfer runs on the network runtime, next to the connection's driver; this
        // thread (a fragment's) only waits for its outcome.
        let task = net.handle.spawn(fetch_into(
            link.conn.clone(),
            host,
            name.to_owned(),
            into.clone(),
            reuse,
            cancel.clone(),
            limits,
        ));
        match net.handle.block_on(task) {
            Ok(result) => result,
            Err(e) => Err(transport(host, format!("fetch task failed: {e}"))),
        }
    }
}

/// A fetch from a process of this machine: the owner's publication, mapped for reading in its
/// own context (so a writer cannot change it under the copy), copied once into an allocation
/// of this host's context. The same outcome and errors as over QUIC.
fn fetch_same_machine(
    theirs: &fragmenta_fastio::RemoteContext,
    host: HostId,
    name: &str,
    into: &LocalContext,
    reuse: Option<Allocation>,
) -> Result<Allocation, FetchError> {
    let remote = |e: FastIoError| FetchError::Remote {
        host,
        name: name.to_owned(),
        error: e,
    };
    // The whole publication is read next: its pages are mapped in one call rather than
    // faulted in one by one (a fault per 4 KiB costs more than copying it on a virtual
    // machine), and the mapping is kept for the next fetch of the same memory.
    let source = match theirs.get_to_read(name) {
        Ok(a) => a,
        Err(FastIoError::UnknownName(_)) => {
            return Err(FetchError::UnknownName {
                host,
                name: name.to_owned(),
            })
        }
        Err(e) => return Err(remote(e)),
    };
    let read = source.map_read().map_err(remote)?;
    let size = source.size();
    let mut alloc = match reuse {
        Some(a) if a.size() == size && !a.is_published() => a,
        _ => into.create_reusing(size).map_err(FetchError::Local)?,
    };
    if let Some(element_type) = source.element_type() {
        alloc
            .set_type_and_dimensions(element_type, source.dims())
            .map_err(|e| transport(host, format!("metadata does not describe the bytes: {e}")))?;
    }
    alloc
        .map_write()
        .map_err(FetchError::Local)?
        .as_mut_bytes()
        .copy_from_slice(read.as_bytes());
    Ok(alloc)
}

fn transport(host: HostId, reason: impl std::fmt::Display) -> FetchError {
    FetchError::Transport {
        host,
        reason: reason.to_string(),
    }
}

async fn fetch_into(
    conn: Connection,
    host: HostId,
    name: String,
    into: LocalContext,
    reuse: Option<Allocation>,
    cancel: CancelToken,
    limits: fragmenta_wire::FrameLimits,
) -> Result<Allocation, FetchError> {
    let name = name.as_str();
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| transport(host, e))?;
    write_frame(
        &mut send,
        &Request::Fetch {
            name: name.to_owned(),
        },
        &[],
    )
    .await
    .map_err(|e| transport(host, e))?;
    let _ = send.finish();
    let reply = read_header::<_, FetchReply>(&mut recv, &limits)
        .await
        .map_err(|e| transport(host, e))?;
    let (size, metadata) = match reply {
        Some((FetchReply::Found { size, metadata }, 0)) => (size, metadata),
        Some((FetchReply::UnknownName, 0)) => {
            return Err(FetchError::UnknownName {
                host,
                name: name.to_owned(),
            })
        }
        Some((FetchReply::Refused { error }, 0)) => {
            return Err(FetchError::Remote {
                host,
                name: name.to_owned(),
                error,
            })
        }
        Some((_, len)) => {
            return Err(transport(
                host,
                format!("fetch reply with an unexpected {len}-byte payload"),
            ))
        }
        None => return Err(transport(host, "stream closed before the reply")),
    };
    let mut alloc = match reuse {
        Some(a) if a.size() == size && !a.is_published() => a,
        // Creating maps and faults in `size` bytes: blocking work, kept off the reactor.
        _ => tokio::task::spawn_blocking(move || into.create_reusing(size))
            .await
            .map_err(|e| transport(host, format!("creating the allocation failed: {e}")))?
            .map_err(FetchError::Local)?,
    };
    if let Some(element_type) = metadata.element_type {
        alloc
            .set_type_and_dimensions(element_type, &metadata.dims)
            .map_err(|error| FetchError::BadMetadata {
                host,
                name: name.to_owned(),
                error,
            })?;
    }
    {
        let mut guard = alloc.map_write().map_err(FetchError::Local)?;
        read_exact_cancellable(&mut recv, guard.as_mut_bytes(), &cancel, host).await?;
    }
    Ok(alloc)
}

/// Reads exactly `buf.len()` bytes into `buf`, giving up once `cancel` is set.
async fn read_exact_cancellable(
    recv: &mut RecvStream,
    buf: &mut [u8],
    cancel: &CancelToken,
    host: HostId,
) -> Result<(), FetchError> {
    let mut filled = 0;
    // One timer for the whole transfer (a timeout per read would register one per packet).
    let mut tick = tokio::time::interval(CANCEL_POLL);
    while filled < buf.len() {
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        tokio::select! {
            biased;
            read = recv.read(&mut buf[filled..]) => match read {
                Ok(0) => {
                    return Err(transport(
                        host,
                        format!("stream ended after {filled} of {} bytes", buf.len()),
                    ))
                }
                Ok(n) => filled += n,
                Err(e) => return Err(transport(host, e)),
            },
            _ = tick.tick() => {}
        }
    }
    Ok(())
}

impl Net {
    /// The link to `host`. A host of the configuration that is not retired and not linked yet
    /// is waited for, up to the failure timeout: hosts of a freshly joined cluster link to
    /// each other a little after each has seen the primary, so the first fetch between two
    /// other hosts may come first. `None` once that time is up, for a host outside the
    /// configuration or declared dead, or when the job is cancelled or the host shuts down.
    fn wait_for_link(&self, host: HostId, cancel: &CancelToken) -> Option<Arc<Link>> {
        if self.config.host(host).is_none() || self.retired.lock().contains(&host) {
            return None;
        }
        let deadline = std::time::Instant::now() + self.config.failure_timeout();
        loop {
            let mut links = self.links.lock();
            if let Some(link) = links.get(&host) {
                return Some(link.clone());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            // Woken by every link change; the slice bounds how late a cancel is noticed.
            self.links_changed
                .wait_until(&mut links, (now + CANCEL_POLL).min(deadline));
            // The rest is checked without the links lock (the shutdown state is locked
            // before it elsewhere).
            drop(links);
            if cancel.is_cancelled()
                || self.shutdown.state.lock().is_some()
                || self.retired.lock().contains(&host)
            {
                return None;
            }
        }
    }

    /// Answers the requests other hosts open on bi streams of `conn`.
    pub(super) async fn request_acceptor(self: Arc<Self>, conn: Connection) {
        while let Ok((send, recv)) = conn.accept_bi().await {
            let me = self.clone();
            let conn = conn.clone();
            tokio::spawn(async move { me.serve_request(conn, send, recv).await });
        }
    }

    async fn serve_request(&self, conn: Connection, mut send: SendStream, mut recv: RecvStream) {
        match read_header::<_, Request>(&mut recv, &self.limits).await {
            Ok(Some((Request::Fetch { name }, 0))) => self.serve_fetch(&mut send, &name).await,
            Ok(None) => {}
            Ok(Some(_)) => {
                tracing::error!(host = %self.host, peer = %conn.peer(), "request with a payload");
                conn.close(CLOSE_PROTOCOL_ERROR, b"request with a payload");
            }
            Err(e) => close_on_frame_error(&conn, &e),
        }
    }

    async fn serve_fetch(&self, send: &mut SendStream, name: &str) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let alloc = match node.fastio.get(name) {
            Ok(a) => a,
            Err(e) => return refuse(send, e).await,
        };
        let guard = match alloc.map_read() {
            Ok(g) => g,
            Err(e) => return refuse(send, e).await,
        };
        let reply = FetchReply::Found {
            size: alloc.size(),
            metadata: alloc.metadata().clone(),
        };
        if write_frame(send, &reply, &[]).await.is_err() {
            return;
        }
        for slice in guard.as_bytes().chunks(SERVE_SLICE) {
            if send.write_all(slice).await.is_err() {
                // The requester went away (cancelled or lost): nothing more to do.
                return;
            }
        }
        let _ = send.finish();
        tracing::debug!(host = %self.host, name, bytes = alloc.size(), "served a fetch");
    }
}

async fn refuse(send: &mut SendStream, e: FastIoError) {
    let reply = match e {
        FastIoError::UnknownName(_) => FetchReply::UnknownName,
        error => FetchReply::Refused { error },
    };
    if write_frame(send, &reply, &[]).await.is_ok() {
        let _ = send.finish();
    }
}
