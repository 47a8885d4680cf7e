//! The context's state machine: references, publications, map locks and capacity.
//!
//! One implementation of the rules, used by the in-process [`crate::LocalContext`] and by the
//! [`crate::ContextServer`] for its clients. Every call names the owner (an in-process context
//! or a client connection) so a disconnecting owner can be cleaned up in one step. The only
//! side effect is creating memfds; the caller maps and sends them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::error::{FastIoError, IoOp};
use crate::types::{check_name, ContextStats, HandleId, MapMode, MemId, Metadata, OwnerId};

/// What `create` and `get` hand back: a new handle and the memory it refers to.
#[derive(Debug)]
pub(crate) struct Granted {
    pub(crate) handle: HandleId,
    pub(crate) mem: MemId,
    pub(crate) size: u64,
    pub(crate) meta: Metadata,
    pub(crate) fd: Arc<OwnedFd>,
    /// What pooled memory came with (its mapping in this process), held until the caller has
    /// wrapped the grant.
    pub(crate) keep: Option<Keep>,
}

/// Something kept alive with pooled memory: the in-process mapping of it.
pub(crate) type Keep = Arc<dyn std::any::Any + Send + Sync>;

#[derive(Debug)]
struct Memory {
    size: u64,
    fd: Arc<OwnedFd>,
    handles: u64,
    names: HashSet<String>,
    readers: HashMap<HandleId, u32>,
    writer: Option<HandleId>,
    freed: bool,
    /// What the memory came out of the pool with (the owning process's mapping of it), kept
    /// while it lives so it goes back to the pool mapped even when a client took it.
    keep: Option<Keep>,
}

#[derive(Debug)]
struct Handle {
    owner: OwnerId,
    mem: MemId,
}

#[derive(Debug)]
struct Publication {
    mem: MemId,
    meta: Metadata,
}

/// The context state. Not thread-safe by itself; callers wrap it in a mutex.
#[derive(Debug)]
pub(crate) struct Core {
    capacity: u64,
    used: u64,
    next_id: u64,
    mems: HashMap<MemId, Memory>,
    handles: HashMap<HandleId, Handle>,
    names: HashMap<String, Publication>,
    owners: HashMap<OwnerId, HashSet<HandleId>>,
    /// Reclaimed memory kept for [`Core::create_reusing`], oldest first: `(size, memfd)`.
    pool: VecDeque<Pooled>,
    /// Bytes in `pool`. `used + pooled <= capacity` always: a `create` that needs the room
    /// evicts pooled memory first.
    pooled: u64,
    /// Memory (and kept mappings) this core let go of, closed by [`CoreGuard`] after the lock
    /// is released: freeing hundreds of MiB of pages takes milliseconds, which no other
    /// process's request should wait for.
    dead: Vec<(Arc<OwnedFd>, Option<Keep>)>,
}

/// The core behind its lock. [`CoreLock::lock`]'s guard closes what the core let go of after
/// unlocking.
#[derive(Debug)]
pub(crate) struct CoreLock(parking_lot::Mutex<Core>);

impl CoreLock {
    pub(crate) fn new(core: Core) -> CoreLock {
        CoreLock(parking_lot::Mutex::new(core))
    }

    pub(crate) fn lock(&self) -> CoreGuard<'_> {
        CoreGuard(Some(self.0.lock()))
    }
}

/// Access to the locked core (always `Some` until dropped).
pub(crate) struct CoreGuard<'a>(Option<parking_lot::MutexGuard<'a, Core>>);

impl std::ops::Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        match &self.0 {
            Some(g) => g,
            None => unreachable!("the guard is only emptied when dropped"),
        }
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        match &mut self.0 {
            Some(g) => g,
            None => unreachable!("the guard is only emptied when dropped"),
        }
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        let dead = match self.0.as_mut() {
            Some(core) => std::mem::take(&mut core.dead),
            None => Vec::new(),
        };
        // Unlock first, then unmap and close.
        drop(self.0.take());
        drop(dead);
    }
}

/// Reclaimed memory waiting in the pool.
#[derive(Debug)]
struct Pooled {
    size: u64,
    fd: Arc<OwnedFd>,
    keep: Option<Keep>,
}

/// Reclaimed memory smaller than this is closed at once, not pooled.
const POOL_MIN: u64 = 1 << 20;
/// At most this much reclaimed memory is pooled (and less in a small context: a quarter of
/// its capacity).
const POOL_MAX: u64 = 1 << 30;

impl Core {
    pub(crate) fn new(capacity: u64) -> Core {
        Core {
            capacity,
            used: 0,
            next_id: 1,
            mems: HashMap::new(),
            handles: HashMap::new(),
            names: HashMap::new(),
            owners: HashMap::new(),
            pool: VecDeque::new(),
            pooled: 0,
            dead: Vec::new(),
        }
    }

    fn next(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Registers a new owner of handles.
    pub(crate) fn register_owner(&mut self) -> OwnerId {
        let owner = OwnerId(self.next());
        self.owners.insert(owner, HashSet::new());
        owner
    }

    fn new_handle(&mut self, owner: OwnerId, mem: MemId) -> Result<HandleId, FastIoError> {
        let handle = HandleId(self.next());
        let Some(set) = self.owners.get_mut(&owner) else {
            return Err(FastIoError::InvalidHandle);
        };
        set.insert(handle);
        self.handles.insert(handle, Handle { owner, mem });
        if let Some(m) = self.mems.get_mut(&mem) {
            m.handles += 1;
        }
        Ok(handle)
    }

    /// Looks up a handle that `owner` holds.
    fn handle(&self, owner: OwnerId, handle: HandleId) -> Result<MemId, FastIoError> {
        match self.handles.get(&handle) {
            Some(h) if h.owner == owner => Ok(h.mem),
            _ => Err(FastIoError::InvalidHandle),
        }
    }

    /// Creates a memory resource of `size` bytes and a first handle to it, private to `owner`.
    /// Its bytes are zero.
    pub(crate) fn create(&mut self, owner: OwnerId, size: u64) -> Result<Granted, FastIoError> {
        self.check_room(owner, size)?;
        // Room for `size` more bytes (`check_room` made sure `used + size` fits).
        self.shrink_pool(self.capacity - self.used - size);
        let fd = Arc::new(
            crate::sys::memfd_create(size).map_err(|e| FastIoError::io(IoOp::CreateMemory, &e))?,
        );
        self.grant_new(owner, size, fd)
    }

    /// Like [`Core::create`], but takes reclaimed memory of exactly `size` bytes from the pool
    /// when there is some: its bytes are whatever they were, and its pages are already
    /// allocated. For callers that overwrite every byte before anyone reads (a fetch).
    pub(crate) fn create_reusing(
        &mut self,
        owner: OwnerId,
        size: u64,
    ) -> Result<Granted, FastIoError> {
        self.check_room(owner, size)?;
        let newest = self.pool.iter().rposition(|p| p.size == size);
        let Some(p) = newest.and_then(|i| self.pool.remove(i)) else {
            return self.create(owner, size);
        };
        self.pooled -= size;
        tracing::debug!(size, "reusing pooled memory");
        let mut granted = self.grant_new(owner, size, p.fd)?;
        if let Some(mem) = self.mems.get_mut(&granted.mem) {
            mem.keep.clone_from(&p.keep);
        }
        granted.keep = p.keep;
        Ok(granted)
    }

    fn check_room(&self, owner: OwnerId, size: u64) -> Result<(), FastIoError> {
        if !self.owners.contains_key(&owner) {
            return Err(FastIoError::InvalidHandle);
        }
        let available = self.capacity - self.used;
        if size > available {
            return Err(FastIoError::CapacityExceeded {
                requested: size,
                available,
            });
        }
        Ok(())
    }

    /// Lets go of pooled memory, oldest first, until at most `max` bytes stay pooled.
    fn shrink_pool(&mut self, max: u64) {
        while self.pooled > max {
            let Some(p) = self.pool.pop_front() else {
                break;
            };
            self.pooled -= p.size;
            self.dead.push((p.fd, p.keep));
        }
    }

    fn grant_new(
        &mut self,
        owner: OwnerId,
        size: u64,
        fd: Arc<OwnedFd>,
    ) -> Result<Granted, FastIoError> {
        let mem = MemId(self.next());
        self.mems.insert(
            mem,
            Memory {
                size,
                fd: Arc::clone(&fd),
                handles: 0,
                names: HashSet::new(),
                readers: HashMap::new(),
                writer: None,
                freed: false,
                keep: None,
            },
        );
        self.used += size;
        let handle = self.new_handle(owner, mem)?;
        tracing::debug!(owner = owner.0, mem = mem.0, size, "created");
        Ok(Granted {
            handle,
            mem,
            size,
            meta: Metadata::default(),
            fd,
            keep: None,
        })
    }

    /// A new handle for `owner` to the memory published under `name`, with a copy of the
    /// published metadata.
    pub(crate) fn get(&mut self, owner: OwnerId, name: &str) -> Result<Granted, FastIoError> {
        check_name(name)?;
        let Some(publication) = self.names.get(name) else {
            return Err(FastIoError::UnknownName(name.to_owned()));
        };
        let (mem, meta) = (publication.mem, publication.meta.clone());
        let (size, fd) = match self.mems.get(&mem) {
            Some(m) => (m.size, Arc::clone(&m.fd)),
            None => return Err(FastIoError::UnknownName(name.to_owned())),
        };
        let handle = self.new_handle(owner, mem)?;
        Ok(Granted {
            handle,
            mem,
            size,
            meta,
            fd,
            keep: None,
        })
    }

    /// Publishes the memory of `handle` with metadata `meta` under `name`.
    pub(crate) fn publish(
        &mut self,
        owner: OwnerId,
        handle: HandleId,
        name: &str,
        meta: &Metadata,
    ) -> Result<(), FastIoError> {
        let mem_id = self.handle(owner, handle)?;
        check_name(name)?;
        let Some(mem) = self.mems.get_mut(&mem_id) else {
            return Err(FastIoError::InvalidHandle);
        };
        if mem.freed {
            return Err(FastIoError::Freed);
        }
        meta.validate(mem.size)?;
        if self.names.contains_key(name) {
            return Err(FastIoError::NameTaken(name.to_owned()));
        }
        mem.names.insert(name.to_owned());
        self.names.insert(
            name.to_owned(),
            Publication {
                mem: mem_id,
                meta: meta.clone(),
            },
        );
        tracing::debug!(owner = owner.0, mem = mem_id.0, name, "published");
        Ok(())
    }

    /// Withdraws the publication `name` (only that one), reclaiming its memory if nothing else
    /// refers to it.
    pub(crate) fn unpublish(&mut self, name: &str) -> Result<(), FastIoError> {
        let Some(publication) = self.names.remove(name) else {
            return Err(FastIoError::UnknownName(name.to_owned()));
        };
        if let Some(mem) = self.mems.get_mut(&publication.mem) {
            mem.names.remove(name);
        }
        self.maybe_reclaim(publication.mem, None);
        Ok(())
    }

    /// Withdraws every publication whose name starts with `prefix`; returns how many.
    pub(crate) fn withdraw_prefix(&mut self, prefix: &str) -> usize {
        let names: Vec<String> = self
            .names
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        for name in &names {
            // Cannot fail: the name was just listed.
            let _ = self.unpublish(name);
        }
        names.len()
    }

    /// Publishes the memory of `handle` under `name`, after dropping any lock the handle holds,
    /// and releases the handle: the publication is then the memory's only reference from this
    /// owner. On error the handle is released all the same.
    pub(crate) fn publish_release(
        &mut self,
        owner: OwnerId,
        handle: HandleId,
        name: &str,
        meta: &Metadata,
    ) -> Result<(), FastIoError> {
        let mem_id = self.handle(owner, handle)?;
        if let Some(mem) = self.mems.get_mut(&mem_id) {
            mem.readers.remove(&handle);
            if mem.writer == Some(handle) {
                mem.writer = None;
            }
        }
        let published = self.publish(owner, handle, name, meta);
        self.release(owner, handle)?;
        published
    }

    /// Takes a read or write lock on the memory of `handle`.
    pub(crate) fn map(
        &mut self,
        owner: OwnerId,
        handle: HandleId,
        mode: MapMode,
    ) -> Result<(), FastIoError> {
        let mem_id = self.handle(owner, handle)?;
        let Some(mem) = self.mems.get_mut(&mem_id) else {
            return Err(FastIoError::InvalidHandle);
        };
        if mem.freed {
            return Err(FastIoError::Freed);
        }
        match mode {
            MapMode::Read => {
                if mem.writer.is_some() {
                    return Err(FastIoError::MapConflict);
                }
                *mem.readers.entry(handle).or_insert(0) += 1;
            }
            MapMode::Write => {
                if mem.writer.is_some() || !mem.readers.is_empty() {
                    return Err(FastIoError::MapConflict);
                }
                mem.writer = Some(handle);
            }
        }
        Ok(())
    }

    /// Drops a lock taken by [`Core::map`]. Unlocking a lock the handle does not hold is
    /// `InvalidHandle`.
    pub(crate) fn unmap(
        &mut self,
        owner: OwnerId,
        handle: HandleId,
        mode: MapMode,
    ) -> Result<(), FastIoError> {
        let mem_id = self.handle(owner, handle)?;
        let Some(mem) = self.mems.get_mut(&mem_id) else {
            return Err(FastIoError::InvalidHandle);
        };
        match mode {
            MapMode::Read => match mem.readers.get_mut(&handle) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    mem.readers.remove(&handle);
                }
                None => return Err(FastIoError::InvalidHandle),
            },
            MapMode::Write => {
                if mem.writer != Some(handle) {
                    return Err(FastIoError::InvalidHandle);
                }
                mem.writer = None;
            }
        }
        Ok(())
    }

    /// Drops one reference (the handle), with any locks it still holds.
    pub(crate) fn release(&mut self, owner: OwnerId, handle: HandleId) -> Result<(), FastIoError> {
        self.release_keeping(owner, handle, None)
    }

    /// [`Core::release`]; if this reclaims the memory and pools it, `keep` stays with it.
    pub(crate) fn release_keeping(
        &mut self,
        owner: OwnerId,
        handle: HandleId,
        keep: Option<Keep>,
    ) -> Result<(), FastIoError> {
        let mem_id = self.handle(owner, handle)?;
        self.handles.remove(&handle);
        if let Some(set) = self.owners.get_mut(&owner) {
            set.remove(&handle);
        }
        if let Some(mem) = self.mems.get_mut(&mem_id) {
            mem.readers.remove(&handle);
            if mem.writer == Some(handle) {
                mem.writer = None;
            }
            mem.handles -= 1;
        }
        self.maybe_reclaim(mem_id, keep);
        Ok(())
    }

    /// Withdraws every publication of the memory of `handle`, marks the memory freed for every
    /// handle, and releases `handle`.
    pub(crate) fn free(&mut self, owner: OwnerId, handle: HandleId) -> Result<(), FastIoError> {
        let mem_id = self.handle(owner, handle)?;
        if let Some(mem) = self.mems.get_mut(&mem_id) {
            mem.freed = true;
            for name in mem.names.drain() {
                self.names.remove(&name);
            }
        }
        tracing::debug!(owner = owner.0, mem = mem_id.0, "freed");
        self.release(owner, handle)
    }

    /// Releases every handle (and so every lock) of `owner` and forgets the owner. Unpublished
    /// memory only it referenced returns to the context.
    pub(crate) fn disconnect(&mut self, owner: OwnerId) {
        let Some(handles) = self.owners.get(&owner).cloned() else {
            return;
        };
        for handle in handles {
            // Cannot fail: the handle is in the owner's set.
            let _ = self.release(owner, handle);
        }
        self.owners.remove(&owner);
        tracing::debug!(owner = owner.0, "owner disconnected");
    }

    fn maybe_reclaim(&mut self, mem_id: MemId, keep: Option<Keep>) {
        let reclaim =
            matches!(self.mems.get(&mem_id), Some(m) if m.handles == 0 && m.names.is_empty());
        if reclaim {
            if let Some(mem) = self.mems.remove(&mem_id) {
                self.used -= mem.size;
                tracing::debug!(mem = mem_id.0, size = mem.size, "reclaimed");
                self.pool_reclaimed(mem.size, mem.fd, keep.or(mem.keep));
            }
        }
    }

    /// Keeps reclaimed memory for reuse if it is large enough and nothing else holds its
    /// memfd (else it goes to `dead`); evicts the oldest pooled memory beyond the pool's limit.
    fn pool_reclaimed(&mut self, size: u64, fd: Arc<OwnedFd>, keep: Option<Keep>) {
        let limit = POOL_MAX.min(self.capacity / 4);
        if size < POOL_MIN || size > limit || Arc::strong_count(&fd) != 1 {
            self.dead.push((fd, keep));
            return;
        }
        self.pool.push_back(Pooled { size, fd, keep });
        self.pooled += size;
        self.shrink_pool(limit);
    }

    pub(crate) fn stats(&self) -> ContextStats {
        ContextStats {
            capacity: self.capacity,
            used: self.used,
            allocations: self.mems.len() as u64,
            publications: self.names.len() as u64,
            handles: self.handles.len() as u64,
            pooled: self.pooled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_reclaims_unpublished_and_keeps_published() {
        let mut core = Core::new(1 << 20);
        let a = core.register_owner();
        let b = core.register_owner();
        let kept = core.create(a, 4096).unwrap();
        let lost = core.create(a, 8192).unwrap();
        core.publish(a, kept.handle, "kept", &Metadata::default())
            .unwrap();
        core.map(a, lost.handle, MapMode::Write).unwrap();
        core.disconnect(a);
        let s = core.stats();
        assert_eq!(
            (s.used, s.allocations, s.handles, s.publications),
            (4096, 1, 0, 1)
        );
        let g = core.get(b, "kept").unwrap();
        core.map(b, g.handle, MapMode::Write).unwrap();
        // Operations naming another owner's handle are rejected.
        assert_eq!(
            core.map(a, g.handle, MapMode::Read),
            Err(FastIoError::InvalidHandle)
        );
        assert_eq!(
            core.unmap(b, g.handle, MapMode::Read),
            Err(FastIoError::InvalidHandle)
        );
        core.free(b, g.handle).unwrap();
        assert_eq!(core.stats().used, 0);
    }

    #[test]
    fn reclaimed_memory_is_pooled_reused_by_size_and_evicted_for_room() {
        const MIB: u64 = 1 << 20;
        let mut core = Core::new(16 * MIB);
        let a = core.register_owner();
        // Too small to pool.
        let small = core.create(a, 4096).unwrap();
        core.release(a, small.handle).unwrap();
        assert_eq!(core.stats().pooled, 0);
        // Pooled on reclaim, not counted as used.
        let big = core.create(a, 2 * MIB).unwrap();
        drop(big.fd);
        core.release(a, big.handle).unwrap();
        let s = core.stats();
        assert_eq!((s.used, s.pooled, s.available()), (0, 2 * MIB, 16 * MIB));
        // A reusing create of another size makes fresh memory; of the same size takes the pool.
        let other = core.create_reusing(a, 3 * MIB).unwrap();
        assert_eq!(core.stats().pooled, 2 * MIB);
        let again = core.create_reusing(a, 2 * MIB).unwrap();
        let s = core.stats();
        assert_eq!((s.used, s.pooled), (5 * MIB, 0));
        // A memfd still referenced elsewhere (a grant in flight) is closed, not pooled.
        core.release(a, again.handle).unwrap();
        assert_eq!(core.stats().pooled, 0);
        drop((other.fd, again.fd));
        core.release(a, other.handle).unwrap();
        assert_eq!(core.stats().pooled, 3 * MIB);
        // A plain create that needs the room evicts pooled memory first; the capacity is
        // never exceeded by used and pooled together.
        let fill = core.create(a, 14 * MIB).unwrap();
        let s = core.stats();
        assert_eq!((s.used, s.pooled), (14 * MIB, 0));
        assert!(s.used + s.pooled <= s.capacity);
        drop(fill.fd);
        core.release(a, fill.handle).unwrap();
        // Larger than a quarter of the capacity: not pooled.
        assert_eq!(core.stats().pooled, 0);
        // The pool keeps at most a quarter of the capacity, newest first.
        for _ in 0..3 {
            let g = core.create(a, 2 * MIB).unwrap();
            drop(g.fd);
            core.release(a, g.handle).unwrap();
        }
        assert_eq!(core.stats().pooled, 4 * MIB);
        // Capacity errors are unchanged by the pool.
        assert_eq!(
            core.create_reusing(a, 17 * MIB).err(),
            Some(FastIoError::CapacityExceeded {
                requested: 17 * MIB,
                available: 16 * MIB
            })
        );
    }

    #[test]
    fn let_go_memory_is_closed_after_the_lock_is_released() {
        let lock = CoreLock::new(Core::new(1 << 20));
        let owner = lock.lock().register_owner();
        let granted = lock.lock().create(owner, 4096).unwrap();
        let fd = Arc::downgrade(&granted.fd);
        drop(granted.fd);
        {
            let mut core = lock.lock();
            core.release(owner, granted.handle).unwrap();
            assert_eq!(core.stats().used, 0);
            // Still open while the lock is held...
            assert!(fd.upgrade().is_some());
        }
        // ...and closed once it is released.
        assert!(fd.upgrade().is_none());
    }
}
