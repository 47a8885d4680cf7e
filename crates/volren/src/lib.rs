//! fragmenta-volren (placeholder, being written).
