//! Typed reads of a JSON object's keys, each error naming the key.

use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Reads typed keys from a JSON object, recording which were known.
pub(super) struct Reader<'a> {
    pub(super) map: &'a Map<String, Value>,
    pub(super) used: BTreeSet<&'static str>,
}

impl Reader<'_> {
    pub(super) fn get(&mut self, key: &'static str) -> Option<&Value> {
        self.used.insert(key);
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    pub(super) fn f64(&mut self, key: &'static str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    pub(super) fn opt_f64(&mut self, key: &'static str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            // Python's `-Infinity`/`Infinity`/`NaN` arrive as strings (crate::pyjson).
            Some(v) => crate::pyjson::as_f64(v)
                .map(Some)
                .ok_or_else(|| Error::config(key, format!("expected a number, got {v}"))),
        }
    }

    pub(super) fn usize(&mut self, key: &'static str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .map(|u| u as usize)
                .ok_or_else(|| {
                    Error::config(key, format!("expected a non-negative integer, got {v}"))
                }),
        }
    }

    pub(super) fn bool(&mut self, key: &'static str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Error::config(
                key,
                format!("expected true or false, got {v}"),
            )),
        }
    }

    pub(super) fn string(&mut self, key: &'static str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(Error::config(key, format!("expected a string, got {v}"))),
        }
    }

    pub(super) fn choice(
        &mut self,
        key: &'static str,
        default: &str,
        allowed: &[&str],
    ) -> Result<String> {
        let s = self.string(key, default)?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(Error::config(
                key,
                format!("unknown value {s:?}; allowed: {}", allowed.join(", ")),
            ))
        }
    }

    pub(super) fn opt_f64_list(&mut self, key: &'static str) -> Result<Option<Vec<f64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    crate::pyjson::as_f64(v)
                        .ok_or_else(|| Error::config(key, format!("expected numbers, got {v}")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(Error::config(
                key,
                format!("expected a list of numbers, got {v}"),
            )),
        }
    }

    pub(super) fn usize_list(&mut self, key: &'static str) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_u64().map(|u| u as usize).ok_or_else(|| {
                        Error::config(key, format!("expected non-negative integers, got {v}"))
                    })
                })
                .collect(),
            Some(v) => Err(Error::config(
                key,
                format!("expected a list of integers, got {v}"),
            )),
        }
    }

    /// A key whose only supported value is its default.
    pub(super) fn default_only(&mut self, key: &'static str, default: &Value) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if v == default => Ok(()),
            Some(v) => Err(Error::config(
                key,
                format!("value {v} is not supported by diffuse; only {default} is"),
            )),
        }
    }

    /// A key whose only supported value is null / absent.
    pub(super) fn null_only(&mut self, key: &'static str) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) => Err(Error::config(
                key,
                format!("value {v} is not supported by diffuse; only null is"),
            )),
        }
    }
}
