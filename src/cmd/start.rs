//! `start`: the production agent. Checks every setting before any network call (the [`Plan`]),
//! drops the configuration's copy of the credential, and hands over to the agent loop.

use std::time::Instant;

use crate::agent;
use crate::cli::Args;
use crate::cmd::options;
use crate::config::Config;
use crate::error::Result;
use crate::identity::plan::Plan;

pub fn run(mut cfg: Config, _args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let plan = Plan::from_config(&cfg)?;
    // The plan holds the only copy of the credential from here on (zeroized with it).
    cfg.enroll_token = None;
    cfg.api_key = None;
    let opts = agent::Options {
        pipeline: options::pipeline(&cfg),
        attestor: options::attestor(&cfg),
        socket: options::socket(&cfg),
    };
    agent::run(cfg, opts, plan, t0)
}
