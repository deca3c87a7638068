//! What `--resume` may change of a run's settings, and the keys a run state written before they
//! existed lacks, filled in.

use revsnn_reference::Precision;

use super::GivenSettings;
use crate::error::Result;

/// The config keys a resumed run may change: where things are and how fast, not what is
/// trained. The model's keys are checked against the run's spec instead.
pub const CHANGEABLE_ON_RESUME: &[&str] = &[
    "epochs",
    "data_dir",
    "device",
    "out",
    "loader.workers",
    "loader.prefetch",
    "loader.eval_batch",
    "model",
    "spec",
    "num_classes",
    "time_steps",
];

/// The keys set in `given` to values other than the run's (`run`, resolved settings), but for
/// those in [`CHANGEABLE_ON_RESUME`]: `(key, given value, run value)`.
pub fn changed_on_resume(
    given: &GivenSettings,
    run: &GivenSettings,
) -> Result<Vec<(String, String, String)>> {
    fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (key, value) in table {
            let key = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) => flatten(&format!("{key}."), inner, out),
                _ => out.push((key, value.clone())),
            }
        }
    }
    let keys = |settings: &GivenSettings| -> Result<Vec<(String, toml::Value)>> {
        let mut keys = Vec::new();
        flatten("", &settings.to_table()?, &mut keys);
        Ok(keys)
    };
    let run = keys(run)?;
    Ok(keys(given)?
        .into_iter()
        .filter(|(key, _)| !CHANGEABLE_ON_RESUME.contains(&key.as_str()))
        .filter_map(|(key, value)| {
            let stored = run.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
            (stored != Some(&value)).then(|| {
                let stored = stored.map_or("unset".to_string(), |v| v.to_string());
                (key, value.to_string(), stored)
            })
        })
        .collect())
}

impl GivenSettings {
    /// Sets the keys a run state written before they existed lacks to the one value such a run
    /// had: precision f32, one rank, no synchronised BatchNorm. `--resume` then accepts them
    /// given explicitly with those values.
    pub fn fill_keys_added_later(&mut self) {
        self.precision.get_or_insert(Precision::F32);
        self.ranks.get_or_insert(1);
        self.sync_bn.get_or_insert(false);
    }
}
