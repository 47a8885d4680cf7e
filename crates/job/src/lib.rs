//! The `FragmentedJob` API (being written; ids are final).
mod ids;
pub use ids::{ClassId, HostId, JobId};
