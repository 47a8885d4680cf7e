//! # fragmenta-fastio: the node-local, zero-copy shared-memory data plane
//!
//! Modelled on NVIDIA Clara Deploy's Fast I/O Context and Allocations. This crate owns
//! allocating shared memory on one host, naming it (publish/get), describing it (element type
//! and dimensions), guarding access to it (map locks) and returning it to the node (reference
//! counting and capacity), across the processes of that host. It does **not** own moving data
//! between hosts (the runtime fetches a remote publication into a local allocation over QUIC
//! with the public API: [`FastIo::create`], [`Allocation::set_type_and_dimensions`],
//! [`Allocation::map_write`], [`FastIo::publish`], reading a publication's description with
//! [`Allocation::element_type`], [`Allocation::dims`] and [`Allocation::size`]), nor scheduling,
//! nor pipelines (Fast I/O Variables live in the `pipeline` crate on top of this one).
//!
//! ## Semantics
//!
//! - [`FastIo::create`]`(size)` returns an [`Allocation`]: one handle (reference) to a new
//!   memory resource, private to its creator until published. Beyond the context's capacity it
//!   fails with [`FastIoError::CapacityExceeded`].
//! - [`Allocation::set_type_and_dimensions`] describes the memory as a typed N-d array; the
//!   product of the dimensions times the element size must equal the size
//!   ([`FastIoError::DimsMismatch`]).
//! - [`FastIo::publish`]`(&alloc, name)` copies the handle's metadata and a reference to the
//!   memory into the context under a unique name ([`FastIoError::NameTaken`]). The publication
//!   never changes. Publishing the same memory again under another name is allowed.
//! - [`FastIo::get`]`(name)` returns a new handle to the same memory with a copy of the
//!   published metadata ([`FastIoError::UnknownName`] otherwise).
//! - [`Allocation::map_read`] / [`Allocation::map_write`]: any number of readers **or** one
//!   writer, over all handles in all processes. A conflicting map fails with
//!   [`FastIoError::MapConflict`]; there are no dirty reads. Guards unmap on drop.
//! - Dropping a handle is Clara's `release`: one reference fewer. [`Allocation::free`] also
//!   withdraws every publication of the memory.
//! - Memory returns to the node (memfd closed, capacity credited) when no handle in any
//!   process refers to it and nothing publishes it. A client process that disconnects or
//!   crashes loses all its handles and map locks at once.
//!
//! ## Implementations
//!
//! [`LocalContext`] is the in-process context, owned by the host's runtime.
//! [`LocalContext::serve`] (or [`ContextServer::start`]) serves the same context on a Unix
//! socket; [`RemoteContext::connect`] is the client in other processes. Both go through one
//! state machine (`core`), so there is one implementation of the rules. Each allocation is an
//! anonymous memfd, sealed against shrinking and growing, passed to clients with `SCM_RIGHTS`
//! and mapped once per process, however many handles refer to it: zero copies.
//!
//! ## Decisions where Clara is silent
//!
//! - **Conflicting maps are errors, never waits.** `MapConflict` is returned at once; callers
//!   retry or order their work (Fast I/O Variables order operators by data flow).
//! - **Metadata freeze is per handle.** A handle that has been published cannot change its
//!   metadata (`MetadataImmutable`). A handle from `get` starts as a mutable copy (Clara: "the
//!   metadata of these allocations can be modified") and can be published under a new name with
//!   different metadata; the earlier publication is unaffected.
//! - **`free` is memory-wide.** It withdraws every publication of the memory, and every other
//!   handle to it (in any process) then gets `Freed` from `map_*` and `publish`. Maps already
//!   held stay valid until their guards drop (nothing is pulled out from under a reader); the
//!   bytes return to the node when the last handle is dropped. `free` consumes its handle, so
//!   the borrow checker rules out a guard outliving it.
//! - **Publications outlive their publisher.** Published memory stays in the context when the
//!   publishing process exits or crashes (Clara's context owns publications); only `free`
//!   withdraws them. Unpublished memory of a crashed client is reclaimed.
//! - **Typed views are checked.** [`ReadGuard::as_slice`] works only for the [`Element`] type
//!   matching the handle's element type (`WrongElementType` otherwise, including untyped
//!   memory); bytes are always available through [`ReadGuard::as_bytes`].
//! - **Zero-sized allocations are allowed** (an empty array, e.g. dims `[0]`).
//! - **Security**: memfds have no path; the socket is mode 0600 in a directory of mode 0700
//!   owned by the user; the server refuses connections from other users (`SO_PEERCRED`), and
//!   the client refuses a server running as another user. Requests are length-prefixed bincode
//!   frames of at most 64 KiB; a malformed request, or one naming a handle the client does not
//!   hold, closes that client's connection (releasing its references) and nothing else.
//! - **Huge pages where the host allows them.** Mappings of 2 MiB and more ask for transparent
//!   huge pages (`MADV_HUGEPAGE`). Hosts whose `shmem_enabled` setting is `advise` or `always`
//!   then create, fill and first read large allocations many times faster (a 256 MiB first
//!   read is 128 page-table entries instead of 65,536); with `never`, 4 KiB pages are used.
//!   [`shmem_huge_pages`] reports the setting; the runtime logs it when it is off.
//! - **Freed memory is reused by fetches.** Reclaimed memory of 1 MiB or more is kept (up to a
//!   quarter of the capacity and 1 GiB; see [`ContextStats::pooled`]) for
//!   [`LocalContext::create_reusing`], which a cross-host fetch uses: repeated fetches of the
//!   same size land in memory whose pages are already allocated (and, in the process that owns
//!   the context, still mapped). `create` always gives zeroed memory and closes pooled
//!   memory first when it needs the room.
//! - **Handing memory over** from a client to the context's owner, in one copy:
//!   [`RemoteContext::hand_over`] takes memory of a given size (pooled memory of that size
//!   when there is some) with a write lock in one round trip, copies the bytes in, and
//!   publishes and releases it in a second; the owner takes it out by name
//!   ([`LocalContext::take`]: a handle, the name withdrawn) and reads it in place for as long
//!   as it likes ([`Allocation::into_shared_read`], an owner of the handle and its read map).
//!   When the owner lets go, the memory returns to the pool with the owner's mapping, and the
//!   client keeps its own mapping of memory it handed over (bounded), so the next hand-over
//!   of that size touches no fresh page on either side. [`LocalContext::withdraw_prefix`]
//!   withdraws what a client handed over and never referenced (it died).
//! - **Every request is a round trip**, including map/unmap, because locks are context-wide;
//!   `map_read` of 1 GiB costs the same as of 4 KiB (the mapping already exists).
//!
//! ## Example
//!
//! ```
//! use fragmenta_fastio::{ElementType, FastIo, LocalContext};
//!
//! let ctx = LocalContext::new(1 << 20);
//! let mut a = ctx.create(4 * 3)?;
//! a.set_type_and_dimensions(ElementType::F32, &[3])?;
//! a.map_write()?.as_mut_slice::<f32>()?.copy_from_slice(&[1.0, 2.0, 3.0]);
//! ctx.publish(&a, "xs")?;
//! let b = ctx.get("xs")?;
//! assert_eq!(b.map_read()?.as_slice::<f32>()?, &[1.0, 2.0, 3.0]);
//! # Ok::<(), fragmenta_fastio::FastIoError>(())
//! ```

#[cfg(not(target_os = "linux"))]
compile_error!("fragmenta-fastio needs Linux (memfd, SCM_RIGHTS, SO_PEERCRED)");

mod alloc;
mod core;
mod error;
mod local;
mod path;
mod proto;
mod remote;
mod server;
mod sys;
mod types;

pub use crate::alloc::{Allocation, ReadGuard, SharedRead, WriteGuard};
pub use crate::error::{FastIoError, IoOp, Result};
pub use crate::local::LocalContext;
pub use crate::path::{default_socket_dir, default_socket_path, socket_file_name, MAX_SOCKET_PATH};
pub use crate::remote::{HandOver, RemoteContext};
pub use crate::server::{ContextServer, ServerLimits};
pub use crate::sys::shmem_huge_pages;
pub use crate::types::{
    ContextStats, Element, ElementType, HandleId, MapMode, MemId, Metadata, OwnerId, MAX_DIMS,
    MAX_NAME_LEN,
};

/// A Fast I/O context: the operations of Clara's `nvidia_clara_fastio_context`.
///
/// Implemented by [`LocalContext`] (in-process) and [`RemoteContext`] (another process,
/// through a [`ContextServer`]); both behave identically.
pub trait FastIo: Send + Sync {
    /// Allocates `size` bytes of shared memory; the handle is private until published.
    ///
    /// Errors: [`FastIoError::CapacityExceeded`] beyond the context's remaining capacity.
    fn create(&self, size: u64) -> Result<Allocation>;

    /// A new handle to the memory published as `name`, with a copy of its metadata.
    ///
    /// Errors: [`FastIoError::UnknownName`] if nothing is published under `name`.
    fn get(&self, name: &str) -> Result<Allocation>;

    /// Publishes `alloc`'s memory and a copy of its metadata under `name`; the handle's own
    /// metadata is frozen from then on.
    ///
    /// Errors: [`FastIoError::NameTaken`], [`FastIoError::Freed`],
    /// [`FastIoError::InvalidName`], [`FastIoError::ForeignAllocation`].
    fn publish(&self, alloc: &Allocation, name: &str) -> Result<()>;

    /// Capacity, usage and counts of the context.
    fn stats(&self) -> Result<ContextStats>;

    /// Publishes a copy of `data` under `name` as an array of `T` with dimensions `dims`, in
    /// one call: [`create`](Self::create), [`Allocation::set_type_and_dimensions`],
    /// [`Allocation::map_write`] and a copy, [`publish`](Self::publish). Returns the published
    /// handle (dropping it keeps the publication).
    ///
    /// Errors: those of the four steps; on any, nothing is published and the memory returns
    /// to the context. [`FastIoError::DimsMismatch`] when `dims` do not multiply to
    /// `data.len()`.
    fn publish_array<T: Element>(&self, name: &str, data: &[T], dims: &[u64]) -> Result<Allocation>
    where
        Self: Sized,
    {
        let mut alloc = self.create(std::mem::size_of_val(data) as u64)?;
        alloc.set_type_and_dimensions(T::TYPE, dims)?;
        alloc
            .map_write()?
            .as_mut_slice::<T>()?
            .copy_from_slice(data);
        self.publish(&alloc, name)?;
        Ok(alloc)
    }

    /// [`publish_array`](Self::publish_array) of a one-dimensional array: dimensions
    /// `[data.len()]`.
    fn publish_slice<T: Element>(&self, name: &str, data: &[T]) -> Result<Allocation>
    where
        Self: Sized,
    {
        self.publish_array(name, data, &[data.len() as u64])
    }
}
