//! The network to the backend: rustls-based HTTPS clients, the mTLS endpoint client, and retry
//! pacing.

pub mod backend;
pub mod backoff;
pub mod tls;
