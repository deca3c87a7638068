//! A CUDA device handle: context, stream, and the kernels compiled by NVRTC for the device's own
//! architecture on first use, cached for the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::compiler::{self, Target};
use crate::error::GpuError;
use crate::kernels::KernelSource;
use crate::probe::{CudaStatus, DeviceInfo, probe};

/// A kernel file compiled for one architecture `(major, minor)`.
type ImageKey = (&'static str, (i32, i32));

/// Compiled images, shared by every device of the process.
fn image_cache() -> &'static Mutex<HashMap<ImageKey, Arc<Vec<u8>>>> {
    static CACHE: OnceLock<Mutex<HashMap<ImageKey, Arc<Vec<u8>>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// One CUDA device with its default stream.
#[derive(Debug)]
pub struct GpuDevice {
    pub info: DeviceInfo,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl GpuDevice {
    /// Opens device 0, or says why there is none (no driver library, no device).
    pub fn open() -> Result<GpuDevice, GpuError> {
        let info = match probe() {
            CudaStatus::Available(info) => info,
            CudaStatus::Unavailable(error) => return Err(error),
        };
        let context =
            CudaContext::new(info.ordinal).map_err(GpuError::driver("creating a context"))?;
        let stream = context.default_stream();
        Ok(GpuDevice {
            info,
            context,
            stream,
            modules: Mutex::new(HashMap::new()),
        })
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
    /// first time the process asks for it.
    pub fn function(
        &self,
        kernel: &KernelSource,
        function: &str,
    ) -> Result<CudaFunction, GpuError> {
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
        module
            .load_function(function)
            .map_err(GpuError::driver("looking up a kernel function"))
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
        let image = Arc::new(compiler::compile(kernel, Target::Cubin { major, minor })?);
        image_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, image.clone());
        Ok(image)
    }

    /// Waits for every queued operation and surfaces any error recorded asynchronously.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream
            .synchronize()
            .map_err(GpuError::driver("synchronizing the stream"))?;
        self.context
            .check_err()
            .map_err(GpuError::driver("checking for asynchronous errors"))
    }
}
