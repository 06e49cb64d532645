//! Shared helpers for the integration tests: the built binaries, temp dirs, running with env.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const AGENT: &str = env!("CARGO_BIN_EXE_linuxguard-agent");
pub const BACKEND: &str = env!("CARGO_BIN_EXE_linuxguard-backend");

/// A fresh, empty directory under the target dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = base.join(format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent with a clean environment: no LINUXGUARD_* or RUST_LOG inherited from the caller.
pub fn agent() -> Command {
    let mut c = Command::new(AGENT);
    for (k, _) in std::env::vars() {
        if k.starts_with("LINUXGUARD_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run the agent binary")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
