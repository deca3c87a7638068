//! The cuDNN engine of the 2-D convolution ([`ConvEngine::Cudnn`]): the equations of
//! [`super::forward`] and [`super::backward`] (docs/conventions.md §1; docs/architectures.md §4.0) run by
//! `cudnnConvolutionForward`, `cudnnConvolutionBackwardData` and `cudnnConvolutionBackwardFilter`
//! over the NCHW tensors as they are.
//!
//! **Algorithms.** For each direction and shape, cuDNN's heuristics (`cudnnGet*Algorithm_v7`)
//! rank its algorithms; the first that is supported, flagged `CUDNN_DETERMINISTIC` and needs at
//! most [`WORKSPACE_LIMIT_BYTES`] of workspace is taken. It is remembered for that shape as a
//! [`Plan`] with its descriptors and workspace size, so a call after the first only launches. Heuristics
//! rather than timing (`cudnnFind*`), so the choice, and with it every bit of the result, is the
//! same in every run; and only deterministic algorithms, so the recomputed forward of a
//! reversible block reproduces the first one exactly. When no algorithm qualifies (or a size does
//! not fit cuDNN's 32-bit descriptors) the op runs on the im2col engine instead.
//!
//! **Math.** `f32` with TF32 off ([`GpuDevice::allow_tf32`]) runs with `CUDNN_FMA_MATH`: plain
//! f32 multiply-adds, within the tolerance classes of docs/design.md. With TF32 on it runs with the
//! math type cuDNN ranked (`CUDNN_DEFAULT_MATH` or `CUDNN_TENSOR_OP_MATH`: TF32 tensor cores), as
//! PyTorch does under `torch.backends.cudnn.allow_tf32`; algorithms that would convert to half
//! precision are never taken. `f64` runs with the default math. Under `bf16` and `fp16` the
//! tensors are 16-bit and the sums `f32` ([`DataTypes::half`]: cuDNN's `PSEUDO_BFLOAT16_CONFIG`
//! and `PSEUDO_HALF_CONFIG`), with `CUDNN_TENSOR_OP_MATH` asked (cuDNN's default math ranks
//! no tensor-core algorithm for 16-bit tensors) and the math type cuDNN ranked; the outputs are
//! 16-bit too (docs/precision.md §"Convolution outputs").
//!
//! **Workspace.** A counted [`DeviceBuffer`] of the size cuDNN asks for, freed (back to the
//! caching pool, stream-ordered) before the op returns.
//!
//! [`ConvEngine::Cudnn`]: crate::ConvEngine::Cudnn
//! [`GpuDevice::allow_tf32`]: crate::GpuDevice::allow_tf32

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::c_void;

use cudarc::cudnn::{CudnnDataType, result, sys};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};

use super::Geometry;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::memory::DeviceBuffer;
use crate::ops::precision::HalfFormat;

/// The most workspace one cuDNN convolution may use: 256 MiB. Algorithms that want more are
/// passed over for the next one cuDNN ranks.
pub const WORKSPACE_LIMIT_BYTES: usize = 256 << 20;

/// What one convolution's tensors hold and what cuDNN sums in: `f32` or `f64` throughout, or
/// 16-bit tensors summed in `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DataTypes {
    data: sys::cudnnDataType_t,
    compute: sys::cudnnDataType_t,
}

impl DataTypes {
    /// Tensors of `E` summed in `E` (`FLOAT_CONFIG`, `DOUBLE_CONFIG`).
    pub(crate) fn of<E: CudnnDataType>() -> DataTypes {
        DataTypes {
            data: E::DATA_TYPE,
            compute: E::DATA_TYPE,
        }
    }

    /// Tensors in `format` summed in `f32` (`PSEUDO_BFLOAT16_CONFIG`, `PSEUDO_HALF_CONFIG`).
    pub(crate) fn half(format: HalfFormat) -> DataTypes {
        let data = match format {
            HalfFormat::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            HalfFormat::Fp16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        };
        DataTypes {
            data,
            compute: sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        }
    }

    /// A scaling factor (`alpha`, `beta`) as cuDNN reads it through a `void` pointer: an `f64`
    /// for an `f64` computation, an `f32` otherwise.
    fn scaling(self, value: f64) -> Scaling {
        if self.compute == sys::cudnnDataType_t::CUDNN_DATA_DOUBLE {
            Scaling::F64(value)
        } else {
            Scaling::F32(value as f32)
        }
    }
}

/// A scaling factor in the type cuDNN reads it as ([`DataTypes::scaling`]).
#[derive(Clone, Copy, Debug)]
enum Scaling {
    F32(f32),
    F64(f64),
}

impl Scaling {
    fn as_ptr(&self) -> *const c_void {
        match self {
            Scaling::F32(value) => value as *const f32 as *const c_void,
            Scaling::F64(value) => value as *const f64 as *const c_void,
        }
    }
}

/// What selects an algorithm within one direction: the sizes, the data types and whether TF32
/// is allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AlgorithmKey {
    dims: Dims,
    types: DataTypes,
    tf32: bool,
}

/// An algorithm cuDNN ranked, with the math type to run it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Algorithm<A> {
    algo: A,
    math: sys::cudnnMathType_t,
}

/// How one direction runs for one [`AlgorithmKey`]: the descriptors (the convolution's math type
/// set to the algorithm's), the algorithm and the workspace bytes it needs.
#[derive(Debug)]
struct Plan<A> {
    descriptors: Descriptors,
    algo: A,
    workspace_bytes: usize,
}

/// The plans made so far for one direction (`None`: cuDNN has no algorithm that qualifies).
type Plans<A> = HashMap<AlgorithmKey, Option<Plan<A>>>;

/// A cuDNN handle on one device's stream and the plans made so far.
#[derive(Debug)]
pub(crate) struct Cudnn {
    handle: sys::cudnnHandle_t,
    forward: Plans<sys::cudnnConvolutionFwdAlgo_t>,
    backward_data: Plans<sys::cudnnConvolutionBwdDataAlgo_t>,
    backward_filter: Plans<sys::cudnnConvolutionBwdFilterAlgo_t>,
}

// SAFETY: the handle and the plans' descriptors are owned by one `GpuDevice`, which keeps them
// behind a mutex, so they are used by one thread at a time, and always with that device's context
// current and on its one stream.
unsafe impl Send for Cudnn {}

impl Cudnn {
    /// A handle on `stream`, or `LibraryMissing` when cuDNN 9 cannot be loaded.
    pub(crate) fn new(stream: &CudaStream) -> Result<Cudnn, GpuError> {
        version()?;
        stream
            .context()
            .bind_to_thread()
            .map_err(GpuError::driver("binding the context for cuDNN"))?;
        let handle = result::create_handle().map_err(GpuError::cudnn("creating a cuDNN handle"))?;
        let cudnn = Cudnn {
            handle,
            forward: HashMap::new(),
            backward_data: HashMap::new(),
            backward_filter: HashMap::new(),
        };
        // SAFETY: the handle is live; the stream outlives it (the device owns both).
        unsafe { result::set_stream(handle, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(GpuError::cudnn("setting the cuDNN stream"))?;
        Ok(cudnn)
    }
}

/// The version of the cuDNN library on the library path as `(major, minor, patch)`, or
/// `LibraryMissing` when there is none. Needs no device.
pub fn version() -> Result<(usize, usize, usize), GpuError> {
    // SAFETY: only tries to dlopen the cuDNN library.
    if !unsafe { sys::is_culib_present() } {
        return Err(GpuError::LibraryMissing {
            library: "libcudnn.so.9 (cuDNN)",
        });
    }
    // cuDNN 9 numbers its versions major * 10000 + minor * 100 + patch.
    let version = result::get_version();
    Ok((version / 10_000, version / 100 % 100, version % 100))
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed once; a failure here has no
        // one left to report to.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// `y (+)= conv(x, w)` through cuDNN, the tensors of `types` (`accumulate`: onto the bias already
/// in `y`). `Ok(false)` when cuDNN has no deterministic algorithm for these sizes, and nothing
/// was written.
pub(crate) fn forward<T>(
    device: &GpuDevice,
    g: &Geometry,
    types: DataTypes,
    x: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<T>,
    accumulate: bool,
) -> Result<bool, GpuError> {
    let beta = types.scaling(if accumulate { 1.0 } else { 0.0 });
    run::<Forward>(device, g, types, |handle, d, algo, workspace| {
        let stream = device.stream();
        let (x, _x) = x.device_ptr(stream);
        let (w, _w) = weight.device_ptr(stream);
        let (y, _y) = y.device_ptr_mut(stream);
        let one = types.scaling(1.0);
        // SAFETY: the descriptors describe the three buffers (sizes and types checked by the
        // caller), the workspace has the size cuDNN asked for, and everything is on the handle's
        // stream.
        unsafe {
            result::convolution_forward(
                handle,
                one.as_ptr(),
                d.x.0,
                x as *const c_void,
                d.w.0,
                w as *const c_void,
                d.conv.0,
                algo,
                workspace.0,
                workspace.1,
                beta.as_ptr(),
                d.y.0,
                y as *mut c_void,
            )
        }
        .map_err(GpuError::cudnn("cudnnConvolutionForward"))
    })
}

/// `dx = conv_transpose(dy, w)` through cuDNN; `Ok(false)` as in [`forward`].
pub(crate) fn backward_data<T>(
    device: &GpuDevice,
    g: &Geometry,
    types: DataTypes,
    grad_y: &impl DevicePtr<T>,
    weight: &impl DevicePtr<T>,
    grad_x: &mut impl DevicePtrMut<T>,
) -> Result<bool, GpuError> {
    run::<BackwardData>(device, g, types, |handle, d, algo, workspace| {
        let stream = device.stream();
        let (dy, _dy) = grad_y.device_ptr(stream);
        let (w, _w) = weight.device_ptr(stream);
        let (dx, _dx) = grad_x.device_ptr_mut(stream);
        let (one, zero) = (types.scaling(1.0), types.scaling(0.0));
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_data(
                handle,
                one.as_ptr(),
                d.w.0,
                w as *const c_void,
                d.y.0,
                dy as *const c_void,
                d.conv.0,
                algo,
                workspace.0,
                workspace.1,
                zero.as_ptr(),
                d.x.0,
                dx as *mut c_void,
            )
        }
        .map_err(GpuError::cudnn("cudnnConvolutionBackwardData"))
    })
}

/// `dw = sum over images of dy (x) x` through cuDNN; `Ok(false)` as in [`forward`].
pub(crate) fn backward_filter<T>(
    device: &GpuDevice,
    g: &Geometry,
    types: DataTypes,
    x: &impl DevicePtr<T>,
    grad_y: &impl DevicePtr<T>,
    grad_weight: &mut impl DevicePtrMut<T>,
) -> Result<bool, GpuError> {
    run::<BackwardFilter>(device, g, types, |handle, d, algo, workspace| {
        let stream = device.stream();
        let (x, _x) = x.device_ptr(stream);
        let (dy, _dy) = grad_y.device_ptr(stream);
        let (dw, _dw) = grad_weight.device_ptr_mut(stream);
        let (one, zero) = (types.scaling(1.0), types.scaling(0.0));
        // SAFETY: as in `forward`.
        unsafe {
            result::convolution_backward_filter(
                handle,
                one.as_ptr(),
                d.x.0,
                x as *const c_void,
                d.y.0,
                dy as *const c_void,
                d.conv.0,
                algo,
                workspace.0,
                workspace.1,
                zero.as_ptr(),
                d.w.0,
                dw as *mut c_void,
            )
        }
        .map_err(GpuError::cudnn("cudnnConvolutionBackwardFilter"))
    })
}

/// The workspace of one call: its pointer (null when empty) and size in bytes.
type Workspace = (*mut c_void, usize);

/// Makes (or recalls) the plan of direction `D` for `g`, allocates its workspace and calls
/// `launch`; `Ok(false)` without calling it when there is no deterministic algorithm.
fn run<D: Direction>(
    device: &GpuDevice,
    g: &Geometry,
    types: DataTypes,
    launch: impl FnOnce(sys::cudnnHandle_t, &Descriptors, D::Algo, Workspace) -> Result<(), GpuError>,
) -> Result<bool, GpuError> {
    let Some(dims) = Dims::of(g) else {
        return Ok(false);
    };
    let mut cudnn = device.cudnn()?;
    device
        .context()
        .bind_to_thread()
        .map_err(GpuError::driver("binding the context for cuDNN"))?;
    let tf32 = device.tf32_allowed();
    let key = AlgorithmKey { dims, types, tf32 };
    let handle = cudnn.handle;
    let plan = match D::plans(&mut cudnn).entry(key) {
        Entry::Occupied(known) => known.into_mut(),
        Entry::Vacant(new) => new.insert(plan::<D>(handle, &key)?),
    };
    let Some(plan) = plan else {
        return Ok(false);
    };
    let bytes = plan.workspace_bytes;
    // SAFETY: cuDNN treats the workspace as scratch and never reads what it did not write.
    let mut workspace: DeviceBuffer<u8> = unsafe { device.alloc(bytes) }?;
    let pointer = if bytes == 0 {
        std::ptr::null_mut()
    } else {
        workspace.slice_mut().device_ptr_mut(device.stream()).0 as *mut c_void
    };
    launch(handle, &plan.descriptors, plan.algo, (pointer, bytes))?;
    // The workspace goes back to the pool in stream order, after the launch above.
    drop(workspace);
    Ok(true)
}

/// Set (to anything), each new plan is printed to stderr with cuDNN's whole ranking: what a speed
/// investigation needs to see which algorithms run and why the faster ones were passed over.
pub const PLAN_LOG_VARIABLE: &str = "REVSNN_CUDNN_PLANS";

/// The plan of direction `D` for `key`: descriptors, the algorithm [`choose`] takes from cuDNN's
/// ranking (its math type set on the convolution descriptor) and its workspace size; `None` when
/// no algorithm qualifies. Printed when [`PLAN_LOG_VARIABLE`] is set.
fn plan<D: Direction>(
    handle: sys::cudnnHandle_t,
    key: &AlgorithmKey,
) -> Result<Option<Plan<D::Algo>>, GpuError> {
    let descriptors = Descriptors::new(key)?;
    let ranking = D::rank(handle, &descriptors)?;
    let log = std::env::var_os(PLAN_LOG_VARIABLE).is_some();
    let ranked = log.then(|| format!("{ranking:?}"));
    let Some(algorithm) = choose(ranking, requested_math(key)) else {
        return Ok(None);
    };
    descriptors.conv.set_math(algorithm.math)?;
    let workspace_bytes = D::workspace_bytes(handle, &descriptors, algorithm.algo)?;
    if let Some(ranked) = ranked {
        eprintln!(
            "cuDNN plan: {} {key:?}: {:?} with {:?}, {workspace_bytes} workspace bytes; \
             cuDNN's ranking: {ranked}",
            D::NAME,
            algorithm.algo,
            algorithm.math
        );
    }
    Ok(Some(Plan {
        descriptors,
        algo: algorithm.algo,
        workspace_bytes,
    }))
}

/// The sizes of one convolution as cuDNN's `int`s: `x [n, c_in, h, w]`, `w [c_out, c_in, kh, kw]`,
/// `y [n, c_out, h_out, w_out]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Dims {
    x: [i32; 4],
    w: [i32; 4],
    y: [i32; 4],
    stride: i32,
    padding: i32,
}

impl Dims {
    /// `None` when a size, or an operand's element count, does not fit in an `i32`.
    fn of(g: &Geometry) -> Option<Dims> {
        let int = |v: usize| i32::try_from(v).ok();
        let dims = |d: [usize; 4]| -> Option<[i32; 4]> {
            int(d.iter().product())?;
            Some([int(d[0])?, int(d[1])?, int(d[2])?, int(d[3])?])
        };
        Some(Dims {
            x: dims([g.n, g.c_in, g.h, g.w])?,
            w: dims(g.weight_shape())?,
            y: dims([g.n, g.c_out, g.h_out, g.w_out])?,
            stride: int(g.stride)?,
            padding: int(g.padding)?,
        })
    }
}

/// The four descriptors of one convolution, destroyed on drop.
#[derive(Debug)]
struct Descriptors {
    x: TensorDescriptor,
    w: FilterDescriptor,
    y: TensorDescriptor,
    conv: ConvDescriptor,
}

impl Descriptors {
    fn new(key: &AlgorithmKey) -> Result<Descriptors, GpuError> {
        let (dims, data) = (&key.dims, key.types.data);
        let conv = ConvDescriptor::new(dims.padding, dims.stride, key.types.compute)?;
        conv.set_math(requested_math(key))?;
        Ok(Descriptors {
            x: TensorDescriptor::new(dims.x, data)?,
            w: FilterDescriptor::new(dims.w, data)?,
            y: TensorDescriptor::new(dims.y, data)?,
            conv,
        })
    }
}

#[derive(Debug)]
struct TensorDescriptor(sys::cudnnTensorDescriptor_t);

impl TensorDescriptor {
    fn new(dims: [i32; 4], data_type: sys::cudnnDataType_t) -> Result<Self, GpuError> {
        let descriptor = TensorDescriptor(
            result::create_tensor_descriptor()
                .map_err(GpuError::cudnn("creating a tensor descriptor"))?,
        );
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        // SAFETY: the descriptor was just created.
        unsafe { result::set_tensor4d_descriptor(descriptor.0, nchw, data_type, dims) }
            .map_err(GpuError::cudnn("setting a tensor descriptor"))?;
        Ok(descriptor)
    }
}

impl Drop for TensorDescriptor {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}

#[derive(Debug)]
struct FilterDescriptor(sys::cudnnFilterDescriptor_t);

impl FilterDescriptor {
    fn new(dims: [i32; 4], data_type: sys::cudnnDataType_t) -> Result<Self, GpuError> {
        let descriptor = FilterDescriptor(
            result::create_filter_descriptor()
                .map_err(GpuError::cudnn("creating a filter descriptor"))?,
        );
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        // SAFETY: the descriptor was just created.
        unsafe { result::set_filter4d_descriptor(descriptor.0, data_type, nchw, dims) }
            .map_err(GpuError::cudnn("setting a filter descriptor"))?;
        Ok(descriptor)
    }
}

impl Drop for FilterDescriptor {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}

#[derive(Debug)]
struct ConvDescriptor(sys::cudnnConvolutionDescriptor_t);

impl ConvDescriptor {
    /// A cross-correlation (what deep learning calls a convolution) with equal padding and
    /// stride on both axes, no dilation, summing in `data_type`.
    fn new(padding: i32, stride: i32, data_type: sys::cudnnDataType_t) -> Result<Self, GpuError> {
        let descriptor = ConvDescriptor(
            result::create_convolution_descriptor()
                .map_err(GpuError::cudnn("creating a convolution descriptor"))?,
        );
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        // SAFETY: the descriptor was just created.
        unsafe {
            result::set_convolution2d_descriptor(
                descriptor.0,
                padding,
                padding,
                stride,
                stride,
                1,
                1,
                mode,
                data_type,
            )
        }
        .map_err(GpuError::cudnn("setting a convolution descriptor"))?;
        Ok(descriptor)
    }

    fn set_math(&self, math: sys::cudnnMathType_t) -> Result<(), GpuError> {
        // SAFETY: the descriptor is live.
        unsafe { result::set_convolution_math_type(self.0, math) }
            .map_err(GpuError::cudnn("setting the convolution math type"))
    }
}

impl Drop for ConvDescriptor {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}

/// The math asked of cuDNN: plain FMA for `f32` tensors without TF32; tensor cores for 16-bit
/// tensors, since under its default math cuDNN 9 ranks no tensor-core algorithm for them (on an
/// H200 its 16-bit convolutions then converted to `f32` and ran on FMA units, 3 to 7 times
/// slower than TF32); its default otherwise.
fn requested_math(key: &AlgorithmKey) -> sys::cudnnMathType_t {
    use sys::cudnnDataType_t::{CUDNN_DATA_BFLOAT16, CUDNN_DATA_FLOAT, CUDNN_DATA_HALF};
    match key.types.data {
        CUDNN_DATA_FLOAT if !key.tf32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        CUDNN_DATA_HALF | CUDNN_DATA_BFLOAT16 => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        _ => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
    }
}

/// One entry of cuDNN's ranking of the algorithms of one direction.
#[derive(Clone, Copy, Debug)]
struct Ranked<A> {
    algo: A,
    supported: bool,
    deterministic: bool,
    workspace: usize,
    math: sys::cudnnMathType_t,
}

/// The first algorithm of a ranking that is supported, deterministic, within the workspace limit
/// and of a math type allowed under `requested` (see the module docs), with the math type to run
/// it with.
fn choose<A: Copy>(
    ranking: Vec<Ranked<A>>,
    requested: sys::cudnnMathType_t,
) -> Option<Algorithm<A>> {
    use sys::cudnnMathType_t::{CUDNN_DEFAULT_MATH, CUDNN_FMA_MATH, CUDNN_TENSOR_OP_MATH};
    ranking.into_iter().find_map(|r| {
        let math = match (requested, r.math) {
            // FMA asked: an algorithm ranked under the default math runs as FMA too.
            (CUDNN_FMA_MATH, CUDNN_FMA_MATH | CUDNN_DEFAULT_MATH) => CUDNN_FMA_MATH,
            (
                CUDNN_DEFAULT_MATH,
                m @ (CUDNN_DEFAULT_MATH | CUDNN_TENSOR_OP_MATH | CUDNN_FMA_MATH),
            ) => m,
            (CUDNN_TENSOR_OP_MATH, m @ (CUDNN_TENSOR_OP_MATH | CUDNN_DEFAULT_MATH)) => m,
            _ => return None,
        };
        let usable = r.supported && r.deterministic && r.workspace <= WORKSPACE_LIMIT_BYTES;
        usable.then_some(Algorithm { algo: r.algo, math })
    })
}

/// The most algorithms asked of cuDNN's ranking (each direction has fewer than 10).
const MAX_RANKED: usize = 16;

/// One of the three passes of a convolution, each with its own algorithm enum, ranking and
/// workspace query.
trait Direction {
    type Algo: Copy + std::fmt::Debug;

    /// The direction's cuDNN function, for the plan log.
    const NAME: &'static str;

    /// The plans made so far for this direction.
    fn plans(cudnn: &mut Cudnn) -> &mut Plans<Self::Algo>;

    /// cuDNN's heuristic ranking (`cudnnGet*Algorithm_v7`), best first.
    fn rank(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
    ) -> Result<Vec<Ranked<Self::Algo>>, GpuError>;

    /// The workspace bytes `algo` needs (the descriptor's math type already set).
    fn workspace_bytes(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
        algo: Self::Algo,
    ) -> Result<usize, GpuError>;
}

/// Turns cuDNN's filled perf structs into [`Ranked`] entries.
macro_rules! ranked {
    ($perfs:expr, $count:expr) => {
        $perfs[..($count as usize).min(MAX_RANKED)]
            .iter()
            .map(|p| Ranked {
                algo: p.algo,
                supported: p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS,
                deterministic: p.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC,
                workspace: p.memory,
                math: p.mathType,
            })
            .collect()
    };
}

/// `y = conv(x, w)`.
struct Forward;

impl Direction for Forward {
    type Algo = sys::cudnnConvolutionFwdAlgo_t;
    const NAME: &'static str = "cudnnConvolutionForward";

    fn plans(cudnn: &mut Cudnn) -> &mut Plans<Self::Algo> {
        &mut cudnn.forward
    }

    fn rank(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
    ) -> Result<Vec<Ranked<Self::Algo>>, GpuError> {
        // SAFETY: an all-zero perf struct is a valid value of its C type.
        let mut perfs =
            [unsafe { std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>() }; MAX_RANKED];
        let mut count = 0;
        // SAFETY: the descriptors are live and `perfs` holds the `MAX_RANKED` entries asked for.
        unsafe {
            result::get_convolution_forward_algorithm(
                handle,
                d.x.0,
                d.w.0,
                d.conv.0,
                d.y.0,
                MAX_RANKED as i32,
                &mut count,
                perfs.as_mut_ptr(),
            )
        }
        .map_err(GpuError::cudnn("ranking forward algorithms"))?;
        Ok(ranked!(perfs, count))
    }

    fn workspace_bytes(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
        algo: Self::Algo,
    ) -> Result<usize, GpuError> {
        // SAFETY: the descriptors are live and `algo` came from cuDNN's ranking.
        unsafe {
            result::get_convolution_forward_workspace_size(
                handle, d.x.0, d.w.0, d.conv.0, d.y.0, algo,
            )
        }
        .map_err(GpuError::cudnn("sizing the forward workspace"))
    }
}

/// `dx = conv_transpose(dy, w)`.
struct BackwardData;

impl Direction for BackwardData {
    type Algo = sys::cudnnConvolutionBwdDataAlgo_t;
    const NAME: &'static str = "cudnnConvolutionBackwardData";

    fn plans(cudnn: &mut Cudnn) -> &mut Plans<Self::Algo> {
        &mut cudnn.backward_data
    }

    fn rank(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
    ) -> Result<Vec<Ranked<Self::Algo>>, GpuError> {
        // SAFETY: an all-zero perf struct is a valid value of its C type.
        let mut perfs =
            [unsafe { std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>() }; MAX_RANKED];
        let mut count = 0;
        // SAFETY: as in `Forward::rank`.
        unsafe {
            result::get_convolution_backward_data_algorithm(
                handle,
                d.w.0,
                d.y.0,
                d.conv.0,
                d.x.0,
                MAX_RANKED as i32,
                &mut count,
                perfs.as_mut_ptr(),
            )
        }
        .map_err(GpuError::cudnn("ranking backward-data algorithms"))?;
        Ok(ranked!(perfs, count))
    }

    fn workspace_bytes(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
        algo: Self::Algo,
    ) -> Result<usize, GpuError> {
        // SAFETY: as in `Forward::workspace_bytes`.
        unsafe {
            result::get_convolution_backward_data_workspace_size(
                handle, d.w.0, d.y.0, d.conv.0, d.x.0, algo,
            )
        }
        .map_err(GpuError::cudnn("sizing the backward-data workspace"))
    }
}

/// `dw = sum over images of dy (x) x`.
struct BackwardFilter;

impl Direction for BackwardFilter {
    type Algo = sys::cudnnConvolutionBwdFilterAlgo_t;
    const NAME: &'static str = "cudnnConvolutionBackwardFilter";

    fn plans(cudnn: &mut Cudnn) -> &mut Plans<Self::Algo> {
        &mut cudnn.backward_filter
    }

    fn rank(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
    ) -> Result<Vec<Ranked<Self::Algo>>, GpuError> {
        // SAFETY: an all-zero perf struct is a valid value of its C type.
        let mut perfs =
            [unsafe { std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>() }; MAX_RANKED];
        let mut count = 0;
        // SAFETY: as in `Forward::rank`.
        unsafe {
            result::get_convolution_backward_filter_algorithm(
                handle,
                d.x.0,
                d.y.0,
                d.conv.0,
                d.w.0,
                MAX_RANKED as i32,
                &mut count,
                perfs.as_mut_ptr(),
            )
        }
        .map_err(GpuError::cudnn("ranking backward-filter algorithms"))?;
        Ok(ranked!(perfs, count))
    }

    fn workspace_bytes(
        handle: sys::cudnnHandle_t,
        d: &Descriptors,
        algo: Self::Algo,
    ) -> Result<usize, GpuError> {
        // SAFETY: as in `Forward::workspace_bytes`.
        unsafe {
            result::get_convolution_backward_filter_workspace_size(
                handle, d.x.0, d.y.0, d.conv.0, d.w.0, algo,
            )
        }
        .map_err(GpuError::cudnn("sizing the backward-filter workspace"))
    }
}
