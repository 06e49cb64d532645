//! Events: the JSON event object and its builder, the hot-path JSON writer, and the process table
//! that gives every event its ancestry.

pub mod activity;
pub mod alert;
pub mod event;
pub mod json;
pub mod proctable;
pub mod redact;
