//! fragmenta-config (placeholder, being written).
