//! The only module with `unsafe` code: memfd creation and sealing, `mmap`/`munmap`, and passing
//! file descriptors over a Unix socket with `SCM_RIGHTS`.
//!
//! Every `unsafe` block states the invariant it relies on. Everything this module exports is a
//! safe function or type; the one invariant that crosses the module boundary is the map lock
//! protocol behind [`Mapping::bytes`] and [`Mapping::bytes_mut`], documented on those methods.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;

/// Seals every Fast I/O memfd carries: its size can never change (a shrink would turn every
/// other process's mapping into a SIGBUS trap), and the seals themselves cannot be changed.
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Creates an anonymous, close-on-exec memfd of exactly `size` bytes and seals it against
/// shrinking, growing and further sealing. The file has no path, so only processes that are
/// handed the descriptor can reach it.
pub(crate) fn memfd_create(size: u64) -> io::Result<OwnedFd> {
    let len =
        libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let name = c"fragmenta-fastio";
    // SAFETY: `name` is a valid NUL-terminated C string that outlives the call; the flags are
    // valid memfd_create flags. The call has no other memory effects.
    let fd = cvt(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    } as libc::c_int)?;
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `fd` is an open descriptor we own; ftruncate only changes the file's size.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    // SAFETY: `fd` is an open memfd created with MFD_ALLOW_SEALING; F_ADD_SEALS takes an int.
    cvt(unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_ADD_SEALS,
            REQUIRED_SEALS | libc::F_SEAL_SEAL,
        )
    })?;
    Ok(fd)
}

/// Identity and size of a memfd received from a peer, after checking it is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    /// `st_dev` of the file.
    pub(crate) dev: u64,
    /// `st_ino` of the file; with `dev`, unique while the file is alive.
    pub(crate) ino: u64,
    /// Size in bytes.
    pub(crate) size: u64,
}

/// Checks that `fd` is a memfd sealed against shrinking and growing and returns its identity.
/// A descriptor without the seals is refused: another holder could truncate it and turn our
/// mapping into SIGBUS.
pub(crate) fn inspect_sealed(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    // SAFETY: `fd` is a borrowed open descriptor; F_GET_SEALS takes no argument.
    let seals = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })?;
    if seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "memfd is not sealed against resizing",
        ));
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the size of `struct stat`; fstat fills it
    // completely on success, and we only read it after success.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        size: u64::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?,
    })
}

/// Allocations at least this large are mapped with huge pages where the host allows it.
const HUGE_PAGE: usize = 2 << 20;

/// The host's setting for transparent huge pages in shared memory (the bracketed word of
/// `/sys/kernel/mm/transparent_hugepage/shmem_enabled`: `never`, `advise`, `always`, ...), or
/// `None` where the kernel does not say.
pub fn shmem_huge_pages() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled").ok()?;
    s.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
}

/// One shared, read-write mapping of a whole sealed memfd. Unmapped on drop.
///
/// Invariants: `ptr` is the start of a live `MAP_SHARED` mapping of exactly `len` bytes (or a
/// dangling, 16-byte aligned pointer when `len == 0`, where nothing is mapped), created from a
/// memfd sealed against shrinking, so every byte in `[ptr, ptr + len)` stays backed by the file
/// for the life of this value.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory with no thread affinity; access to its bytes is
// serialised by the map lock protocol (see `bytes`/`bytes_mut`), not by the owning thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out slices under the lock protocol.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps all `len` bytes of `fd` shared and read-write. The caller has checked with
    /// [`inspect_sealed`] that the file is exactly `len` bytes and sealed.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: u64) -> io::Result<Mapping> {
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        if len == 0 {
            return Ok(Mapping {
                ptr: NonNull::<u128>::dangling().cast(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping (addr = NULL) cannot alias any Rust object; `fd` is open and
        // sealed at exactly `len` bytes, so the whole range is backed by the file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        if len >= HUGE_PAGE {
            // Ask for 2 MiB pages: where the host allows transparent huge pages for shared
            // memory (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` is `advise` or
            // `always`), a 256 MiB allocation is 128 page-table entries instead of 65,536, and
            // creating, filling and first reading it costs a fraction. Elsewhere the kernel
            // ignores the advice, so its result is not checked.
            // SAFETY: `ptr`/`len` is the mapping just created; the advice changes no contents.
            let _ = unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        }
        Ok(Mapping { ptr, len })
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Faults every page of a fresh mapping in with one call, before the creator writes it: on
    /// virtual machines a page fault per 4 KiB page costs more than the memory bandwidth, and a
    /// new allocation is about to be filled anyway. Best effort: kernels without
    /// `MADV_POPULATE_WRITE` (before 5.14) fault the pages in on first touch as usual.
    pub(crate) fn populate(&self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `ptr`/`len` describe a live mapping we own (struct invariant); populating
        // only allocates and maps its pages, leaving their (zero) contents unchanged.
        let _ = unsafe {
            libc::madvise(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }

    /// Maps every page of the mapping with one call, for a reader about to read all of it:
    /// memory another process filled is resident already, but each 4 KiB page of a fresh
    /// mapping of it otherwise costs a page fault on first touch. Best effort, as
    /// [`populate`](Self::populate) (`MADV_POPULATE_READ` needs Linux 5.14).
    pub(crate) fn populate_read(&self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `ptr`/`len` describe a live mapping we own (struct invariant); populating
        // only maps pages, it reads and changes no contents.
        let _ =
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_POPULATE_READ) };
    }

    /// The mapped bytes, for reading.
    ///
    /// Lock-protocol invariant (the one invariant enforced outside this module): only a
    /// `ReadGuard` calls this, and only while the context has granted it a read lock on this
    /// memory, so no process holds a write lock and no `&mut [u8]` to these bytes exists.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr`/`len` describe live mapped (or empty, dangling-but-aligned) memory for
        // the lifetime of `&self` (struct invariant); no writer exists (lock invariant above).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapped bytes, for writing.
    ///
    /// Lock-protocol invariant: only a `WriteGuard` calls this, through `&mut` of itself, while
    /// the context has granted it the single write lock on this memory, so no other slice of
    /// these bytes exists in any process.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: memory validity as in `bytes`; exclusivity comes from the write lock and the
        // guard's `&mut self` borrow, so this is the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `ptr`/`len` is exactly the mapping created in `map`, unmapped only here, and
        // every slice borrowed from it has ended (they borrow `&self`).
        let ret = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if ret != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "munmap failed");
        }
    }
}

/// Reinterprets bytes as a slice of `T`, if the pointer is aligned for `T` and the length is a
/// whole number of `T`s. `T` is one of the sealed [`crate::Element`] types: plain integers,
/// floats and `half::f16`, for which every bit pattern is a valid value and which have no
/// padding.
pub(crate) fn cast_slice<T: crate::Element>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 || bytes.len() % size != 0 {
        return None;
    }
    // SAFETY: alignment and length checked above; every bit pattern is a valid `T` (sealed
    // trait); the lifetime and aliasing are those of `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Mutable counterpart of [`cast_slice`].
pub(crate) fn cast_slice_mut<T: crate::Element>(bytes: &mut [u8]) -> Option<&mut [T]> {
    let size = std::mem::size_of::<T>();
    if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 || bytes.len() % size != 0 {
        return None;
    }
    // SAFETY: as in `cast_slice`; additionally any `T` written is a valid byte pattern, and the
    // exclusive borrow of `bytes` moves into the result.
    Some(unsafe {
        std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / size)
    })
}

/// Space for the control message carrying at most one descriptor (`u64`-aligned).
const CMSG_BUF: usize = 64;

/// Sends all of `data` on `stream`, attaching `fd` (if any) to the first byte with
/// `SCM_RIGHTS`. The receiver gets its own descriptor for the same open file.
pub(crate) fn send_with_fd(
    stream: &UnixStream,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut sent = 0;
    let mut pending_fd = fd;
    while sent < data.len() {
        let rest = &data[sent..];
        let mut iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_BUF / 8];
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = pending_fd {
            let raw = fd.as_raw_fd();
            // SAFETY: CMSG_SPACE is pure arithmetic on a small constant.
            let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) };
            msg.msg_control = cmsg_buf.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points to `cmsg_buf` (64 aligned bytes, more than
            // CMSG_SPACE(4) = 24), so the first header and its data lie inside the buffer.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
            }
        }
        // SAFETY: `msg` points to `iov` (valid for `rest`) and, if set, to `cmsg_buf`; both
        // outlive the call. The descriptor is borrowed and open. MSG_NOSIGNAL turns a closed
        // peer into EPIPE instead of killing the process.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        pending_fd = None;
        sent += n as usize;
    }
    Ok(())
}

/// Receives up to `buf.len()` bytes (at least one unless the peer closed: `Ok((0, _))`) and any
/// descriptors attached to them. Received descriptors are close-on-exec and owned by the
/// caller; a truncated control message is an error (its descriptors are closed).
pub(crate) fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; CMSG_BUF / 8];
        // SAFETY: msghdr is plain old data; all-zero is a valid (empty) value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_BUF as _;
        // SAFETY: `iov` describes `buf`, writable for its length; `cmsg_buf` is writable for
        // CMSG_BUF bytes as declared in msg_controllen; both outlive the call.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let mut fds = Vec::new();
        // SAFETY: the kernel filled `msg_control`/`msg_controllen` with well-formed control
        // messages inside `cmsg_buf`; CMSG_FIRSTHDR/NXTHDR stay inside that range, and each
        // SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4` descriptors that this
        // process now owns (we take ownership of each exactly once).
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                        let fd = std::ptr::read_unaligned(data.add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control message truncated",
            ));
        }
        return Ok((n as usize, fds));
    }
}

/// The effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The user id of the process at the other end of a connected Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is plain old data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is writable for `len` bytes and `len` is a valid in/out pointer.
    cvt(unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn memfd_is_sealed_and_sized() {
        let fd = memfd_create(8192).unwrap();
        let id = inspect_sealed(fd.as_fd()).unwrap();
        assert_eq!(id.size, 8192);
        let file = std::fs::File::from(fd);
        // Shrinking and growing are refused by the seals.
        assert!(file.set_len(4096).is_err());
        assert!(file.set_len(16384).is_err());
    }

    #[test]
    fn unsealed_fd_is_refused() {
        let file = tempfile::tempfile().unwrap();
        assert!(inspect_sealed(file.as_fd()).is_err());
    }

    #[test]
    fn two_mappings_share_memory() {
        let fd = memfd_create(4096).unwrap();
        let a = Mapping::map(fd.as_fd(), 4096).unwrap();
        let b = Mapping::map(fd.as_fd(), 4096).unwrap();
        a.bytes_mut()[100] = 42;
        assert_eq!(b.bytes()[100], 42);
    }

    #[test]
    fn fd_passing_roundtrip() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = memfd_create(4096).unwrap();
        Mapping::map(fd.as_fd(), 4096).unwrap().bytes_mut()[0] = 7;
        send_with_fd(&a, b"hello", Some(fd.as_fd())).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let m = Mapping::map(fds[0].as_fd(), 4096).unwrap();
        assert_eq!(m.bytes()[0], 7);
        assert_eq!(peer_uid(&b).unwrap(), effective_uid());
    }

    #[test]
    fn cast_checks_alignment_and_length() {
        let fd = memfd_create(4096).unwrap();
        let m = Mapping::map(fd.as_fd(), 4096).unwrap();
        let bytes = m.bytes();
        assert_eq!(cast_slice::<u64>(&bytes[..16]).map(<[u64]>::len), Some(2));
        assert!(cast_slice::<u64>(&bytes[4..20]).is_none(), "misaligned");
        assert!(
            cast_slice::<u64>(&bytes[..12]).is_none(),
            "not a whole number of elements"
        );
        assert_eq!(cast_slice::<u32>(&bytes[4..12]).map(<[u32]>::len), Some(2));
    }
}
