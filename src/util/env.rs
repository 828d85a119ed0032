//! Settings read from the environment.

use crate::error::{Error, Result};

/// Parses `var` when it is set: `Ok(None)` when it is not, a [`Error::Config`] naming the
/// variable and its value when it does not parse.
pub(crate) fn env_parse<T: std::str::FromStr>(var: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|e| Error::Config(format!("{var}={v:?}: {e}"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Error::Config(format!("{var} is not valid UTF-8")))
        }
    }
}
