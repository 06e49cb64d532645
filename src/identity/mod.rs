//! Identity: the workload id, the credentials that prove it (token, API key, service-account
//! token) and where they come from, enrolment, the rustls-based HTTPS clients and the mTLS
//! endpoint client, retry pacing, the TLS cache, the start plan and the running session
//! (enrolment in the background, heartbeat, renewal, enrolling again after expiry).

pub mod backend;
pub mod backoff;
pub mod credential;
pub mod enroll;
pub mod plan;
pub mod session;
pub mod tls;
pub mod tls_cache;
pub mod token;
pub mod workload;
