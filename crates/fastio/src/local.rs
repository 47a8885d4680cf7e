//! The in-process context.

use std::path::Path;
use std::sync::Arc;

use crate::alloc::{Allocation, Port};
use crate::core::{Core, CoreLock, Granted, Keep};
use crate::error::{FastIoError, Result};
use crate::sys::Mapping;
use crate::types::{ContextStats, HandleId, MapMode, Metadata, OwnerId};
use crate::{ContextServer, FastIo};

/// The shared core of a node's context.
pub(crate) type SharedCore = Arc<CoreLock>;

#[derive(Debug)]
struct LocalPort {
    core: SharedCore,
    owner: OwnerId,
}

impl Port for LocalPort {
    fn map(&self, handle: HandleId, mode: MapMode) -> Result<()> {
        self.core.lock().map(self.owner, handle, mode)
    }
    fn unmap(&self, handle: HandleId, mode: MapMode) {
        if let Err(e) = self.core.lock().unmap(self.owner, handle, mode) {
            tracing::error!(error = %e, "unmap of an in-process guard failed");
        }
    }
    fn publish(&self, handle: HandleId, name: &str, meta: &Metadata) -> Result<()> {
        self.core.lock().publish(self.owner, handle, name, meta)
    }
    fn release(&self, handle: HandleId, mapping: Option<&Arc<Mapping>>) {
        let keep = mapping.cloned().map(|m| -> Keep { m });
        if let Err(e) = self.core.lock().release_keeping(self.owner, handle, keep) {
            tracing::error!(error = %e, "release of an in-process handle failed");
        }
    }
    fn free(&self, handle: HandleId) -> Result<()> {
        self.core.lock().free(self.owner, handle)
    }
}

impl Drop for LocalPort {
    fn drop(&mut self) {
        self.core.lock().disconnect(self.owner);
    }
}

/// The node's Fast I/O context, used in-process (by the runtime that owns it).
///
/// Cloning gives another view of the same context. [`LocalContext::serve`] exposes the same
/// context to other processes; both apply the same rules because they share one state machine.
#[derive(Debug, Clone)]
pub struct LocalContext {
    core: SharedCore,
    owner: OwnerId,
    port: Arc<dyn Port>,
}

impl LocalContext {
    /// A new, empty context with `capacity` bytes.
    pub fn new(capacity: u64) -> LocalContext {
        LocalContext::on_core(Arc::new(CoreLock::new(Core::new(capacity))))
    }

    pub(crate) fn on_core(core: SharedCore) -> LocalContext {
        let owner = core.lock().register_owner();
        let port: Arc<dyn Port> = Arc::new(LocalPort {
            core: Arc::clone(&core),
            owner,
        });
        LocalContext { core, owner, port }
    }

    /// Like [`FastIo::create`], but may hand back memory reclaimed from an earlier allocation of
    /// exactly `size` bytes in this context (see [`ContextStats::pooled`]): its pages are
    /// already allocated, so it is ready at once instead of after the kernel zeroes and maps
    /// `size` fresh bytes. Its contents are unspecified (what the earlier allocation last
    /// held): for callers that overwrite every byte before publishing, such as a fetch.
    pub fn create_reusing(&self, size: u64) -> Result<Allocation> {
        let granted = self.core.lock().create_reusing(self.owner, size)?;
        self.prefaulted(granted)
    }

    /// Takes the publication `name` out of the context: a new handle to its memory, with a
    /// copy of its metadata, and the publication withdrawn (only that name; other
    /// publications of the memory stay). What a receiver does with memory handed over to it
    /// by another process ([`RemoteContext::hand_over`](crate::RemoteContext::hand_over)):
    /// once the handle is dropped the memory returns to the context, and to its pool.
    ///
    /// Errors: [`FastIoError::UnknownName`].
    pub fn take(&self, name: &str) -> Result<Allocation> {
        let granted = {
            let mut core = self.core.lock();
            let granted = core.get(self.owner, name)?;
            core.unpublish(name)?;
            granted
        };
        Allocation::from_granted(Arc::clone(&self.port), granted)
    }

    /// Withdraws every publication whose name starts with `prefix` (memory nothing else refers
    /// to returns to the context); returns how many were withdrawn. How a host reclaims what
    /// a peer handed over and never referenced before it died.
    pub fn withdraw_prefix(&self, prefix: &str) -> usize {
        self.core.lock().withdraw_prefix(prefix)
    }

    /// Wraps the grant of a `create`, its pages faulted in for the writer about to fill them.
    fn prefaulted(&self, granted: Granted) -> Result<Allocation> {
        let alloc = Allocation::from_granted(Arc::clone(&self.port), granted)?;
        alloc.prefault();
        Ok(alloc)
    }

    /// Serves this context to other processes on a Unix socket at `socket_path` (see
    /// [`ContextServer::start`]).
    pub fn serve(&self, socket_path: impl AsRef<Path>) -> Result<ContextServer> {
        self.serve_with(socket_path, crate::ServerLimits::default())
    }

    /// [`serve`](Self::serve) with other [`ServerLimits`](crate::ServerLimits).
    pub fn serve_with(
        &self,
        socket_path: impl AsRef<Path>,
        limits: crate::ServerLimits,
    ) -> Result<ContextServer> {
        ContextServer::serve_core(Arc::clone(&self.core), socket_path.as_ref(), limits)
    }
}

impl FastIo for LocalContext {
    fn create(&self, size: u64) -> Result<Allocation> {
        let granted = self.core.lock().create(self.owner, size)?;
        self.prefaulted(granted)
    }

    fn get(&self, name: &str) -> Result<Allocation> {
        let granted = self.core.lock().get(self.owner, name)?;
        Allocation::from_granted(Arc::clone(&self.port), granted)
    }

    fn publish(&self, alloc: &Allocation, name: &str) -> Result<()> {
        if !alloc.same_port(&self.port) {
            return Err(FastIoError::ForeignAllocation);
        }
        alloc.publish_as(name)
    }

    fn stats(&self) -> Result<ContextStats> {
        Ok(self.core.lock().stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ElementType;

    #[test]
    fn create_reusing_takes_pooled_memory_with_its_mapping_and_create_stays_zeroed() {
        const SIZE: u64 = 2 << 20;
        let ctx = LocalContext::new(64 << 20);
        let a = ctx.create(SIZE).unwrap();
        a.map_write().unwrap().fill(0xAB);
        let addr = a.map_read().unwrap().as_ptr() as usize;
        drop(a);
        assert_eq!(ctx.stats().unwrap().pooled, SIZE);
        // A plain create never sees old bytes, and leaves the pool alone when there is room.
        let fresh = ctx.create(SIZE).unwrap();
        assert!(fresh.map_read().unwrap().as_bytes().iter().all(|&b| b == 0));
        assert_eq!(ctx.stats().unwrap().pooled, SIZE);
        // A reusing create of that size gets the pooled memory, still mapped at the same
        // address, with what it last held.
        let reused = ctx.create_reusing(SIZE).unwrap();
        let r = reused.map_read().unwrap();
        assert_eq!(r.as_ptr() as usize, addr);
        assert!(r.as_bytes().iter().all(|&b| b == 0xAB));
        drop(r);
        let s = ctx.stats().unwrap();
        assert_eq!((s.pooled, s.used, s.allocations), (0, 2 * SIZE, 2));
        // Freed (not just released) memory is pooled too; nothing leaks when all is gone.
        reused.free().unwrap();
        drop(fresh);
        let s = ctx.stats().unwrap();
        assert_eq!((s.used, s.allocations, s.handles), (0, 0, 0));
        assert_eq!(s.pooled, 2 * SIZE);
    }

    #[test]
    fn publish_array_is_one_call_and_publishes_nothing_on_error() {
        let ctx = LocalContext::new(1 << 20);
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        ctx.publish_array("grid", &data, &[3, 4]).unwrap();
        let got = ctx.get("grid").unwrap();
        assert_eq!(got.element_type(), Some(ElementType::F32));
        assert_eq!(got.dims(), &[3, 4]);
        assert_eq!(
            got.map_read().unwrap().as_slice::<f32>().unwrap(),
            &data[..]
        );
        let line = ctx.publish_slice("line", &[7u16, 8, 9]).unwrap();
        assert_eq!(line.dims(), &[3]);
        // Dimensions that do not fit the data: an error, no publication, no memory kept.
        let used = ctx.stats().unwrap().used;
        assert!(matches!(
            ctx.publish_array("bad", &data, &[5, 5]),
            Err(FastIoError::DimsMismatch { .. })
        ));
        assert!(matches!(ctx.get("bad"), Err(FastIoError::UnknownName(_))));
        assert_eq!(ctx.stats().unwrap().used, used);
        // A taken name: the same.
        assert!(matches!(
            ctx.publish_slice("grid", &data),
            Err(FastIoError::NameTaken(_))
        ));
        assert_eq!(ctx.stats().unwrap().used, used);
    }
}
