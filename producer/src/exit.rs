//! Exit codes of `fleet` (documented in `fleet --help`) and the error that carries a
//! code and a message to `main`. Other errors get their code from what they are: a
//! queue error means Redis (3), a settings or validation error means bad input (2).

use std::fmt;

use fleet_shared::job::ValidationError;
use fleet_shared::queue::QueueError;
use fleet_shared::settings::SettingsError;

pub const SUCCESS: u8 = 0;
/// A job did not succeed, a request was only partly applied, or another error.
pub const FAILED: u8 = 1;
/// Usage or input error (clap uses 2 for bad arguments too).
pub const USAGE: u8 = 2;
/// Redis (or, for the demo, redis-server or fleet-worker) is not there.
pub const UNAVAILABLE: u8 = 3;
/// The job has not ended yet.
pub const NOT_ENDED: u8 = 4;
pub const INTERRUPTED: u8 = 130;

/// An error with the exit code it means.
#[derive(Debug)]
pub struct Fail {
    pub code: u8,
    pub message: String,
}

impl Fail {
    pub fn new(code: u8, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Fail {
        Fail::new(USAGE, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Fail {
        Fail::new(UNAVAILABLE, message)
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

/// The exit code an error means: the first cause in its chain that says.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Fail>() {
            return f.code;
        }
        if cause.is::<QueueError>() {
            return UNAVAILABLE;
        }
        if cause.is::<SettingsError>() || cause.is::<ValidationError>() {
            return USAGE;
        }
    }
    FAILED
}

/// The error and its causes on one line, `a: b: c`, leaving out a cause whose text is
/// already there (many errors repeat their source in their own message).
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Whether the error is stdout being closed under us (`fleet dead list | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_follow_the_cause() {
        let e = anyhow::Error::new(Fail::usage("no such file: x")).context("reading the batch");
        assert_eq!(code_of(&e), USAGE);
        let e = anyhow::Error::new(ValidationError::new("the query is empty"));
        assert_eq!(code_of(&e), USAGE);
        let e: anyhow::Error = Err::<(), _>(QueueError::Corrupt("x".into()))
            .context("enqueue")
            .unwrap_err();
        assert_eq!(code_of(&e), UNAVAILABLE);
        assert_eq!(code_of(&anyhow::anyhow!("other")), FAILED);
    }

    #[test]
    fn render_skips_repeated_causes() {
        #[derive(Debug)]
        struct Wraps(std::io::Error);
        impl fmt::Display for Wraps {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "cannot reach Redis: {}", self.0)
            }
        }
        impl std::error::Error for Wraps {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Wraps(std::io::Error::other("refused"))).context("counting");
        assert_eq!(render(&e), "counting: cannot reach Redis: refused");
    }

    #[test]
    fn broken_pipe_is_recognised() {
        let e = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
