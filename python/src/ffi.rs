//! `keops_rs.jax`'s native half: XLA FFI handlers that run compiled keops-rs kernels on XLA's
//! CPU buffers inside a jitted program (no host callback), and the registry that ties the
//! integer attribute of each custom call to a compiled kernel or backward plan.
//!
//! Two targets, registered by `keops_rs/jax.py` with `jax.ffi.register_ffi_target`:
//! - `keops_rs_call` (attribute `kernel`): the forward kernel on the input buffers, written
//!   straight into XLA's output buffer: nothing is copied in or out.
//! - `keops_rs_vjp` (attribute `plan`): the gradients of `sum(G * out)` with respect to the
//!   inputs a backward plan names (`keops_driver::vjp::plan_many`), from the inputs, `G`, and for the
//!   LogSumExp family the forward output saved by the forward pass. Its backward kernels are
//!   compiled once, when Python asks for the plan at trace time.
//!
//! The C API is mirrored by hand from jaxlib's `xla/ffi/api/c_api.h` (version 0.3): bindgen
//! would need libclang at build time. Every size and offset used is asserted at compile time,
//! and `_ffi_layout()` hands the same numbers to a test that compiles a C program against the
//! header (python/tests/test_jax.py).
//!
//! Ids are never reused and entries never removed: a compiled XLA program holds the id as a
//! constant and may outlive the Python object that asked for it.

use crate::{argument_error, panic_text, Compiled, Kernel, PyErrText};
use c_api::*;
use keops_driver::batch;
use keops_driver::driver::{Backend, EvalError};
use keops_driver::jit_cache::JitCache;
use keops_driver::vjp::{self as kvjp, SavedForward, VjpError, VjpManyPlan};
use keops_runtime::{ArrayData, ArrayRef, DType, HostArray, OutputRef};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;
use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::mem::{offset_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{null_mut, NonNull};
use std::sync::{Arc, OnceLock, RwLock};

/// The parts of `xla/ffi/api/c_api.h` the handlers touch, field for field. C enums are `i32`
/// with their values as constants (a Rust enum would be undefined behaviour for a value XLA
/// adds later). Unused function slots of `XLA_FFI_Api` are kept as plain pointers so that the
/// struct keeps the header's size.
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]
mod c_api {
    use std::ffi::{c_char, c_int, c_void};

    pub const XLA_FFI_API_MAJOR: c_int = 0;
    pub const XLA_FFI_API_MINOR: c_int = 3;

    pub const XLA_FFI_Extension_Metadata: i32 = 1;

    #[repr(C)]
    pub struct XLA_FFI_Extension_Base {
        pub struct_size: usize,
        pub type_: i32,
        pub next: *mut XLA_FFI_Extension_Base,
    }

    #[repr(C)]
    pub struct XLA_FFI_Api_Version {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub major_version: c_int,
        pub minor_version: c_int,
    }

    /// Opaque: made by `XLA_FFI_Error_Create`, owned by XLA once returned; never read here.
    #[repr(C)]
    pub struct XLA_FFI_Error {
        _opaque: [u8; 0],
    }

    pub const XLA_FFI_Error_Code_INVALID_ARGUMENT: i32 = 3;
    pub const XLA_FFI_Error_Code_INTERNAL: i32 = 13;

    #[repr(C)]
    pub struct XLA_FFI_Error_Create_Args {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub message: *const c_char,
        pub errc: i32,
    }

    pub type XLA_FFI_Error_Create =
        unsafe extern "C" fn(args: *mut XLA_FFI_Error_Create_Args) -> *mut XLA_FFI_Error;

    pub const XLA_FFI_DataType_F32: i32 = 11;
    pub const XLA_FFI_DataType_F64: i32 = 12;

    #[repr(C)]
    pub struct XLA_FFI_Buffer {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub dtype: i32,
        pub data: *mut c_void,
        pub rank: i64,
        pub dims: *mut i64,
    }

    pub const XLA_FFI_ArgType_BUFFER: i32 = 1;
    pub const XLA_FFI_RetType_BUFFER: i32 = 1;
    pub const XLA_FFI_AttrType_SCALAR: i32 = 3;
    pub const XLA_FFI_DataType_S64: i32 = 5;

    #[repr(C)]
    pub struct XLA_FFI_ByteSpan {
        pub ptr: *const c_char,
        pub len: usize,
    }

    #[repr(C)]
    pub struct XLA_FFI_Scalar {
        pub dtype: i32,
        pub value: *mut c_void,
    }

    pub const XLA_FFI_ExecutionStage_EXECUTE: i32 = 3;

    #[repr(C)]
    pub struct XLA_FFI_Args {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub size: i64,
        pub types: *mut i32,
        pub args: *mut *mut c_void,
    }

    #[repr(C)]
    pub struct XLA_FFI_Rets {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub size: i64,
        pub types: *mut i32,
        pub rets: *mut *mut c_void,
    }

    #[repr(C)]
    pub struct XLA_FFI_Attrs {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub size: i64,
        pub types: *mut i32,
        pub names: *mut *mut XLA_FFI_ByteSpan,
        pub attrs: *mut *mut c_void,
    }

    #[repr(C)]
    pub struct XLA_FFI_CallFrame {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub api: *const XLA_FFI_Api,
        pub ctx: *mut c_void,
        pub stage: i32,
        pub args: XLA_FFI_Args,
        pub rets: XLA_FFI_Rets,
        pub attrs: XLA_FFI_Attrs,
        pub future: *mut c_void,
    }

    /// The header's `XLA_FFI_CallFrame_STRUCT_SIZE`: up to `attrs` (older frames stop there).
    pub const XLA_FFI_CallFrame_STRUCT_SIZE: usize =
        std::mem::offset_of!(XLA_FFI_CallFrame, attrs) + std::mem::size_of::<XLA_FFI_Attrs>();

    pub type XLA_FFI_Handler =
        unsafe extern "C" fn(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error;

    #[repr(C)]
    pub struct XLA_FFI_TypeId {
        pub type_id: i64,
    }

    #[repr(C)]
    pub struct XLA_FFI_Metadata {
        pub struct_size: usize,
        pub api_version: XLA_FFI_Api_Version,
        pub traits: u32,
        pub state_type_id: XLA_FFI_TypeId,
    }

    #[repr(C)]
    pub struct XLA_FFI_Metadata_Extension {
        pub extension_base: XLA_FFI_Extension_Base,
        pub metadata: *mut XLA_FFI_Metadata,
    }

    #[repr(C)]
    pub struct XLA_FFI_Api {
        pub struct_size: usize,
        pub extension_start: *mut XLA_FFI_Extension_Base,
        pub api_version: XLA_FFI_Api_Version,
        pub internal_api: *const c_void,
        pub XLA_FFI_Error_Create: Option<XLA_FFI_Error_Create>,
        pub XLA_FFI_Error_GetMessage: *const c_void,
        pub XLA_FFI_Error_Destroy: *const c_void,
        pub XLA_FFI_Handler_Register: *const c_void,
        pub XLA_FFI_Stream_Get: *const c_void,
        pub XLA_FFI_Type_Register: *const c_void,
        pub XLA_FFI_ExecutionContext_Get: *const c_void,
        pub XLA_FFI_State_Set: *const c_void,
        pub XLA_FFI_State_Get: *const c_void,
        pub XLA_FFI_DeviceMemory_Allocate: *const c_void,
        pub XLA_FFI_DeviceMemory_Free: *const c_void,
        pub XLA_FFI_ThreadPool_Schedule: *const c_void,
        pub XLA_FFI_ThreadPool_NumThreads: *const c_void,
        pub XLA_FFI_Future_Create: *const c_void,
        pub XLA_FFI_Future_SetAvailable: *const c_void,
        pub XLA_FFI_Future_SetError: *const c_void,
        pub XLA_FFI_RunId_Get: *const c_void,
        pub XLA_FFI_DeviceOrdinal_Get: *const c_void,
    }
}

/// Asserts each struct's size and field offsets at compile time (the numbers the header gives
/// on a 64-bit target) and lists them for the layout test, each named by the C expression
/// that measures it.
macro_rules! checked_layout {
    ($($ty:ident = $size:literal { $($field:ident @ $offset:literal),* $(,)? })*) => {
        $(
            const _: () = assert!(size_of::<$ty>() == $size);
            $( const _: () = assert!(offset_of!($ty, $field) == $offset); )*
        )*

        /// `(C expression, value)` for every size and offset asserted above.
        fn layout() -> Vec<(&'static str, usize)> {
            let mut entries = Vec::new();
            $(
                entries.push((concat!("sizeof(", stringify!($ty), ")"), size_of::<$ty>()));
                $(
                    entries.push((
                        concat!("offsetof(", stringify!($ty), ", ", stringify!($field), ")"),
                        offset_of!($ty, $field),
                    ));
                )*
            )*
            entries.push(("XLA_FFI_CallFrame_STRUCT_SIZE", XLA_FFI_CallFrame_STRUCT_SIZE));
            entries
        }
    };
}

checked_layout! {
    XLA_FFI_Extension_Base = 24 { next @ 16 }
    XLA_FFI_Api_Version = 24 { extension_start @ 8, major_version @ 16, minor_version @ 20 }
    XLA_FFI_Error_Create_Args = 32 { extension_start @ 8, message @ 16, errc @ 24 }
    XLA_FFI_Buffer = 48 { dtype @ 16, data @ 24, rank @ 32, dims @ 40 }
    XLA_FFI_ByteSpan = 16 { ptr @ 0, len @ 8 }
    XLA_FFI_Scalar = 16 { dtype @ 0, value @ 8 }
    XLA_FFI_Args = 40 { size @ 16, types @ 24, args @ 32 }
    XLA_FFI_Rets = 40 { size @ 16, types @ 24, rets @ 32 }
    XLA_FFI_Attrs = 48 { size @ 16, types @ 24, names @ 32, attrs @ 40 }
    XLA_FFI_CallFrame = 176 {
        extension_start @ 8, api @ 16, ctx @ 24, stage @ 32, args @ 40, rets @ 80,
        attrs @ 120, future @ 168,
    }
    XLA_FFI_Metadata = 48 { api_version @ 8, traits @ 32, state_type_id @ 40 }
    XLA_FFI_Metadata_Extension = 32 { extension_base @ 0, metadata @ 24 }
    XLA_FFI_Api = 192 {
        extension_start @ 8, api_version @ 16, internal_api @ 40, XLA_FFI_Error_Create @ 48,
        XLA_FFI_Handler_Register @ 72, XLA_FFI_DeviceOrdinal_Get @ 184,
    }
}

// ---------------------------------------------------------------------------------------------
// The registry

/// A backward plan whose kernels were compiled for one dtype when it was made.
struct Backward {
    plan: VjpManyPlan,
    dtype: DType,
    /// The dense passes read the forward output (the LogSumExp family): the custom call
    /// takes it after `G`.
    reads_output: bool,
}

impl Backward {
    /// The gradients of the inputs the plan names, in its order, as `keops_driver::vjp::run_many`
    /// computes them on the CPU: the two dense passes as one cross pass where the plan has
    /// one, every kernel from the process-wide JIT table (compiled when the plan was made; a
    /// kernel the bounded table has dropped since is compiled again).
    fn gradients(
        &self,
        inputs: &[HostArray],
        cotangent: &HostArray,
        saved: Option<&HostArray>,
    ) -> Result<Vec<HostArray>, String> {
        let refs: Vec<&HostArray> = inputs.iter().collect();
        kvjp::run_many(&self.plan, &refs, cotangent, saved, Backend::Cpu).map_err(|e| e.to_string())
    }
}

#[derive(Default)]
struct Registry {
    kernels: Vec<Arc<Compiled>>,
    /// Block-sparsity patterns (KeOps's 6-tuples), the `ranges` attribute of both calls.
    ranges: Vec<Arc<keops_runtime::RangesPair>>,
    backward: Vec<Arc<Backward>>,
    /// (kernel id, inputs differentiated by position, dtype is f64) -> backward id.
    backward_ids: HashMap<(usize, Vec<usize>, bool), usize>,
}

fn registry() -> &'static RwLock<Registry> {
    static REGISTRY: OnceLock<RwLock<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn read_registry() -> std::sync::RwLockReadGuard<'static, Registry> {
    registry().read().unwrap_or_else(|p| p.into_inner())
}

fn write_registry() -> std::sync::RwLockWriteGuard<'static, Registry> {
    registry().write().unwrap_or_else(|p| p.into_inner())
}

fn registered_kernel(id: i64) -> Result<Arc<Compiled>, String> {
    usize::try_from(id)
        .ok()
        .and_then(|i| read_registry().kernels.get(i).cloned())
        .ok_or_else(|| format!("keops_rs: no compiled kernel with id {id} in this process"))
}

/// The pattern of a call's `ranges` attribute: none for a missing or negative one.
fn registered_ranges(
    attrs: &XLA_FFI_Attrs,
) -> Result<Option<Arc<keops_runtime::RangesPair>>, String> {
    // SAFETY: `attrs` are a call frame's attributes.
    let id = match unsafe { attr_i64(attrs, "ranges") } {
        Ok(id) => id,
        Err(e) if e.starts_with("missing") => return Ok(None),
        Err(e) => return Err(e),
    };
    if id < 0 {
        return Ok(None);
    }
    usize::try_from(id)
        .ok()
        .and_then(|i| read_registry().ranges.get(i).cloned())
        .map(Some)
        .ok_or_else(|| format!("no block-sparsity pattern has id {id}"))
}

/// Copies `array` into a result buffer of its size and dtype.
fn copy_into(array: &HostArray, out: OutputRef, what: &str) -> Result<(), HandlerError> {
    match (&array.data, out) {
        (ArrayData::F32(v), OutputRef::F32(o)) if v.len() == o.len() => o.copy_from_slice(v),
        (ArrayData::F64(v), OutputRef::F64(o)) if v.len() == o.len() => o.copy_from_slice(v),
        _ => {
            return Err(
                format!("{what}: the buffer does not match the computed shape and dtype").into(),
            )
        }
    }
    Ok(())
}

fn registered_backward(id: i64) -> Result<Arc<Backward>, String> {
    usize::try_from(id)
        .ok()
        .and_then(|i| read_registry().backward.get(i).cloned())
        .ok_or_else(|| format!("keops_rs: no backward plan with id {id} in this process"))
}

// ---------------------------------------------------------------------------------------------
// Reading a call frame

/// One buffer of a call frame, its dimensions read.
struct Buffer {
    dtype: i32,
    data: *mut c_void,
    shape: Vec<usize>,
}

// The C API's constants keep the header's spelling, in patterns too.
#[allow(non_upper_case_globals)]
impl Buffer {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The buffer as a kernel input, read in place.
    ///
    /// # Safety
    /// `data` must point to `len()` elements of `dtype` that stay valid for `'a`.
    unsafe fn view<'a>(&'a self, name: &str) -> Result<ArrayRef<'a>, String> {
        let len = self.len();
        // XLA may hand a dangling pointer for an empty buffer: never read it.
        Ok(match self.dtype {
            XLA_FFI_DataType_F32 if len == 0 => ArrayRef::f32(&self.shape, &[]),
            XLA_FFI_DataType_F64 if len == 0 => ArrayRef::f64(&self.shape, &[]),
            XLA_FFI_DataType_F32 => ArrayRef::f32(&self.shape, unsafe {
                std::slice::from_raw_parts(self.data as *const f32, len)
            }),
            XLA_FFI_DataType_F64 => ArrayRef::f64(&self.shape, unsafe {
                std::slice::from_raw_parts(self.data as *const f64, len)
            }),
            other => {
                return Err(format!(
                    "argument `{name}` has XLA element type {other}; expected float32 or float64"
                ))
            }
        })
    }

    /// The buffer as a kernel output, written in place.
    ///
    /// # Safety
    /// As [`Buffer::view`], and nothing else reads or writes the buffer meanwhile.
    unsafe fn output(&self, what: &str) -> Result<OutputRef<'_>, String> {
        let len = self.len();
        Ok(match self.dtype {
            XLA_FFI_DataType_F32 if len == 0 => OutputRef::F32(&mut []),
            XLA_FFI_DataType_F64 if len == 0 => OutputRef::F64(&mut []),
            XLA_FFI_DataType_F32 => OutputRef::F32(unsafe {
                std::slice::from_raw_parts_mut(self.data as *mut f32, len)
            }),
            XLA_FFI_DataType_F64 => OutputRef::F64(unsafe {
                std::slice::from_raw_parts_mut(self.data as *mut f64, len)
            }),
            other => {
                return Err(format!(
                    "{what} has XLA element type {other}; expected float32 or float64"
                ))
            }
        })
    }

    /// A copy of the buffer (the backward passes take host arrays).
    ///
    /// # Safety
    /// As [`Buffer::view`].
    unsafe fn to_host(&self, name: &str) -> Result<HostArray, String> {
        let view = unsafe { self.view(name)? };
        Ok(match view.data {
            keops_runtime::DataRef::F32(d) => HostArray::from_f32(self.shape.clone(), d.to_vec()),
            keops_runtime::DataRef::F64(d) => HostArray::from_f64(self.shape.clone(), d.to_vec()),
        })
    }
}

/// The buffers of an argument or result list.
///
/// # Safety
/// `types` and `list` must hold `size` entries, each a `XLA_FFI_Buffer` when typed BUFFER.
unsafe fn buffers(
    size: i64,
    types: *const i32,
    list: *const *mut c_void,
    what: &str,
) -> Result<Vec<Buffer>, String> {
    let size = usize::try_from(size).map_err(|_| format!("{what}: negative count {size}"))?;
    let mut out = Vec::with_capacity(size);
    for k in 0..size {
        let (kind, item) = unsafe { (*types.add(k), *list.add(k)) };
        // Argument and result buffers share the value 1 (XLA_FFI_ArgType_BUFFER, _RetType_).
        if kind != XLA_FFI_ArgType_BUFFER || item.is_null() {
            return Err(format!("{what} {k} is not a buffer"));
        }
        let buffer = unsafe { &*(item as *const XLA_FFI_Buffer) };
        let rank =
            usize::try_from(buffer.rank).map_err(|_| format!("{what} {k}: negative rank"))?;
        let shape = (0..rank)
            .map(|d| usize::try_from(unsafe { *buffer.dims.add(d) }))
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|_| format!("{what} {k}: a negative dimension"))?;
        out.push(Buffer {
            dtype: buffer.dtype,
            data: buffer.data,
            shape,
        });
    }
    Ok(out)
}

/// The S64 scalar attribute `name`.
///
/// # Safety
/// `attrs` must be a call frame's attributes.
unsafe fn attr_i64(attrs: &XLA_FFI_Attrs, name: &str) -> Result<i64, String> {
    let count = usize::try_from(attrs.size).unwrap_or(0);
    for k in 0..count {
        let (kind, span, value) = unsafe {
            (
                *attrs.types.add(k),
                &**attrs.names.add(k),
                *attrs.attrs.add(k),
            )
        };
        // Names are byte spans, not NUL-terminated.
        let bytes = unsafe { std::slice::from_raw_parts(span.ptr as *const u8, span.len) };
        if bytes != name.as_bytes() {
            continue;
        }
        let scalar = unsafe { &*(value as *const XLA_FFI_Scalar) };
        if kind != XLA_FFI_AttrType_SCALAR || scalar.dtype != XLA_FFI_DataType_S64 {
            return Err(format!("attribute `{name}` must be a 64-bit integer"));
        }
        return Ok(unsafe { *(scalar.value as *const i64) });
    }
    Err(format!("missing attribute `{name}`"))
}

/// The first extension of the frame's list of type Metadata: XLA asks for the API version
/// the handler was built against before it accepts the handler.
///
/// # Safety
/// `frame` must be a call frame.
unsafe fn metadata_request(frame: &XLA_FFI_CallFrame) -> Option<*mut XLA_FFI_Metadata> {
    let mut ext = frame.extension_start;
    while !ext.is_null() {
        let base = unsafe { &*ext };
        if base.type_ == XLA_FFI_Extension_Metadata {
            let metadata = unsafe { (*(ext as *const XLA_FFI_Metadata_Extension)).metadata };
            return (!metadata.is_null()).then_some(metadata);
        }
        ext = base.next;
    }
    None
}

/// Why a handler failed, as XLA will report it.
struct HandlerError {
    code: i32,
    message: String,
}

impl From<String> for HandlerError {
    fn from(message: String) -> HandlerError {
        HandlerError {
            code: XLA_FFI_Error_Code_INVALID_ARGUMENT,
            message,
        }
    }
}

/// Runs `body` on the frame: the metadata query first, a panic caught at this boundary (it
/// must never unwind into XLA), errors returned through `XLA_FFI_Error_Create`.
///
/// # Safety
/// `frame` must be the call frame XLA passes to a handler.
unsafe fn handle(
    frame: *mut XLA_FFI_CallFrame,
    body: unsafe fn(&XLA_FFI_CallFrame) -> Result<(), HandlerError>,
) -> *mut XLA_FFI_Error {
    if frame.is_null() {
        return null_mut();
    }
    let frame = unsafe { &*frame };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if let Some(metadata) = unsafe { metadata_request(frame) } {
            let metadata = unsafe { &mut *metadata };
            metadata.api_version.major_version = XLA_FFI_API_MAJOR;
            metadata.api_version.minor_version = XLA_FFI_API_MINOR;
            metadata.traits = 0;
            return Ok(());
        }
        if frame.struct_size < XLA_FFI_CallFrame_STRUCT_SIZE {
            return Err(HandlerError::from(format!(
                "keops_rs: XLA passed a call frame of {} bytes; this build needs at least {} \
                 (XLA FFI API {XLA_FFI_API_MAJOR}.{XLA_FFI_API_MINOR})",
                frame.struct_size, XLA_FFI_CallFrame_STRUCT_SIZE
            )));
        }
        if frame.stage != XLA_FFI_ExecutionStage_EXECUTE {
            return Ok(());
        }
        unsafe { body(frame) }
    }));
    let error = match outcome {
        Ok(Ok(())) => return null_mut(),
        Ok(Err(e)) => e,
        Err(panic) => HandlerError {
            code: XLA_FFI_Error_Code_INTERNAL,
            message: format!(
                "internal error in keops_rs's XLA handler: {}",
                panic_text(panic)
            ),
        },
    };
    unsafe { create_error(frame.api, error) }
}

/// # Safety
/// `api` must be null or XLA's API table.
unsafe fn create_error(api: *const XLA_FFI_Api, error: HandlerError) -> *mut XLA_FFI_Error {
    let Some(create) = (unsafe { api.as_ref() }).and_then(|a| a.XLA_FFI_Error_Create) else {
        return null_mut();
    };
    let message = CString::new(error.message.replace('\0', " ")).unwrap_or_default();
    let mut args = XLA_FFI_Error_Create_Args {
        struct_size: size_of::<XLA_FFI_Error_Create_Args>(),
        extension_start: null_mut(),
        message: message.as_ptr(),
        errc: error.code,
    };
    // XLA copies the message.
    unsafe { create(&mut args) }
}

// ---------------------------------------------------------------------------------------------
// The handlers

/// `keops_rs_call`: the forward kernel, inputs read and the output written in place.
///
/// # Safety
/// Called by XLA with a call frame.
unsafe extern "C" fn keops_rs_call(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    unsafe { handle(frame, run_forward) }
}

unsafe fn run_forward(frame: &XLA_FFI_CallFrame) -> Result<(), HandlerError> {
    let kernel = registered_kernel(unsafe { attr_i64(&frame.attrs, "kernel")? })?;
    let args = unsafe {
        buffers(
            frame.args.size,
            frame.args.types,
            frame.args.args,
            "argument",
        )?
    };
    let rets = unsafe { buffers(frame.rets.size, frame.rets.types, frame.rets.rets, "result")? };
    let sig = kernel.code.signature();
    if args.len() != sig.args.len() || rets.len() != 1 {
        return Err(format!(
            "kernel `{}` takes {} arguments and gives 1 result; the call has {} and {}",
            sig.name,
            sig.args.len(),
            args.len(),
            rets.len()
        )
        .into());
    }
    let views = args
        .iter()
        .zip(&sig.args)
        .map(|(b, spec)| unsafe { b.view(&spec.name) })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = unsafe { rets[0].output("the result")? };
    if let Some(ranges) = registered_ranges(&frame.attrs)? {
        // Ranged calls are mapped by jax.vmap one batch at a time ("sequential").
        let result = kernel
            .code
            .call_ranges(&views, ranges.for_axis(sig.axis))
            .map_err(|e| HandlerError::from(format!("ranges: {e}")))?;
        return copy_into(&result, out, "the result");
    }
    // Under `jax.vmap` (vmap_method="expand_dims") the arrays carry batch axes, 1 for an
    // input not mapped over: every batch in one parallel region.
    let batched = batch::has_batch_axes(sig, &views);
    if !batched {
        return kernel
            .code
            .call_into(&views, out)
            .map_err(|e| HandlerError::from(e.to_string()));
    }
    let maybe: Vec<Option<ArrayRef>> = views.iter().copied().map(Some).collect();
    let (layout, _) = batch::check_batched_arguments(sig, &maybe).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        HandlerError::from(text.join("; "))
    })?;
    let problems: Vec<Vec<ArrayRef>> = (0..layout.batch.count())
        .map(|k| layout.batch_views(&views, k))
        .collect();
    let outputs = kernel
        .code
        .call_batched(&problems)
        .map_err(|e| HandlerError::from(e.to_string()))?;
    let total: usize = outputs.iter().map(HostArray::len).sum();
    if total != out.len() {
        return Err(format!(
            "the result holds {} numbers; the batches give {total}",
            out.len()
        )
        .into());
    }
    // The batches' outputs, in order, are the result's row-major layout.
    let mut at = 0;
    for part in &outputs {
        match (&part.data, &mut out) {
            (ArrayData::F32(v), OutputRef::F32(o)) => o[at..at + v.len()].copy_from_slice(v),
            (ArrayData::F64(v), OutputRef::F64(o)) => o[at..at + v.len()].copy_from_slice(v),
            _ => return Err("the result's dtype is not the inputs'".to_string().into()),
        }
        at += part.len();
    }
    Ok(())
}

/// `keops_rs_vjp`: the gradients a backward plan computes, one result per input it names.
///
/// # Safety
/// Called by XLA with a call frame.
unsafe extern "C" fn keops_rs_vjp(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
    unsafe { handle(frame, run_backward) }
}

unsafe fn run_backward(frame: &XLA_FFI_CallFrame) -> Result<(), HandlerError> {
    let backward = registered_backward(unsafe { attr_i64(&frame.attrs, "plan")? })?;
    let args = unsafe {
        buffers(
            frame.args.size,
            frame.args.types,
            frame.args.args,
            "argument",
        )?
    };
    let rets = unsafe { buffers(frame.rets.size, frame.rets.types, frame.rets.rets, "result")? };
    let plan = &backward.plan;
    let forward = &plan.forward;
    let n = forward.args.len();
    let expected = n + 1 + usize::from(backward.reads_output);
    if args.len() != expected || rets.len() != plan.wrt.len() {
        return Err(format!(
            "the backward of `{}` takes {expected} arguments and gives {} results; the call has {} and {}",
            forward.name,
            plan.wrt.len(),
            args.len(),
            rets.len()
        )
        .into());
    }
    let views = args[..n]
        .iter()
        .zip(&forward.args)
        .map(|(b, spec)| unsafe { b.view(&spec.name) })
        .collect::<Result<Vec<_>, _>>()?;
    let ranges = registered_ranges(&frame.attrs)?;
    let batched = batch::has_batch_axes(forward, &views);
    if batched && ranges.is_none() {
        return unsafe { run_backward_batched(&backward, &args, &rets, &views) };
    }
    // The backward passes read host arrays: the inputs are copied once (O(N + M)), the
    // passes themselves are O(N M).
    let inputs = args[..n]
        .iter()
        .zip(&forward.args)
        .map(|(b, spec)| unsafe { b.to_host(&spec.name) })
        .collect::<Result<Vec<_>, _>>()?;
    let cotangent = unsafe { args[n].to_host("the cotangent")? };
    let saved = match backward.reads_output {
        true => Some(unsafe { args[n + 1].to_host("the saved forward output")? }),
        false => None,
    };
    let grads = match &ranges {
        Some(ranges) => {
            let refs: Vec<&HostArray> = inputs.iter().collect();
            kvjp::run_many_ranges(plan, &refs, &cotangent, saved.as_ref(), ranges)
                .map_err(|e| HandlerError::from(e.to_string()))?
        }
        None => backward
            .gradients(&inputs, &cotangent, saved.as_ref())
            .map_err(HandlerError::from)?,
    };
    for ((grad, ret), &w) in grads.iter().zip(&rets).zip(&plan.wrt) {
        let what = format!("the gradient of `{}`", forward.args[w].name);
        let out = unsafe { ret.output(&what)? };
        match (&grad.data, out) {
            (keops_runtime::ArrayData::F32(g), OutputRef::F32(o)) if g.len() == o.len() => {
                o.copy_from_slice(g)
            }
            (keops_runtime::ArrayData::F64(g), OutputRef::F64(o)) if g.len() == o.len() => {
                o.copy_from_slice(g)
            }
            _ => {
                return Err(format!(
                    "{what}: the result buffer does not match the input's shape and dtype {}",
                    backward.dtype
                )
                .into())
            }
        }
    }
    Ok(())
}

/// The backward under `jax.vmap` (vmap_method="expand_dims"): the inputs carry batch axes (1
/// for an input not mapped over), the cotangent and the saved output the batch axes or ones,
/// and each result the batch axes before its input's shape. Every batch's backward runs in one
/// parallel region; each writes its part of the results.
///
/// # Safety
/// As [`run_backward`]: `args` and `rets` are the call frame's buffers, `views` the inputs'.
unsafe fn run_backward_batched(
    backward: &Backward,
    args: &[Buffer],
    rets: &[Buffer],
    views: &[ArrayRef],
) -> Result<(), HandlerError> {
    use rayon::prelude::*;
    let plan = &backward.plan;
    let forward = &plan.forward;
    let n = forward.args.len();
    let maybe: Vec<Option<ArrayRef>> = views.iter().copied().map(Some).collect();
    let (layout, _) = batch::check_batched_arguments(forward, &maybe).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        HandlerError::from(text.join("; "))
    })?;
    let count = layout.batch.count();
    // The cotangent and the saved output: one block of `len / parts` numbers per batch, or one
    // block for all (a batch axis of 1).
    let per_batch = |buffer: &Buffer, what: &str| -> Result<HostArray, String> {
        let whole = unsafe { buffer.to_host(what)? };
        let core = buffer.shape.len().saturating_sub(2);
        let parts: usize = buffer.shape[..core].iter().product();
        if parts != count && parts != 1 {
            return Err(format!(
                "{what} has batch axes {:?}; the inputs' are {}",
                &buffer.shape[..core],
                layout.batch
            ));
        }
        Ok(HostArray {
            shape: std::iter::once(parts)
                .chain(buffer.shape[core..].iter().copied())
                .collect(),
            data: whole.data,
        })
    };
    let cotangent = per_batch(&args[n], "the cotangent")?;
    let saved = match backward.reads_output {
        true => Some(per_batch(&args[n + 1], "the saved forward output")?),
        false => None,
    };
    let slice = |array: &HostArray, k: usize| -> HostArray {
        let parts = array.shape[0];
        let core: Vec<usize> = array.shape[1..].to_vec();
        let len: usize = core.iter().product();
        let at = if parts == 1 { 0 } else { k * len };
        match &array.data {
            ArrayData::F32(v) => HostArray::from_f32(core, v[at..at + len].to_vec()),
            ArrayData::F64(v) => HostArray::from_f64(core, v[at..at + len].to_vec()),
        }
    };
    let grads: Vec<Vec<HostArray>> = (0..count)
        .into_par_iter()
        .map(|k| {
            let inputs = layout.slice_views(views, k);
            let g = slice(&cotangent, k);
            let s = saved.as_ref().map(|s| slice(s, k));
            backward.gradients(&inputs, &g, s.as_ref())
        })
        .collect::<Result<_, String>>()
        .map_err(HandlerError::from)?;
    for (r, (ret, &w)) in rets.iter().zip(&plan.wrt).enumerate() {
        let what = format!("the gradient of `{}`", forward.args[w].name);
        let mut out = unsafe { ret.output(&what)? };
        let mut at = 0;
        for batch_grads in &grads {
            let grad = &batch_grads[r];
            match (&grad.data, &mut out) {
                (ArrayData::F32(g), OutputRef::F32(o)) if at + g.len() <= o.len() => {
                    o[at..at + g.len()].copy_from_slice(&g[..])
                }
                (ArrayData::F64(g), OutputRef::F64(o)) if at + g.len() <= o.len() => {
                    o[at..at + g.len()].copy_from_slice(&g[..])
                }
                _ => {
                    return Err(format!(
                        "{what}: the result buffer does not hold {count} batches of the input's shape in {}",
                        backward.dtype
                    )
                    .into())
                }
            }
            at += grad.len();
        }
        if at != out.len() {
            return Err(format!(
                "{what}: the result holds {} numbers; the batches give {at}",
                out.len()
            )
            .into());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Python functions

/// The handlers as PyCapsules holding the function pointers themselves, for
/// `jax.ffi.register_ffi_target(name, capsule, platform="cpu")`.
#[pyfunction]
fn _jax_targets(py: Python<'_>) -> PyResult<Vec<(&'static str, Bound<'_, PyCapsule>)>> {
    const NAME: &CStr = c"xla._CUSTOM_CALL_TARGET";
    let capsule = |handler: XLA_FFI_Handler| {
        let pointer = NonNull::new(handler as *mut c_void).expect("a function pointer is not null");
        // SAFETY: the pointer is a function with static lifetime; no destructor is needed.
        unsafe { PyCapsule::new_with_pointer(py, pointer, NAME) }
    };
    Ok(vec![
        ("keops_rs_call", capsule(keops_rs_call)?),
        ("keops_rs_vjp", capsule(keops_rs_vjp)?),
    ])
}

/// The id both custom calls take as their `ranges` attribute for this block-sparsity
/// pattern (KeOps's 6-tuple, as its halves over j and over i), checked against nothing yet:
/// each call checks it against its arrays. The same pattern gets the same id.
#[pyfunction]
fn _jax_ranges(over_j: crate::RangesArg, over_i: crate::RangesArg) -> usize {
    let half = |(rows, slices, inner): crate::RangesArg| keops_runtime::Ranges {
        rows,
        slices,
        inner,
    };
    let pattern = keops_runtime::RangesPair {
        over_j: half(over_j),
        over_i: half(over_i),
    };
    let mut registry = write_registry();
    if let Some(id) = registry.ranges.iter().position(|r| **r == pattern) {
        return id;
    }
    registry.ranges.push(Arc::new(pattern));
    registry.ranges.len() - 1
}

/// The id the custom call `keops_rs_call` takes as its `kernel` attribute for this kernel
/// (the same id for the same compiled kernel).
#[pyfunction]
fn _jax_kernel(kernel: &Kernel) -> usize {
    let mut registry = write_registry();
    if let Some(id) = registry
        .kernels
        .iter()
        .position(|k| Arc::ptr_eq(k, &kernel.compiled))
    {
        return id;
    }
    registry.kernels.push(kernel.compiled.clone());
    registry.kernels.len() - 1
}

fn parse_dtype(dtype: &str) -> PyResult<DType> {
    match dtype {
        "float32" => Ok(DType::F32),
        "float64" => Ok(DType::F64),
        other => Err(PyTypeError::new_err(format!(
            "dtype: {other} is not supported; use float32 or float64"
        ))),
    }
}

/// The output shape `(rows, Dout)` of kernel `id` on arrays of these shapes and dtypes, or
/// the error its call would raise (`TypeError`/`ValueError` naming the argument), so that
/// `keops_rs.jax` reports it at trace time. Checked by the runtime's own argument checks on
/// zero-filled arrays (allocated lazily by the system: no cost for untouched pages).
#[pyfunction]
fn _jax_output_shape(
    py: Python<'_>,
    id: usize,
    shapes: Vec<Vec<usize>>,
    dtypes: Vec<String>,
) -> PyResult<(usize, usize)> {
    let kernel = registered_kernel(id as i64).map_err(PyValueError::new_err)?;
    let dtypes = dtypes
        .iter()
        .map(|d| parse_dtype(d))
        .collect::<PyResult<Vec<_>>>()?;
    py.detach(|| {
        let zeros: Vec<(Vec<f32>, Vec<f64>)> = shapes
            .iter()
            .zip(&dtypes)
            .map(|(shape, dtype)| {
                let len: usize = shape.iter().product();
                match dtype {
                    DType::F32 => (vec![0.0f32; len], Vec::new()),
                    DType::F64 => (Vec::new(), vec![0.0f64; len]),
                }
            })
            .collect();
        let views: Vec<ArrayRef> = shapes
            .iter()
            .zip(&dtypes)
            .zip(&zeros)
            .map(|((shape, dtype), (z32, z64))| match dtype {
                DType::F32 => ArrayRef::f32(shape, z32),
                DType::F64 => ArrayRef::f64(shape, z64),
            })
            .collect();
        let sig = kernel.code.signature();
        if views.len() != sig.args.len() {
            return Err(argument_error(keops_runtime::arrays::argument_count_error(
                sig,
                views.len(),
            )));
        }
        let size = keops_runtime::check_arguments(sig, &views).map_err(argument_error)?;
        let rows = match sig.axis {
            keops_runtime::Axis::I => size.n,
            keops_runtime::Axis::J => size.m,
        };
        Ok((rows, sig.output_dim()))
    })
    .map_err(PyErr::from)
}

fn compile_backward(
    compiled: &Compiled,
    wrt: &[String],
    dtype: DType,
) -> Result<Backward, PyErrText> {
    let names: Vec<&str> = wrt.iter().map(String::as_str).collect();
    let plan = kvjp::plan_many(&compiled.checked, &names).map_err(|e| match e {
        VjpError::Internal { .. } => PyErrText::Runtime(e.to_string()),
        _ => PyErrText::Value(e.to_string()),
    })?;
    let reads_output = matches!(plan.saved, SavedForward::Output { .. });
    // Every kernel the backward will run, compiled now (while tracing, where an error can be
    // raised) into the JIT table the handler's `run_many` reads: not the saved forward when
    // the call passes it in, not the dense passes when a cross pass runs both at once.
    let compile_error = |name: &str, e: EvalError| {
        PyErrText::Runtime(format!("compiling the backward kernel `{name}`: {e}"))
    };
    for (_, kernel) in plan.kernels() {
        let is_saved_forward =
            matches!(&plan.saved, SavedForward::Output { kernel: k } if std::ptr::eq(k, kernel));
        let is_crossed =
            plan.cross.is_some() && plan.dense.iter().any(|p| std::ptr::eq(&p.kernel, kernel));
        if is_saved_forward || is_crossed {
            continue;
        }
        JitCache::global()
            .get(kernel, dtype)
            .map_err(|e| compile_error(&kernel.name, e))?;
    }
    if let Some(cross) = &plan.cross {
        JitCache::global()
            .get_cross(&cross.kernel, cross.columns, dtype)
            .map_err(|e| compile_error(&cross.kernel.name, e))?;
    }
    Ok(Backward {
        plan,
        dtype,
        reads_output,
    })
}

/// The id the custom call `keops_rs_vjp` takes as its `plan` attribute: the backward of
/// kernel `id` with respect to the inputs `wrt` (names, the order of its results), its
/// kernels compiled for `dtype`; and whether the call takes the forward output after the
/// cotangent. Built once per (kernel, inputs, dtype). A reduction without a gradient
/// (ArgMin, ...) raises `ValueError`.
#[pyfunction]
fn _jax_backward(
    py: Python<'_>,
    id: usize,
    wrt: Vec<String>,
    dtype: &str,
) -> PyResult<(usize, bool)> {
    let dtype = parse_dtype(dtype)?;
    let compiled = registered_kernel(id as i64).map_err(PyValueError::new_err)?;
    let sig = &compiled.checked.signature;
    let positions: Vec<usize> = wrt
        .iter()
        .map(|w| {
            sig.args
                .iter()
                .position(|a| &a.name == w)
                .unwrap_or(usize::MAX)
        })
        .collect();
    let key = (id, positions, dtype == DType::F64);
    {
        let registry = read_registry();
        if let Some(&found) = registry.backward_ids.get(&key) {
            return Ok((found, registry.backward[found].reads_output));
        }
    }
    // Planning expands derivatives recursively and compiling runs LLVM: on the compiler's own
    // stack, without the GIL.
    let backward = py.detach(|| {
        keops_driver::isolate::on_compiler_stack(|| compile_backward(&compiled, &wrt, dtype))
            .map_err(|panic| {
                PyErrText::Runtime(format!(
                    "internal error in keops_rs while building the backward kernels: {panic}"
                ))
            })?
    })?;
    let reads_output = backward.reads_output;
    let mut registry = write_registry();
    if let Some(&found) = registry.backward_ids.get(&key) {
        return Ok((found, reads_output));
    }
    registry.backward.push(Arc::new(backward));
    let new_id = registry.backward.len() - 1;
    registry.backward_ids.insert(key, new_id);
    Ok((new_id, reads_output))
}

/// Seconds of the backward computation of plan `id` timed in Rust (the fastest of
/// `repeats`), on numpy arrays: the forward's inputs, the cotangent, then the saved forward
/// output when the plan reads it. The baseline of `keops_rs_vjp`'s cost inside XLA
/// (python/bench/jax_w1.py).
#[pyfunction]
#[pyo3(signature = (id, arrays, repeats=3))]
fn _jax_rust_backward_seconds(
    py: Python<'_>,
    id: usize,
    arrays: Vec<Bound<'_, PyAny>>,
    repeats: usize,
) -> PyResult<f64> {
    let backward = registered_backward(id as i64).map_err(PyValueError::new_err)?;
    let n = backward.plan.forward.args.len();
    let expected = n + 1 + usize::from(backward.reads_output);
    if arrays.len() != expected {
        return Err(PyTypeError::new_err(format!(
            "arrays: the backward of `{}` takes {expected} arrays, not {}",
            backward.plan.forward.name,
            arrays.len()
        )));
    }
    let hosts = arrays
        .iter()
        .enumerate()
        .map(|(k, a)| Ok(crate::input(&format!("arrays[{k}]"), a)?.to_host()))
        .collect::<PyResult<Vec<HostArray>>>()?;
    py.detach(|| {
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let start = std::time::Instant::now();
            let grads = backward.gradients(&hosts[..n], &hosts[n], hosts.get(n + 1))?;
            best = best.min(start.elapsed().as_secs_f64());
            drop(grads);
        }
        Ok::<f64, String>(best)
    })
    .map_err(PyValueError::new_err)
}

/// `{C expression: value}`: the sizes and offsets of the mirrored C API structs, for the
/// test that measures the same expressions in a C program compiled against the header.
#[pyfunction]
fn _ffi_layout() -> HashMap<&'static str, usize> {
    layout().into_iter().collect()
}

/// Adds the functions above to the extension module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_jax_targets, m)?)?;
    m.add_function(wrap_pyfunction!(_jax_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(_jax_ranges, m)?)?;
    m.add_function(wrap_pyfunction!(_jax_output_shape, m)?)?;
    m.add_function(wrap_pyfunction!(_jax_backward, m)?)?;
    m.add_function(wrap_pyfunction!(_jax_rust_backward_seconds, m)?)?;
    m.add_function(wrap_pyfunction!(_ffi_layout, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::ffi::c_char;

    thread_local! {
        /// What the fake `XLA_FFI_Error_Create` was given: (code, message).
        static CREATED: RefCell<Option<(i32, String)>> = const { RefCell::new(None) };
    }

    unsafe extern "C" fn fake_error_create(
        args: *mut XLA_FFI_Error_Create_Args,
    ) -> *mut XLA_FFI_Error {
        let args = unsafe { &*args };
        let message = unsafe { CStr::from_ptr(args.message) }
            .to_string_lossy()
            .into_owned();
        CREATED.with(|c| *c.borrow_mut() = Some((args.errc, message)));
        NonNull::dangling().as_ptr()
    }

    fn fake_api() -> XLA_FFI_Api {
        // SAFETY: every field is a pointer, an integer or an `Option` of a function pointer:
        // all zeros is a valid value of each.
        let mut api: XLA_FFI_Api = unsafe { std::mem::zeroed() };
        api.struct_size = size_of::<XLA_FFI_Api>();
        api.XLA_FFI_Error_Create = Some(fake_error_create);
        api
    }

    fn empty_frame(api: &XLA_FFI_Api) -> XLA_FFI_CallFrame {
        // SAFETY: as above: pointers and integers only.
        let mut frame: XLA_FFI_CallFrame = unsafe { std::mem::zeroed() };
        frame.struct_size = size_of::<XLA_FFI_CallFrame>();
        frame.api = api;
        frame.stage = XLA_FFI_ExecutionStage_EXECUTE;
        frame
    }

    #[test]
    fn metadata_query_gets_the_api_version_and_touches_nothing_else() {
        let api = fake_api();
        let mut frame = empty_frame(&api);
        // SAFETY: zeros are valid for these plain structs.
        let mut metadata: XLA_FFI_Metadata = unsafe { std::mem::zeroed() };
        let mut extension = XLA_FFI_Metadata_Extension {
            extension_base: XLA_FFI_Extension_Base {
                struct_size: size_of::<XLA_FFI_Metadata_Extension>(),
                type_: XLA_FFI_Extension_Metadata,
                next: null_mut(),
            },
            metadata: &mut metadata,
        };
        frame.extension_start = &mut extension.extension_base;
        for handler in [keops_rs_call as XLA_FFI_Handler, keops_rs_vjp] {
            metadata.api_version.major_version = -1;
            let error = unsafe { handler(&mut frame) };
            assert!(error.is_null());
            assert_eq!(
                (
                    metadata.api_version.major_version,
                    metadata.api_version.minor_version
                ),
                (0, 3)
            );
        }
    }

    #[test]
    fn errors_go_through_xla_ffi_error_create() {
        let api = fake_api();
        let mut frame = empty_frame(&api);
        let error = unsafe { keops_rs_call(&mut frame) };
        assert!(!error.is_null());
        let created = CREATED.with(|c| c.borrow_mut().take());
        assert_eq!(
            created,
            Some((
                XLA_FFI_Error_Code_INVALID_ARGUMENT,
                "missing attribute `kernel`".to_string()
            ))
        );
        // An id no kernel has, as an S64 attribute.
        let mut id: i64 = 1 << 40;
        let name = b"kernel";
        let mut span = XLA_FFI_ByteSpan {
            ptr: name.as_ptr() as *const c_char,
            len: name.len(),
        };
        let mut scalar = XLA_FFI_Scalar {
            dtype: XLA_FFI_DataType_S64,
            value: &mut id as *mut i64 as *mut c_void,
        };
        let mut types = [XLA_FFI_AttrType_SCALAR];
        let mut names = [&mut span as *mut XLA_FFI_ByteSpan];
        let mut values = [&mut scalar as *mut XLA_FFI_Scalar as *mut c_void];
        frame.attrs.size = 1;
        frame.attrs.types = types.as_mut_ptr();
        frame.attrs.names = names.as_mut_ptr();
        frame.attrs.attrs = values.as_mut_ptr();
        let error = unsafe { keops_rs_call(&mut frame) };
        assert!(!error.is_null());
        let (code, message) = CREATED.with(|c| c.borrow_mut().take()).expect("an error");
        assert_eq!(code, XLA_FFI_Error_Code_INVALID_ARGUMENT);
        assert!(message.contains("no compiled kernel with id"), "{message}");
    }

    #[test]
    fn a_frame_older_than_the_api_is_refused() {
        let api = fake_api();
        let mut frame = empty_frame(&api);
        frame.struct_size = XLA_FFI_CallFrame_STRUCT_SIZE - 8;
        let error = unsafe { keops_rs_vjp(&mut frame) };
        assert!(!error.is_null());
        let (_, message) = CREATED.with(|c| c.borrow_mut().take()).expect("an error");
        assert!(message.contains("call frame of"), "{message}");
    }
}
