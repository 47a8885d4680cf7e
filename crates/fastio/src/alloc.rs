//! Allocation handles, map guards, and the per-process mapping cache.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;

use crate::core::Granted;
use crate::error::{FastIoError, IoOp, Result};
use crate::sys::{self, Mapping};
use crate::types::{Element, ElementType, HandleId, MapMode, MemId, Metadata};

/// How an [`Allocation`] talks to the context that holds its reference: directly to the core
/// for [`crate::LocalContext`], over the socket for [`crate::RemoteContext`].
pub(crate) trait Port: Send + Sync + fmt::Debug {
    fn map(&self, handle: HandleId, mode: MapMode) -> Result<()>;
    fn unmap(&self, handle: HandleId, mode: MapMode);
    fn publish(&self, handle: HandleId, name: &str, meta: &Metadata) -> Result<()>;
    /// Drops the reference `handle`. `mapping` is this process's mapping of its memory: an
    /// in-process context may keep it with reclaimed memory it pools, so the memory's next
    /// user here finds its pages mapped.
    fn release(&self, handle: HandleId, mapping: Option<&Arc<Mapping>>);
    fn free(&self, handle: HandleId) -> Result<()>;
}

/// Weak mappings by (device, inode) of their memfd.
type MappingCache = HashMap<(u64, u64), Weak<Mapping>>;

/// Mappings of this process, keyed by the memfd's (device, inode): each memory is mapped once
/// per process however many handles or connections refer to it. Entries are weak; the mapping
/// goes away with the last handle. An inode cannot be reused while its mapping is alive.
static MAPPINGS: LazyLock<Mutex<MappingCache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Maps (or finds the existing mapping of) a memfd of `size` bytes.
pub(crate) fn map_shared(fd: &OwnedFd, size: u64) -> Result<Arc<Mapping>> {
    let id =
        sys::inspect_sealed(fd.as_fd()).map_err(|e| FastIoError::io(IoOp::InspectMemory, &e))?;
    if id.size != size {
        return Err(FastIoError::Protocol(
            "memory size differs from the granted size".into(),
        ));
    }
    let mut cache = MAPPINGS.lock();
    if let Some(mapping) = cache.get(&(id.dev, id.ino)).and_then(Weak::upgrade) {
        return Ok(mapping);
    }
    let mapping =
        Arc::new(Mapping::map(fd.as_fd(), size).map_err(|e| FastIoError::io(IoOp::Map, &e))?);
    cache.retain(|_, weak| weak.strong_count() > 0);
    cache.insert((id.dev, id.ino), Arc::downgrade(&mapping));
    Ok(mapping)
}

/// A handle (one reference) to a Fast I/O memory resource, with its own copy of the metadata.
///
/// Obtained from [`crate::FastIo::create`] (private until published) or [`crate::FastIo::get`].
/// Dropping it releases the reference (Clara's `release`); [`Allocation::free`] also withdraws
/// every publication of the memory. The memory is mapped into this process once, for as long
/// as any handle to it lives here; [`Allocation::map_read`] / [`Allocation::map_write`] take the
/// context-wide lock that makes the bytes safe to touch.
pub struct Allocation {
    port: Arc<dyn Port>,
    handle: HandleId,
    mem: MemId,
    size: u64,
    mapping: Arc<Mapping>,
    meta: Metadata,
    published: AtomicBool,
    released: bool,
}

impl fmt::Debug for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocation")
            .field("handle", &self.handle)
            .field("mem", &self.mem)
            .field("size", &self.size)
            .field("meta", &self.meta)
            .field("published", &self.published.load(Ordering::Relaxed))
            .finish()
    }
}

impl Allocation {
    /// Wraps a granted handle, mapping its memory; on failure the handle is released.
    pub(crate) fn from_granted(port: Arc<dyn Port>, granted: Granted) -> Result<Allocation> {
        // Pooled memory may come with its mapping still alive: `from_parts` finds it in the
        // mapping cache while `granted.keep` holds it, and the allocation then holds it.
        Allocation::from_parts(
            port,
            granted.handle,
            granted.mem,
            granted.size,
            granted.meta,
            &granted.fd,
        )
    }

    /// Faults in the pages of a freshly created allocation (see `Mapping::populate`).
    pub(crate) fn prefault(&self) {
        self.mapping.populate();
    }

    pub(crate) fn from_parts(
        port: Arc<dyn Port>,
        handle: HandleId,
        mem: MemId,
        size: u64,
        meta: Metadata,
        fd: &OwnedFd,
    ) -> Result<Allocation> {
        let mapping = match map_shared(fd, size) {
            Ok(m) => m,
            Err(e) => {
                port.release(handle, None);
                return Err(e);
            }
        };
        Ok(Allocation {
            port,
            handle,
            mem,
            size,
            mapping,
            meta,
            published: AtomicBool::new(false),
            released: false,
        })
    }

    /// Whether this handle belongs to the context whose port is `port`.
    pub(crate) fn same_port(&self, port: &Arc<dyn Port>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.port), Arc::as_ptr(port))
    }

    /// Publishes through this handle's port (the caller checked the context).
    pub(crate) fn publish_as(&self, name: &str) -> Result<()> {
        self.port.publish(self.handle, name, &self.meta)?;
        self.published.store(true, Ordering::Release);
        Ok(())
    }

    /// Size of the memory in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Element type, if set (by [`Allocation::set_type_and_dimensions`] or copied from a
    /// publication by `get`).
    pub fn element_type(&self) -> Option<ElementType> {
        self.meta.element_type
    }

    /// Dimensions (empty until set).
    pub fn dims(&self) -> &[u64] {
        &self.meta.dims
    }

    /// This handle's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// Whether this handle has been published (its metadata is then frozen).
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }

    /// Describes the memory as an array of `element_type` with dimensions `dims`.
    ///
    /// Errors: [`FastIoError::DimsMismatch`] if the product of `dims` times the element size is
    /// not [`Allocation::size`]; [`FastIoError::TooManyDimensions`];
    /// [`FastIoError::MetadataImmutable`] once this handle has been published.
    pub fn set_type_and_dimensions(
        &mut self,
        element_type: ElementType,
        dims: &[u64],
    ) -> Result<()> {
        if self.is_published() {
            return Err(FastIoError::MetadataImmutable);
        }
        self.meta = Metadata::typed(self.size, element_type, dims)?;
        Ok(())
    }

    /// Maps the memory for reading: any number of readers, in any process, may hold it at once.
    ///
    /// Errors: [`FastIoError::MapConflict`] while any handle holds a write map;
    /// [`FastIoError::Freed`] after the memory was freed.
    pub fn map_read(&self) -> Result<ReadGuard<'_>> {
        self.port.map(self.handle, MapMode::Read)?;
        Ok(ReadGuard { alloc: self })
    }

    /// Maps the memory for writing: exclusive across all handles and processes.
    ///
    /// Errors: [`FastIoError::MapConflict`] while any other map (read or write) is held;
    /// [`FastIoError::Freed`] after the memory was freed.
    pub fn map_write(&self) -> Result<WriteGuard<'_>> {
        self.port.map(self.handle, MapMode::Write)?;
        Ok(WriteGuard { alloc: self })
    }

    /// Releases this reference (same as dropping the handle; Clara's `release`).
    pub fn release(self) {
        drop(self);
    }

    /// Frees the memory: withdraws every publication of it (later `get`s fail with
    /// [`FastIoError::UnknownName`]), makes every other handle to it, in any process, fail
    /// `map_*` and `publish` with [`FastIoError::Freed`], and releases this reference. Maps
    /// already held elsewhere stay valid until their guards drop; the memory returns to the
    /// context when the last reference is gone.
    pub fn free(mut self) -> Result<()> {
        self.port.free(self.handle)?;
        self.released = true;
        Ok(())
    }
}

impl Allocation {
    /// Maps the memory for reading and keeps the map with the handle: an owner of both that
    /// can be moved to another thread and read in place for as long as it lives (dropping it
    /// unmaps and releases the reference).
    ///
    /// Errors: those of [`Allocation::map_read`].
    pub fn into_shared_read(self) -> Result<SharedRead> {
        self.port.map(self.handle, MapMode::Read)?;
        Ok(SharedRead { alloc: self })
    }

    pub(crate) fn mapping(&self) -> &Arc<Mapping> {
        &self.mapping
    }

    pub(crate) fn handle_id(&self) -> HandleId {
        self.handle
    }

    /// Marks the handle as released by its context already (`PublishRelease`).
    pub(crate) fn forget(mut self) {
        self.released = true;
    }
}

/// An [`Allocation`] mapped for reading, owning both the handle and the read map (see
/// [`Allocation::into_shared_read`]).
#[derive(Debug)]
pub struct SharedRead {
    alloc: Allocation,
}

impl SharedRead {
    /// The bytes of the allocation.
    pub fn as_bytes(&self) -> &[u8] {
        // Lock protocol: this value holds a read lock granted by the context.
        self.alloc.mapping.bytes()
    }

    /// The handle it reads.
    pub fn allocation(&self) -> &Allocation {
        &self.alloc
    }
}

impl AsRef<[u8]> for SharedRead {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Drop for SharedRead {
    fn drop(&mut self) {
        self.alloc.port.unmap(self.alloc.handle, MapMode::Read);
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if !self.released {
            self.port.release(self.handle, Some(&self.mapping));
        }
    }
}

fn typed_check<T: Element>(alloc: &Allocation) -> Result<()> {
    if alloc.meta.element_type == Some(T::TYPE) {
        Ok(())
    } else {
        Err(FastIoError::WrongElementType {
            actual: alloc.meta.element_type,
            requested: T::TYPE,
        })
    }
}

/// A read map of an allocation: shared access to its bytes. Dropping it unmaps (releases the
/// read lock).
#[derive(Debug)]
pub struct ReadGuard<'a> {
    alloc: &'a Allocation,
}

impl ReadGuard<'_> {
    /// The bytes of the allocation.
    pub fn as_bytes(&self) -> &[u8] {
        // Lock protocol: this guard holds a read lock granted by the context.
        self.alloc.mapping.bytes()
    }

    /// The bytes as a slice of `T`, if the handle's element type is `T`
    /// ([`FastIoError::WrongElementType`] otherwise, or if the memory is misaligned for `T`).
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        typed_check::<T>(self.alloc)?;
        sys::cast_slice(self.as_bytes()).ok_or(FastIoError::WrongElementType {
            actual: self.alloc.meta.element_type,
            requested: T::TYPE,
        })
    }
}

impl std::ops::Deref for ReadGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.alloc.port.unmap(self.alloc.handle, MapMode::Read);
    }
}

/// A write map of an allocation: exclusive access to its bytes. Dropping it unmaps (releases
/// the write lock).
#[derive(Debug)]
pub struct WriteGuard<'a> {
    alloc: &'a Allocation,
}

impl WriteGuard<'_> {
    /// The bytes of the allocation.
    pub fn as_bytes(&self) -> &[u8] {
        // Lock protocol: this guard holds the write lock; `&self` excludes `&mut` use.
        self.alloc.mapping.bytes()
    }

    /// The bytes of the allocation, for writing.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        // Lock protocol: this guard holds the only write lock; `&mut self` makes this the only
        // live slice.
        self.alloc.mapping.bytes_mut()
    }

    /// The bytes as a slice of `T` (see [`ReadGuard::as_slice`]).
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        typed_check::<T>(self.alloc)?;
        sys::cast_slice(self.as_bytes()).ok_or(FastIoError::WrongElementType {
            actual: self.alloc.meta.element_type,
            requested: T::TYPE,
        })
    }

    /// The bytes as a mutable slice of `T`, if the handle's element type is `T`.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        typed_check::<T>(self.alloc)?;
        let actual = self.alloc.meta.element_type;
        sys::cast_slice_mut(self.as_mut_bytes()).ok_or(FastIoError::WrongElementType {
            actual,
            requested: T::TYPE,
        })
    }
}

impl std::ops::Deref for WriteGuard<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::ops::DerefMut for WriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_bytes()
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.alloc.port.unmap(self.alloc.handle, MapMode::Write);
    }
}
