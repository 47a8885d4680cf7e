//! fragmenta facade (being written).
