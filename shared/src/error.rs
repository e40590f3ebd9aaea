//! How a failed attempt is classified. The class decides what the queue does
//! next, so every error from a runtime or a sandbox provider is mapped into one:
//!
//! | class         | the queue then                                             |
//! |---------------|------------------------------------------------------------|
//! | `Transient`   | retries with exponential backoff and full jitter           |
//! | `Timeout`     | retries like `Transient` (the attempt's work was killed)   |
//! | `SandboxLost` | retries at once on another agent; the sandbox is dropped   |
//! | `Permanent`   | dead-letters at once with the reason                       |
//! | `Cancelled`   | ends the job `cancelled`; never retried                    |
//! | `BudgetExceeded` | dead-letters at once: the model gateway refused a request that would pass the job's, batch's or tenant's budget; the spend is kept in the record |

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Transient,
    Permanent,
    Timeout,
    SandboxLost,
    Cancelled,
    /// The model gateway refused a request over a budget (permanent).
    BudgetExceeded,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Timeout => "timeout",
            ErrorClass::SandboxLost => "sandbox_lost",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::BudgetExceeded => "budget_exceeded",
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Transient | ErrorClass::Timeout | ErrorClass::SandboxLost
        )
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The failure of one job attempt: its class, a message a user can act on, an
/// upstream `Retry-After` when one was given, and what the agent reported about the
/// failed run (cost, turns, session: `details`, kept on the attempt's record).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct JobError {
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<Duration>,
    /// Structured figures of the failed run (a runtime's metadata), if any.
    pub details: Option<serde_json::Value>,
}

impl JobError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Timeout, message)
    }
    pub fn sandbox_lost(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::SandboxLost, message)
    }
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Cancelled, message)
    }
    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = (!details.is_null()).then_some(details);
        self
    }
}
