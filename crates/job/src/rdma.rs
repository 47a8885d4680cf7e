//! RDMA result buffers: `IRDMA_context` and `IRDMA_buffer`.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

/// Errors from [`RdmaContext::allocate`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RdmaError {
    /// The sender asked for a buffer larger than the one the receiver allocated for this
    /// fragment with `get_rdma_result_buffer` (DiCE: "allocation … will fail if its size exceeds
    /// the size of the RDMA buffer allocated for this fragment on the receiver side").
    #[error("RDMA buffer of {requested} bytes exceeds the receiver's buffer of {receiver} bytes")]
    ExceedsReceiverBuffer {
        /// Bytes requested by the sender.
        requested: usize,
        /// Size of the receiver's buffer for this fragment.
        receiver: usize,
    },
    /// The context's registered memory would exceed its limit.
    #[error(
        "RDMA context limit of {limit} bytes exceeded ({in_use} in use, {requested} requested)"
    )]
    LimitExceeded {
        /// Bytes requested.
        requested: usize,
        /// Bytes of registered buffers in use.
        in_use: usize,
        /// The context's limit.
        limit: usize,
    },
}

#[derive(Default)]
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    stats: Mutex<RdmaStats>,
    limit: usize,
}

impl Pool {
    fn lock_free(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn lock_stats(&self) -> MutexGuard<'_, RdmaStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counters of an [`RdmaContext`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RdmaStats {
    /// Buffers allocated (registered) because no free one was large enough.
    pub registered: u64,
    /// Allocations served by reusing a returned buffer.
    pub reused: u64,
    /// Buffers handed out and not yet returned.
    pub in_use: u64,
    /// Bytes of handed-out buffers.
    pub bytes_in_use: usize,
}

/// A host's cache of registered result buffers. Mirrors DiCE's `IRDMA_context`.
///
/// Registering memory with an RDMA device is costly, so buffers are reused: a buffer returns to
/// its context when its last [`RdmaBuffer`] handle is dropped, which the runtime does once
/// reception is confirmed. Without RDMA hardware the same calls happen and the bytes travel over
/// QUIC straight into the receiver's buffer; between processes of one machine a large result is
/// handed over through shared memory instead and copied once into the receiver's buffer.
#[derive(Clone)]
pub struct RdmaContext {
    pool: Arc<Pool>,
    receiver_limit: Option<usize>,
}

impl Default for RdmaContext {
    fn default() -> Self {
        RdmaContext::new(usize::MAX)
    }
}

impl RdmaContext {
    /// A context whose buffers in use may total at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        RdmaContext {
            pool: Arc::new(Pool {
                limit,
                ..Pool::default()
            }),
            receiver_limit: None,
        }
    }

    /// The same context (same cache) as seen by a remote fragment whose receiver allocated
    /// `receiver_size` bytes: larger allocations fail with
    /// [`RdmaError::ExceedsReceiverBuffer`].
    pub fn for_receiver(&self, receiver_size: usize) -> RdmaContext {
        RdmaContext {
            pool: self.pool.clone(),
            receiver_limit: Some(receiver_size),
        }
    }

    /// The receiver's buffer size this view is limited to, if any.
    pub fn receiver_limit(&self) -> Option<usize> {
        self.receiver_limit
    }

    /// A zero-filled buffer of `size` bytes, reusing a returned buffer when one is large enough.
    pub fn allocate(&self, size: usize) -> Result<RdmaBuffer, RdmaError> {
        if let Some(receiver) = self.receiver_limit {
            if size > receiver {
                return Err(RdmaError::ExceedsReceiverBuffer {
                    requested: size,
                    receiver,
                });
            }
        }
        {
            let stats = self.pool.lock_stats();
            if stats.bytes_in_use.saturating_add(size) > self.pool.limit {
                return Err(RdmaError::LimitExceeded {
                    requested: size,
                    in_use: stats.bytes_in_use,
                    limit: self.pool.limit,
                });
            }
        }
        let reused = {
            let mut free = self.pool.lock_free();
            // Best fit: the smallest free buffer whose capacity suffices.
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= size)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| free.swap_remove(i))
        };
        let mut stats = self.pool.lock_stats();
        let data = match reused {
            Some(mut v) => {
                stats.reused += 1;
                v.clear();
                v.resize(size, 0);
                v
            }
            None => {
                stats.registered += 1;
                vec![0; size]
            }
        };
        stats.in_use += 1;
        stats.bytes_in_use += size;
        Ok(RdmaBuffer {
            inner: Arc::new(BufferInner {
                data: RwLock::new(data),
                size,
                filled: std::sync::atomic::AtomicUsize::new(size),
                pool: Arc::downgrade(&self.pool),
            }),
        })
    }

    /// The context's counters.
    pub fn stats(&self) -> RdmaStats {
        *self.pool.lock_stats()
    }
}

struct BufferInner {
    data: RwLock<Vec<u8>>,
    size: usize,
    filled: std::sync::atomic::AtomicUsize,
    pool: Weak<Pool>,
}

impl Drop for BufferInner {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let data = std::mem::take(self.data.get_mut().unwrap_or_else(|e| e.into_inner()));
            {
                let mut stats = pool.lock_stats();
                stats.in_use = stats.in_use.saturating_sub(1);
                stats.bytes_in_use = stats.bytes_in_use.saturating_sub(self.size);
            }
            pool.lock_free().push(data);
        }
    }
}

/// A registered result buffer. Mirrors DiCE's `IRDMA_buffer`.
///
/// Cloning gives another handle to the same memory: one buffer may be the result of several
/// fragments. The memory goes back to its [`RdmaContext`] when the last handle is dropped.
#[derive(Clone)]
pub struct RdmaBuffer {
    inner: Arc<BufferInner>,
}

impl std::fmt::Debug for RdmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaBuffer")
            .field("size", &self.inner.size)
            .finish()
    }
}

impl RdmaBuffer {
    /// Size of the buffer in bytes.
    pub fn len(&self) -> usize {
        self.inner.size
    }

    /// Whether the buffer has zero size.
    pub fn is_empty(&self) -> bool {
        self.inner.size == 0
    }

    /// Shared access to the bytes.
    pub fn read(&self) -> RdmaRead<'_> {
        RdmaRead(self.inner.data.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Exclusive access to the bytes (waits for readers to finish).
    pub fn write(&self) -> RdmaWrite<'_> {
        RdmaWrite(self.inner.data.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Bytes of the last result received into this buffer: a remote fragment's result may be
    /// shorter than the buffer the receiver offered. The buffer's length until a result lands.
    pub fn filled(&self) -> usize {
        self.inner.filled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that a result of `len` bytes (at most the buffer's length) now starts the
    /// buffer. Called by the transport when it has written a result into the buffer.
    pub fn set_filled(&self, len: usize) {
        self.inner.filled.store(
            len.min(self.inner.size),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// Whether both handles refer to the same memory.
    pub fn ptr_eq(&self, other: &RdmaBuffer) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// Shared access to an [`RdmaBuffer`]'s bytes.
pub struct RdmaRead<'a>(RwLockReadGuard<'a, Vec<u8>>);

impl Deref for RdmaRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// Exclusive access to an [`RdmaBuffer`]'s bytes.
pub struct RdmaWrite<'a>(RwLockWriteGuard<'a, Vec<u8>>);

impl Deref for RdmaWrite<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl DerefMut for RdmaWrite<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_after_the_last_handle_drops() {
        let ctx = RdmaContext::default();
        let a = ctx.allocate(1024).unwrap();
        a.write()[0] = 7;
        let a2 = a.clone();
        drop(a);
        assert_eq!(ctx.stats().in_use, 1, "a clone still holds the buffer");
        drop(a2);
        assert_eq!(ctx.stats().in_use, 0);
        let b = ctx.allocate(512).unwrap();
        assert_eq!(b.len(), 512);
        assert_eq!(b.read()[0], 0, "reused buffers are zeroed");
        let s = ctx.stats();
        assert_eq!((s.registered, s.reused), (1, 1));
    }

    #[test]
    fn sender_cannot_exceed_receiver_buffer_or_limit() {
        let ctx = RdmaContext::new(100);
        let view = ctx.for_receiver(64);
        assert_eq!(
            view.allocate(65).unwrap_err(),
            RdmaError::ExceedsReceiverBuffer {
                requested: 65,
                receiver: 64
            }
        );
        let _held = view.allocate(64).unwrap();
        assert_eq!(
            ctx.allocate(40).unwrap_err(),
            RdmaError::LimitExceeded {
                requested: 40,
                in_use: 64,
                limit: 100
            }
        );
    }
}
