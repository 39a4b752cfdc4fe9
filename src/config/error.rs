//! Config errors, rendered one way whether toml found them or our own checks did:
//! `file:line:col: message`, every problem, in file order.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every problem found, in file order; `Display` prints one per line.
    #[error("{}", render(problems))]
    Invalid { problems: Vec<Problem> },
}

/// One problem at one place in the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The config text with its name, to turn byte spans into lines and columns.
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// A problem at `span`; an empty span at 0 (a default value) points at line 1.
    pub fn problem(&self, span: Range<usize>, message: impl Into<String>) -> (usize, Problem) {
        let at = span.start.min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..at].chars().count() + 1;
        let problem = Problem {
            file: self.file.to_owned(),
            line,
            col,
            message: message.into(),
        };
        (at, problem)
    }

    /// `file:line` of `span`, for messages given later (an expectation's).
    pub fn at(&self, span: Range<usize>) -> String {
        let problem = self.problem(span, "").1;
        format!("{}:{}", problem.file, problem.line)
    }

    /// toml's own error: its message (first line, without toml's excerpt) at its span.
    pub fn toml_problem(&self, err: &toml::de::Error) -> (usize, Problem) {
        let message = err.message().trim().to_owned();
        self.problem(err.span().unwrap_or(0..0), message)
    }
}
