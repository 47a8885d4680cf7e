//! Runtime messages between hosts (written by the runtime author).
