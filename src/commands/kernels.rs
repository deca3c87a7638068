//! `revsnn kernels`: compiles every CUDA kernel file for each architecture asked for into the
//! kernel cache, so that the commands after it, here or on a machine that is given the folder,
//! start without NVRTC compiles (gpu/README.md §"The kernel cache"). It needs NVRTC, not a GPU.

use clap::Args;
use revsnn_gpu::compiler::{self, Target};
use revsnn_gpu::kernel_cache::{FilledImage, ImageSource, KernelCache};
use revsnn_gpu::{CudaStatus, kernels};
use serde_json::json;

use crate::error::{Error, Result};

/// The arguments of `revsnn kernels`.
#[derive(Clone, Debug, Args)]
pub struct KernelsArgs {
    /// The GPU architectures to compile for, comma-separated, each `sm_XY` (sm_90: H100 and
    /// H200; sm_80: A100) or `X.Y`; default: CUDA device 0's.
    #[arg(long, value_delimiter = ',')]
    arch: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The images of one architecture's kernel files, as [`KernelCache::fill`] left them.
struct Filled {
    target: Target,
    images: Vec<FilledImage>,
}

impl KernelsArgs {
    /// Runs `revsnn kernels`.
    pub fn run(&self) -> Result<()> {
        let cache = KernelCache::from_env().ok_or_else(|| {
            Error::Usage(
                "the kernel cache is off (REVSNN_KERNEL_CACHE=off, or no home folder): set \
                 REVSNN_KERNEL_CACHE to the folder to fill"
                    .into(),
            )
        })?;
        let filled = self
            .targets()?
            .into_iter()
            .map(|target| {
                let images = cache.fill(kernels::ALL, target).map_err(Error::Kernels)?;
                Ok(Filled { target, images })
            })
            .collect::<Result<Vec<_>>>()?;
        let (nvrtc_major, nvrtc_minor) = compiler::nvrtc_version().map_err(Error::Kernels)?;
        let nvrtc = format!("{nvrtc_major}.{nvrtc_minor}");
        if self.json {
            println!("{}", report_json(&cache, &nvrtc, &filled));
        } else {
            print!("{}", report_text(&cache, &nvrtc, &filled));
        }
        Ok(())
    }

    /// The CUBIN targets `--arch` names, each once in the order given, or device 0's.
    fn targets(&self) -> Result<Vec<Target>> {
        let architectures = match self.arch.is_empty() {
            true => vec![device_architecture()?],
            false => self
                .arch
                .iter()
                .map(|arch| parse_architecture(arch))
                .collect::<Result<Vec<_>>>()?,
        };
        let mut targets = Vec::new();
        for (major, minor) in architectures {
            let target = Target::Cubin { major, minor };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        Ok(targets)
    }
}

/// `sm_90`, `sm_100` or `9.0` -> `(major, minor)`: the minor version is the last digit of the
/// `sm_` form, as in NVRTC's names.
fn parse_architecture(arch: &str) -> Result<(i32, i32)> {
    let number = |digits: &str| {
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<i32>().ok())
            .flatten()
    };
    let parsed = match arch.strip_prefix("sm_") {
        Some(digits) if digits.len() >= 2 => {
            let (major, minor) = digits.split_at(digits.len() - 1);
            number(major).zip(number(minor))
        }
        Some(_) => None,
        None => arch
            .split_once('.')
            .and_then(|(major, minor)| number(major).zip(number(minor))),
    };
    parsed.filter(|&(major, _)| major > 0).ok_or_else(|| {
        Error::Usage(format!(
            "--arch {arch:?} is not a GPU architecture: give sm_XY or X.Y, e.g. sm_90 (H100, \
             H200) or sm_80 (A100)"
        ))
    })
}

/// CUDA device 0's compute capability, or why there is none to take it from.
fn device_architecture() -> Result<(i32, i32)> {
    match revsnn_gpu::probe() {
        CudaStatus::Available(info) => Ok(info.compute_capability),
        CudaStatus::Unavailable(reason) => Err(Error::Usage(format!(
            "no CUDA device to take the architecture from ({reason}): give --arch sm_XY, e.g. \
             sm_90 for H100 and H200"
        ))),
    }
}

fn source_name(source: ImageSource) -> &'static str {
    match source {
        ImageSource::Cached => "cached",
        ImageSource::Compiled => "compiled",
    }
}

fn report_json(cache: &KernelCache, nvrtc: &str, filled: &[Filled]) -> serde_json::Value {
    let images: Vec<_> = filled
        .iter()
        .flat_map(|Filled { target, images }| {
            images.iter().map(move |image| {
                json!({"architecture": target.architecture(), "file": image.file,
                       "source": source_name(image.source), "bytes": image.bytes,
                       "seconds": image.seconds})
            })
        })
        .collect();
    json!({"folder": cache.folder(), "nvrtc": nvrtc, "kernels": images})
}

fn report_text(cache: &KernelCache, nvrtc: &str, filled: &[Filled]) -> String {
    let mut text = format!(
        "kernel cache {} (NVRTC {nvrtc})\n",
        cache.folder().display()
    );
    for Filled { target, images } in filled {
        text += &format!("{}: {} kernel files\n", target.architecture(), images.len());
        for image in images {
            text += &format!(
                "  {:<16} {:<8} {:>8.1} KiB {:>7.2} s\n",
                image.file,
                source_name(image.source),
                image.bytes as f64 / 1024.0,
                image.seconds
            );
        }
    }
    let images: Vec<&FilledImage> = filled.iter().flat_map(|f| &f.images).collect();
    let compiled = images
        .iter()
        .filter(|image| image.source == ImageSource::Compiled)
        .count();
    let seconds: f64 = images.iter().map(|image| image.seconds).sum();
    text += &format!(
        "{compiled} compiled, {} already cached, {seconds:.1} s\n",
        images.len() - compiled
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_parse_in_both_forms_and_anything_else_is_refused() {
        for (arch, expected) in [
            ("sm_90", (9, 0)),
            ("sm_80", (8, 0)),
            ("sm_86", (8, 6)),
            ("sm_100", (10, 0)),
            ("sm_120", (12, 0)),
            ("9.0", (9, 0)),
            ("10.0", (10, 0)),
        ] {
            assert_eq!(parse_architecture(arch).unwrap(), expected, "{arch}");
        }
        for bad in [
            "",
            "90",
            "sm_9",
            "sm_",
            "sm_9a",
            "compute_90",
            "9.",
            ".0",
            "0.0",
            "sm_+9",
        ] {
            let error = parse_architecture(bad).unwrap_err().to_string();
            assert!(error.contains("sm_90"), "{bad}: {error}");
        }
    }
}
