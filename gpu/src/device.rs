//! A CUDA device handle: context, stream, counted allocations from a caching pool, cuBLAS,
//! cuDNN, the convolution engine and math settings, and the kernels compiled by NVRTC for the
//! device's own architecture on first use, cached for the process and on disk
//! ([`crate::kernel_cache`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, DriverError, ValidAsZeroBits,
    sys,
};
use cudarc::nvrtc::Ptx;
use revsnn_reference::{DeviceError, Precision, TransferCounts};

use crate::compiler::Target;
use crate::error::GpuError;
use crate::kernel_cache::{self, KernelCache};
use crate::kernels::KernelSource;
use crate::memory::{DeviceBuffer, DeviceMemoryStats, MemoryAccounting};
use crate::memory_pool;
use crate::ops::conv::ConvEngine;
use crate::ops::conv::cudnn::Cudnn;
use crate::ops::precision::HalfFormat;
use crate::probe::{DeviceInfo, describe_device};
use crate::stream_wait::WaitLimit;

/// A kernel file compiled for one architecture `(major, minor)`.
type ImageKey = (&'static str, (i32, i32));

/// Compiled images, shared by every device of the process.
fn image_cache() -> &'static Mutex<HashMap<ImageKey, Arc<Vec<u8>>>> {
    static CACHE: OnceLock<Mutex<HashMap<ImageKey, Arc<Vec<u8>>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// One CUDA device with its default stream. Every op of the backend runs on that one stream, in
/// order, so no buffer needs cross-stream synchronisation.
#[derive(Debug)]
pub struct GpuDevice {
    pub info: DeviceInfo,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    accounting: Arc<MemoryAccounting>,
    blas: OnceLock<CudaBlas>,
    cudnn: OnceLock<Mutex<Cudnn>>,
    conv_engine: Mutex<ConvEngine>,
    precision: Mutex<Precision>,
    host_waits: AtomicU64,
    uploads: AtomicU64,
    alloc_retries: AtomicU64,
    /// The limit of the host's waits for the stream, once a communicator set one
    /// ([`GpuDevice::limit_host_waits`]).
    wait_limit: WaitLimit,
}

/// The environment variable that picks the convolution engine when a device opens.
pub const CONV_ENGINE_VARIABLE: &str = "REVSNN_CONV_ENGINE";

impl GpuDevice {
    /// Opens device 0, or says why there is none (no driver library, no device). Convolutions run
    /// on cuDNN when it loads and on im2col + cuBLAS otherwise, unless `REVSNN_CONV_ENGINE`
    /// (`cudnn` or `im2col`) says which ([`GpuDevice::set_conv_engine`]).
    pub fn open() -> Result<GpuDevice, GpuError> {
        GpuDevice::open_ordinal(0)
    }

    /// Opens device `ordinal` as [`GpuDevice::open`] opens device 0 (a rank of a multi-GPU run
    /// opens its `LOCAL_RANK`); an ordinal past the devices is [`GpuError::NoSuchDevice`].
    pub fn open_ordinal(ordinal: usize) -> Result<GpuDevice, GpuError> {
        let info = describe_device(ordinal)?;
        let context =
            CudaContext::new(info.ordinal).map_err(GpuError::driver("creating a context"))?;
        // SAFETY: every op of this device runs on its one stream, in order, so the per-buffer
        // read/write events cudarc records for multi-stream use are never needed.
        unsafe { context.disable_event_tracking() };
        if context.has_async_alloc() {
            memory_pool::keep_freed_blocks(&context)?;
        }
        let stream = context.default_stream();
        let device = GpuDevice {
            info,
            context,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            accounting: Arc::new(MemoryAccounting::new()),
            blas: OnceLock::new(),
            cudnn: OnceLock::new(),
            conv_engine: Mutex::new(ConvEngine::Im2colGemm),
            precision: Mutex::new(Precision::F32),
            host_waits: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            alloc_retries: AtomicU64::new(0),
            wait_limit: WaitLimit::default(),
        };
        match std::env::var(CONV_ENGINE_VARIABLE) {
            Ok(value) => device.set_conv_engine(value.parse()?)?,
            Err(_) => {
                // Without cuDNN the device stays on im2col.
                let _ = device.set_conv_engine(ConvEngine::Cudnn);
            }
        }
        Ok(device)
    }

    /// How this device runs convolutions.
    pub fn conv_engine(&self) -> ConvEngine {
        *self
            .conv_engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs this device's convolutions on `engine` from now on. [`ConvEngine::Cudnn`] needs
    /// cuDNN 9 on the library path ([`GpuError::LibraryMissing`] otherwise).
    pub fn set_conv_engine(&self, engine: ConvEngine) -> Result<(), GpuError> {
        if engine == ConvEngine::Cudnn {
            drop(self.cudnn()?);
        }
        *self
            .conv_engine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = engine;
        Ok(())
    }

    /// cuDNN on this device's stream, created on first use; one user at a time.
    pub(crate) fn cudnn(&self) -> Result<MutexGuard<'_, Cudnn>, GpuError> {
        let cudnn = match self.cudnn.get() {
            Some(cudnn) => cudnn,
            None => {
                let created = Cudnn::new(&self.stream)?;
                self.cudnn.get_or_init(|| Mutex::new(created))
            }
        };
        Ok(cudnn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A counted buffer of `len` elements whose contents are undefined.
    ///
    /// # Safety
    /// The caller writes every element before any is read.
    pub unsafe fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<DeviceBuffer<T>, GpuError> {
        // SAFETY: guaranteed by the caller (an empty buffer's one element is never read).
        let slice = self.allocate::<T, _>(len, || unsafe { self.stream.alloc::<T>(len.max(1)) })?;
        Ok(DeviceBuffer::counted(slice, len, &self.accounting))
    }

    /// A counted buffer of `len` zeros.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<DeviceBuffer<T>, GpuError> {
        let slice = self.allocate::<T, _>(len, || self.stream.alloc_zeros::<T>(len.max(1)))?;
        Ok(DeviceBuffer::counted(slice, len, &self.accounting))
    }

    /// Runs `allocation` of `len` elements of `T`. If the device is full, waits for the stream
    /// (within the limit a communicator set: the stream may wait on a collective), hands the
    /// blocks the pool keeps from freed buffers back to the driver and runs it once more: cached
    /// blocks, each too small for a larger buffer, can fill a card together
    /// (PyTorch's caching allocator empties its cache and retries the same way). Each retry is
    /// counted in [`TransferCounts::alloc_retries`]; a second failure is
    /// [`DeviceError::OutOfMemory`], and a failure of the wait or the release (an asynchronous
    /// error, say) is that error instead.
    fn allocate<T, S>(
        &self,
        len: usize,
        allocation: impl Fn() -> Result<S, DriverError>,
    ) -> Result<S, GpuError> {
        let result = match allocation() {
            Err(error) if is_out_of_memory(&error) && self.context.has_async_alloc() => {
                self.synchronize()?;
                memory_pool::release_cached_blocks(&self.context)?;
                self.alloc_retries.fetch_add(1, Ordering::Relaxed);
                allocation()
            }
            result => result,
        };
        result.map_err(|error| self.allocation_error::<T>(len, error))
    }

    /// A counted copy of `data` on the device.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<DeviceBuffer<T>, GpuError> {
        // SAFETY: every element is written by the copy below (an empty buffer's is never read).
        let mut buffer = unsafe { self.alloc::<T>(data.len()) }?;
        if !data.is_empty() {
            self.uploads.fetch_add(1, Ordering::Relaxed);
            self.stream
                .memcpy_htod(data, buffer.slice_mut())
                .map_err(GpuError::driver("copying to the device"))?;
        }
        Ok(buffer)
    }

    /// Counts one wait of the host for this device's stream ([`TransferCounts`]).
    pub(crate) fn count_host_wait(&self) {
        self.host_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Bounds every later host wait for this device's stream by `limit`, for the device's
    /// lifetime (a synchronisation, a download, an allocation's retry): a communicator sets its
    /// timeout here, since the stream may then wait on a collective that a rank which died or
    /// hangs never joins.
    pub(crate) fn limit_host_waits(&self, limit: Duration) {
        self.wait_limit.set(limit);
    }

    /// Waits for the stream within `limit`, calling `watch` between polls; past it, and at once
    /// after a wait that ran past its limit, [`DeviceError::Stalled`] ([`WaitLimit::poll`]). Not
    /// counted as a host wait: its callers count theirs.
    pub(crate) fn poll_stream(
        &self,
        during: &'static str,
        limit: Duration,
        watch: impl FnMut() -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        self.wait_limit.poll(&self.stream, during, limit, watch)
    }

    /// Waits for the stream within the limit a communicator set; `None` (no wait) without one.
    fn wait_within_limit(&self, during: &'static str) -> Option<Result<(), GpuError>> {
        let limit = self.wait_limit.get()?;
        Some(self.poll_stream(during, limit, || Ok(())))
    }

    /// Waits for the stream, within the limit a communicator set and otherwise without one.
    fn wait_for_stream(&self, during: &'static str) -> Result<(), GpuError> {
        self.wait_within_limit(during).unwrap_or_else(|| {
            self.stream
                .synchronize()
                .map_err(GpuError::driver("synchronizing the stream"))
        })
    }

    /// The elements of `buffer`, copied to the host (waits for the stream, within the limit a
    /// communicator set).
    pub fn download<T: DeviceRepr>(&self, buffer: &DeviceBuffer<T>) -> Result<Vec<T>, GpuError> {
        if buffer.is_empty() {
            return Ok(Vec::new());
        }
        self.count_host_wait();
        // The copy waits for the stream inside the driver, where no limit holds.
        self.wait_within_limit("copying from the device")
            .transpose()?;
        self.stream
            .clone_dtoh(buffer.slice())
            .map_err(GpuError::driver("copying from the device"))
    }

    /// An out-of-memory failure as the contract's [`DeviceError::OutOfMemory`] with the sizes
    /// involved (the free bytes as the driver reports them now, after the pool released what it
    /// could, or, if it cannot say, the device's bytes less this process's live tensors); any
    /// other failure as the driver's error.
    fn allocation_error<T>(&self, len: usize, error: DriverError) -> GpuError {
        if is_out_of_memory(&error) {
            let live_bytes = self.accounting.stats().live_bytes;
            let total_bytes = self.info.total_memory_bytes;
            GpuError::Device(DeviceError::OutOfMemory {
                requested_bytes: len * std::mem::size_of::<T>(),
                free_bytes: self
                    .driver_free_bytes()
                    .unwrap_or(total_bytes.saturating_sub(live_bytes)),
                live_bytes,
                total_bytes,
            })
        } else {
            GpuError::driver("allocating device memory")(error)
        }
    }

    /// Lets cuBLAS and cuDNN run `f32` GEMMs and convolutions on TF32 tensor cores: inputs
    /// rounded to a 10-bit mantissa, about 1e-3 relative error instead of 1e-6, several times
    /// the throughput. Off by default, so results stay in the tolerance classes of docs/design.md;
    /// PyTorch's default for convolutions is on (`torch.backends.cudnn.allow_tf32`), which
    /// matters when comparing speed. `f64` is unaffected. Sets the device's precision to `tf32`
    /// or `f32` (ending a 16-bit one).
    pub fn allow_tf32(&self, allowed: bool) -> Result<(), GpuError> {
        let blas = self.blas()?;
        let mode = if allowed {
            cudarc::cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cudarc::cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: the handle is live for as long as `self`.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), mode) }
            .result()
            .map_err(|e| GpuError::Blas {
                during: "setting the cuBLAS math mode",
                detail: e.to_string(),
            })?;
        *self.precision_setting() = if allowed {
            Precision::Tf32
        } else {
            Precision::F32
        };
        Ok(())
    }

    /// Whether `f32` GEMMs and convolutions may use TF32 ([`GpuDevice::allow_tf32`]).
    pub fn tf32_allowed(&self) -> bool {
        self.precision() == Precision::Tf32
    }

    /// Runs this device's GEMMs and convolutions in `precision` from now on (docs/precision.md):
    /// `f32` and `tf32` are [`GpuDevice::allow_tf32`] off and on; under `bf16` and `fp16` every
    /// GEMM of the linear layers and batched matmuls takes 16-bit operands into an `f32`
    /// accumulator (`crate::ops::precision`), and the convolutions take 16-bit operands on either
    /// engine and store their outputs in the format. bf16 on a card older than compute
    /// capability 8.0 is [`GpuError::PrecisionUnsupported`], which names the card.
    pub fn set_precision(&self, precision: Precision) -> Result<(), GpuError> {
        let (major, _) = self.info.compute_capability;
        if precision == Precision::Bf16 && major < 8 {
            return Err(GpuError::PrecisionUnsupported {
                precision,
                card: self.info.name.clone(),
                compute_capability: self.info.compute_capability,
            });
        }
        self.allow_tf32(precision == Precision::Tf32)?;
        *self.precision_setting() = precision;
        Ok(())
    }

    /// The precision of this device's GEMMs and convolutions ([`GpuDevice::set_precision`]).
    pub fn precision(&self) -> Precision {
        *self.precision_setting()
    }

    /// The 16-bit operand format of this device's GEMMs, or `None` under `f32` and `tf32`.
    pub fn half_format(&self) -> Option<HalfFormat> {
        HalfFormat::of(self.precision())
    }

    fn precision_setting(&self) -> MutexGuard<'_, Precision> {
        self.precision
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Live and peak bytes of this device's buffers.
    pub fn memory(&self) -> DeviceMemoryStats {
        self.accounting.stats()
    }

    /// Sets the peak to the live bytes; returns the counters from before.
    pub fn reset_peak_memory(&self) -> DeviceMemoryStats {
        self.accounting.reset_peak()
    }

    /// The most bytes the memory pool has held from the driver since the device opened,
    /// fragmentation included (the twin of PyTorch's `max_memory_reserved`).
    pub fn pool_reserved_high(&self) -> Result<u64, GpuError> {
        memory_pool::reserved_high(&self.context)
    }

    /// cuBLAS on this device's stream, created on first use.
    pub fn blas(&self) -> Result<&CudaBlas, GpuError> {
        if let Some(blas) = self.blas.get() {
            return Ok(blas);
        }
        // SAFETY: only tries to dlopen the cuBLAS library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(GpuError::LibraryMissing {
                library: "libcublas.so (cuBLAS)",
            });
        }
        let blas = CudaBlas::new(self.stream.clone()).map_err(|e| GpuError::Blas {
            during: "creating a cuBLAS handle",
            detail: e.to_string(),
        })?;
        Ok(self.blas.get_or_init(|| blas))
    }

    /// The stream every op of this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context, for events and synchronisation.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The kernel `function` of `kernel`, compiled to a CUBIN for this device's architecture the
    /// first time the process asks for it, or loaded from the kernel cache where an earlier
    /// process stored it ([`crate::kernel_cache`]).
    pub fn function(
        &self,
        kernel: &KernelSource,
        function: &str,
    ) -> Result<CudaFunction, GpuError> {
        let key = (kernel.file, function.to_string());
        if let Some(found) = self
            .functions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
        {
            return Ok(found.clone());
        }
        let module = {
            let mut modules = self
                .modules
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match modules.get(kernel.file) {
                Some(module) => module.clone(),
                None => {
                    let image = self.image(kernel)?;
                    let module = self
                        .context
                        .load_module(Ptx::from_binary(image.as_ref().clone()))
                        .map_err(GpuError::driver("loading a compiled kernel module"))?;
                    modules.insert(kernel.file, module.clone());
                    module
                }
            }
        };
        let found = module
            .load_function(function)
            .map_err(GpuError::driver("looking up a kernel function"))?;
        self.functions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key, found.clone());
        Ok(found)
    }

    fn image(&self, kernel: &KernelSource) -> Result<Arc<Vec<u8>>, GpuError> {
        let (major, minor) = self.info.compute_capability;
        let key = (kernel.file, (major, minor));
        if let Some(image) = image_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(image.clone());
        }
        let image = Arc::new(kernel_cache::compiled(
            KernelCache::from_env().as_ref(),
            kernel,
            Target::Cubin { major, minor },
        )?);
        image_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, image.clone());
        Ok(image)
    }

    /// The device memory new allocations can get, at most: what the driver reports free
    /// (`cuMemGetInfo`) and the pool's bytes no live buffer uses (its unused blocks, which an
    /// allocation that needs them hands back, [`GpuDevice::alloc`], and the free ranges between
    /// live buffers, which serve allocations that fit them). What a run's estimate is compared
    /// with before it starts.
    pub fn free_memory_bytes(&self) -> Result<usize, GpuError> {
        let cached = memory_pool::cached_bytes(&self.context)?;
        Ok(self.driver_free_bytes()? + cached as usize)
    }

    /// The device memory the driver reports free (`cuMemGetInfo`): what is left beside the
    /// pool's blocks, live or kept.
    fn driver_free_bytes(&self) -> Result<usize, GpuError> {
        let (free, _total) = self
            .context
            .mem_get_info()
            .map_err(GpuError::driver("reading the free device memory"))?;
        Ok(free)
    }

    /// The host waits, uploads and allocation retries since the device opened: what
    /// `revsnn bench` reports per step. Counted on every path that copies, synchronises or
    /// allocates, the emulator's included.
    pub fn transfer_counts(&self) -> TransferCounts {
        TransferCounts {
            host_waits: self.host_waits.load(Ordering::Relaxed),
            uploads: self.uploads.load(Ordering::Relaxed),
            alloc_retries: self.alloc_retries.load(Ordering::Relaxed),
        }
    }

    /// Waits for every queued operation (within the limit a communicator set,
    /// [`DeviceError::Stalled`] past it) and surfaces any error recorded asynchronously.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.count_host_wait();
        self.wait_for_stream("synchronizing the stream")?;
        self.context
            .check_err()
            .map_err(GpuError::driver("checking for asynchronous errors"))
    }
}

fn is_out_of_memory(error: &DriverError) -> bool {
    error.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY
}
