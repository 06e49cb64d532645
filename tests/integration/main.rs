//! The one integration-test binary: runs the real built `linuxguard-agent` (and the reference
//! backend) against real parts. Tests that need root and BPF are named `root_*`.

mod common;

mod attest;
mod backend;
mod cli;
// The 32-bit syscall tests run x86 code (`int $0x80`, tests/integration/compat32.c); arm64's
// compat hook is tested in an arm64 guest by scripts/kernel-matrix-arm64.
#[cfg(target_arch = "x86_64")]
mod compat;
mod containers;
mod e2e;
mod enroll;
mod exclude;
mod files;
mod fleet;
mod hardening;
mod kubelet_server;
mod layout;
mod manifest;
mod network;
mod outputs;
mod rules;
mod rules_ordinary;
mod sa_issuer;
mod system;
mod watch;
