//! Model specs: the presets of the paper and a JSON format for any size (docs/architectures.md §4).
//!
//! ```json
//! {"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,8,8,16], "num_classes": 10,
//!  "time_steps": 2, "in_channels": 3, "img_size": 16}
//! ```
//!
//! ResNets take `layers` (blocks per stage) and `planes` (per-stage widths as in the official
//! code: for the reversible nets the half width, so a stage is `2 planes` wide); transformers take
//! `depth`, `dim`, `heads`, `mlp_ratio`, `patch_size`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The model families (docs/architectures.md §4.1-4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// RevSResNet for static images (IF neurons, ATan).
    Revsresnet,
    /// RevSResNet for event frames `[B, T, 2, H, W]` (LIF tau 1.5).
    RevsresnetDvs,
    /// MS-ResNet, the non-reversible counterpart.
    Msresnet,
    MsresnetDvs,
    /// RevSFormer (reversible Spikingformer).
    Revsformer,
    RevsformerDvs,
    /// Spikingformer, the non-reversible counterpart.
    Spikingformer,
    SpikingformerDvs,
}

/// The name a spec file gives the family (`revsresnet-dvs`, ...).
impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).expect("an arch serialises");
        f.write_str(name.as_str().unwrap_or_default())
    }
}

impl Arch {
    pub fn is_reversible(self) -> bool {
        matches!(
            self,
            Arch::Revsresnet | Arch::RevsresnetDvs | Arch::Revsformer | Arch::RevsformerDvs
        )
    }

    pub fn is_dvs(self) -> bool {
        matches!(
            self,
            Arch::RevsresnetDvs | Arch::MsresnetDvs | Arch::RevsformerDvs | Arch::SpikingformerDvs
        )
    }

    pub fn is_resnet(self) -> bool {
        matches!(
            self,
            Arch::Revsresnet | Arch::RevsresnetDvs | Arch::Msresnet | Arch::MsresnetDvs
        )
    }

    /// The number of stages a ResNet of this family has (CIFAR 4, DVS 3).
    pub fn stages(self) -> usize {
        if self.is_dvs() { 3 } else { 4 }
    }
}

/// A model, fully described.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub arch: Arch,
    pub num_classes: usize,
    pub time_steps: usize,
    pub in_channels: usize,
    pub img_size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planes: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_ratio: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<usize>,
}

/// The sizes of a ResNet spec, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetSizes {
    pub layers: Vec<usize>,
    pub planes: Vec<usize>,
}

/// The sizes of a transformer spec, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransformerSizes {
    pub depth: usize,
    pub dim: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub patch_size: usize,
}

/// The largest value each size may take: far above every model of the paper (docs/architectures.md
/// §4), far below sizes whose element counts overflow or no machine holds. What fits is decided
/// later against the memory available (`crate::footprint`).
pub const LIMITS: &[(&str, usize)] = &[
    ("num_classes", 1_000_000),
    ("time_steps", 10_000),
    ("in_channels", 4_096),
    ("img_size", 8_192),
    ("layers", 4_096),
    ("planes", 65_536),
    ("depth", 4_096),
    ("dim", 65_536),
    ("heads", 4_096),
    ("mlp_ratio", 64),
    ("patch_size", 8_192),
];

/// Every preset name, in the order `revsnn summary` lists them.
pub const PRESETS: &[&str] = &[
    "revsresnet21",
    "revsresnet37",
    "revsresnet109",
    "revsresnet24",
    "msresnet18",
    "msresnet34",
    "msresnet104",
    "msresnet20",
    "revsformer-2-384",
    "revsformer-4-384",
    "revsformer-2-256",
    "spikingformer-2-384",
    "spikingformer-4-384",
    "spikingformer-2-256",
];

fn resnet(arch: Arch, layers: &[usize], planes: &[usize]) -> ModelSpec {
    let dvs = arch.is_dvs();
    ModelSpec {
        arch,
        num_classes: if dvs { 10 } else { 100 },
        time_steps: if dvs { 10 } else { 4 },
        in_channels: if dvs { 2 } else { 3 },
        img_size: if dvs { 128 } else { 32 },
        layers: Some(layers.to_vec()),
        planes: Some(planes.to_vec()),
        depth: None,
        dim: None,
        heads: None,
        mlp_ratio: None,
        patch_size: None,
    }
}

fn transformer(arch: Arch, depth: usize, dim: usize) -> ModelSpec {
    let dvs = arch.is_dvs();
    ModelSpec {
        arch,
        num_classes: if dvs { 10 } else { 100 },
        time_steps: if dvs { 10 } else { 4 },
        in_channels: if dvs { 2 } else { 3 },
        img_size: if dvs { 128 } else { 32 },
        layers: None,
        planes: None,
        depth: Some(depth),
        dim: Some(dim),
        // CIFAR-100 runs use 8 heads (CIFAR-10: 12); the DVS models 16 (docs/architectures.md §4.0, 4.5).
        heads: Some(if dvs { 16 } else { 8 }),
        mlp_ratio: Some(4),
        patch_size: Some(if dvs { 16 } else { 4 }),
    }
}

impl ModelSpec {
    /// The spec of a preset (docs/architectures.md §4.1-4.5): CIFAR models with their official 100-class heads
    /// and T = 4; DVS models with 10 classes (CIFAR10-DVS) and T = 10.
    pub fn preset(name: &str) -> Result<ModelSpec> {
        const REV: [usize; 4] = [64, 128, 256, 448];
        const MS: [usize; 4] = [64, 128, 256, 512];
        Ok(match name {
            "revsresnet21" => resnet(Arch::Revsresnet, &[1, 1, 1, 1], &REV),
            "revsresnet37" => resnet(Arch::Revsresnet, &[1, 2, 3, 2], &REV),
            "revsresnet109" => resnet(Arch::Revsresnet, &[2, 4, 16, 4], &REV),
            "revsresnet24" => resnet(Arch::RevsresnetDvs, &[1, 2, 2], &[16, 32, 48]),
            "msresnet18" => resnet(Arch::Msresnet, &[2, 2, 2, 2], &MS),
            "msresnet34" => resnet(Arch::Msresnet, &[3, 4, 6, 3], &MS),
            "msresnet104" => resnet(Arch::Msresnet, &[3, 8, 32, 8], &MS),
            "msresnet20" => resnet(Arch::MsresnetDvs, &[3, 3, 3], &[16, 32, 64]),
            "revsformer-2-384" => transformer(Arch::Revsformer, 2, 384),
            "revsformer-4-384" => transformer(Arch::Revsformer, 4, 384),
            "revsformer-2-256" => transformer(Arch::RevsformerDvs, 2, 256),
            "spikingformer-2-384" => transformer(Arch::Spikingformer, 2, 384),
            "spikingformer-4-384" => transformer(Arch::Spikingformer, 4, 384),
            "spikingformer-2-256" => transformer(Arch::SpikingformerDvs, 2, 256),
            other => {
                return Err(Error::Spec(format!(
                    "unknown preset {other:?}; the presets are {}",
                    PRESETS.join(", ")
                )));
            }
        })
    }

    /// Parses and validates a JSON spec.
    pub fn from_json(text: &str) -> Result<ModelSpec> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| Error::Spec(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Reads, parses and validates a JSON spec file; errors name the file.
    pub fn read(path: &std::path::Path) -> Result<ModelSpec> {
        let file_error = |detail: String| Error::File {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| file_error(format!("cannot read the spec: {e}")))?;
        ModelSpec::from_json(&text).map_err(|e| file_error(e.to_string()))
    }

    /// Checks every field for the spec's family: positive sizes, fields of the other family
    /// absent, ResNets with one width per stage, transformers with `dim` divisible by `heads` and
    /// by 8 (the tokenizer's first width is `dim / 8`), image sizes the strided layers divide.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Spec(message));
        for (name, value) in [
            ("num_classes", self.num_classes),
            ("time_steps", self.time_steps),
            ("in_channels", self.in_channels),
            ("img_size", self.img_size),
        ] {
            if value == 0 {
                return fail(format!("{name} must be >= 1"));
            }
        }
        self.check_limits()?;
        if self.arch.is_resnet() {
            self.resnet_sizes().map(|_| ())
        } else {
            self.transformer_sizes().map(|_| ())
        }
        .or_else(|e| {
            fail(format!(
                "{:?}: {}",
                self.arch,
                e.to_string().trim_start_matches("invalid model spec: ")
            ))
        })
    }

    /// Every size within [`LIMITS`].
    fn check_limits(&self) -> Result<()> {
        let sizes = [
            ("num_classes", vec![self.num_classes]),
            ("time_steps", vec![self.time_steps]),
            ("in_channels", vec![self.in_channels]),
            ("img_size", vec![self.img_size]),
            ("layers", self.layers.clone().unwrap_or_default()),
            ("planes", self.planes.clone().unwrap_or_default()),
            ("depth", self.depth.into_iter().collect()),
            ("dim", self.dim.into_iter().collect()),
            ("heads", self.heads.into_iter().collect()),
            ("mlp_ratio", self.mlp_ratio.into_iter().collect()),
            ("patch_size", self.patch_size.into_iter().collect()),
        ];
        for ((name, values), (_, limit)) in sizes.iter().zip(LIMITS) {
            if let Some(value) = values.iter().find(|&&v| v > *limit) {
                return Err(Error::Spec(format!(
                    "{name} {value} is above the limit {limit}; lower it"
                )));
            }
        }
        Ok(())
    }

    /// The ResNet sizes, or why this spec has none.
    pub fn resnet_sizes(&self) -> Result<ResNetSizes> {
        let fail = |message: String| Err(Error::Spec(message));
        if !self.arch.is_resnet() {
            return fail("not a ResNet spec".into());
        }
        if self.depth.is_some()
            || self.dim.is_some()
            || self.heads.is_some()
            || self.mlp_ratio.is_some()
            || self.patch_size.is_some()
        {
            return fail(
                "ResNets take layers and planes, not depth, dim, heads, mlp_ratio or patch_size"
                    .into(),
            );
        }
        let (Some(layers), Some(planes)) = (&self.layers, &self.planes) else {
            return fail(
                "ResNets need layers (blocks per stage) and planes (widths per stage)".into(),
            );
        };
        let stages = self.arch.stages();
        if layers.len() != stages || planes.len() != stages {
            return fail(format!(
                "layers and planes need {stages} entries (one per stage), got {} and {}",
                layers.len(),
                planes.len()
            ));
        }
        if layers.contains(&0) || planes.contains(&0) {
            return fail("every stage needs >= 1 block and a width >= 1".into());
        }
        // CIFAR: 3 stride-2 downsamples; DVS: stride-2 stem, pool, 2 downsamples.
        let reduction = if self.arch.is_dvs() { 16 } else { 8 };
        if self.img_size < reduction {
            return fail(format!("img_size must be >= {reduction} for this family"));
        }
        Ok(ResNetSizes {
            layers: layers.clone(),
            planes: planes.clone(),
        })
    }

    /// The transformer sizes, or why this spec has none.
    pub fn transformer_sizes(&self) -> Result<TransformerSizes> {
        let fail = |message: String| Err(Error::Spec(message));
        if self.arch.is_resnet() {
            return fail("not a transformer spec".into());
        }
        if self.layers.is_some() || self.planes.is_some() {
            return fail("transformers take depth, dim, heads, mlp_ratio and patch_size, not layers or planes".into());
        }
        let (Some(depth), Some(dim), Some(heads), Some(mlp_ratio), Some(patch_size)) = (
            self.depth,
            self.dim,
            self.heads,
            self.mlp_ratio,
            self.patch_size,
        ) else {
            return fail("transformers need depth, dim, heads, mlp_ratio and patch_size".into());
        };
        if depth == 0 || dim == 0 || heads == 0 || mlp_ratio == 0 {
            return fail("depth, dim, heads and mlp_ratio must be >= 1".into());
        }
        if dim % heads != 0 {
            return fail(format!("dim {dim} is not divisible by heads {heads}"));
        }
        if dim % 8 != 0 {
            return fail(format!(
                "dim {dim} is not divisible by 8 (the tokenizer starts at dim / 8)"
            ));
        }
        // The tokenizer pools twice (CIFAR) or four times (DVS) by 2: the token grid is
        // img_size / patch_size with patch_size = 4 or 16.
        let expected_patch = if self.arch.is_dvs() { 16 } else { 4 };
        if patch_size != expected_patch {
            return fail(format!(
                "patch_size must be {expected_patch} for this family (the tokenizer's pools fix it)"
            ));
        }
        if !self.img_size.is_multiple_of(patch_size) {
            return fail(format!(
                "img_size {} is not divisible by patch_size {patch_size}",
                self.img_size
            ));
        }
        Ok(TransformerSizes {
            depth,
            dim,
            heads,
            mlp_ratio,
            patch_size,
        })
    }

    /// The input shape of one sample: `[C, H, W]` for static images, `[T, C, H, W]` for events.
    pub fn sample_shape(&self) -> Vec<usize> {
        if self.arch.is_dvs() {
            vec![
                self.time_steps,
                self.in_channels,
                self.img_size,
                self.img_size,
            ]
        } else {
            vec![self.in_channels, self.img_size, self.img_size]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_round_trips_through_json() {
        for name in PRESETS {
            let spec = ModelSpec::preset(name).unwrap();
            spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(ModelSpec::from_json(&json).unwrap(), spec, "{name}");
        }
    }

    #[test]
    fn the_issue_example_parses() {
        let spec = ModelSpec::from_json(
            r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,8,8,16], "num_classes": 10,
                "time_steps": 2, "in_channels": 3, "img_size": 16}"#,
        )
        .unwrap();
        assert_eq!(spec.resnet_sizes().unwrap().planes, vec![4, 8, 8, 16]);
    }

    #[test]
    fn invalid_specs_are_errors_that_say_why() {
        let cases = [
            (
                r#"{"arch":"revsformer","num_classes":10,"time_steps":2,"in_channels":3,"img_size":16,"depth":1,"dim":20,"heads":3,"mlp_ratio":4,"patch_size":4}"#,
                "divisible by heads",
            ),
            (
                r#"{"arch":"revsformer","num_classes":10,"time_steps":2,"in_channels":3,"img_size":16,"depth":1,"dim":12,"heads":3,"mlp_ratio":4,"patch_size":4}"#,
                "divisible by 8",
            ),
            (
                r#"{"arch":"revsresnet","num_classes":10,"time_steps":2,"in_channels":3,"img_size":16,"layers":[],"planes":[]}"#,
                "4 entries",
            ),
            (
                r#"{"arch":"msresnet","num_classes":0,"time_steps":2,"in_channels":3,"img_size":16,"layers":[1,1,1,1],"planes":[1,1,1,1]}"#,
                "num_classes",
            ),
            (
                r#"{"arch":"msresnet","num_classes":3,"time_steps":2,"in_channels":3,"img_size":16,"layers":[1,0,1,1],"planes":[1,1,1,1]}"#,
                ">= 1 block",
            ),
            (
                r#"{"arch":"revsresnet","num_classes":10,"time_steps":2,"in_channels":3,"img_size":16,"layers":[1,1,1,1],"planes":[4,8,8,16000000000]}"#,
                "planes 16000000000 is above the limit 65536",
            ),
            (
                r#"{"arch":"revsresnet","num_classes":10,"time_steps":2,"in_channels":3,"img_size":1000000,"layers":[1,1,1,1],"planes":[4,8,8,16]}"#,
                "img_size 1000000 is above the limit 8192",
            ),
            (
                r#"{"arch":"revsformer","num_classes":10,"time_steps":2,"in_channels":3,"img_size":16,"depth":1000000000,"dim":64,"heads":8,"mlp_ratio":4,"patch_size":4}"#,
                "depth 1000000000 is above the limit 4096",
            ),
            (
                r#"{"arch":"revsresnet","num_classes":10,"time_steps":1000000000,"in_channels":3,"img_size":16,"layers":[1,1,1,1],"planes":[4,8,8,16]}"#,
                "time_steps 1000000000 is above the limit 10000",
            ),
            (
                r#"{"arch":"resnet","num_classes":3,"time_steps":2,"in_channels":3,"img_size":16}"#,
                "unknown variant",
            ),
            (
                r#"{"arch":"msresnet","num_classes":3,"time_steps":2,"in_channels":3,"img_size":16,"layers":[1,1,1,1],"planes":[1,1,1,1],"colour":1}"#,
                "unknown field",
            ),
        ];
        for (json, expected) in cases {
            let message = ModelSpec::from_json(json).unwrap_err().to_string();
            assert!(message.contains(expected), "{json}: {message}");
        }
        assert!(
            ModelSpec::preset("resnet50")
                .unwrap_err()
                .to_string()
                .contains("revsresnet21")
        );
    }
}
