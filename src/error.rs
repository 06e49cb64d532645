//! The crate's one error type: a message chain plus the exit-code class it maps to.

use std::fmt;
use std::process::ExitCode;

/// Exit-code classes, documented in README.md ("Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 1: something failed at run time (kernel, network, files).
    Runtime,
    /// 2: the command line is malformed (unknown flag, missing value, unknown command).
    Usage,
    /// 3: a setting's value is invalid or a required input is missing.
    Config,
    /// 4: the backend rejected enrolment (400/401/403/409).
    EnrollRejected,
    /// 5: the backend revoked this agent's identity (401/403 after enrolment).
    Revoked,
    /// 6: a check ran and found problems (`check-manifest`, `attest` on a PID outside any pod).
    Findings,
}

impl Kind {
    pub fn code(self) -> u8 {
        match self {
            Kind::Runtime => 1,
            Kind::Usage => 2,
            Kind::Config => 3,
            Kind::EnrollRejected => 4,
            Kind::Revoked => 5,
            Kind::Findings => 6,
        }
    }
}

/// An error with a kind and a cause chain, outermost context first.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    chain: Vec<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Self {
        Error {
            kind,
            chain: vec![msg.into()],
        }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(Kind::Usage, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(Kind::Config, msg)
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Self::new(Kind::Runtime, msg)
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind.code())
    }
    /// Adds an outer context phrase ("failed to open ring buffer `events`").
    pub fn context(mut self, ctx: impl Into<String>) -> Self {
        self.chain.insert(0, ctx.into());
        self
    }
}

impl fmt::Display for Error {
    /// The whole chain on one line: `outer: inner: root`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain.join(": "))
    }
}

impl std::error::Error for Error {}

/// `.context("...")` on any `Result` whose error displays, mapping it to a [`Kind`].
pub trait Context<T> {
    fn context(self, kind: Kind, ctx: impl Into<String>) -> Result<T>;
    fn with_context<F: FnOnce() -> String>(self, kind: Kind, f: F) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, kind: Kind, ctx: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error {
            kind,
            chain: vec![ctx.into(), e.to_string()],
        })
    }
    fn with_context<F: FnOnce() -> String>(self, kind: Kind, f: F) -> Result<T> {
        self.map_err(|e| Error {
            kind,
            chain: vec![f(), e.to_string()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_prints_on_one_line_outermost_first() {
        let e = Error::runtime("permission denied").context("failed to open `x`");
        assert_eq!(e.to_string(), "failed to open `x`: permission denied");
        assert_eq!(e.kind().code(), 1);
    }

    #[test]
    fn codes_are_distinct() {
        let kinds = [
            Kind::Runtime,
            Kind::Usage,
            Kind::Config,
            Kind::EnrollRejected,
            Kind::Revoked,
            Kind::Findings,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
    }
}
