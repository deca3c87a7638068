//! The settings as a TOML file: read, with errors that name the key and the section it belongs
//! in, and written (docs/recipes.md; `config.toml` of a run folder).

use std::path::Path;

use super::GivenSettings;
use crate::error::{Error, Result};

impl GivenSettings {
    /// Parses a config file's text; `path` names it in errors and anchors its relative paths.
    pub fn from_toml(text: &str, path: &Path) -> Result<GivenSettings> {
        let mut settings: GivenSettings = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| key_at(text, span.start));
            let named = key
                .as_ref()
                .map_or(String::new(), |key| format!(" (key `{key}`)"));
            let section = key
                .as_deref()
                .and_then(misplaced_in)
                .map_or(String::new(), |section| {
                    format!("; that key belongs in the [{section}] section")
                });
            Error::File {
                path: path.display().to_string(),
                detail: format!(
                    "not a revsnn train config{named}; `revsnn train --help` lists the keys \
                     (flags with `_` for `-`): {}{section}",
                    e.to_string().trim_end()
                ),
            }
        })?;
        let folder = path.parent().unwrap_or(Path::new(""));
        for relative in [
            &mut settings.spec,
            &mut settings.initial_checkpoint,
            &mut settings.data_dir,
            &mut settings.out,
        ]
        .into_iter()
        .flatten()
        {
            if relative.is_relative() {
                *relative = folder.join(&*relative);
            }
        }
        Ok(settings)
    }

    /// Reads a config file.
    pub fn read(path: &Path) -> Result<GivenSettings> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.display().to_string(),
            detail: format!("cannot read the config file: {e}"),
        })?;
        GivenSettings::from_toml(&text, path)
    }

    /// The settings as a config file.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(toml_error)
    }

    /// The settings as a TOML table.
    pub(super) fn to_table(&self) -> Result<toml::Table> {
        toml::Table::try_from(self).map_err(toml_error)
    }
}

/// The section of the settings (`optimizer`, `schedule`, `augment`, `loader`) that has the last
/// part of the dotted `key`, where `key` puts it elsewhere (`lr` at the top, `optimizer.gamma`);
/// read from the default run's resolved settings, where every key is present.
fn misplaced_in(key: &str) -> Option<String> {
    let (written_in, name) = key.rsplit_once('.').unwrap_or(("", key));
    let table = GivenSettings::default()
        .resolve()
        .ok()?
        .to_given()
        .to_table()
        .ok()?;
    let section = table
        .into_iter()
        .find_map(|(section, value)| value.as_table()?.contains_key(name).then_some(section))?;
    (section != written_in).then_some(section)
}

/// The key, with its table (`optimizer.lr`), of the `key = value` line of `text` that holds byte
/// `offset`; `None` on a line without one.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}

/// Why settings cannot be TOML: only a seed >= 2^63 (TOML integers are signed 64-bit).
fn toml_error(error: toml::ser::Error) -> Error {
    Error::Usage(format!(
        "the settings cannot be written as TOML ({error}); a seed must be below 2^63"
    ))
}

/// The `precision` key as its name (`"bf16"`), parsed back with the list of valid names on a bad
/// one.
pub(super) mod precision_key {
    use revsnn_reference::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        precision: &Option<Precision>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match precision {
            Some(precision) => serializer.serialize_str(precision.name()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Precision>, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map(Some).map_err(serde::de::Error::custom)
    }
}
