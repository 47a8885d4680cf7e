//! Result streaming between a remote fragment and the initiator.

use serde::{de::DeserializeOwned, Serialize};
use std::io;

/// Where a [`ResultWriter`] sends its chunks. Implemented by the runtime (a stream back to the
/// initiator) and by tests that drive a job directly.
pub trait ChunkSink {
    /// Sends chunk `seq` (0, 1, 2, … per fragment attempt) with its bytes.
    fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> io::Result<()>;

    /// Memory for a chunk of `len` bytes, to be filled and given to
    /// [`send_buffer`](Self::send_buffer). Default: a zeroed `Vec`. The runtime lends shared
    /// memory of the initiator's context here when the initiator runs on this machine, so the
    /// chunk is written once, in place, and never copied.
    fn chunk_buffer(&mut self, len: usize) -> ChunkBuffer {
        ChunkBuffer::heap(len)
    }

    /// Sends chunk `seq` written into `buf` (from [`chunk_buffer`](Self::chunk_buffer)).
    /// Default: its bytes as a `Vec` through [`send_chunk`](Self::send_chunk).
    fn send_buffer(&mut self, seq: u32, buf: ChunkBuffer) -> io::Result<()> {
        self.send_chunk(seq, buf.into_vec())
    }
}

/// Memory a [`ChunkSink`] lends for one chunk (see [`ChunkSink::chunk_buffer`]): pages of
/// shared memory the receiver reads in place.
pub trait LentBuffer: Send + 'static {
    /// All of the lent bytes (at least the chunk's length).
    fn bytes(&self) -> &[u8];
    /// All of the lent bytes, to fill.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// The buffer as `Any`, to tell what it is.
    fn as_any(&self) -> &dyn std::any::Any;
    /// The buffer as `Any`, for the sink that lent it to take it back as what it is.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

/// Memory for one result chunk, written in place and then sent whole with
/// [`ResultWriter::write_buffer`]: it dereferences to exactly the `len` bytes asked for. From
/// [`ResultWriter::chunk_buffer`]. Its bytes start zeroed, or, when it is shared memory reused
/// from an earlier chunk, as that chunk left them: write every byte the receiver is to read.
pub struct ChunkBuffer {
    kind: BufferKind,
    len: usize,
}

enum BufferKind {
    Heap(Vec<u8>),
    Lent(Box<dyn LentBuffer>),
}

impl ChunkBuffer {
    /// A zeroed buffer of `len` bytes on the heap.
    pub fn heap(len: usize) -> Self {
        ChunkBuffer {
            kind: BufferKind::Heap(vec![0; len]),
            len,
        }
    }

    /// `len` bytes of memory a sink lends; `None` if it holds fewer.
    pub fn lent(buffer: Box<dyn LentBuffer>, len: usize) -> Option<Self> {
        (buffer.bytes().len() >= len).then_some(ChunkBuffer {
            kind: BufferKind::Lent(buffer),
            len,
        })
    }

    /// Whether the bytes are memory a sink lent (shared memory, sent without a copy).
    pub fn is_lent(&self) -> bool {
        matches!(self.kind, BufferKind::Lent(_))
    }

    /// The chunk's bytes as a `Vec` (a copy when they are lent memory).
    pub fn into_vec(self) -> Vec<u8> {
        match self.kind {
            BufferKind::Heap(mut v) => {
                v.truncate(self.len);
                v
            }
            BufferKind::Lent(b) => b.bytes()[..self.len].to_vec(),
        }
    }

    /// The lent memory, as the `T` that lent it, and the chunk's length; the buffer itself back
    /// when it is on the heap or memory of another kind.
    pub fn take_lent<T: LentBuffer>(self) -> Result<(Box<T>, usize), ChunkBuffer> {
        let len = self.len;
        match self.kind {
            BufferKind::Lent(b) if b.as_any().is::<T>() => match b.into_any().downcast::<T>() {
                Ok(t) => Ok((t, len)),
                // `is` said it is a `T`.
                Err(_) => Err(ChunkBuffer::heap(0)),
            },
            kind => Err(ChunkBuffer { kind, len }),
        }
    }
}

impl std::ops::Deref for ChunkBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.kind {
            BufferKind::Heap(v) => &v[..self.len],
            BufferKind::Lent(b) => &b.bytes()[..self.len],
        }
    }
}

impl std::ops::DerefMut for ChunkBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.kind {
            BufferKind::Heap(v) => &mut v[..self.len],
            BufferKind::Lent(b) => &mut b.bytes_mut()[..self.len],
        }
    }
}

impl std::fmt::Debug for ChunkBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuffer")
            .field("len", &self.len)
            .field("lent", &self.is_lent())
            .finish()
    }
}

impl ChunkSink for Vec<Vec<u8>> {
    fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> io::Result<()> {
        debug_assert_eq!(seq as usize, self.len());
        self.push(data);
        Ok(())
    }
}

/// The serializer a remote fragment writes its results to. Mirrors DiCE's `ISerializer` as
/// passed to `execute_fragment_remote`.
///
/// Contract: every [`flush`](io::Write::flush) ends one chunk and becomes exactly one
/// [`receive_remote_result`](crate::FragmentedJob::receive_remote_result) call on the initiator,
/// even when nothing was written since the last flush. When `execute_fragment_remote` returns,
/// the runtime flushes once more, so a fragment that never flushes yields exactly one call.
/// Chunks of one fragment are numbered 0, 1, 2, …; they must be the same on every attempt (a
/// fragment may be re-executed after a host failure and already-delivered chunks are skipped).
pub struct ResultWriter<'a> {
    buf: Vec<u8>,
    seq: u32,
    sink: &'a mut dyn ChunkSink,
}

impl<'a> ResultWriter<'a> {
    /// A writer sending its chunks to `sink`, starting at chunk 0.
    pub fn new(sink: &'a mut dyn ChunkSink) -> Self {
        ResultWriter {
            buf: Vec::new(),
            seq: 0,
            sink,
        }
    }

    /// Appends `value` encoded with bincode (standard configuration); read it back with
    /// [`ResultReader::read_value`].
    pub fn write_value<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        bincode::serde::encode_into_std_write(value, &mut self.buf, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Ends the current chunk with `data` appended, like `write_all(&data)` then `flush()`, but
    /// without copying `data` when nothing is pending: large results travel from the caller's
    /// buffer to the network as they are.
    pub fn write_chunk(&mut self, data: Vec<u8>) -> io::Result<()> {
        if self.buf.is_empty() {
            self.buf = data;
        } else {
            self.buf.extend_from_slice(&data);
        }
        self.flush()
    }

    /// Memory for a chunk of `len` bytes, to fill in place and send with
    /// [`write_buffer`](Self::write_buffer). When the initiator runs on this machine and the
    /// chunk is large (256 KiB and more), this is shared memory of the initiator's context: the
    /// bytes are written once, here, and the initiator reads those very pages, so a large
    /// result costs no copy at all between the processes. Otherwise a zeroed `Vec`, sent like
    /// [`write_chunk`](Self::write_chunk).
    pub fn chunk_buffer(&mut self, len: usize) -> ChunkBuffer {
        self.sink.chunk_buffer(len)
    }

    /// Ends the current chunk with the bytes of `buf` appended, like
    /// [`write_chunk`](Self::write_chunk); with nothing pending, `buf`'s memory itself is the
    /// chunk.
    pub fn write_buffer(&mut self, buf: ChunkBuffer) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.buf.extend_from_slice(&buf);
            return self.flush();
        }
        self.sink.send_buffer(self.seq, buf)?;
        self.seq += 1;
        Ok(())
    }

    /// Ends the current chunk (possibly empty) and sends it: one
    /// [`receive_remote_result`](crate::FragmentedJob::receive_remote_result) call on the
    /// initiator. The same as [`io::Write::flush`], without importing the trait.
    pub fn flush(&mut self) -> io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        self.sink.send_chunk(self.seq, data)?;
        self.seq += 1;
        Ok(())
    }

    /// Appends `data` to the current chunk. The same as [`io::Write::write_all`], without
    /// importing the trait.
    pub fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Number of chunks sent so far.
    pub fn chunks_sent(&self) -> u32 {
        self.seq
    }

    /// Bytes written since the last flush.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Ends the fragment: sends the final chunk. Called by the runtime when
    /// `execute_fragment_remote` returns; returns the total number of chunks.
    pub fn finish(mut self) -> io::Result<u32> {
        self.flush()?;
        Ok(self.seq)
    }
}

impl io::Write for ResultWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        ResultWriter::write_all(self, data)
    }

    /// Ends the current chunk (possibly empty) and sends it.
    fn flush(&mut self) -> io::Result<()> {
        ResultWriter::flush(self)
    }
}

/// Bytes owned by something other than a `Vec`: the pages of a chunk handed over through
/// shared memory, read in place. Dropping the owner lets go of them.
pub type SharedBytes = Box<dyn AsRef<[u8]> + Send>;

/// Where a reader's bytes live.
enum Backing {
    Vec(Vec<u8>),
    /// `len` bytes at the start of an owner's bytes.
    Shared {
        owner: SharedBytes,
        len: usize,
    },
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Vec(v) => v,
            Backing::Shared { owner, len } => {
                let all = (**owner).as_ref();
                &all[..(*len).min(all.len())]
            }
        }
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Vec(v) => write!(f, "Vec({} bytes)", v.len()),
            Backing::Shared { len, .. } => write!(f, "Shared({len} bytes)"),
        }
    }
}

/// One chunk of a remote fragment's result, as read on the initiator. Mirrors DiCE's
/// `IDeserializer` as passed to `receive_remote_result`.
///
/// Its bytes are either its own (a `Vec`, from the network) or, for a chunk a process of the
/// same machine handed over through shared memory, the shared pages themselves, read in place
/// without a copy ([`ResultReader::shared`]); the two read the same.
#[derive(Debug)]
pub struct ResultReader {
    data: Backing,
    pos: usize,
    seq: u32,
}

impl ResultReader {
    /// A reader over chunk `seq` holding `data`.
    pub fn new(seq: u32, data: Vec<u8>) -> Self {
        ResultReader {
            data: Backing::Vec(data),
            pos: 0,
            seq,
        }
    }

    /// A reader over chunk `seq`: the first `len` bytes of `owner` (all of them if it holds
    /// fewer), read in place; `owner` is dropped with the reader.
    pub fn shared(seq: u32, owner: SharedBytes, len: usize) -> Self {
        ResultReader {
            data: Backing::Shared { owner, len },
            pos: 0,
            seq,
        }
    }

    /// The chunk's sequence number within its fragment (0-based).
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// All bytes of the chunk.
    pub fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> &[u8] {
        &self.bytes()[self.pos..]
    }

    /// Total size of the chunk in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether the chunk is empty (an empty flush).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    /// Takes the chunk's bytes (a copy when they are shared pages).
    pub fn into_bytes(self) -> Vec<u8> {
        match self.data {
            Backing::Vec(v) => v,
            shared @ Backing::Shared { .. } => shared.bytes().to_vec(),
        }
    }

    /// Reads the next value written with [`ResultWriter::write_value`].
    pub fn read_value<T: DeserializeOwned>(&mut self) -> io::Result<T> {
        let (value, used) = bincode::serde::decode_from_slice::<T, _>(
            &self.bytes()[self.pos..],
            bincode::config::standard().with_limit::<{ 1 << 30 }>(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        self.pos += used;
        Ok(value)
    }
}

impl io::Read for ResultReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let rest = &self.data.bytes()[self.pos..];
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn every_flush_is_one_chunk_and_finish_flushes_the_rest() {
        let mut sink: Vec<Vec<u8>> = Vec::new();
        let mut w = ResultWriter::new(&mut sink);
        // Through the `io::Write` impl, as generic writers (`write!`, `io::copy`) use it.
        io::Write::write_all(&mut w, b"ab").unwrap();
        io::Write::flush(&mut w).unwrap();
        w.flush().unwrap(); // empty chunk still counts
        w.write_value(&42u64).unwrap();
        w.write_chunk(vec![9, 9]).unwrap();
        assert_eq!(w.finish().unwrap(), 4);
        assert_eq!(sink.len(), 4);
        assert_eq!(sink[0], b"ab");
        assert!(sink[1].is_empty());
        // write_chunk ends the chunk holding the pending value, then its own bytes.
        let mut r = ResultReader::new(2, sink[2].clone());
        assert_eq!(r.read_value::<u64>().unwrap(), 42);
        assert_eq!(r.remaining(), &[9, 9]);
        assert!(sink[3].is_empty(), "finish() always sends the final chunk");
    }

    /// Memory a test sink lends: 1 KiB, whatever the length asked for (up to that).
    struct Lent(Vec<u8>);

    impl LentBuffer for Lent {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            &mut self.0
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
            self
        }
    }

    /// Lends memory for chunks up to 1 KiB and records what it got back.
    #[derive(Default)]
    struct Lending {
        lent_back: Vec<(u32, Vec<u8>)>,
        copied: Vec<(u32, Vec<u8>)>,
    }

    impl ChunkSink for Lending {
        fn send_chunk(&mut self, seq: u32, data: Vec<u8>) -> io::Result<()> {
            self.copied.push((seq, data));
            Ok(())
        }
        fn chunk_buffer(&mut self, len: usize) -> ChunkBuffer {
            ChunkBuffer::lent(Box::new(Lent(vec![0xEE; 1024])), len)
                .unwrap_or_else(|| ChunkBuffer::heap(len))
        }
        fn send_buffer(&mut self, seq: u32, buf: ChunkBuffer) -> io::Result<()> {
            match buf.take_lent::<Lent>() {
                Ok((lent, len)) => self.lent_back.push((seq, lent.0[..len].to_vec())),
                Err(buf) => self.copied.push((seq, buf.into_vec())),
            }
            Ok(())
        }
    }

    #[test]
    fn chunk_buffers_are_the_chunk_in_place_or_join_what_is_pending() {
        let mut sink = Lending::default();
        let mut w = ResultWriter::new(&mut sink);
        let mut a = w.chunk_buffer(3);
        assert!(a.is_lent());
        assert_eq!(a.len(), 3, "exactly the length asked for");
        a.copy_from_slice(b"abc");
        w.write_buffer(a).unwrap();
        // Too large for the sink: a zeroed heap buffer, sent as a `Vec`.
        let big = w.chunk_buffer(2000);
        assert!(!big.is_lent());
        assert!(big.iter().all(|&b| b == 0));
        w.write_buffer(big).unwrap();
        // Pending bytes and a buffer make one chunk.
        w.write_all(b"xy").unwrap();
        let mut c = w.chunk_buffer(2);
        c.copy_from_slice(b"zz");
        w.write_buffer(c).unwrap();
        // Dropped unsent: nothing is sent, the numbering goes on.
        drop(w.chunk_buffer(5));
        assert_eq!(w.finish().unwrap(), 4);
        assert_eq!(sink.lent_back, vec![(0, b"abc".to_vec())]);
        assert_eq!(
            sink.copied,
            vec![(1, vec![0; 2000]), (2, b"xyzz".to_vec()), (3, Vec::new())]
        );
        // The default sink copies a buffer into a `Vec` chunk.
        let mut plain: Vec<Vec<u8>> = Vec::new();
        let mut w = ResultWriter::new(&mut plain);
        let mut b = w.chunk_buffer(4);
        b.copy_from_slice(b"1234");
        w.write_buffer(b).unwrap();
        assert_eq!(plain, vec![b"1234".to_vec()]);
        // A lent buffer of another kind is given back whole.
        let other = ChunkBuffer::lent(Box::new(Lent(vec![1; 8])), 8).unwrap();
        struct Elsewhere;
        impl LentBuffer for Elsewhere {
            fn bytes(&self) -> &[u8] {
                &[]
            }
            fn bytes_mut(&mut self) -> &mut [u8] {
                &mut []
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
                self
            }
        }
        let Err(back) = other.take_lent::<Elsewhere>() else {
            panic!("taken back as another kind");
        };
        assert_eq!(back.into_vec(), vec![1; 8]);
        assert!(ChunkBuffer::lent(Box::new(Lent(vec![0; 2])), 3).is_none());
    }

    #[test]
    fn a_shared_reader_reads_its_owner_in_place_and_drops_it_with_itself() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        struct Pages(Vec<u8>, Arc<AtomicBool>);
        impl AsRef<[u8]> for Pages {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Pages {
            fn drop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let mut value = bincode::serde::encode_to_vec(7u32, bincode::config::standard()).unwrap();
        let len = value.len() + 2;
        value.extend_from_slice(&[5, 6, 0xAA, 0xAA]); // 2 bytes of the chunk, 2 past its end
        let pages = Pages(value, dropped.clone());
        let addr = pages.0.as_ptr() as usize;
        let mut r = ResultReader::shared(3, Box::new(pages), len);
        assert_eq!((r.seq(), r.len()), (3, len));
        assert_eq!(
            ResultReader::bytes(&r).as_ptr() as usize,
            addr,
            "read in place"
        );
        assert_eq!(r.read_value::<u32>().unwrap(), 7);
        let mut two = [0u8; 4];
        assert_eq!(r.read(&mut two).unwrap(), 2);
        assert_eq!(&two[..2], &[5, 6]);
        assert!(!dropped.load(Ordering::SeqCst));
        assert_eq!(r.into_bytes().len(), len);
        assert!(dropped.load(Ordering::SeqCst));
    }

    #[test]
    fn reader_reads_bytes_and_rejects_garbage_values() {
        let mut r = ResultReader::new(0, vec![1, 2, 3]);
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        assert_eq!(two, [1, 2]);
        let mut bad = ResultReader::new(0, vec![0xff]);
        assert!(bad.read_value::<u64>().is_err());
    }

    /// Without `std::io::Write` in scope: `write_all` and `flush` are the writer's own.
    mod without_the_write_trait {
        use super::super::{ResultReader, ResultWriter};

        #[test]
        fn write_all_and_flush_need_no_import() {
            let mut sink: Vec<Vec<u8>> = Vec::new();
            let mut w = ResultWriter::new(&mut sink);
            w.write_all(b"xy").unwrap();
            w.flush().unwrap();
            w.write_value(&7u8).unwrap();
            assert_eq!(w.finish().unwrap(), 2);
            assert_eq!(sink[0], b"xy");
            assert_eq!(
                ResultReader::new(1, sink[1].clone())
                    .read_value::<u8>()
                    .unwrap(),
                7
            );
        }
    }
}
