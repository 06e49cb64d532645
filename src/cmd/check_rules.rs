//! `check-rules FILE...` (or `--check-rules FILE`): loads the rule files after the compiled-in
//! defaults (which they may use and extend) exactly as `watch`/`start` would, and reports.

use crate::cli::Args;
use crate::config::{Config, Key};
use crate::error::{Error, Kind, Result};
use crate::rules;

pub fn run(cfg: Config, args: &Args) -> Result<()> {
    let opts = rules::Options {
        defaults: !cfg.flag(Key::NoDefaultRules),
        files: args.files.clone(),
    };
    match rules::check(&opts) {
        Ok(n) => {
            println!(
                "check-rules: {n} rule(s) in use{}, no problems found in {} file(s)",
                if opts.defaults {
                    " (the defaults included)"
                } else {
                    ""
                },
                opts.files.len()
            );
            Ok(())
        }
        Err(findings) => {
            for f in &findings {
                println!("{}", crate::cli::printable(&f.to_string()));
            }
            Err(Error::new(
                Kind::Findings,
                format!(
                    "{} problem(s) in the rule files; each line above names the file, the line and what is wrong",
                    findings.len()
                ),
            ))
        }
    }
}
