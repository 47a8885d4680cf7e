//! The one error type of the crate.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::types::ElementType;

/// Which system operation an [`FastIoError::Io`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum IoOp {
    /// Creating, sizing or sealing a memfd.
    CreateMemory,
    /// Checking a received memfd (seals, size).
    InspectMemory,
    /// Mapping a memfd into this process.
    Map,
    /// Creating, checking or securing the socket directory or socket file.
    SocketPath,
    /// Binding or listening on the server socket.
    Bind,
    /// Connecting to a server.
    Connect,
    /// Sending a message.
    Send,
    /// Receiving a message.
    Receive,
    /// Starting a server thread.
    Spawn,
}

/// Every error a Fast I/O operation can return. Variants are exact so tests can assert them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FastIoError {
    /// `get` named a publication that does not exist (never published, or withdrawn by `free`).
    #[error("no publication named {0:?}")]
    UnknownName(String),
    /// `publish` used a name that is already taken in this context.
    #[error("publication name {0:?} is already taken")]
    NameTaken(String),
    /// A publication name is empty or longer than [`crate::MAX_NAME_LEN`] bytes.
    #[error("invalid publication name (empty or longer than {max} bytes)", max = crate::MAX_NAME_LEN)]
    InvalidName,
    /// The requested map conflicts with a map held by some handle in some process: a write map
    /// while any map is held, or a read map while a write map is held.
    #[error("allocation is mapped in a conflicting mode")]
    MapConflict,
    /// The memory was freed (through this or another handle): it can no longer be mapped or
    /// published.
    #[error("allocation was freed")]
    Freed,
    /// `create` asked for more bytes than the context has left.
    #[error("capacity exceeded: requested {requested} bytes, {available} available")]
    CapacityExceeded {
        /// Bytes requested.
        requested: u64,
        /// Bytes still available in the context.
        available: u64,
    },
    /// A typed view was requested for an element type other than the allocation's (or the
    /// memory is not suitably aligned for it).
    #[error("typed view of {requested:?} on an allocation of element type {actual:?}")]
    WrongElementType {
        /// The allocation's element type, `None` if it was never set.
        actual: Option<ElementType>,
        /// The element type of the requested view.
        requested: ElementType,
    },
    /// Product of the dimensions times the element size differs from the allocation size (or
    /// overflows).
    #[error("dimensions {dims:?} of {element_type:?} do not fill {size} bytes")]
    DimsMismatch {
        /// Allocation size in bytes.
        size: u64,
        /// Element type given.
        element_type: ElementType,
        /// Dimensions given.
        dims: Vec<u64>,
    },
    /// Data handed over is longer than the memory asked for it
    /// ([`RemoteContext::hand_over`](crate::RemoteContext::hand_over)).
    #[error("{len} bytes do not fit in {size} bytes of memory")]
    DataTooLarge {
        /// Bytes of data.
        len: u64,
        /// Bytes of memory.
        size: u64,
    },
    /// More than [`crate::MAX_DIMS`] dimensions.
    #[error("more than {max} dimensions", max = crate::MAX_DIMS)]
    TooManyDimensions,
    /// The metadata of a handle that has been published cannot change (publish a handle from
    /// `get`, or publish under a new name, to describe the memory differently).
    #[error("metadata of a published allocation is immutable")]
    MetadataImmutable,
    /// The allocation belongs to another context than the one asked to publish it.
    #[error("allocation belongs to another Fast I/O context")]
    ForeignAllocation,
    /// A request named a handle its sender does not hold, or unmapped a lock it does not hold.
    /// A client sending such a request is disconnected.
    #[error("invalid handle or lock in request")]
    InvalidHandle,
    /// The connection to the context server is closed (server gone or connection dropped).
    #[error("connection to the Fast I/O server is closed")]
    Disconnected,
    /// The peer sent something that is not a valid message of the protocol.
    #[error("protocol violation: {0}")]
    Protocol(Cow<'static, str>),
    /// The socket path or its directory is not safe to use: not owned by this user, readable by
    /// others, a symlink, or not a socket.
    #[error(
        "refusing insecure socket path {path}: {reason} (choose a folder only you can use: \
         set the host's `fastio_socket`, or XDG_RUNTIME_DIR)"
    )]
    InsecurePath {
        /// The offending path.
        path: String,
        /// Why it is refused.
        reason: Cow<'static, str>,
    },
    /// The socket path is longer than the system allows
    /// ([`MAX_SOCKET_PATH`](crate::MAX_SOCKET_PATH) bytes).
    #[error(
        "socket path {path} is {len} bytes, longer than the {max} a Unix socket allows; \
         choose a shorter `fastio_socket`"
    )]
    SocketPathTooLong {
        /// The path.
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The longest path allowed.
        max: usize,
    },
    /// Another server is already listening on the socket path.
    #[error("a server is already listening on {0}")]
    AddressInUse(String),
    /// An operating-system call failed.
    #[error("{op:?} failed: os error {errno}")]
    Io {
        /// What was being done.
        op: IoOp,
        /// The `errno` value, 0 if none was reported.
        errno: i32,
    },
}

impl FastIoError {
    /// Wraps an `io::Error` from operation `op`.
    pub(crate) fn io(op: IoOp, err: &std::io::Error) -> FastIoError {
        FastIoError::Io {
            op,
            errno: err.raw_os_error().unwrap_or(0),
        }
    }
}

/// Result alias for Fast I/O operations.
pub type Result<T, E = FastIoError> = std::result::Result<T, E>;
