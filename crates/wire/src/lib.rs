//! fragmenta-wire (placeholder, being written).
