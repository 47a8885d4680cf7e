//! fragmenta-runtime (placeholder, being written).
