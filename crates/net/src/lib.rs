//! fragmenta-net (placeholder, being written).
