//! fragmenta-fastio (placeholder, being written).
