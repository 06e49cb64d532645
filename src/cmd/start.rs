//! `start`: the production agent. Checks every setting before any network call (the [`Plan`]),
//! drops the configuration's copy of the credential, and hands over to the agent loop.

use std::time::Instant;

use crate::agent;
use crate::cli::Args;
use crate::config::{Config, Key};
use crate::error::Result;
use crate::identity::plan::Plan;
use crate::serve::socket_path;

pub fn run(mut cfg: Config, _args: &Args) -> Result<()> {
    let t0 = Instant::now();
    // A socket directory another user can write is refused before anything else: that user
    // could replace the socket and answer `status` and `attest --self` as the agent.
    if let Some(path) = cfg.path(Key::Socket) {
        socket_path::check_server_path(&path, nix::unistd::geteuid().as_raw())?;
    }
    let plan = Plan::from_config(&cfg)?;
    // The plan holds the only copy of the credential from here on (zeroized with it).
    cfg.enroll_token = None;
    cfg.api_key = None;
    agent::run(cfg, plan, t0)
}
