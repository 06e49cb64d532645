//! The one integration-test binary: runs the real built `linuxguard-agent` (and the reference
//! backend) against real parts. Tests that need root and BPF are named `root_*`.

mod common;

mod backend;
mod cli;
mod manifest;
mod enroll;
mod watch;
mod attest;
mod kubelet_server;
