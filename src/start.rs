//! `start`: not built yet (placeholder until its issue lands; the command reports that it is missing).

use crate::cli::Args;
use crate::config::Config;
use crate::error::{Error, Result};

pub fn run(_cfg: Config, _args: &Args) -> Result<()> {
    Err(Error::runtime("`start` is not part of this build yet"))
}
