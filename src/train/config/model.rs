//! The model a run trains: where it comes from, its name and its spec.

use std::path::PathBuf;

use super::GivenSettings;
use crate::spec::{Arch, ModelSpec};

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
