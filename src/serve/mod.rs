//! Local endpoints served from the agent loop: the Unix socket (`status`, `attest --self`) and
//! the Prometheus metrics listener.

pub mod metrics;
pub mod request;
pub mod socket;
pub mod socket_path;
