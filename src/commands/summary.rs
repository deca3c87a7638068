//! `revsnn summary`: the layer table and total parameters of a model.

use revsnn_reference::Cpu;
use serde_json::json;

use super::ModelArgs;
use crate::error::Result;
use crate::model::{BuildOptions, EntryKind};
use crate::network::Network;

/// One module of the table: the entries sharing a name prefix.
#[derive(Debug, PartialEq)]
pub struct ModuleRow {
    pub name: String,
    pub tensors: Vec<(String, Vec<usize>, EntryKind)>,
    pub parameters: usize,
}

/// The modules of a model in `state_dict` order, and its total parameter count.
pub fn summarize(
    args: &ModelArgs,
) -> Result<(String, crate::spec::ModelSpec, Vec<ModuleRow>, usize)> {
    let (name, spec) = args.resolve()?;
    let network = Network::new(&Cpu::<f32>::new(), &spec, 0, BuildOptions::default())?;
    let mut rows: Vec<ModuleRow> = Vec::new();
    for entry in network.store.entries() {
        let (module, leaf) = entry.name.rsplit_once('.').unwrap_or(("", &entry.name));
        let count = if entry.kind == EntryKind::Parameter {
            entry.shape.iter().product()
        } else {
            0
        };
        match rows.last_mut() {
            Some(row) if row.name == module => {
                row.tensors
                    .push((leaf.to_string(), entry.shape.clone(), entry.kind));
                row.parameters += count;
            }
            _ => rows.push(ModuleRow {
                name: module.to_string(),
                tensors: vec![(leaf.to_string(), entry.shape.clone(), entry.kind)],
                parameters: count,
            }),
        }
    }
    let total = network.store.parameter_count();
    Ok((name, spec, rows, total))
}

/// Prints the summary as a table, or as one JSON object with `parameters`.
pub fn run(args: &ModelArgs, json: bool) -> Result<()> {
    let (name, spec, rows, total) = summarize(args)?;
    if json {
        let layers: Vec<_> = rows
            .iter()
            .map(|row| {
                json!({
                    "name": row.name,
                    "parameters": row.parameters,
                    "tensors": row.tensors.iter().map(|(leaf, shape, _)| json!({"name": leaf, "shape": shape})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"model": name, "spec": spec, "parameters": total, "layers": layers})
        );
        return Ok(());
    }
    println!(
        "{name}: {:?}, {} classes, T = {}, input {:?}",
        spec.arch,
        spec.num_classes,
        spec.time_steps,
        spec.sample_shape()
    );
    println!("{:<60} {:>12}  tensors", "module", "parameters");
    for row in &rows {
        let tensors: Vec<String> = row
            .tensors
            .iter()
            .map(|(leaf, shape, _)| format!("{leaf} {shape:?}"))
            .collect();
        println!(
            "{:<60} {:>12}  {}",
            row.name,
            row.parameters,
            tensors.join(", ")
        );
    }
    println!("total parameters: {total}");
    Ok(())
}
