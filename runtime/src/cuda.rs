//! The CUDA runtime (feature `cuda`): loads a 1-D kernel's PTX into the driver (which
//! JIT-compiles it for the GPU), copies host arrays to the device or reads buffers already
//! there ([`DeviceArg`]: a framework's tensors, in place), launches the kernel in the calling
//! convention of [`crate::gpu`] and finalizes the accumulators it returns. The copies in, the
//! launch and the copy of the accumulators back are queued on one stream and the host waits
//! once, for the accumulators (the inputs are O(N + M), the work O(N M): overlapping them
//! further would save nothing measurable). The driver library is loaded at run time: a machine
//! without it gets [`CudaError::NoDriver`], never a panic (cudarc panics when `libcuda` is
//! missing, so every entry checks for it first).

use crate::abi::Signature;
use crate::arrays::{
    check_arguments, check_layouts, ArgumentError, ArgumentLayout, ArrayRef, DType, DataRef,
    HostArray, ProblemSize,
};
use crate::executor::{DeviceError, ExecError, Executor};
use crate::gpu::{merge_parts, GpuLaunch1D, GpuRangesTable, InnerSplit, GPU_RANGES_SYMBOL};
use crate::ranges::Ranges;
use crate::reduction::Reduction;
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
    #[error(transparent)]
    Ranges(#[from] crate::ranges::RangesError),
    #[error(
        "this GPU kernel is `{0}`; block-sparse runs need the `keops_gpu_tile_ranges` entry point"
    )]
    NotRangesKernel(String),
    #[error(
        "this GPU kernel is the block-sparse one (`keops_gpu_tile_ranges`): run it with `run_ranges`"
    )]
    NotTilesKernel,
    #[error("kernel `{kernel}` carries no block-sparse GPU code for {dtype}: build its module with `keopsc build --gpu` (modules built before the block-sparse kernel carry only the 1-D one)")]
    NoGpuRangesCode {
        kernel: String,
        dtype: crate::arrays::DType,
    },
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

    /// Copies `array` to the device once, for calls that read it in place
    /// ([`CudaKernel::run_device`] through [`DeviceArray::arg`]): inputs that stay the same
    /// across calls (the points of an operator applied many times) are not copied again.
    pub fn upload(&self, array: ArrayRef) -> Result<DeviceArray, CudaError> {
        let data = match array.data {
            DataRef::F32(v) => DeviceInput::F32(upload(&self.stream, v)?),
            DataRef::F64(v) => DeviceInput::F64(upload(&self.stream, v)?),
        };
        Ok(DeviceArray {
            data,
            shape: array.shape.to_vec(),
            dtype: array.dtype(),
            stream: self.stream.clone(),
        })
    }
}

/// An array this runtime copied to the device ([`CudaDevice::upload`]), freed when dropped.
pub struct DeviceArray {
    data: DeviceInput,
    shape: Vec<usize>,
    dtype: DType,
    stream: Arc<CudaStream>,
}

impl DeviceArray {
    /// The array as an argument read in place.
    pub fn arg(&self) -> DeviceArg<'_> {
        use cudarc::driver::DevicePtr;
        let pointer = match &self.data {
            DeviceInput::F32(s) => s.device_ptr(&self.stream).0,
            DeviceInput::F64(s) => s.device_ptr(&self.stream).0,
            DeviceInput::Borrowed(p) => *p,
        };
        DeviceArg {
            pointer,
            shape: &self.shape,
            dtype: self.dtype,
        }
    }
}

/// A 1-D kernel loaded on a device.
pub struct CudaKernel {
    signature: Signature,
    dtype: DType,
    launch: GpuLaunch1D,
    symbol: String,
    function: CudaFunction,
    stream: Arc<CudaStream>,
    multiprocessors: usize,
}

/// An input on the device: copied there by this call, or the caller's buffer.
enum DeviceInput {
    F32(CudaSlice<f32>),
    F64(CudaSlice<f64>),
    Borrowed(u64),
}

/// An argument already in device memory, read in place: the address of its first element (a
/// `CUdeviceptr` in the device's primary context, where CUDA frameworks allocate), its shape
/// and dtype, row-major and naturally aligned as a host array would be.
#[derive(Clone, Copy, Debug)]
pub struct DeviceArg<'a> {
    pub pointer: u64,
    pub shape: &'a [usize],
    pub dtype: DType,
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
            symbol: symbol.to_string(),
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
        CudaKernel::load_code(device, kernel, code)
    }

    /// Loads the block-sparse GPU kernel a kernel carries for `dtype` (modules built with
    /// `keopsc build --gpu`), which [`CudaKernel::run_ranges`] runs.
    pub fn from_kernel_ranges(
        device: &CudaDevice,
        kernel: &crate::Kernel,
        dtype: DType,
    ) -> Result<CudaKernel, CudaError> {
        let code = kernel
            .gpu_ranges_code(dtype)
            .ok_or_else(|| CudaError::NoGpuRangesCode {
                kernel: kernel.name().to_string(),
                dtype,
            })?;
        CudaKernel::load_code(device, kernel, code)
    }

    fn load_code(
        device: &CudaDevice,
        kernel: &crate::Kernel,
        code: &crate::gpu::GpuCode,
    ) -> Result<CudaKernel, CudaError> {
        CudaKernel::load(
            device,
            &code.ptx,
            &code.symbol,
            kernel.signature().clone(),
            code.dtype,
            code.launch,
        )
    }

    /// Waits until the work queued on the kernel's stream is done (for timings).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(driver("waiting for the stream"))
    }

    /// Registers per thread of the code the driver compiled (what ptxas would report).
    pub fn registers(&self) -> Result<u32, CudaError> {
        let n = self
            .function
            .num_regs()
            .map_err(driver("reading the kernel's registers"))?;
        Ok(u32::try_from(n).unwrap_or(0))
    }

    /// Blocks of the kernel a multiprocessor holds at once, as the driver computes it.
    pub fn resident_blocks(&self) -> Result<u32, CudaError> {
        self.function
            .occupancy_max_active_blocks_per_multiprocessor(self.launch.block, 0, None)
            .map_err(driver("computing the occupancy"))
    }

    /// The launch shape the kernel was compiled for.
    pub fn launch(&self) -> GpuLaunch1D {
        self.launch
    }

    /// The split of the inner range for a problem of `size` on this device.
    fn split_for(&self, size: ProblemSize) -> InnerSplit {
        let sig = &self.signature;
        let (rows, inner) = size.rows_and_inner(sig.axis);
        InnerSplit::choose(
            rows,
            inner,
            self.launch.block as usize,
            sig.reduction.acc_dim(),
            self.multiprocessors,
        )
    }

    /// Runs the kernel on host arrays (signature order, checked as the CPU's are) and returns
    /// the output, `(rows, output_dim)` in the kernel's dtype.
    pub fn run(&self, arrays: &[ArrayRef]) -> Result<HostArray, CudaError> {
        let size = check_arguments(&self.signature, arrays)?;
        self.run_split(arrays, self.split_for(size))
    }

    /// Runs the kernel on buffers already in device memory (signature order; their shapes and
    /// dtypes are checked as host arrays' are, their contents are not read by the host), and
    /// returns the output on the host. The kernel runs on this runtime's stream: work the
    /// caller queued on other streams to produce the buffers must be finished first.
    ///
    /// # Safety
    ///
    /// Each `pointer` must address `shape.iter().product()` elements of `dtype` in device
    /// memory of this device's primary context, naturally aligned, not written until the
    /// call returns.
    pub unsafe fn run_device(&self, args: &[DeviceArg]) -> Result<HostArray, CudaError> {
        let layouts: Vec<Option<ArgumentLayout>> = args
            .iter()
            .map(|a| {
                Some(ArgumentLayout {
                    shape: a.shape,
                    dtype: a.dtype,
                    // A device buffer holds what its shape says; a shape whose size overflows
                    // holds no such thing, and the check below refuses it.
                    len: crate::arrays::element_count(a.shape).unwrap_or(usize::MAX),
                })
            })
            .collect();
        let size = check_layouts(&self.signature, &layouts).map_err(|errors| {
            errors
                .into_iter()
                .next()
                .expect("a failed check has an error")
        })?;
        size.check_compiled_dtype(&self.signature, self.dtype)?;
        let inputs: Vec<DeviceInput> = args
            .iter()
            .map(|a| DeviceInput::Borrowed(a.pointer))
            .collect();
        self.launch_and_finalize(&inputs, size, self.split_for(size))
    }

    /// [`CudaKernel::run`] with the inner range cut by `split` (one part: the 1-D schedule;
    /// more: the 2-D one, the parts' accumulators merged here in order).
    pub fn run_split(
        &self,
        arrays: &[ArrayRef],
        split: InnerSplit,
    ) -> Result<HostArray, CudaError> {
        let size = check_arguments(&self.signature, arrays)?;
        size.check_compiled_dtype(&self.signature, self.dtype)?;
        let (rows, _) = size.rows_and_inner(self.signature.axis);
        let inputs: Vec<DeviceInput> = if rows > 0 && self.signature.reduction.acc_dim() > 0 {
            self.upload_inputs(arrays)?
        } else {
            Vec::new()
        };
        self.launch_and_finalize(&inputs, size, split)
    }

    /// Copies the arrays to the device, in order.
    fn upload_inputs(&self, arrays: &[ArrayRef]) -> Result<Vec<DeviceInput>, CudaError> {
        arrays
            .iter()
            .map(|a| match a.data {
                DataRef::F32(v) => upload(&self.stream, v).map(DeviceInput::F32),
                DataRef::F64(v) => upload(&self.stream, v).map(DeviceInput::F64),
            })
            .collect()
    }

    /// Runs the block-sparse kernel (loaded from `keops_gpu_tile_ranges`: see
    /// [`crate::gpu`]) over the pairs `ranges` keeps, on host arrays (signature order, checked
    /// as the CPU's are, and the ranges against their sizes); returns the output as
    /// [`CudaKernel::run`] does. Rows in no cluster reduce over nothing, as on the CPU.
    pub fn run_ranges(&self, arrays: &[ArrayRef], ranges: &Ranges) -> Result<HostArray, CudaError> {
        if self.symbol != GPU_RANGES_SYMBOL {
            return Err(CudaError::NotRangesKernel(self.symbol.clone()));
        }
        let sig = &self.signature;
        let size = check_arguments(sig, arrays)?;
        size.check_compiled_dtype(sig, self.dtype)?;
        let (rows, inner) = size.rows_and_inner(sig.axis);
        ranges.check(sig.axis, rows, inner)?;
        let red = &sig.reduction;
        let table = GpuRangesTable::new(ranges, self.launch.block as usize);
        let mut acc_host = table.initial_accumulators(red, rows);
        let blocks = table.block_count();
        if blocks > i32::MAX as usize {
            return Err(CudaError::TooManyRows { rows, blocks });
        }
        if blocks > 0 && red.acc_dim() > 0 {
            let inputs = self.upload_inputs(arrays)?;
            let blocks_dev = upload(&self.stream, &table.blocks)?;
            let ranges_dev = upload(&self.stream, &table.inner)?;
            let mut acc = self
                .stream
                .clone_htod(&acc_host)
                .map_err(driver("copying the accumulators"))?;
            let mut launch = self.stream.launch_builder(&self.function);
            for input in &inputs {
                match input {
                    DeviceInput::F32(s) => launch.arg(s),
                    DeviceInput::F64(s) => launch.arg(s),
                    DeviceInput::Borrowed(pointer) => launch.arg(pointer),
                };
            }
            launch.arg(&blocks_dev).arg(&ranges_dev).arg(&mut acc);
            let config = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (self.launch.block, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the block-sparse kernel compiled for this signature, dtype and block
            // size (its symbol checked above); its parameters are one device buffer per
            // argument holding the checked arrays, the work list of the checked ranges for
            // this block size (4 i64 per block, one block of the grid each), its inner ranges
            // (2 i64 each) and `rows x acc_dim` f64 accumulators.
            unsafe { launch.launch(config) }.map_err(driver("launching the kernel"))?;
            acc_host = self
                .stream
                .clone_dtoh(&acc)
                .map_err(driver("copying the accumulators back"))?;
        }
        Ok(finalized(red, &acc_host, rows, self.dtype))
    }

    /// Launches the kernel on `inputs` (in device memory) for a problem of `size` with the
    /// inner range cut by `split`, copies the accumulators back, merges the parts and
    /// finalizes the rows.
    fn launch_and_finalize(
        &self,
        inputs: &[DeviceInput],
        size: ProblemSize,
        split: InnerSplit,
    ) -> Result<HostArray, CudaError> {
        // The block-sparse kernel takes a work list where this launch passes sizes: it would
        // read them as pointers.
        if self.symbol == GPU_RANGES_SYMBOL {
            return Err(CudaError::NotTilesKernel);
        }
        let sig = &self.signature;
        let (rows, inner) = size.rows_and_inner(sig.axis);
        let red = &sig.reduction;
        let acc_dim = red.acc_dim();
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
            let mut acc = self
                .stream
                .alloc_zeros::<f64>(parts * rows * acc_dim)
                .map_err(driver("allocating the accumulators"))?;
            let (rows_arg, inner_arg, chunk_arg) =
                (rows as i64, inner as i64, split.chunk.max(1) as i64);
            let mut launch = self.stream.launch_builder(&self.function);
            for input in inputs {
                match input {
                    DeviceInput::F32(s) => launch.arg(s),
                    DeviceInput::F64(s) => launch.arg(s),
                    DeviceInput::Borrowed(pointer) => launch.arg(pointer),
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
            // arrays (copied here, or the caller's under `run_device`'s contract), the row
            // count, the inner size, the part length and `parts x rows x acc_dim` f64
            // accumulators, for a grid of `parts` block rows.
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
        Ok(finalized(red, &acc_host, rows, self.dtype))
    }
}

/// The output rows (`rows x output_dim`, in `dtype`) of the rows' accumulators.
fn finalized(red: &Reduction, acc_host: &[f64], rows: usize, dtype: DType) -> HostArray {
    let (acc_dim, out_dim) = (red.acc_dim(), red.output_dim());
    let mut out = vec![0.0f64; rows * out_dim];
    if out_dim > 0 {
        for (acc, row) in acc_host.chunks(acc_dim.max(1)).zip(out.chunks_mut(out_dim)) {
            red.finalize(acc, row);
        }
    }
    let shape = vec![rows, out_dim];
    match dtype {
        DType::F32 => HostArray::from_f32(shape, out.iter().map(|&x| x as f32).collect()),
        DType::F64 => HostArray::from_f64(shape, out),
    }
}

impl Executor for CudaKernel {
    fn backend(&self) -> &'static str {
        "cuda"
    }

    fn reduce(&self, arrays: &[ArrayRef]) -> Result<HostArray, ExecError> {
        Ok(self.run(arrays)?)
    }
}

impl From<CudaError> for ExecError {
    fn from(e: CudaError) -> ExecError {
        match e {
            CudaError::Argument(a) => ExecError::Argument(a),
            other => ExecError::Device(DeviceError::new("cuda", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without the driver the device is an error that says so, not a panic; with
    /// one, a device past the last is an error too (and device 0 opens where there is one).
    #[test]
    fn devices_that_cannot_open_give_a_clear_error() {
        if driver_present() {
            let err = CudaDevice::new(usize::MAX)
                .err()
                .expect("no device at the largest ordinal");
            assert_ne!(err, CudaError::NoDriver, "{err}");
            return;
        }
        let err = CudaDevice::new(0)
            .err()
            .expect("no device without a driver");
        assert_eq!(err, CudaError::NoDriver);
        assert!(err.to_string().starts_with("no CUDA driver found"), "{err}");
    }
}
