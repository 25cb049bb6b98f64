//! The shard's commit log: one sequence of fixed-size segment files shared by
//! every partition the shard owns.
//!
//! - [`entry`]: the entry header and its chain of CRCs.
//! - [`segments`]: segment files and their names.
//! - [`writer`]: the in-memory tail (chunks of aligned buffers) that group
//!   commit writes with one aligned write per chunk.
//! - [`cache`]: recently written chunks, served to readers near the head.
//!
//! Positions are global byte positions: a segment named `<base>.seg` holds
//! positions `[base, base + size)`, and the next segment starts at
//! `base + size`. Entries never span segments.

pub mod cache;
pub mod entry;
pub mod segments;
pub mod writer;
