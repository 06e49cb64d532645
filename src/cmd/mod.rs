//! Commands, one file each: they parse nothing themselves (cli/config did) and drive the
//! components below them.

pub mod attest;
pub mod check_manifest;
pub mod options;
pub mod show_config;
pub mod start;
pub mod status;
pub mod watch;
pub mod yaml_limits;
