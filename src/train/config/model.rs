//! The model a run trains: where it comes from, its name and its spec, resolved from the given
//! settings ([`GivenSettings::resolve_model`], with the dataset a preset's recipe depends on).

use std::path::PathBuf;

use super::GivenSettings;
use crate::error::{Error, Result};
use crate::spec::{Arch, ModelSpec};
use crate::train::recipe::{DatasetKind, RecipeInput};

/// The model `revsnn train` trains when given none: a small RevSResNet for 32x32 RGB, 10 classes.
pub fn default_spec() -> ModelSpec {
    ModelSpec {
        arch: Arch::Revsresnet,
        num_classes: 10,
        time_steps: 2,
        in_channels: 3,
        img_size: 32,
        layers: Some(vec![1, 1, 1, 1]),
        planes: Some(vec![8, 16, 16, 32]),
        depth: None,
        dim: None,
        heads: None,
        mlp_ratio: None,
        patch_size: None,
    }
}

/// Where a run's model comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// No model named: [`default_spec`].
    Default,
    /// A preset.
    Preset(String),
    /// A JSON spec file.
    File(PathBuf),
}

/// A run's model: where it comes from, its display name and its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct RunModel {
    /// Where the model comes from.
    pub source: ModelSource,
    /// The preset, the spec file's path, or `revsresnet-small`.
    pub name: String,
    /// The spec as built: the recipe's head and time steps and the overrides applied.
    pub spec: ModelSpec,
}

impl RunModel {
    /// The model of a run whose resolved settings are `settings` and spec `spec`.
    pub fn of_run(settings: &GivenSettings, name: String, spec: ModelSpec) -> RunModel {
        let source = match (&settings.model, &settings.spec) {
            (Some(preset), _) => ModelSource::Preset(preset.clone()),
            (None, Some(path)) => ModelSource::File(path.clone()),
            (None, None) => ModelSource::Default,
        };
        RunModel { source, name, spec }
    }
}

impl GivenSettings {
    /// The dataset, by default `synthetic` (or `synthetic-events` for DVS models).
    pub(super) fn dataset_kind(&self, spec: &ModelSpec) -> Result<DatasetKind> {
        match &self.dataset {
            Some(name) => DatasetKind::from_name(name),
            None if spec.arch.is_dvs() => Ok(DatasetKind::SyntheticEvents),
            None => Ok(DatasetKind::Synthetic),
        }
    }

    /// The model these settings name, with the recipe's head and time steps for a preset
    /// (`paper`, see [`RecipeInput::preset_for_dataset`]) and `num_classes` and `time_steps` over
    /// them.
    pub fn resolve_model(&self) -> Result<RunModel> {
        let (source, name, mut spec) = match (&self.model, &self.spec) {
            (Some(_), Some(_)) => {
                return Err(Error::Usage(
                    "model and spec both name the model: keep one (in the config file, or give \
                     --model or --spec, which replaces the file's)"
                        .into(),
                ));
            }
            (Some(preset), None) => (
                ModelSource::Preset(preset.clone()),
                preset.clone(),
                ModelSpec::preset(preset)?,
            ),
            (None, Some(path)) => (
                ModelSource::File(path.clone()),
                path.display().to_string(),
                ModelSpec::read(path)?,
            ),
            (None, None) => (
                ModelSource::Default,
                "revsresnet-small".to_string(),
                default_spec(),
            ),
        };
        if matches!(source, ModelSource::Preset(_)) {
            RecipeInput {
                recipe: self.recipe.unwrap_or_default(),
                arch: spec.arch,
                dataset: self.dataset_kind(&spec)?,
            }
            .preset_for_dataset(&mut spec);
        }
        if let Some(classes) = self.num_classes {
            spec.num_classes = classes;
        }
        if let Some(steps) = self.time_steps {
            spec.time_steps = steps;
        }
        spec.validate()?;
        Ok(RunModel { source, name, spec })
    }
}
