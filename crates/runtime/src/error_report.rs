//! How an error is written where an operator reads it (a log field, the command line's stderr):
//! the error and every source under it on one line, so a `thiserror` chain of "what failed" over
//! "why" is not cut to its top.

use std::error::Error;

/// `error` and its sources, joined by `: ` (e.g. `connecting to NATS at nats://x: timed out`).
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding the consumer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_source_is_written_in_order() {
        let error = Outer(std::io::Error::other("the stream is gone"));
        assert_eq!(
            error_chain(&error),
            "binding the consumer: the stream is gone"
        );
        assert_eq!(
            error_chain(&std::io::Error::other("alone")),
            "alone",
            "an error without a source is written as it is"
        );
    }
}
