//! `revsnn info`: the version, the CPU threads and whether CUDA can be used (and why not).

use clap::Args;

use crate::error::Result;

/// The arguments of `revsnn info`.
#[derive(Clone, Debug, Args)]
pub struct InfoArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl InfoArgs {
    /// Runs `revsnn info`.
    pub fn run(&self) -> Result<()> {
        let info = crate::info::machine_info();
        if self.json {
            println!("{}", info.to_json());
        } else {
            println!("{info}");
        }
        Ok(())
    }
}
