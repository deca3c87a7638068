//! The memory claim of the reversible sequence (docs/reversible.md §3.3; docs/memory.md §9): the peak heap bytes of one
//! forward and backward do not grow with depth, because the forward keeps only its output and the
//! backward holds one recomputed F or G at a time; with stored activations they grow with every
//! block. Measured with the counting global allocator (`revsnn_reference::memory`) as the peak
//! above the bytes live before the step, in f32, on BasicResidualBlocks (docs/architectures.md §4.0) of
//! T 4, B 4, p 16, 16x16, where activation tensors dominate the weights and their gradients.
//!
//! The allocator's counters are process-wide, so this binary holds a single test.

use revsnn::error::Result;
use revsnn::model::build::{Builder, ConvInit};
use revsnn::model::layers::{ConvBn, ConvKind, Neuron, flatten_time, unflatten_time};
use revsnn::model::reversible::{ReversibleBlock, ReversibleOptions, ReversibleSequence, Storage};
use revsnn::model::{Grads, Layer, Mode, ParamStore, Session};
use revsnn_reference::memory::{self, CountingAllocator};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{Conv2dParams, Cpu, NeuronConfig};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const TIME_STEPS: usize = 4;
const BATCH: usize = 4;
const HALF_CHANNELS: usize = 16;
const SIZE: usize = 16;

/// BasicResidualBlock(p): `BN(Conv3x3(SN(BN(Conv3x3(SN(x))))))` over `[T, B, p, H, W]`.
struct Block {
    sn1: Neuron,
    conv1: ConvBn,
    sn2: Neuron,
    conv2: ConvBn,
}

struct BlockSaved<B: Backend> {
    sn1: B::NeuronContext,
    conv1: <ConvBn as Layer<B>>::Saved,
    sn2: B::NeuronContext,
    conv2: <ConvBn as Layer<B>>::Saved,
}

impl<B: Backend> Layer<B> for Block {
    type Saved = BlockSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let (s1, sn1) = self.sn1.forward(session, x)?;
        let (a, conv1) = self.conv1.forward(session, flatten_time(backend, &s1)?)?;
        let (s2, sn2) = self
            .sn2
            .forward(session, unflatten_time(backend, &a, TIME_STEPS)?)?;
        let (b, conv2) = self.conv2.forward(session, flatten_time(backend, &s2)?)?;
        let saved = BlockSaved {
            sn1,
            conv1,
            sn2,
            conv2,
        };
        Ok((unflatten_time(backend, &b, TIME_STEPS)?, saved))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let grad = self
            .conv2
            .backward(session, saved.conv2, flatten_time(backend, &grad_y)?)?;
        let grad = self.sn2.backward(
            session,
            saved.sn2,
            unflatten_time(backend, &grad, TIME_STEPS)?,
        )?;
        let grad = self
            .conv1
            .backward(session, saved.conv1, flatten_time(backend, &grad)?)?;
        self.sn1.backward(
            session,
            saved.sn1,
            unflatten_time(backend, &grad, TIME_STEPS)?,
        )
    }
}

type Model<B> = (ReversibleSequence<Block, Block>, ParamStore<B>);

fn build<B: Backend>(backend: &B, blocks: usize, storage: Storage) -> Result<Model<B>> {
    let p = HALF_CHANNELS;
    let mut builder = Builder::new(backend, 7);
    let conv_bn = |builder: &mut Builder<B>, prefix: String| -> Result<ConvBn> {
        builder.conv_bn(
            &format!("{prefix}.0"),
            &format!("{prefix}.1"),
            &[p, p, 3, 3],
            ConvInit::KaimingNormalFanOut,
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
        )
    };
    let block = |builder: &mut Builder<B>, prefix: String| -> Result<Block> {
        Ok(Block {
            sn1: Neuron::new(NeuronConfig::if_atan()),
            conv1: conv_bn(builder, format!("{prefix}.conv1"))?,
            sn2: Neuron::new(NeuronConfig::if_atan()),
            conv2: conv_bn(builder, format!("{prefix}.conv2"))?,
        })
    };
    let blocks = (0..blocks)
        .map(|i| {
            Ok(ReversibleBlock {
                f: block(&mut builder, format!("layer.{i}.F"))?,
                g: block(&mut builder, format!("layer.{i}.G"))?,
            })
        })
        .collect::<Result<_>>()?;
    let options = ReversibleOptions {
        storage,
        ..ReversibleOptions::default()
    };
    Ok((ReversibleSequence { blocks, options }, builder.store))
}

fn random<B: Backend>(backend: &B, shape: &[usize], seed: u64, std: f64) -> Result<B::Tensor> {
    let len = shape.iter().product();
    let values = SplitMix64::new(seed).normal_vec(len, std);
    Ok(backend.tensor_from_vec(
        shape,
        values
            .into_iter()
            .map(<B::Elem as revsnn_reference::Element>::cast)
            .collect(),
    )?)
}

/// The peak heap bytes of one training forward and backward of `blocks` blocks, above the bytes
/// live before it (model, input and `dy` included in those).
fn peak_step_bytes(blocks: usize, storage: Storage) -> Result<usize> {
    let backend = Cpu::<f32>::new();
    let (sequence, mut store) = build(&backend, blocks, storage)?;
    let shape = [TIME_STEPS, BATCH, 2 * HALF_CHANNELS, SIZE, SIZE];
    let x = random(&backend, &shape, 1, 2.0)?;
    let dy = random(&backend, &shape, 2, 1.0)?;
    let mut grads = Grads::new(store.entries().len());
    let mut session = Session::new(&backend, &mut store, &mut grads, Mode::Train);
    memory::reset_peak();
    let live_before = memory::stats().live_bytes;
    let (y, saved) = sequence.forward(&mut session, x)?;
    let grad_x = sequence.backward(&mut session, saved, dy)?;
    let peak = memory::stats().peak_bytes - live_before;
    assert_eq!(session.probes.diverged_recomputes(&backend)?, 0);
    assert_eq!(backend.shape(&y), backend.shape(&grad_x));
    Ok(peak)
}

/// Bytes of one block's parameters (and so of their gradients): four 3x3 convolutions and four
/// BatchNorm affines of width p, f32.
const BLOCK_PARAMETER_BYTES: usize =
    4 * (HALF_CHANNELS * HALF_CHANNELS * 9 + 2 * HALF_CHANNELS) * 4;

/// Bytes of the stream `[T, B, 2p, H, W]`, f32.
const STREAM_BYTES: usize = TIME_STEPS * BATCH * 2 * HALF_CHANNELS * SIZE * SIZE * 4;

/// Reversible: 1 and 4 blocks within 5%, and within 1% once the three extra blocks' parameter
/// gradients (which grow with depth as the parameters do) are set aside. Stored activations:
/// 4 blocks at least twice 1 block, and twice the reversible 4 blocks.
///
/// Everything runs on a one-thread rayon pool: with more threads the peak also holds the
/// per-task scratch (im2col columns) of whichever convolution tasks happen to run at once, which
/// varies from run to run by up to a stream tensor.
#[test]
fn reversible_peak_memory_is_flat_in_depth_and_stored_activations_grow() -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    pool.install(|| -> Result<()> {
        // Warm up (the pool's and the runtime's lazily allocated state) before measuring.
        peak_step_bytes(1, Storage::Reversible)?;
        assert!(
            memory::stats().is_counting,
            "the counting allocator is not installed"
        );

        let reversible_1 = peak_step_bytes(1, Storage::Reversible)?;
        let reversible_4 = peak_step_bytes(4, Storage::Reversible)?;
        let stored_1 = peak_step_bytes(1, Storage::StoredActivations)?;
        let stored_4 = peak_step_bytes(4, Storage::StoredActivations)?;
        eprintln!(
            "peak bytes of one step (stream tensor {STREAM_BYTES} B): reversible 1 block \
             {reversible_1}, 4 blocks {reversible_4} ({:.3}x); stored activations 1 block \
             {stored_1}, 4 blocks {stored_4} ({:.3}x)",
            reversible_4 as f64 / reversible_1 as f64,
            stored_4 as f64 / stored_1 as f64,
        );

        let apart = |a: usize, b: usize| a.abs_diff(b) as f64 / b as f64;
        assert!(
            apart(reversible_4, reversible_1) <= 0.05,
            "reversible: 4 blocks peak {reversible_4} B vs 1 block {reversible_1} B"
        );
        let activations_4 = reversible_4 - 3 * BLOCK_PARAMETER_BYTES;
        assert!(
            apart(activations_4, reversible_1) <= 0.01,
            "reversible: 4 blocks peak {reversible_4} B less 3 blocks of gradients \
             ({activations_4} B) vs 1 block {reversible_1} B"
        );
        assert!(
            stored_4 >= 2 * stored_1,
            "stored activations: 4 blocks peak {stored_4} B is not >= 2x 1 block {stored_1} B"
        );
        assert!(
            stored_4 >= 2 * reversible_4,
            "4 blocks: stored activations {stored_4} B is not >= 2x reversible {reversible_4} B"
        );
        Ok(())
    })
}
