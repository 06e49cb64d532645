//! The uplink: the byte-bounded upload queue and the thread that posts its batches, heartbeats
//! and renews.

pub mod queue;
pub mod uploader;
