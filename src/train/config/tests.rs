use std::path::Path;

use revsnn_reference::{AdamWParams, SgdParams};

use super::checks::flag_of;
use super::*;
use crate::data::augment::Augmentation;
use crate::optim::OptimizerKind;
use crate::spec::Arch;
use crate::train::recipe::DatasetKind;
#[test]
fn flags_name_their_keys() {
    assert_eq!(flag_of("optimizer.name"), "--optimizer");
    assert_eq!(flag_of("augment.rand_augment_n"), "--rand-augment-n");
    assert_eq!(flag_of("epochs"), "--epochs");
}

#[test]
fn the_default_run_is_the_quick_recipe_on_synthetic() {
    let config = GivenSettings::default().resolve().unwrap();
    assert_eq!(config.model.name, "revsresnet-small");
    assert_eq!(config.dataset, DatasetKind::Synthetic);
    assert_eq!((config.epochs, config.batch, config.seed), (8, 16, 0));
    assert_eq!(config.augmentation, Augmentation::NONE);
    assert_eq!(
        config.optimizer,
        OptimizerKind::Sgd(SgdParams {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 1e-4
        })
    );
    assert_eq!(
        config.out,
        Path::new("runs/revsresnet-small-synthetic-seed0")
    );
    let again = RunSettings::resolve(&config.to_given(), config.model.clone()).unwrap();
    assert_eq!(again, config);
}

#[test]
fn memory_and_bench_step_with_the_paper_optimizers() {
    let sgd = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    for arch in [Arch::Revsresnet, Arch::MsresnetDvs] {
        assert_eq!(paper_optimizer(arch).unwrap(), OptimizerKind::Sgd(sgd));
    }
    for arch in [Arch::Revsformer, Arch::SpikingformerDvs] {
        let adamw = OptimizerKind::AdamW(AdamWParams::new(5e-4, 0.06));
        assert_eq!(paper_optimizer(arch).unwrap(), adamw);
    }
}

#[test]
fn keys_of_a_step_that_is_off_are_refused() {
    let mut given = GivenSettings::default();
    given.optimizer.betas = Some(vec![0.9, 0.99]);
    let error = given.resolve().unwrap_err().to_string();
    assert!(
        error.contains("optimizer.betas") && error.contains("--betas"),
        "{error}"
    );
    let mut given = GivenSettings::default();
    given.augment.mixup_prob = Some(0.5);
    assert!(
        given
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("mixup_alpha")
    );
}
