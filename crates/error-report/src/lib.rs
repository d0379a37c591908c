//! How an error is written where a person reads it (a log field, a command's stderr, a dead
//! letter, a test failure): the error and every source under it, so a `thiserror` chain of "what
//! failed" over "why" is not cut to its top.
//!
//! A leaf crate with no dependencies, so that every crate (the signer and the test support
//! included, which share no other crate) writes chains the same way.
//!
//! ```
//! use countersign_error_report::{ErrorChain, error_chain};
//!
//! let error = std::io::Error::other("timed out");
//! assert_eq!(error_chain(&error), "timed out");
//! assert_eq!(ErrorChain::new(&error).to_string(), "timed out");
//! ```

use std::error::Error;
use std::fmt;

/// An error and its sources, for `Display`: `{}` joins them with `: ` on one line
/// (`connecting to NATS at nats://x: timed out`); `{:#}` writes one per line, each source after
/// `caused by: ` (for a panic message or a report).
#[derive(Clone, Copy)]
pub struct ErrorChain<'a> {
    error: &'a (dyn Error + 'a),
}

impl<'a> ErrorChain<'a> {
    /// The chain from `error` down.
    pub fn new(error: &'a (dyn Error + 'a)) -> ErrorChain<'a> {
        ErrorChain { error }
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if formatter.alternate() {
            "\n  caused by: "
        } else {
            ": "
        };
        write!(formatter, "{}", self.error)?;
        let mut source = self.error.source();
        while let Some(cause) = source {
            write!(formatter, "{separator}{cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// `error` and its sources, joined by `: ` (the one-line form of [`ErrorChain`]).
pub fn error_chain(error: &(dyn Error + '_)) -> String {
    ErrorChain::new(error).to_string()
}

/// Only the sources under `error`, joined by `: ` (empty when it has none): for a message that
/// already says what failed.
pub fn source_chain(error: &(dyn Error + '_)) -> String {
    error.source().map(error_chain).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding the consumer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading the stream")]
    struct Middle(#[source] std::io::Error);

    fn outer() -> Outer {
        Outer(Middle(std::io::Error::other("the stream is gone")))
    }

    #[test]
    fn every_source_is_written_in_order_on_one_line() {
        assert_eq!(
            error_chain(&outer()),
            "binding the consumer: reading the stream: the stream is gone"
        );
        assert_eq!(
            error_chain(&std::io::Error::other("alone")),
            "alone",
            "an error without a source is written as it is"
        );
    }

    #[test]
    fn the_alternate_form_writes_one_cause_per_line() {
        assert_eq!(
            format!("{:#}", ErrorChain::new(&outer())),
            "binding the consumer\n  caused by: reading the stream\n  caused by: the stream is gone"
        );
    }

    #[test]
    fn the_sources_alone_leave_the_top_out() {
        assert_eq!(
            source_chain(&outer()),
            "reading the stream: the stream is gone"
        );
        assert_eq!(source_chain(&std::io::Error::other("alone")), "");
    }
}
