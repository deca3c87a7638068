//! Invertibility and reversible-vs-BPTT gradients of whole models, over random small specs of
//! every reversible family (proptest): the exact coupling reconstructs every block input bit for
//! bit and its gradients equal stored-activation backpropagation bit for bit (f32 and f64); the
//! float coupling in f64 reconstructs within 1e-12 and its gradients agree within 1e-10; no spike
//! flips between forward and recompute; finite differences on the smooth model within 1e-6.

use proptest::prelude::*;
use revsnn::commands::verify::verify;
use revsnn::model::reversible::Coupling;
use revsnn::spec::{Arch, ModelSpec};
use revsnn_reference::DType;

fn small_spec(
    arch: Arch,
    time_steps: usize,
    width: usize,
    blocks: usize,
    classes: usize,
) -> ModelSpec {
    let dvs = arch.is_dvs();
    let mut spec = ModelSpec {
        arch,
        num_classes: classes,
        time_steps,
        in_channels: if dvs { 2 } else { 3 },
        img_size: if dvs { 16 } else { 8 },
        layers: None,
        planes: None,
        depth: None,
        dim: None,
        heads: None,
        mlp_ratio: None,
        patch_size: None,
    };
    if arch.is_resnet() {
        let stages = arch.stages();
        spec.layers = Some(
            (0..stages)
                .map(|i| if i == 1 { blocks } else { 1 })
                .collect(),
        );
        spec.planes = Some((0..stages).map(|i| width + i).collect());
    } else {
        spec.depth = Some(blocks);
        spec.dim = Some(8 * width);
        spec.heads = Some(2);
        spec.mlp_ratio = Some(2);
        spec.patch_size = Some(if dvs { 16 } else { 4 });
    }
    spec
}

fn reversible_arch() -> impl Strategy<Value = Arch> {
    prop_oneof![
        Just(Arch::Revsresnet),
        Just(Arch::RevsresnetDvs),
        Just(Arch::Revsformer),
        Just(Arch::RevsformerDvs)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn exact_coupling_is_bitwise_invertible_and_equals_bptt(
        arch in reversible_arch(),
        time_steps in 1usize..5,
        width in prop::sample::select(vec![1usize, 2, 3]),
        blocks in 1usize..3,
        seed in 0u64..1000,
        f64_type in any::<bool>(),
    ) {
        let spec = small_spec(arch, time_steps, width, blocks, 3);
        let dtype = if f64_type { DType::F64 } else { DType::F32 };
        let report = verify(&spec, dtype, Coupling::Exact, seed, 2, 4).unwrap();
        prop_assert_eq!(report.reconstruction_max_rel_err, 0.0);
        prop_assert_eq!(report.spike_flips, 0);
        prop_assert!(report.spikes_compared > 0);
        prop_assert_eq!(report.grad_max_rel_err_vs_bptt, 0.0);
        prop_assert!(report.fd_max_rel_err <= 1e-6, "fd {}", report.fd_max_rel_err);
        prop_assert!(report.passed);
    }

    #[test]
    fn float_coupling_reconstructs_within_1e_12_and_matches_bptt(
        arch in reversible_arch(),
        time_steps in 1usize..5,
        width in prop::sample::select(vec![1usize, 2, 3]),
        blocks in 1usize..3,
        seed in 0u64..1000,
    ) {
        let spec = small_spec(arch, time_steps, width, blocks, 3);
        let report = verify(&spec, DType::F64, Coupling::Float, seed, 2, 4).unwrap();
        prop_assert!(report.reconstruction_max_rel_err <= 1e-12, "{}", report.reconstruction_max_rel_err);
        prop_assert_eq!(report.spike_flips, 0);
        prop_assert!(report.grad_max_rel_err_vs_bptt <= 1e-10, "{}", report.grad_max_rel_err_vs_bptt);
        prop_assert!(report.passed);
    }
}

#[test]
fn non_reversible_models_pass_their_finite_difference_check() {
    for arch in [
        Arch::Msresnet,
        Arch::MsresnetDvs,
        Arch::Spikingformer,
        Arch::SpikingformerDvs,
    ] {
        let report = verify(
            &small_spec(arch, 2, 2, 1, 4),
            DType::F64,
            Coupling::Float,
            7,
            2,
            6,
        )
        .unwrap();
        assert!(report.passed, "{arch:?}: {report:?}");
        assert_eq!(report.spikes_compared, 0, "no reversible sequence to audit");
    }
}
