//! Times conv2d forward + backward in f32 at the RevSResNet21 stage-1 shape (x [32, 64, 32, 32],
//! 3x3, stride 1, padding 1, 64 -> 64, no bias) and prints GFLOP/s, counting
//! 3 x 2 N C_out H_out W_out C_in k_h k_w flops (forward, input gradient, weight gradient).
//!
//! `cargo run --release -p revsnn-reference --example conv_speed [repeats]`

use std::time::Instant;

use ndarray::{ArcArray, IxDyn};
use revsnn_reference::Conv2dParams;
use revsnn_reference::ops::conv;
use revsnn_reference::testing::SplitMix64;

fn random(shape: &[usize], rng: &mut SplitMix64) -> ArcArray<f32, IxDyn> {
    let len = shape.iter().product();
    let data = (0..len).map(|_| rng.normal() as f32).collect();
    ArcArray::from_shape_vec(IxDyn(shape), data).expect("shape matches the data")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let (n, c, h, w, o, k) = (32, 64, 32, 32, 64, 3);
    let mut rng = SplitMix64::new(1);
    let x = random(&[n, c, h, w], &mut rng);
    let weight = random(&[o, c, k, k], &mut rng);
    let dy = random(&[n, o, h, w], &mut rng);
    let params = Conv2dParams::new(1, 1);
    let flops = 3.0 * 2.0 * (n * o * h * w * c * k * k) as f64;
    println!(
        "conv2d f32 x [{n}, {c}, {h}, {w}] 3x3 s1 p1 {c}->{o}, {} rayon threads",
        rayon::current_num_threads()
    );
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let start = Instant::now();
        let (y, context) = conv::forward(&x, &weight, None, params)?;
        let forward = start.elapsed().as_secs_f64();
        let grads = conv::backward(&dy, &context)?;
        let total = start.elapsed().as_secs_f64();
        std::hint::black_box((y, grads));
        best = best.min(total);
        println!(
            "forward {:.1} ms, backward {:.1} ms, total {:.1} ms: {:.1} GFLOP/s",
            forward * 1e3,
            (total - forward) * 1e3,
            total * 1e3,
            flops / total / 1e9
        );
    }
    println!("best: {:.1} GFLOP/s", flops / best / 1e9);
    Ok(())
}
