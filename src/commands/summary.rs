//! `revsnn summary`: the layer table and total parameters of a model.

use clap::Args;
use revsnn_reference::Cpu;
use serde_json::json;

use super::ModelArgs;
use crate::error::Result;
use crate::footprint;
use crate::model::{BuildOptions, EntryKind};
use crate::network::Network;
use crate::spec::ModelSpec;

/// One module of the table: the entries sharing a name prefix.
#[derive(Debug, PartialEq)]
pub struct ModuleRow {
    pub name: String,
    pub tensors: Vec<(String, Vec<usize>, EntryKind)>,
    pub parameters: usize,
}

/// The modules of a model in `state_dict` order, and its total parameter count.
pub fn summarize(args: &ModelArgs) -> Result<(String, ModelSpec, Vec<ModuleRow>, usize)> {
    let (name, spec) = args.resolve()?;
    let backend = Cpu::<f32>::new();
    footprint::check_parameters(&backend, &spec)?;
    let network = Network::new(&backend, &spec, 0, BuildOptions::default())?;
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

/// The arguments of `revsnn summary`.
#[derive(Clone, Debug, Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object (with "parameters").
    #[arg(long)]
    pub json: bool,
}

impl SummaryArgs {
    /// Runs `revsnn summary`: prints the table, or one JSON object with `parameters`.
    pub fn run(&self) -> Result<()> {
        let (name, spec, rows, total) = summarize(&self.model)?;
        if self.json {
            print_json(&name, &spec, &rows, total);
        } else {
            print_table(&name, &spec, &rows, total);
        }
        Ok(())
    }
}

fn print_json(name: &str, spec: &ModelSpec, rows: &[ModuleRow], total: usize) {
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
}

fn print_table(name: &str, spec: &ModelSpec, rows: &[ModuleRow], total: usize) {
    println!(
        "{name}: {:?}, {} classes, T = {}, input {:?}",
        spec.arch,
        spec.num_classes,
        spec.time_steps,
        spec.sample_shape()
    );
    println!("{:<60} {:>12}  tensors", "module", "parameters");
    for row in rows {
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
}
