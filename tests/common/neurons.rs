//! The neuron configurations the neuron tests sweep: IF and LIF, each surrogate, with and without
//! `decay_input` and `detach_reset`, Heaviside and smooth firing.

use revsnn_reference::{Firing, NeuronConfig, NeuronKind, Surrogate};

pub fn configs() -> Vec<(&'static str, NeuronConfig)> {
    let smooth = |mut c: NeuronConfig| {
        c.firing = Firing::Smooth;
        c.detach_reset = false;
        c
    };
    vec![
        ("IF ATan", NeuronConfig::if_atan()),
        ("LIF tau 1.5", NeuronConfig::lif_sigmoid(1.5, 1.0)),
        ("LIF tau 2 V_th 0.5", NeuronConfig::lif_sigmoid(2.0, 0.5)),
        (
            "LIF no decay_input, no detach",
            NeuronConfig {
                kind: NeuronKind::Lif {
                    tau: 2.0,
                    decay_input: false,
                },
                detach_reset: false,
                ..NeuronConfig::lif_sigmoid(2.0, 1.0)
            },
        ),
        ("smooth IF ATan", smooth(NeuronConfig::if_atan())),
        (
            "smooth LIF Sigmoid(3)",
            smooth(NeuronConfig {
                surrogate: Surrogate::Sigmoid { alpha: 3.0 },
                ..NeuronConfig::lif_sigmoid(1.5, 1.0)
            }),
        ),
    ]
}
