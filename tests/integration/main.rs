//! The one integration-test binary: runs the real built `linuxguard-agent` (and the reference
//! backend) against real parts. Tests that need root and BPF are named `root_*`.

mod common;

mod attest;
mod backend;
mod cli;
mod compat;
mod e2e;
mod enroll;
mod files;
mod kubelet_server;
mod layout;
mod manifest;
mod network;
mod system;
mod watch;
