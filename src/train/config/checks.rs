//! The checks of single knobs, each error naming the config key, its flag, the value and what
//! the knob takes; and [`set`], a knob the recipe's layer has filled.

use std::fmt::Display;

use crate::error::{Error, Result};

/// The flag of config key `key`: `--` and the last part with `-` for `_` (`[optimizer] name` is
/// `--optimizer`, `[schedule] name` is `--schedule`).
pub(super) fn flag_of(key: &str) -> String {
    match key {
        "optimizer.name" => "--optimizer".into(),
        "schedule.name" => "--schedule".into(),
        _ => format!(
            "--{}",
            key.rsplit('.').next().unwrap_or(key).replace('_', "-")
        ),
    }
}

/// The error of knob `key` holding `value` where it takes `expected`.
pub(super) fn bad_setting(key: &str, value: impl Display, expected: &str) -> Error {
    Error::Setting {
        key: key.into(),
        flag: flag_of(key),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// `Ok` if `ok`, else [`bad_setting`].
pub(super) fn require(ok: bool, key: &str, value: impl Display, expected: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(bad_setting(key, value, expected))
    }
}

/// `value` if it is a number in `[low, high]`.
pub(super) fn number_in(key: &str, value: f64, low: f64, high: f64) -> Result<f64> {
    let expected = format!("a number in [{low}, {high}]");
    require((low..=high).contains(&value), key, value, &expected).map(|()| value)
}

/// `value` if it is a number in `[0, 1)`.
pub(super) fn below_one(key: &str, value: f64) -> Result<f64> {
    require(
        (0.0..1.0).contains(&value),
        key,
        value,
        "a number in [0, 1)",
    )
    .map(|()| value)
}

/// `value` if it is a finite number >= 0.
pub(super) fn non_negative(key: &str, value: f64) -> Result<f64> {
    require(
        value.is_finite() && value >= 0.0,
        key,
        value,
        "a finite number >= 0",
    )
    .map(|()| value)
}

/// `value` if it is a positive, finite number.
pub(super) fn positive_number(key: &str, value: f64) -> Result<f64> {
    require(
        value.is_finite() && value > 0.0,
        key,
        value,
        "a positive, finite number",
    )
    .map(|()| value)
}

/// `value` if it is at least 1.
pub(super) fn at_least_one(key: &str, value: usize) -> Result<usize> {
    require(value >= 1, key, value, "an integer >= 1").map(|()| value)
}

/// `value` of knob `key`, unless it is outside `1..=max`.
pub(super) fn between(key: &str, value: usize, max: usize) -> Result<usize> {
    let expected = format!("an integer from 1 to {max}");
    require((1..=max).contains(&value), key, value, &expected).map(|()| value)
}

/// An error if knob `key` is set though what it tunes is not used (`why`).
pub(super) fn unused(key: &str, is_set: bool, why: &str) -> Result<()> {
    if is_set {
        Err(Error::Usage(format!(
            "{key} ({}) is set but {why}; remove it",
            flag_of(key)
        )))
    } else {
        Ok(())
    }
}

/// The value of a knob that the recipe's layer sets
/// ([`RecipeInput::defaults`](crate::train::recipe::RecipeInput::defaults)).
pub(super) fn set<T: Clone>(knob: &Option<T>) -> T {
    knob.clone()
        .expect("the recipe's layer sets every knob of a step that is on")
}
