//! How an error reads in a log line, in `/api/v1/status` and on the command line: its own
//! message, then each cause after a colon, once.

use std::error::Error;

/// `err` with its causes, e.g. "request failed: error sending request: connection refused".
pub fn chain(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
