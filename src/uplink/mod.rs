//! The uplink: the backend output's thread, which obtains the identity, posts the batches of
//! the backend's queue (`output::queue`), heartbeats and renews.

pub mod uploader;
