//! The native part of the Python package `keops_rs`: `Kernel`, a compiled `.kf` kernel called on
//! numpy arrays. Compilation goes through the workspace's compiler (`keops_driver::driver`) and its
//! on-disk compile cache, with an in-memory table in front; calls go through the runtime's
//! `Kernel::call`, reading C-contiguous float32/float64 arrays in place.
//!
//! Everything a caller passes ends as a Python exception: `KfError` for source that does not
//! compile (the rendered diagnostic), `TypeError`/`ValueError` naming the argument for bad
//! arrays, `RuntimeError` for an internal failure (a panic is caught here, never unwinds into
//! the interpreter). The GIL is released while compiling and while a kernel runs.
//!
//! `build_kernel` ([`build`]) makes the same kernels from structured data (a formula tree), for
//! `LazyTensor` and `Genred`.

mod build;
mod ffi;

use keops_driver::artifact::cache::{CompileCache, CompileError};
use keops_driver::batch;
use keops_driver::check::CheckedKernel;
use keops_driver::diagnostic::render_all;
use keops_driver::driver::{self, Backend};
use keops_driver::source::SourceFile;
use keops_driver::symmetric::NotSymmetric;
use keops_driver::vjp::{self as kvjp, VjpPlan, VjpRunError};
use keops_runtime::{
    ArgumentError, ArrayData, ArrayRef, Category, DType, HostArray, Kernel as RtKernel,
    ReductionArgs, ReductionKind, Signature,
};
use numpy::{
    IxDyn, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

pyo3::create_exception!(
    keops_rs,
    KfError,
    PyException,
    "A .kf source that does not compile: the message is the rendered diagnostic."
);

/// A kernel compiled once per process: its checked form (for signatures and gradients) and its
/// machine code for float32 and float64.
struct Compiled {
    checked: CheckedKernel,
    code: RtKernel,
    /// The `.kf` text it was compiled from (for a built kernel, the text its tree prints as).
    source: String,
}

/// Why a kernel could not be made.
enum MakeError {
    Source(String),
    Name(String),
    Internal(String),
}

impl From<MakeError> for PyErr {
    fn from(e: MakeError) -> PyErr {
        match e {
            MakeError::Source(text) => KfError::new_err(text),
            MakeError::Name(text) => PyValueError::new_err(text),
            MakeError::Internal(text) => PyRuntimeError::new_err(text),
        }
    }
}

/// Source text and requested kernel name.
type TableKey = (String, Option<String>);
type Table = Mutex<HashMap<TableKey, Arc<Compiled>>>;

/// Kernels already compiled in this process, by source text and requested name.
fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `f`, turning a panic into an internal error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, PyErrText>) -> Result<T, PyErrText> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        Err(PyErrText::Runtime(format!(
            "internal error in keops_rs while {what}: {}",
            panic_text(panic)
        )))
    })
}

/// An error built without the GIL, turned into a Python exception once it is held again.
enum PyErrText {
    Type(String),
    Value(String),
    Runtime(String),
    Make(MakeError),
}

impl From<PyErrText> for PyErr {
    fn from(e: PyErrText) -> PyErr {
        match e {
            PyErrText::Type(t) => PyTypeError::new_err(t),
            PyErrText::Value(t) => PyValueError::new_err(t),
            PyErrText::Runtime(t) => PyRuntimeError::new_err(t),
            PyErrText::Make(m) => m.into(),
        }
    }
}

/// Argument errors from the runtime: dtype problems are `TypeError`, the rest `ValueError`.
fn argument_error(e: ArgumentError) -> PyErrText {
    match e {
        ArgumentError::MixedDType { .. } | ArgumentError::CompiledDType { .. } => {
            PyErrText::Type(e.to_string())
        }
        ArgumentError::Missing { name, spec } => {
            PyErrText::Type(format!("missing argument `{name}` ({spec})"))
        }
        _ => PyErrText::Value(e.to_string()),
    }
}

fn compile_kernel(source: &str, name: Option<&str>) -> Result<Compiled, MakeError> {
    let compiled = driver::compile(SourceFile::new("<source>", source))
        .map_err(|(file, diagnostics)| MakeError::Source(render_all(&diagnostics, &file, false)))?;
    let names: Vec<String> = compiled
        .kernels
        .iter()
        .map(|k| format!("`{}`", k.name))
        .collect();
    let checked = match name {
        Some(n) => compiled.kernel(n).ok_or_else(|| {
            MakeError::Name(format!(
                "name: no kernel `{n}` in the source (it has {})",
                names.join(", ")
            ))
        })?,
        None if compiled.kernels.len() == 1 => &compiled.kernels[0],
        None => {
            return Err(MakeError::Name(format!(
                "name: the source holds several kernels ({}): pass name= to pick one",
                names.join(", ")
            )))
        }
    };
    let checked = checked.clone();
    let code = machine_code(&compiled, &checked)?;
    Ok(Compiled {
        checked,
        code,
        source: source.to_string(),
    })
}

/// The machine code of `checked`, the kernel of that name in `file`: from the on-disk cache.
pub(crate) fn machine_code(
    file: &driver::CompiledFile,
    checked: &CheckedKernel,
) -> Result<RtKernel, MakeError> {
    match CompileCache::open_default().kernel_of(file, Some(&checked.name)) {
        Ok((code, _)) => Ok(code),
        Err(CompileError::Source(text)) => Err(MakeError::Source(text)),
        // The cache could not be used (no writable directory, no linker): compile in memory,
        // through the process's cache.
        Err(_) => keops_driver::jit::Jit::new()
            .compile_checked(checked)
            .map_err(|e| MakeError::Internal(format!("compiling `{}`: {e}", checked.name))),
    }
}

fn remembered(key: &TableKey) -> Option<Arc<Compiled>> {
    table()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned()
}

fn remember(key: TableKey, made: Compiled) -> Arc<Compiled> {
    let made = Arc::new(made);
    table()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, made.clone());
    made
}

fn lookup(source: &str, name: Option<&str>) -> Result<Arc<Compiled>, PyErrText> {
    let key = (source.to_string(), name.map(str::to_string));
    if let Some(found) = remembered(&key) {
        return Ok(found);
    }
    // On the compiler's own stack: every stage that walks the formula recursively (the
    // front end, the cache key printed from the syntax tree, dropping the tree) gets room
    // for deep formulas, whatever thread Python calls from. A panic comes back as text.
    let made = keops_driver::isolate::on_compiler_stack(|| compile_kernel(source, name))
        .map_err(|panic| {
            PyErrText::Runtime(format!(
                "internal error in keops_rs while compiling: {panic}"
            ))
        })?
        .map_err(PyErrText::Make)?;
    Ok(remember(key, made))
}

/// One argument's data: borrowed from numpy when C-contiguous, else copied into C order.
enum Held<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
    OwnedF32(Vec<f32>),
    OwnedF64(Vec<f64>),
}

struct Input<'py> {
    shape: Vec<usize>,
    data: Held<'py>,
}

impl Input<'_> {
    fn view(&self) -> ArrayRef<'_> {
        match &self.data {
            Held::F32(a) => ArrayRef::f32(&self.shape, a.as_slice().expect("C-contiguous")),
            Held::F64(a) => ArrayRef::f64(&self.shape, a.as_slice().expect("C-contiguous")),
            Held::OwnedF32(v) => ArrayRef::f32(&self.shape, v),
            Held::OwnedF64(v) => ArrayRef::f64(&self.shape, v),
        }
    }

    fn to_host(&self) -> HostArray {
        let view = self.view();
        match view.data {
            keops_runtime::DataRef::F32(d) => HostArray::from_f32(self.shape.clone(), d.to_vec()),
            keops_runtime::DataRef::F64(d) => HostArray::from_f64(self.shape.clone(), d.to_vec()),
        }
    }
}

/// Reads a numpy array of float32 or float64 for the argument `name`.
fn input<'py>(name: &str, obj: &Bound<'py, PyAny>) -> PyResult<Input<'py>> {
    let Ok(array) = obj.cast::<PyUntypedArray>() else {
        return Err(PyTypeError::new_err(format!(
            "argument `{name}` must be a numpy array of float32 or float64, not {}",
            obj.get_type().name()?
        )));
    };
    let shape = array.shape().to_vec();
    let contiguous = array.is_c_contiguous();
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        let ro = a.readonly();
        let data = if contiguous && ro.as_slice().is_ok() {
            Held::F32(ro)
        } else {
            Held::OwnedF32(ro.as_array().iter().copied().collect())
        };
        return Ok(Input { shape, data });
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f64>>() {
        let ro = a.readonly();
        let data = if contiguous && ro.as_slice().is_ok() {
            Held::F64(ro)
        } else {
            Held::OwnedF64(ro.as_array().iter().copied().collect())
        };
        return Ok(Input { shape, data });
    }
    Err(PyTypeError::new_err(format!(
        "argument `{name}` has dtype {}; expected float32 or float64",
        array.dtype()
    )))
}

fn output<'py>(py: Python<'py>, array: HostArray) -> PyResult<Bound<'py, PyAny>> {
    let shape = IxDyn(&array.shape);
    Ok(match array.data {
        ArrayData::F32(v) => PyArray1::from_vec(py, v).reshape(shape)?.into_any(),
        ArrayData::F64(v) => PyArray1::from_vec(py, v).reshape(shape)?.into_any(),
    })
}

/// Matches positional and keyword arguments to the signature's arguments, Python-style.
fn bind<'a, 'py>(
    sig: &Signature,
    args: &'a [Bound<'py, PyAny>],
    kwargs: Option<&'a Bound<'py, PyDict>>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let names: Vec<String> = sig.args.iter().map(|a| format!("`{}`", a.name)).collect();
    if args.len() > sig.args.len() {
        return Err(PyTypeError::new_err(format!(
            "kernel `{}` takes {} arguments ({}) but {} were given",
            sig.name,
            sig.args.len(),
            names.join(", "),
            args.len()
        )));
    }
    let mut bound: Vec<Option<Bound<'py, PyAny>>> = vec![None; sig.args.len()];
    for (slot, a) in bound.iter_mut().zip(args) {
        *slot = Some(a.clone());
    }
    if let Some(kwargs) = kwargs {
        for (key, value) in kwargs.iter() {
            let key: String = key.extract()?;
            let Some(pos) = sig.args.iter().position(|a| a.name == key) else {
                return Err(PyTypeError::new_err(format!(
                    "unknown argument `{key}`: the arguments of kernel `{}` are {}",
                    sig.name,
                    names.join(", ")
                )));
            };
            if bound[pos].is_some() {
                return Err(PyTypeError::new_err(format!(
                    "argument `{key}` is given twice (by position and by keyword)"
                )));
            }
            bound[pos] = Some(value);
        }
    }
    bound
        .into_iter()
        .zip(&sig.args)
        .map(|(b, spec)| {
            b.ok_or_else(|| {
                PyTypeError::new_err(format!(
                    "missing argument `{}` ({}({})) of kernel `{}`",
                    spec.name, spec.category, spec.dim, sig.name
                ))
            })
        })
        .collect()
}

/// The arrays of a call, positional and by keyword, matched to the signature and read.
fn bound_inputs<'py>(
    sig: &Signature,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Vec<Input<'py>>> {
    let objs: Vec<Bound<'py, PyAny>> = args.iter().collect();
    let objs = bind(sig, &objs, kwargs)?;
    inputs(sig, &objs)
}

fn inputs<'py>(sig: &Signature, objs: &[Bound<'py, PyAny>]) -> PyResult<Vec<Input<'py>>> {
    objs.iter()
        .zip(&sig.args)
        .map(|(o, spec)| input(&spec.name, o))
        .collect()
}

/// A call whose arrays carry batch axes (`(B..., N, D)`, broadcast as numpy does,
/// `keops_driver::batch`): every batch in one parallel region, the outputs stacked
/// `(B..., rows, Dout)`.
fn call_batched(py: Python<'_>, code: &RtKernel, views: &[ArrayRef]) -> PyResult<HostArray> {
    let sig = code.signature();
    let maybe: Vec<Option<ArrayRef>> = views.iter().copied().map(Some).collect();
    let (layout, size) = batch::check_batched_arguments(sig, &maybe).map_err(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        PyValueError::new_err(text.join("; "))
    })?;
    let rows = batch::RowsShape::of(sig, size, sig.output_dim());
    let outputs = py.detach(|| {
        guarded("running the kernel", || {
            let problems: Vec<Vec<ArrayRef>> = (0..layout.batch.count())
                .map(|k| layout.batch_views(views, k))
                .collect();
            code.call_batched(&problems).map_err(argument_error)
        })
    })?;
    Ok(batch::stack(
        &layout.batch,
        outputs,
        &[rows.rows, rows.dim],
        size.dtype,
    ))
}

/// KeOps's three range arrays of one axis, as Python passes them.
pub(crate) type RangesArg = (Vec<(usize, usize)>, Vec<usize>, Vec<(usize, usize)>);

/// A compiled `.kf` kernel.
#[pyclass(frozen, module = "keops_rs")]
struct Kernel {
    compiled: Arc<Compiled>,
    plans: Mutex<HashMap<String, Arc<VjpPlan>>>,
    /// The kernel carrying its pass over unordered pairs, per set of `(j, i)` pairs
    /// (`call_same`), compiled on first use.
    symmetric: Mutex<HashMap<Vec<(usize, usize)>, RtKernel>>,
}

impl Kernel {
    fn plan(&self, wrt: &str) -> Result<Arc<VjpPlan>, PyErrText> {
        if let Some(p) = self
            .plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(wrt)
        {
            return Ok(p.clone());
        }
        let plan = guarded("building the backward kernels", || {
            kvjp::plan(&self.compiled.checked, wrt).map_err(|e| match e {
                kvjp::VjpError::UnknownInput { .. } => PyErrText::Value(format!("name: {e}")),
                kvjp::VjpError::Internal { .. } => PyErrText::Runtime(e.to_string()),
                _ => PyErrText::Value(e.to_string()),
            })
        })?;
        let plan = Arc::new(plan);
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wrt.to_string(), plan.clone());
        Ok(plan)
    }
}

impl Kernel {
    /// The kernel carrying the symmetric pass for `same` (j-variable name -> i-variable name).
    fn symmetric_code(&self, same: &HashMap<String, String>) -> Result<RtKernel, PyErrText> {
        let sig = self.compiled.code.signature();
        let position = |name: &str| {
            sig.args.iter().position(|a| a.name == name).ok_or_else(|| {
                PyErrText::Value(format!(
                    "same: kernel `{}` has no argument `{name}`",
                    sig.name
                ))
            })
        };
        let mut pairs = Vec::new();
        for (j, i) in same {
            let (pj, pi) = (position(j)?, position(i)?);
            let (a, b) = (&sig.args[pj], &sig.args[pi]);
            if a.category != Category::J || b.category != Category::I || a.dim != b.dim {
                return Err(PyErrText::Value(format!(
                    "same: `{j}` ({}({})) cannot hold the data of `{i}` ({}({})): the first must be a j-variable, the second an i-variable of the same dimension",
                    a.category, a.dim, b.category, b.dim
                )));
            }
            pairs.push((pj, pi));
        }
        pairs.sort_unstable();
        let mut table = self.symmetric.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = table.get(&pairs) {
            return Ok(found.clone());
        }
        let checked = &self.compiled.checked;
        let pass = guarded("compiling the symmetric pass", || {
            keops_driver::isolate::on_compiler_stack(|| {
                driver::jit_symmetric(checked, &pairs, &[DType::F32, DType::F64])
            })
            .map_err(PyErrText::Runtime)?
            .map(Some)
            .or_else(|e| match e {
                // Its halves share too little: the plain kernel is the faster one.
                driver::EvalError::NotSymmetric(NotSymmetric::DoesNotPay { .. }) => Ok(None),
                driver::EvalError::NotSymmetric(e) => Err(PyErrText::Value(format!("same: {e}"))),
                e => Err(PyErrText::Runtime(e.to_string())),
            })
        })?;
        let code = match pass {
            Some(pass) => self
                .compiled
                .code
                .with_symmetric(pass)
                .map_err(PyErrText::Runtime)?,
            None => self.compiled.code.clone(),
        };
        table.insert(pairs, code.clone());
        Ok(code)
    }
}

fn parse_backend(backend: &str) -> PyResult<Backend> {
    match Backend::parse(backend) {
        Some(b @ (Backend::Cpu | Backend::Interp)) => Ok(b),
        _ => Err(PyValueError::new_err(format!(
            "backend: `{backend}` is not available (available: cpu, interp)"
        ))),
    }
}

#[pymethods]
impl Kernel {
    /// Compiles the kernel `name` of the `.kf` text `source` (its only kernel when `name` is
    /// None), or takes it from the in-memory table or the on-disk cache.
    #[new]
    #[pyo3(signature = (source, name=None))]
    fn new(py: Python<'_>, source: &str, name: Option<&str>) -> PyResult<Kernel> {
        let compiled = py.detach(|| lookup(source, name))?;
        Ok(Kernel {
            compiled,
            plans: Mutex::new(HashMap::new()),
            symmetric: Mutex::new(HashMap::new()),
        })
    }

    /// Runs the kernel: arrays positional in declaration order, or by keyword.
    #[pyo3(signature = (*args, **kwargs))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sig = self.compiled.code.signature();
        let held = bound_inputs(sig, args, kwargs)?;
        let views: Vec<ArrayRef> = held.iter().map(Input::view).collect();
        let code = &self.compiled.code;
        let batched = batch::has_batch_axes(sig, &views);
        if batched {
            return call_batched(py, code, &views).and_then(|out| output(py, out));
        }
        let out = py.detach(|| {
            guarded("running the kernel", || {
                code.call(&views).map_err(argument_error)
            })
        })?;
        output(py, out)
    }

    /// Runs the kernel as a call does, on one point cloud against itself: `same` maps
    /// j-variables to the i-variables whose data they hold (`{"y": "x"}`). A `Sum` then walks
    /// each unordered pair once (about half the work for a Gaussian; the result agrees with a
    /// call up to summation order) when the arrays passed do hold the same data and the
    /// kernel's two halves share enough for it to pay (`walks_pairs_once`); otherwise it is a
    /// plain call. The pass is compiled on first use.
    #[pyo3(signature = (same, *args, **kwargs))]
    fn call_same<'py>(
        &self,
        py: Python<'py>,
        same: HashMap<String, String>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let code = py.detach(|| self.symmetric_code(&same))?;
        let sig = code.signature();
        let held = bound_inputs(sig, args, kwargs)?;
        let views: Vec<ArrayRef> = held.iter().map(Input::view).collect();
        let out = py.detach(|| {
            guarded("running the kernel", || {
                code.call_symmetric(&views).map_err(argument_error)
            })
        })?;
        output(py, out)
    }

    /// Whether `call_same(same, ...)` walks each unordered pair once when the paired arrays
    /// hold the same data: false for a kernel whose two halves share too little for it to
    /// pay (it is then called in full).
    fn walks_pairs_once(&self, py: Python<'_>, same: HashMap<String, String>) -> PyResult<bool> {
        let code = py.detach(|| self.symmetric_code(&same))?;
        Ok(code.symmetric().is_some())
    }

    /// Runs the kernel over the pairs `ranges` keeps (block-sparse, KeOps's `ranges`): for
    /// a reduction over j, `(ranges_i, slices_i, redranges_j)` as integer arrays of shapes
    /// `(C, 2)`, `(C,)`, `(R, 2)` (over i: `(ranges_j, slices_j, redranges_i)`). Arrays as in
    /// a call, without batch axes.
    #[pyo3(signature = (ranges, *args, **kwargs))]
    fn call_ranges<'py>(
        &self,
        py: Python<'py>,
        ranges: RangesArg,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sig = self.compiled.code.signature();
        let held = bound_inputs(sig, args, kwargs)?;
        let views: Vec<ArrayRef> = held.iter().map(Input::view).collect();
        let ranges = keops_runtime::Ranges {
            rows: ranges.0,
            slices: ranges.1,
            inner: ranges.2,
        };
        let code = &self.compiled.code;
        let out = py.detach(|| {
            guarded("running the kernel", || {
                code.call_ranges(&views, &ranges).map_err(|e| match e {
                    keops_runtime::RangesRunError::Argument(e) => argument_error(e),
                    keops_runtime::RangesRunError::Ranges(e) => {
                        PyErrText::Value(format!("ranges: {e}"))
                    }
                })
            })
        })?;
        output(py, out)
    }

    /// The same reduction evaluated by another backend: "interp" (the f64 reference
    /// interpreter) or "cpu" (compiled anew, without the cache).
    #[pyo3(signature = (*args, backend="interp", **kwargs))]
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        backend: &str,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let backend = parse_backend(backend)?;
        let checked = &self.compiled.checked;
        let held = bound_inputs(&checked.signature, args, kwargs)?;
        let hosts: Vec<HostArray> = held.iter().map(Input::to_host).collect();
        let out = py.detach(|| {
            guarded("evaluating the kernel", || {
                let refs: Vec<&HostArray> = hosts.iter().collect();
                let anew = driver::EvalOptions::on(backend).compiled_anew();
                driver::evaluate(checked, &refs, anew)
                    .map(|done| done.output)
                    .map_err(|e| match e {
                        driver::EvalError::Argument(a) => argument_error(a),
                        other => PyErrText::Runtime(other.to_string()),
                    })
            })
        })?;
        output(py, out)
    }

    /// `d/d<name> sum(g * kernel(args))`: the gradient with respect to the input `name`, in
    /// that input's shape and dtype.
    #[pyo3(signature = (name, g, *args, backend="cpu", **kwargs))]
    fn vjp<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        g: &Bound<'py, PyAny>,
        args: &Bound<'py, PyTuple>,
        backend: &str,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let backend = parse_backend(backend)?;
        let sig = &self.compiled.checked.signature;
        let held = bound_inputs(sig, args, kwargs)?;
        let g = input("g", g)?.to_host();
        let hosts: Vec<HostArray> = held.iter().map(Input::to_host).collect();
        let out = py.detach(|| {
            let plan = self.plan(name)?;
            guarded("running the backward kernels", || {
                let refs: Vec<&HostArray> = hosts.iter().collect();
                kvjp::run_plan(&plan, &refs, &g, backend).map_err(|e| match e {
                    VjpRunError::Argument(a) => argument_error(a),
                    VjpRunError::Cotangent(text) => {
                        if text.contains("dtype") {
                            PyErrText::Type(format!("argument `g`: the cotangent {text}"))
                        } else {
                            PyErrText::Value(format!("argument `g`: the cotangent {text}"))
                        }
                    }
                    VjpRunError::Eval(driver::EvalError::Argument(a)) => argument_error(a),
                    other => PyErrText::Runtime(other.to_string()),
                })
            })
        })?;
        output(py, out)
    }

    /// Seconds per call of the Rust `Kernel::call` on these arrays (the fastest of `repeats`
    /// timed in Rust, no Python in the loop): the baseline of the per-call overhead of
    /// `__call__` (python/bench/overhead.py).
    #[pyo3(signature = (*args, repeats=1000))]
    fn _rust_call_seconds<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        repeats: usize,
    ) -> PyResult<f64> {
        let sig = self.compiled.code.signature();
        let held = bound_inputs(sig, args, None)?;
        let views: Vec<ArrayRef> = held.iter().map(Input::view).collect();
        let code = &self.compiled.code;
        let best = py.detach(|| {
            guarded("timing the kernel", || {
                let mut best = f64::INFINITY;
                for _ in 0..repeats.max(1) {
                    let start = std::time::Instant::now();
                    let out = code.call(&views).map_err(argument_error)?;
                    best = best.min(start.elapsed().as_secs_f64());
                    drop(out);
                }
                Ok(best)
            })
        })?;
        Ok(best)
    }

    /// The kernel's name.
    #[getter]
    fn name(&self) -> String {
        self.compiled.checked.name.clone()
    }

    /// The `.kf` text of the kernel (for a kernel from `build_kernel`, the text its tree prints
    /// as, against which its diagnostics are rendered).
    #[getter]
    fn source(&self) -> String {
        self.compiled.source.clone()
    }

    /// The signature, printable: arguments (category, dimension), output, reduction.
    #[getter]
    fn signature(&self) -> String {
        self.compiled.checked.signature.to_string()
    }

    /// The arguments in order, as `(name, category, dim)` with category "Vi", "Vj" or "Pm".
    #[getter]
    fn arguments(&self) -> Vec<(String, String, usize)> {
        self.compiled
            .checked
            .signature
            .args
            .iter()
            .map(|a| (a.name.clone(), a.category.to_string(), a.dim))
            .collect()
    }

    /// The output's width `Dout`.
    #[getter]
    fn output_dim(&self) -> usize {
        self.compiled.checked.signature.output_dim()
    }

    /// 0 when the output has one row per i (reducing over j), 1 for one row per j.
    #[getter]
    fn axis(&self) -> usize {
        self.compiled.checked.signature.axis.index()
    }

    /// The reduction, as `.kf` writes it (e.g. `Sum_Reduction`).
    #[getter]
    fn reduction(&self) -> String {
        self.compiled.checked.signature.reduction.to_string()
    }

    fn __repr__(&self) -> String {
        format!("keops_rs.Kernel({})", self.compiled.checked.signature)
    }
}

/// Which argument categories exist, for the pure-Python layer's checks.
fn category_name(c: Category) -> &'static str {
    c.keops_name()
}

/// Every reduction the compiler knows, as the Python layer reads them (it keeps no table of
/// its own): `(kf name, takes K, takes a weight formula, what the output holds: "values",
/// "indices" or "values_and_indices")`.
#[pyfunction]
fn reduction_kinds() -> Vec<(&'static str, bool, bool, &'static str)> {
    ReductionKind::ALL
        .iter()
        .map(|k| {
            (
                k.name(),
                k.args() == ReductionArgs::FormulaK,
                k.args() == ReductionArgs::FormulaWeight,
                k.output().name(),
            )
        })
        .collect()
}

#[pymodule]
fn _keops_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Kernel>()?;
    m.add_function(wrap_pyfunction!(reduction_kinds, m)?)?;
    m.add_function(wrap_pyfunction!(build::build_kernel, m)?)?;
    m.add("KfError", m.py().get_type::<KfError>())?;
    m.add(
        "CATEGORIES",
        [Category::I, Category::J, Category::Param].map(category_name),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    ffi::register(m)?;
    Ok(())
}
