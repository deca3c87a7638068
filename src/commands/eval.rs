//! `revsnn eval`: top-1 and top-5 accuracy (and loss) of a checkpoint on a dataset's test split.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use revsnn_reference::DType;
use serde_json::{Value, json};

use super::DeviceArg;
use super::train::resolve_model;
use crate::checkpoint::{self, TensorFile};
use crate::data::Dataset;
use crate::data::synthetic::Split;
use crate::device::{Compute, Task};
use crate::error::{Error, Result};
use crate::model::BuildOptions;
use crate::network::Network;
use crate::spec::ModelSpec;
use crate::train::{EvalResult, evaluate, open_dataset};

/// The spec saved beside `checkpoint` (`X.json` for `X.safetensors`, a run state or a bare spec).
pub fn neighbour_spec(checkpoint: &Path) -> Result<Option<ModelSpec>> {
    let path = checkpoint.with_extension("json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::File {
        path: path.display().to_string(),
        detail: format!("not JSON: {e}"),
    })?;
    let spec = value.get("spec").cloned().unwrap_or(value);
    serde_json::from_value(spec)
        .map(Some)
        .map_err(|e| Error::File {
            path: path.display().to_string(),
            detail: format!("no model spec in it: {e}; pass --model or --spec"),
        })
}

/// Runs `revsnn eval`; prints text or one JSON object.
#[allow(clippy::too_many_arguments)]
pub fn run(
    checkpoint_path: &Path,
    dataset: Option<&str>,
    data_dir: Option<&Path>,
    model: &Option<String>,
    spec: &Option<PathBuf>,
    samples: usize,
    batch: usize,
    device: DeviceArg,
    json_output: bool,
) -> Result<()> {
    let device = device.open()?;
    let weights = checkpoint::read(checkpoint_path)?;
    let (name, spec) = match (model, spec) {
        (None, None) => match neighbour_spec(checkpoint_path)? {
            Some(spec) => (checkpoint_path.display().to_string(), spec),
            None => {
                return Err(Error::Usage(format!(
                    "no {} beside the checkpoint to take the model from; pass --model or --spec",
                    checkpoint_path.with_extension("json").display()
                )));
            }
        },
        _ => resolve_model(model, spec, None, None)?,
    };
    spec.validate()?;
    let dataset = dataset.map(str::to_owned).unwrap_or_else(|| {
        if spec.arch.is_dvs() {
            "synthetic-events"
        } else {
            "synthetic"
        }
        .into()
    });
    let data = open_dataset(&dataset, data_dir, &spec, Split::Test, samples)?;
    if batch == 0 {
        return Err(Error::Usage("--batch must be >= 1".into()));
    }
    let result = device.run(
        DType::F32,
        Evaluate {
            spec: &spec,
            weights: &weights,
            data,
            batch,
        },
    )?;
    if json_output {
        println!(
            "{}",
            json!({
                "model": name,
                "device": device.name(),
                "backend": device.kind(),
                "dataset": dataset,
                "samples": result.samples,
                "loss": result.loss,
                "acc1": result.acc1,
                "acc5": result.acc5,
            })
        );
    } else {
        println!(
            "{dataset} ({} samples): top-1 {:.2}%, top-5 {:.2}%, loss {:.4}",
            result.samples,
            100.0 * result.acc1,
            100.0 * result.acc5,
            result.loss
        );
    }
    Ok(())
}

/// Builds the network on the backend, loads the weights and evaluates.
struct Evaluate<'a> {
    spec: &'a ModelSpec,
    weights: &'a TensorFile,
    data: Arc<dyn Dataset>,
    batch: usize,
}

impl Task for Evaluate<'_> {
    type Output = EvalResult;

    fn run<B: Compute>(self, backend: B) -> Result<EvalResult> {
        let mut network = Network::new(&backend, self.spec, 0, BuildOptions::default())?;
        checkpoint::load_state_dict(&backend, &mut network.store, self.weights)?;
        evaluate(&backend, &mut network, self.data, self.batch)
    }
}
