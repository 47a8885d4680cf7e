//! Element types, allocation metadata and the ids the context hands out.

use serde::{Deserialize, Serialize};

use crate::error::FastIoError;

/// Element type of a typed N-dimensional array stored in an allocation (Clara's
/// `nvidia_clara_fastio_element_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElementType {
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// IEEE 754 half precision ([`half::f16`]).
    F16,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

impl ElementType {
    /// Size of one element in bytes.
    pub const fn size_bytes(self) -> u64 {
        match self {
            ElementType::U8 | ElementType::I8 => 1,
            ElementType::U16 | ElementType::I16 | ElementType::F16 => 2,
            ElementType::U32 | ElementType::I32 | ElementType::F32 => 4,
            ElementType::U64 | ElementType::I64 | ElementType::F64 => 8,
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type usable in typed views ([`crate::ReadGuard::as_slice`]). Sealed: implemented for
/// `u8`…`u64`, `i8`…`i64`, [`half::f16`], `f32` and `f64` only, types for which every bit pattern
/// is a valid value, so viewing shared bytes as them is sound.
pub trait Element: sealed::Sealed + Copy + Send + Sync + 'static {
    /// The [`ElementType`] tag that matches this type.
    const TYPE: ElementType;
}

macro_rules! element {
    ($($t:ty => $e:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const TYPE: ElementType = ElementType::$e;
        }
    )*};
}

element!(
    u8 => U8, u16 => U16, u32 => U32, u64 => U64,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    half::f16 => F16, f32 => F32, f64 => F64,
);

/// Most dimensions an allocation's metadata may have.
pub const MAX_DIMS: usize = 16;

/// Longest publication name, in bytes.
pub const MAX_NAME_LEN: usize = 1024;

/// The metadata of an allocation handle: element type and dimensions, if set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Element type, `None` until set.
    pub element_type: Option<ElementType>,
    /// Dimensions (empty until set; with an element type set, empty means a scalar).
    pub dims: Vec<u64>,
}

impl Metadata {
    /// Checks that `element_type` × `dims` fills exactly `size` bytes.
    pub(crate) fn typed(
        size: u64,
        element_type: ElementType,
        dims: &[u64],
    ) -> Result<Metadata, FastIoError> {
        if dims.len() > MAX_DIMS {
            return Err(FastIoError::TooManyDimensions);
        }
        let product = dims
            .iter()
            .try_fold(element_type.size_bytes(), |acc, &d| acc.checked_mul(d));
        if product != Some(size) {
            return Err(FastIoError::DimsMismatch {
                size,
                element_type,
                dims: dims.to_vec(),
            });
        }
        Ok(Metadata {
            element_type: Some(element_type),
            dims: dims.to_vec(),
        })
    }

    /// Checks metadata that arrived from a client against the memory size.
    pub(crate) fn validate(&self, size: u64) -> Result<(), FastIoError> {
        match self.element_type {
            Some(t) => Metadata::typed(size, t, &self.dims).map(drop),
            None if self.dims.is_empty() => Ok(()),
            None => Err(FastIoError::Protocol(
                "dimensions without an element type".into(),
            )),
        }
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), FastIoError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        Err(FastIoError::InvalidName)
    } else {
        Ok(())
    }
}

macro_rules! define_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u64);
    };
}

define_id!(
    /// Identifies one handle (one reference) in a context.
    HandleId
);
define_id!(
    /// Identifies one memory resource (one memfd) in a context.
    MemId
);
define_id!(
    /// Identifies one owner of handles: an in-process context or a client connection.
    OwnerId
);

/// How a handle maps its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MapMode {
    /// Shared read access.
    Read,
    /// Exclusive write access.
    Write,
}

/// A snapshot of a context's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextStats {
    /// Total capacity in bytes.
    pub capacity: u64,
    /// Bytes held by live memory resources.
    pub used: u64,
    /// Live memory resources.
    pub allocations: u64,
    /// Live publications.
    pub publications: u64,
    /// Live handles (references) over all owners.
    pub handles: u64,
    /// Bytes of reclaimed memory the context keeps, already allocated, to hand to the next
    /// fetch of the same size (at most a quarter of the capacity and 1 GiB). A `create` that
    /// needs the room closes it first, so it never reduces [`ContextStats::available`].
    pub pooled: u64,
}

impl ContextStats {
    /// Bytes still available to `create`.
    pub fn available(&self) -> u64 {
        self.capacity - self.used
    }
}
