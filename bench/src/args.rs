//! Command-line options: `--name value` pairs, each read once with a typed default.

use crate::error::BenchError;
use std::collections::BTreeMap;
use std::str::FromStr;

/// The options of one subcommand.
pub struct Args {
    values: BTreeMap<String, String>,
}

impl Args {
    /// Parses `--name value` pairs.
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Self, BenchError> {
        let mut values = BTreeMap::new();
        let mut args = args;
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(BenchError::Usage(format!("unexpected argument {arg:?}")));
            };
            let value = args.next().ok_or_else(|| BenchError::Usage(format!("--{name} needs a value")))?;
            values.insert(name.to_owned(), value);
        }
        Ok(Self { values })
    }

    /// The option `name` parsed as `T`, or `default` when absent.
    pub fn get<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, BenchError> {
        Ok(self.optional(name)?.unwrap_or(default))
    }

    /// The option `name` parsed as `T`, if given.
    pub fn optional<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, BenchError> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(text) => {
                text.parse().map(Some).map_err(|_| BenchError::Usage(format!("--{name} {text:?} is not valid")))
            }
        }
    }

    /// Fails on options no subcommand read.
    pub fn finish(self) -> Result<(), BenchError> {
        match self.values.keys().next() {
            Some(name) => Err(BenchError::Usage(format!("unknown option --{name}"))),
            None => Ok(()),
        }
    }
}
