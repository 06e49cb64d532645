//! Identity: the workload id, the credentials that prove it (token, API key), enrolment, the TLS
//! cache, the start plan and the running session (heartbeat, renewal).

pub mod enroll;
pub mod plan;
pub mod session;
pub mod tls_cache;
pub mod token;
pub mod workload;
