//! The CUDA runtime (feature `cuda`): loads a 1-D kernel's PTX into the driver (which
//! JIT-compiles it for the GPU), copies host arrays to the device, launches the kernel in the
//! calling convention of [`crate::gpu`] and finalizes the accumulators it returns. The driver
//! library is loaded at run time: a machine without it gets [`CudaError::NoDriver`], never a
//! panic (cudarc panics when `libcuda` is missing, so every entry checks for it first).

use crate::abi::Signature;
use crate::arrays::{check_arguments, ArgumentError, ArrayRef, DType, DataRef, HostArray};
use crate::gpu::{merge_parts, GpuLaunch1D, InnerSplit};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA driver found (libcuda is not installed or not on the library path); `--backend cpu` runs on this machine")]
    NoDriver,
    #[error("no CUDA device {ordinal}: the driver sees {count}")]
    NoDevice { ordinal: usize, count: usize },
    #[error("the CUDA driver failed while {doing}: {message}")]
    Driver {
        doing: &'static str,
        message: String,
    },
    #[error(transparent)]
    Argument(#[from] ArgumentError),
    #[error("{rows} output rows need {blocks} blocks, more than a launch may have (2^31 - 1)")]
    TooManyRows { rows: usize, blocks: usize },
    #[error("kernel `{kernel}` carries no GPU code for {dtype}: build its module with `keopsc build --gpu`")]
    NoGpuCode {
        kernel: String,
        dtype: crate::arrays::DType,
    },
}

fn driver(doing: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        doing,
        message: e.to_string(),
    }
}

/// Whether the driver library can be loaded (the guard every entry takes).
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library, and closes it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// One GPU and the stream work is queued on.
pub struct CudaDevice {
    stream: Arc<CudaStream>,
    multiprocessors: usize,
}

impl CudaDevice {
    /// The GPU `ordinal` (0 for the first).
    pub fn new(ordinal: usize) -> Result<CudaDevice, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(driver("counting devices"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let context = CudaContext::new(ordinal).map_err(driver("creating a context"))?;
        let multiprocessors = context
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(driver("reading the multiprocessor count"))?;
        Ok(CudaDevice {
            stream: context.default_stream(),
            multiprocessors: usize::try_from(multiprocessors).unwrap_or(1).max(1),
        })
    }

    /// Its streaming multiprocessors (132 on an H100 SXM).
    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }
}

/// A 1-D kernel loaded on a device.
pub struct CudaKernel {
    signature: Signature,
    dtype: DType,
    launch: GpuLaunch1D,
    function: CudaFunction,
    stream: Arc<CudaStream>,
    multiprocessors: usize,
}

/// An input on the device.
enum DeviceArray {
    F32(CudaSlice<f32>),
    F64(CudaSlice<f64>),
}

/// Copies `data` to the device (one element at least: the driver allocates no empty buffer).
fn upload<T: DeviceRepr + Default + Copy>(
    stream: &Arc<CudaStream>,
    data: &[T],
) -> Result<CudaSlice<T>, CudaError> {
    let placeholder = [T::default()];
    let data = if data.is_empty() { &placeholder } else { data };
    stream.clone_htod(data).map_err(driver("copying an input"))
}

impl CudaKernel {
    /// Loads `ptx` (the driver JIT-compiles it) and its entry point `symbol`, a 1-D kernel
    /// compiled for `signature` and `dtype` with `launch`'s block size.
    pub fn load(
        device: &CudaDevice,
        ptx: &str,
        symbol: &str,
        signature: Signature,
        dtype: DType,
        launch: GpuLaunch1D,
    ) -> Result<CudaKernel, CudaError> {
        let context = device.stream.context();
        let module = context
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(driver("loading the PTX"))?;
        let function = module
            .load_function(symbol)
            .map_err(driver("finding the kernel"))?;
        Ok(CudaKernel {
            signature,
            dtype,
            launch,
            function,
            stream: device.stream.clone(),
            multiprocessors: device.multiprocessors,
        })
    }

    /// Loads the GPU code a kernel carries for `dtype` (a module built with `keopsc build
    /// --gpu`): no compiler needed.
    pub fn from_kernel(
        device: &CudaDevice,
        kernel: &crate::Kernel,
        dtype: DType,
    ) -> Result<CudaKernel, CudaError> {
        let code = kernel.gpu_code(dtype).ok_or_else(|| CudaError::NoGpuCode {
            kernel: kernel.name().to_string(),
            dtype,
        })?;
        CudaKernel::load(
            device,
            &code.ptx,
            &code.symbol,
            kernel.signature().clone(),
            dtype,
            code.launch,
        )
    }

    /// Waits until the work queued on the kernel's stream is done (for timings).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(driver("waiting for the stream"))
    }

    /// Runs the kernel on host arrays (signature order, checked as the CPU's are) and returns
    /// the output, `(rows, output_dim)` in the kernel's dtype.
    pub fn run(&self, arrays: &[ArrayRef]) -> Result<HostArray, CudaError> {
        let sig = &self.signature;
        let size = check_arguments(sig, arrays)?;
        let (rows, inner) = size.rows_and_inner(sig.axis);
        let split = InnerSplit::choose(
            rows,
            inner,
            self.launch.block as usize,
            sig.reduction.acc_dim(),
            self.multiprocessors,
        );
        self.run_split(arrays, split)
    }

    /// [`CudaKernel::run`] with the inner range cut by `split` (one part: the 1-D schedule;
    /// more: the 2-D one, the parts' accumulators merged here in order).
    pub fn run_split(
        &self,
        arrays: &[ArrayRef],
        split: InnerSplit,
    ) -> Result<HostArray, CudaError> {
        let sig = &self.signature;
        let size = check_arguments(sig, arrays)?;
        size.check_compiled_dtype(sig, self.dtype)?;
        let (rows, inner) = size.rows_and_inner(sig.axis);
        let red = &sig.reduction;
        let (acc_dim, out_dim) = (red.acc_dim(), red.output_dim());
        let parts = split.parts.max(1);
        let blocks = self.launch.grid(rows);
        if blocks > i32::MAX as usize {
            return Err(CudaError::TooManyRows { rows, blocks });
        }
        if parts > u16::MAX as usize {
            return Err(CudaError::Driver {
                doing: "launching the kernel",
                message: format!(
                    "{parts} parts of the inner range: a grid has at most 65535 block rows"
                ),
            });
        }
        let mut acc_host = vec![0.0f64; rows * acc_dim];
        if rows > 0 && acc_dim > 0 {
            let inputs: Vec<DeviceArray> = arrays
                .iter()
                .map(|a| match a.data {
                    DataRef::F32(v) => upload(&self.stream, v).map(DeviceArray::F32),
                    DataRef::F64(v) => upload(&self.stream, v).map(DeviceArray::F64),
                })
                .collect::<Result<_, _>>()?;
            let mut acc = self
                .stream
                .alloc_zeros::<f64>(parts * rows * acc_dim)
                .map_err(driver("allocating the accumulators"))?;
            let (rows_arg, inner_arg, chunk_arg) =
                (rows as i64, inner as i64, split.chunk.max(1) as i64);
            let mut launch = self.stream.launch_builder(&self.function);
            for input in &inputs {
                match input {
                    DeviceArray::F32(s) => launch.arg(s),
                    DeviceArray::F64(s) => launch.arg(s),
                };
            }
            launch
                .arg(&rows_arg)
                .arg(&inner_arg)
                .arg(&chunk_arg)
                .arg(&mut acc);
            let config = LaunchConfig {
                grid_dim: (blocks as u32, parts as u32, 1),
                block_dim: (self.launch.block, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel was compiled for this signature, dtype and block size
            // (`load`); its parameters are one device buffer per argument holding the checked
            // arrays, the row count, the inner size, the part length and
            // `parts x rows x acc_dim` f64 accumulators, for a grid of `parts` block rows.
            unsafe { launch.launch(config) }.map_err(driver("launching the kernel"))?;
            let partial = self
                .stream
                .clone_dtoh(&acc)
                .map_err(driver("copying the accumulators back"))?;
            acc_host = merge_parts(red, &partial, parts, rows);
        } else {
            for row in acc_host.chunks_mut(acc_dim.max(1)) {
                red.init(row);
            }
        }
        let mut out = vec![0.0f64; rows * out_dim];
        if out_dim > 0 {
            for (acc, row) in acc_host.chunks(acc_dim.max(1)).zip(out.chunks_mut(out_dim)) {
                red.finalize(acc, row);
            }
        }
        let shape = vec![rows, out_dim];
        Ok(match self.dtype {
            DType::F32 => HostArray::from_f32(shape, out.iter().map(|&x| x as f32).collect()),
            DType::F64 => HostArray::from_f64(shape, out),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without the driver the device is an error that says so, not a panic.
    #[test]
    fn a_machine_without_the_driver_gets_a_clear_error() {
        if driver_present() {
            eprintln!("SKIPPED: this machine has a CUDA driver");
            return;
        }
        let err = CudaDevice::new(0)
            .err()
            .expect("no device without a driver");
        assert_eq!(err, CudaError::NoDriver);
        assert!(err.to_string().starts_with("no CUDA driver found"), "{err}");
    }
}
