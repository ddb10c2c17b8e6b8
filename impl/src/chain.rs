//! Errors as the log shows them: each cause once.

use std::error::Error;
use std::fmt;

/// An error and its sources, `a: b: c`, for the log. A source whose text its
/// error already shows (some libraries print their cause and also return it as
/// the source) is not repeated.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a dyn Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            let text = error.to_string();
            if !shown.contains(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            source = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    /// Shows its cause and returns it as the source, as some libraries do.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect: {0}")]
    struct Connect(#[source] Refused);

    #[derive(Debug, thiserror::Error)]
    #[error("the job store failed")]
    struct Store(#[source] Connect);

    #[test]
    fn an_error_chain_says_each_cause_once() {
        assert_eq!(
            ErrorChain(&Store(Connect(Refused))).to_string(),
            "the job store failed: cannot connect: connection refused"
        );
        assert_eq!(ErrorChain(&Refused).to_string(), "connection refused");
    }
}
