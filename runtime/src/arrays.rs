//! Host arrays in and out of kernels: `.npy` reading and writing, and the checks that tie each
//! array to the argument it is passed for. Every error names the argument.

use crate::abi::{Axis, Category, Signature};
use crate::reduction::{Reduction, ReductionOutput};
use npyz::WriterBuilder;
use std::fmt;
use std::ops::Range;
use std::path::Path;

/// The element type of arrays and of the code that computes on them, with the facts of its
/// binary format that code generation reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
}

impl DType {
    /// `f32` or `f64` (LLVM's and Rust's names; `Display` gives numpy's).
    pub fn short_name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    pub fn bits(self) -> u32 {
        match self {
            DType::F32 => 32,
            DType::F64 => 64,
        }
    }

    /// Explicit (stored) mantissa bits.
    pub fn mantissa_bits(self) -> u32 {
        match self {
            DType::F32 => 23,
            DType::F64 => 52,
        }
    }

    pub fn exponent_bias(self) -> i64 {
        match self {
            DType::F32 => 127,
            DType::F64 => 1023,
        }
    }

    /// Bit pattern of `v` rounded to this type, as a (sign-extended) integer.
    pub fn bits_of(self, v: f64) -> i64 {
        match self {
            DType::F32 => i64::from((v as f32).to_bits()),
            DType::F64 => v.to_bits() as i64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Borrowed data of one array.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DataRef<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl DataRef<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            DataRef::F32(_) => DType::F32,
            DataRef::F64(_) => DType::F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            DataRef::F32(v) => v.len(),
            DataRef::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A borrowed C-ordered array: what kernels read. [`HostArray::view`] makes one, and so can a
/// caller's own slices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArrayRef<'a> {
    pub shape: &'a [usize],
    pub data: DataRef<'a>,
}

impl<'a> ArrayRef<'a> {
    pub fn f32(shape: &'a [usize], data: &'a [f32]) -> ArrayRef<'a> {
        ArrayRef {
            shape,
            data: DataRef::F32(data),
        }
    }

    pub fn f64(shape: &'a [usize], data: &'a [f64]) -> ArrayRef<'a> {
        ArrayRef {
            shape,
            data: DataRef::F64(data),
        }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
}

/// A caller's output buffer.
pub enum OutputRef<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

impl OutputRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            OutputRef::F32(v) => v.len(),
            OutputRef::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            OutputRef::F32(_) => DType::F32,
            OutputRef::F64(_) => DType::F64,
        }
    }
}

/// A C-ordered array of f32 or f64.
#[derive(Clone, Debug, PartialEq)]
pub struct HostArray {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

impl HostArray {
    pub fn from_f64(shape: Vec<usize>, data: Vec<f64>) -> HostArray {
        HostArray {
            shape,
            data: ArrayData::F64(data),
        }
    }

    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> HostArray {
        HostArray {
            shape,
            data: ArrayData::F32(data),
        }
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            ArrayData::F32(_) => DType::F32,
            ArrayData::F64(_) => DType::F64,
        }
    }

    pub fn view(&self) -> ArrayRef<'_> {
        ArrayRef {
            shape: &self.shape,
            data: match &self.data {
                ArrayData::F32(v) => DataRef::F32(v),
                ArrayData::F64(v) => DataRef::F64(v),
            },
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            ArrayData::F32(v) => v.len(),
            ArrayData::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f64 (exact for both dtypes).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            ArrayData::F32(v) => v.iter().map(|&x| x as f64).collect(),
            ArrayData::F64(v) => v.clone(),
        }
    }

    /// Reads a `.npy` file: float32 or float64, any shape (a 0-d array too). An array saved in
    /// Fortran order is copied into C order, the layout kernels read.
    pub fn read_npy(path: &Path) -> Result<HostArray, NpyError> {
        let bytes = std::fs::read(path).map_err(|e| NpyError::Io(e.to_string()))?;
        let (npy, shape) = open_npy(&bytes)?;
        let fortran = npy.order() == npyz::Order::Fortran;
        let descr = match npy.dtype() {
            npyz::DType::Plain(ts) => ts.to_string(),
            other => return Err(NpyError::DType(format!("{other:?}"))),
        };
        match descr.as_str() {
            "<f4" | "|f4" => {
                let data = npy
                    .into_vec::<f32>()
                    .map_err(|e| NpyError::Format(e.to_string()))?;
                let data = if fortran {
                    fortran_to_c_order(&shape, data)
                } else {
                    data
                };
                Ok(HostArray::from_f32(shape, data))
            }
            "<f8" | "|f8" => {
                let data = npy
                    .into_vec::<f64>()
                    .map_err(|e| NpyError::Format(e.to_string()))?;
                let data = if fortran {
                    fortran_to_c_order(&shape, data)
                } else {
                    data
                };
                Ok(HostArray::from_f64(shape, data))
            }
            other => Err(NpyError::DType(other.to_string())),
        }
    }

    /// Writes a little-endian C-order `.npy` file.
    pub fn write_npy(&self, path: &Path) -> Result<(), NpyError> {
        let file = std::fs::File::create(path).map_err(|e| NpyError::Io(e.to_string()))?;
        self.write_npy_to(file)
    }

    /// Writes the array as a little-endian C-order `.npy` stream.
    pub fn write_npy_to<W: std::io::Write>(&self, writer: W) -> Result<(), NpyError> {
        match &self.data {
            ArrayData::F32(v) => write_npy_stream(&self.shape, v, writer),
            ArrayData::F64(v) => write_npy_stream(&self.shape, v, writer),
        }
    }

    /// Columns `columns` of a 2-d array, and the array of the other columns.
    pub fn split_columns(&self, columns: Range<usize>) -> (HostArray, HostArray) {
        let width = self.shape.get(1).copied().unwrap_or(1);
        let rows = self.shape.first().copied().unwrap_or(1);
        fn split<T: Copy>(data: &[T], width: usize, columns: &Range<usize>) -> (Vec<T>, Vec<T>) {
            let (mut inside, mut outside) = (Vec::new(), Vec::new());
            for row in data.chunks(width.max(1)) {
                for (c, &v) in row.iter().enumerate() {
                    if columns.contains(&c) {
                        inside.push(v);
                    } else {
                        outside.push(v);
                    }
                }
            }
            (inside, outside)
        }
        let (inside_shape, outside_shape) =
            (vec![rows, columns.len()], vec![rows, width - columns.len()]);
        match &self.data {
            ArrayData::F32(v) => {
                let (a, b) = split(v, width, &columns);
                (
                    HostArray::from_f32(inside_shape, a),
                    HostArray::from_f32(outside_shape, b),
                )
            }
            ArrayData::F64(v) => {
                let (a, b) = split(v, width, &columns);
                (
                    HostArray::from_f64(inside_shape, a),
                    HostArray::from_f64(outside_shape, b),
                )
            }
        }
    }

    /// The values as integer indices. Reductions return indices as floats holding exact
    /// integers (KeOps's convention), so the conversion is exact.
    pub fn to_indices(&self) -> IndexArray {
        IndexArray {
            shape: self.shape.clone(),
            data: self.to_f64().into_iter().map(|v| v as i64).collect(),
        }
    }
}

/// Indices of the points an arg-reduction selected, as int64: the index part of an output
/// written apart from the values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexArray {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

impl IndexArray {
    /// Writes a little-endian C-order int64 `.npy` file.
    pub fn write_npy(&self, path: &Path) -> Result<(), NpyError> {
        let file = std::fs::File::create(path).map_err(|e| NpyError::Io(e.to_string()))?;
        self.write_npy_to(file)
    }

    pub fn write_npy_to<W: std::io::Write>(&self, writer: W) -> Result<(), NpyError> {
        write_npy_stream(&self.shape, &self.data, writer)
    }

    /// Reads an int64 `.npy` file in C order.
    pub fn read_npy(path: &Path) -> Result<IndexArray, NpyError> {
        let bytes = std::fs::read(path).map_err(|e| NpyError::Io(e.to_string()))?;
        let (npy, shape) = open_npy(&bytes)?;
        match npy.dtype() {
            npyz::DType::Plain(ts) if ts.to_string() == "<i8" => {}
            other => return Err(NpyError::DType(format!("{other:?}"))),
        }
        let data = npy
            .into_vec::<i64>()
            .map_err(|e| NpyError::Format(e.to_string()))?;
        Ok(IndexArray { shape, data })
    }
}

fn write_npy_stream<T, W>(shape: &[usize], data: &[T], writer: W) -> Result<(), NpyError>
where
    T: npyz::AutoSerialize + Copy,
    W: std::io::Write,
{
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let io = |e: std::io::Error| NpyError::Io(e.to_string());
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(writer))
        .begin_nd()
        .map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}

/// A `.npy` file's header read, and its shape ([`npy_shape`]). npyz multiplies the header's
/// axes unchecked (a panic, or a wrapped count), so the shape is checked on the header's text
/// before npyz reads it, and on what npyz read after (for a header the text check cannot read).
fn open_npy(bytes: &[u8]) -> Result<(npyz::NpyFile<&[u8]>, Vec<usize>), NpyError> {
    if let Some(axes) = header_axes(bytes) {
        npy_shape(&axes, bytes.len())?;
    }
    let npy = npyz::NpyFile::new(bytes).map_err(|e| NpyError::Format(e.to_string()))?;
    let shape = npy_shape(npy.shape(), bytes.len())?;
    Ok((npy, shape))
}

/// The axes of a `.npy` header's `'shape': (...)` entry, when the header reads plainly (else
/// npyz reports what is wrong with it).
fn header_axes(bytes: &[u8]) -> Option<Vec<u64>> {
    let version = *bytes.get(6)?;
    if !bytes.starts_with(b"\x93NUMPY") {
        return None;
    }
    let (start, len): (usize, usize) = match version {
        1 => (
            10,
            u16::from_le_bytes(bytes.get(8..10)?.try_into().ok()?) as usize,
        ),
        _ => (
            12,
            u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize,
        ),
    };
    let header = std::str::from_utf8(bytes.get(start..start.checked_add(len)?)?).ok()?;
    let after = &header[header.find("'shape'")?..];
    let tuple = &after[after.find('(')? + 1..after.find(')')?];
    tuple
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse::<u64>().ok())
        .collect()
}

/// A `.npy` header's shape, refused when the file cannot hold that many numbers (at least one
/// byte each): nothing is then sized from a header that lies, however large it claims to be.
fn npy_shape(header: &[u64], file_bytes: usize) -> Result<Vec<usize>, NpyError> {
    let shape: Option<Vec<usize>> = header.iter().map(|&d| usize::try_from(d).ok()).collect();
    let count = shape.as_deref().and_then(element_count);
    match (shape, count) {
        (Some(shape), Some(count)) if count <= file_bytes => Ok(shape),
        _ => Err(NpyError::Format(format!(
            "the header's shape {header:?} needs more numbers than the file's {file_bytes} bytes hold"
        ))),
    }
}

/// `data` laid out in Fortran order (the first axis varies fastest) for `shape`, copied into
/// C order (the last axis varies fastest).
fn fortran_to_c_order<T: Copy>(shape: &[usize], data: Vec<T>) -> Vec<T> {
    if shape.len() < 2 || data.is_empty() {
        return data;
    }
    let mut c_strides = vec![1usize; shape.len()];
    for axis in (0..shape.len() - 1).rev() {
        c_strides[axis] = c_strides[axis + 1] * shape[axis + 1];
    }
    let mut out = data.clone();
    let mut index = vec![0usize; shape.len()];
    for &value in &data {
        let offset: usize = index.iter().zip(&c_strides).map(|(i, s)| i * s).sum();
        out[offset] = value;
        // The next Fortran-order index: axis 0 first.
        for (axis, i) in index.iter_mut().enumerate() {
            *i += 1;
            if *i < shape[axis] {
                break;
            }
            *i = 0;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NpyError {
    #[error("{0}")]
    Io(String),
    #[error("not a valid .npy file: {0}")]
    Format(String),
    #[error("dtype `{0}` is not supported: use float32 or float64")]
    DType(String),
}

/// "`x`, `y`, `b`": names, for messages.
pub fn quoted_names(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let quoted: Vec<String> = names
        .into_iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect();
    quoted.join(", ")
}

/// Data that does not fit the kernel's signature. Always names the argument. The messages
/// speak of the arrays a caller passed; a tool adds its own advice (`keopsc eval` says which
/// `--arg` to pass).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgumentError {
    #[error("missing argument `{name}` ({spec})")]
    Missing { name: String, spec: String },
    /// More arrays than the kernel has arguments (given in argument order).
    #[error("{given} arrays given; the kernel takes {} ({})", names.len(), quoted_names(names))]
    TooMany { given: usize, names: Vec<String> },
    #[error("unknown argument `{name}`: the kernel's arguments are {expected}")]
    Unknown { name: String, expected: String },
    #[error("argument `{name}` is given twice")]
    Duplicate { name: String },
    #[error(
        "argument `{name}` ({spec}) has shape {}; expected {expected}",
        shape_text(shape)
    )]
    Shape {
        name: String,
        spec: String,
        shape: Vec<usize>,
        expected: String,
    },
    #[error("argument `{name}` is {dtype} but `{first}` is {first_dtype}: all arrays must share one dtype")]
    MixedDType {
        name: String,
        dtype: DType,
        first: String,
        first_dtype: DType,
    },
    #[error("arguments `{first}` and `{name}` disagree on {axis}: {first_len} rows against {len}")]
    Length {
        name: String,
        first: String,
        axis: &'static str,
        len: usize,
        first_len: usize,
    },
    #[error("argument `{name}` is {found}, but the kernel was compiled for {expected}")]
    CompiledDType {
        name: String,
        found: DType,
        expected: DType,
    },
    #[error(
        "argument `{name}` holds {len} numbers, but its shape {} needs {}",
        shape_text(shape),
        needed_text(shape)
    )]
    DataLength {
        name: String,
        len: usize,
        shape: Vec<usize>,
    },
    #[error("the output buffer must hold {expected} numbers of {dtype}; it holds {len} of another size or type")]
    Output {
        len: usize,
        expected: usize,
        dtype: DType,
    },
    #[error("argument `{name}`: {error}")]
    File { name: String, error: NpyError },
}

/// A shape as numpy prints it: `(3,)`, `(4, 2)`, `()`.
/// How many numbers an array of `shape` holds; `None` when that overflows `usize` (a shape no
/// data can fill, which must be refused before anything is sized from it).
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &axis| n.checked_mul(axis))
}

fn needed_text(shape: &[usize]) -> String {
    element_count(shape).map_or_else(
        || "more than this machine can address".to_string(),
        |n| n.to_string(),
    )
}

pub fn shape_text(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", dims.join(", "))
        }
    }
}

/// The sizes found by [`check_arguments`]: `n` rows for i-variables, `m` for j-variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProblemSize {
    pub n: usize,
    pub m: usize,
    pub dtype: DType,
}

impl ProblemSize {
    /// (output rows, reduced indices) of a kernel reducing along `axis`.
    pub fn rows_and_inner(&self, axis: Axis) -> (usize, usize) {
        match axis {
            Axis::I => (self.n, self.m),
            Axis::J => (self.m, self.n),
        }
    }

    /// An error unless these arrays' dtype is `compiled`, the dtype `sig`'s code was
    /// compiled for.
    pub fn check_compiled_dtype(
        &self,
        sig: &Signature,
        compiled: DType,
    ) -> Result<(), ArgumentError> {
        if self.dtype == compiled {
            return Ok(());
        }
        Err(ArgumentError::CompiledDType {
            name: sig.args.first().map(|a| a.name.clone()).unwrap_or_default(),
            found: self.dtype,
            expected: compiled,
        })
    }
}

/// Checks `arrays` (in signature order) against the signature: dtype shared, each shape
/// `(rows, dim)` (or `(rows,)` for dim 1; `(dim,)`/`(1, dim)` for parameters, and `()` for a
/// `Pm(1)`), and row counts agreeing within each category. A kernel with no i- (or j-)
/// variable has n (or m) = 1. Returns the first error; [`check_all_arguments`] returns them all.
pub fn check_arguments(sig: &Signature, arrays: &[ArrayRef]) -> Result<ProblemSize, ArgumentError> {
    let given: Vec<Option<ArrayRef>> = arrays.iter().copied().map(Some).collect();
    check_all_arguments(sig, &given).map_err(|errors| {
        errors
            .into_iter()
            .next()
            .expect("a failed check has an error")
    })
}

/// `given` arrays for the signature's arguments, in order, when their numbers differ: the first
/// argument left out, or the first one too many.
pub fn argument_count_error(sig: &Signature, given: usize) -> ArgumentError {
    match sig.args.get(given) {
        Some(spec) => ArgumentError::Missing {
            name: spec.name.clone(),
            spec: format!("{}({})", spec.category, spec.dim),
        },
        None => ArgumentError::TooMany {
            given,
            names: sig.args.iter().map(|a| a.name.clone()).collect(),
        },
    }
}

/// [`check_arguments`] reporting every error at once, in argument order. An argument given as
/// `None` is skipped: its caller has reported it already (missing, unreadable).
pub fn check_all_arguments(
    sig: &Signature,
    arrays: &[Option<ArrayRef>],
) -> Result<ProblemSize, Vec<ArgumentError>> {
    let layouts: Vec<Option<ArgumentLayout>> = arrays
        .iter()
        .map(|a| a.as_ref().map(ArrayRef::layout))
        .collect();
    check_layouts(sig, &layouts)
}

/// What the argument checks read of an array: its shape, dtype and number of elements. Host
/// arrays have one ([`ArrayRef::layout`]); so do buffers in device memory, which are checked
/// without being read (`cuda::DeviceArg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgumentLayout<'a> {
    pub shape: &'a [usize],
    pub dtype: DType,
    pub len: usize,
}

impl ArrayRef<'_> {
    pub fn layout(&self) -> ArgumentLayout<'_> {
        ArgumentLayout {
            shape: self.shape,
            dtype: self.dtype(),
            len: self.data.len(),
        }
    }
}

/// [`check_all_arguments`] on the layouts of the arguments.
pub fn check_layouts(
    sig: &Signature,
    arrays: &[Option<ArgumentLayout>],
) -> Result<ProblemSize, Vec<ArgumentError>> {
    if arrays.len() != sig.args.len() {
        return Err(vec![argument_count_error(sig, arrays.len())]);
    }
    let mut errors = Vec::new();
    let mut n: Option<(usize, &str)> = None;
    let mut m: Option<(usize, &str)> = None;
    let mut dtype: Option<(DType, &str)> = None;
    for (spec, array) in sig.args.iter().zip(arrays) {
        let Some(array) = array else { continue };
        if let Some((first_dtype, first)) = dtype {
            if array.dtype != first_dtype {
                errors.push(ArgumentError::MixedDType {
                    name: spec.name.clone(),
                    dtype: array.dtype,
                    first: first.to_string(),
                    first_dtype,
                });
            }
        } else {
            dtype = Some((array.dtype, &spec.name));
        }
        let shape: &[usize] = array.shape;
        if element_count(shape) != Some(array.len) {
            errors.push(ArgumentError::DataLength {
                name: spec.name.clone(),
                len: array.len,
                shape: shape.to_vec(),
            });
            continue;
        }
        let d = spec.dim;
        let shape_error = |expected: String| ArgumentError::Shape {
            name: spec.name.clone(),
            spec: format!("{}({})", spec.category, d),
            shape: shape.to_vec(),
            expected,
        };
        match spec.category {
            Category::Param => {
                let ok = matches!(shape, [x] if *x == d)
                    || matches!(shape, [1, x] if *x == d)
                    || (shape.is_empty() && d == 1);
                if !ok {
                    let also = if d == 1 { " or ()" } else { "" };
                    errors.push(shape_error(format!("({d},) or (1, {d}){also}")));
                }
            }
            Category::I | Category::J => {
                let (rows_name, slot) = match spec.category {
                    Category::I => ("N", &mut n),
                    _ => ("M", &mut m),
                };
                let rows = match shape {
                    [r, x] if *x == d => *r,
                    [r] if d == 1 => *r,
                    _ => {
                        let also = if d == 1 {
                            format!(" or ({rows_name},)")
                        } else {
                            String::new()
                        };
                        errors.push(shape_error(format!("({rows_name}, {d}){also}")));
                        continue;
                    }
                };
                match slot {
                    Some((first_len, first)) if *first_len != rows => {
                        errors.push(ArgumentError::Length {
                            name: spec.name.clone(),
                            first: first.to_string(),
                            axis: if spec.category == Category::I {
                                "N (the i-variables' rows)"
                            } else {
                                "M (the j-variables' rows)"
                            },
                            len: rows,
                            first_len: *first_len,
                        })
                    }
                    Some(_) => {}
                    None => *slot = Some((rows, &spec.name)),
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ProblemSize {
        n: n.map_or(1, |(r, _)| r),
        m: m.map_or(1, |(r, _)| r),
        dtype: dtype.map_or(DType::F64, |(d, _)| d),
    })
}

/// Which columns of a reduction's output row hold indices: all of them for arg-only
/// reductions (ArgMin, ArgKMin, ...), the second half for combined ones (Min_ArgMin,
/// KMin_ArgKMin, ...: values first, then indices, as KeOps), none for the others.
pub fn index_columns(reduction: &Reduction) -> Option<Range<usize>> {
    let width = reduction.output_dim();
    match reduction.kind.output() {
        ReductionOutput::Values => None,
        ReductionOutput::Indices => Some(0..width),
        ReductionOutput::ValuesAndIndices => Some(width / 2..width),
    }
}

/// The element types kernels take.
pub trait Element: Copy {
    fn data_ref(data: &[Self]) -> DataRef<'_>;
}

impl Element for f32 {
    fn data_ref(data: &[f32]) -> DataRef<'_> {
        DataRef::F32(data)
    }
}

impl Element for f64 {
    fn data_ref(data: &[f64]) -> DataRef<'_> {
        DataRef::F64(data)
    }
}

/// An `ndarray` array or view in standard (C) layout; other layouts are refused (copy with
/// `.as_standard_layout()` first).
impl<'a, A, S, D> TryFrom<&'a ndarray::ArrayBase<S, D>> for ArrayRef<'a>
where
    A: Element,
    S: ndarray::Data<Elem = A>,
    D: ndarray::Dimension,
{
    type Error = &'static str;

    fn try_from(array: &'a ndarray::ArrayBase<S, D>) -> Result<ArrayRef<'a>, &'static str> {
        let data = array.as_slice().ok_or(
            "the array is not in standard (C-contiguous) layout; use .as_standard_layout()",
        )?;
        Ok(ArrayRef {
            shape: array.shape(),
            data: A::data_ref(data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduction::ReductionKind;

    /// A `.npy` file of `descr` with this header shape and `data` bytes (version 1.0).
    fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        bytes
    }

    /// A header that claims more numbers than its file holds (or than can be counted) is a
    /// format error, not an allocation sized from it; an honest one still reads.
    #[test]
    fn npy_headers_that_lie_about_their_shape_are_refused() {
        let dir = std::env::temp_dir().join(format!("keops-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&path, npy_bytes("<f4", "(2,)", &data)).unwrap();
        assert_eq!(HostArray::read_npy(&path).unwrap().to_f64(), vec![1.0, 2.0]);
        for shape in [
            "(4611686018427387904, 4)",
            "(6148914691236517216, 3)",
            "(1000000000000,)",
        ] {
            std::fs::write(&path, npy_bytes("<f4", shape, &data)).unwrap();
            let error = HostArray::read_npy(&path).unwrap_err();
            assert!(
                error.to_string().contains("needs more numbers"),
                "{shape}: {error}"
            );
            std::fs::write(&path, npy_bytes("<i8", shape, &data)).unwrap();
            let error = IndexArray::read_npy(&path).unwrap_err();
            assert!(
                error.to_string().contains("needs more numbers"),
                "{shape}: {error}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use crate::abi::ArgSpec;
    use crate::reduction::Reduction;

    fn signature() -> Signature {
        let arg = |name: &str, category, dim| ArgSpec {
            name: name.into(),
            category,
            dim,
        };
        Signature {
            name: "k".into(),
            args: vec![
                arg("x", Category::I, 3),
                arg("y", Category::J, 3),
                arg("b", Category::J, 1),
                arg("s", Category::Param, 1),
            ],
            reduction: Reduction::new(ReductionKind::Sum, 1),
            axis: crate::abi::Axis::I,
        }
    }

    #[test]
    fn fortran_order_is_copied_into_c_order() {
        // A (2, 3, 4) array whose element [i, j, k] is 100 i + 10 j + k.
        let shape = [2, 3, 4];
        let value = |i: usize, j: usize, k: usize| (100 * i + 10 * j + k) as f64;
        let mut fortran = Vec::new();
        for k in 0..4 {
            for j in 0..3 {
                for i in 0..2 {
                    fortran.push(value(i, j, k));
                }
            }
        }
        let mut c = Vec::new();
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..4 {
                    c.push(value(i, j, k));
                }
            }
        }
        assert_eq!(fortran_to_c_order(&shape, fortran), c);
        // 0-d and 1-d arrays have one order.
        assert_eq!(fortran_to_c_order(&[], vec![7.0]), vec![7.0]);
        assert_eq!(fortran_to_c_order(&[3], vec![1, 2, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn every_argument_error_is_listed() {
        let sig = signature();
        let x = [0.0f64; 8];
        let y = [0.0f64; 15];
        let b = [0.0f32; 4];
        let s = [0.5f64];
        let arrays = [
            Some(ArrayRef::f64(&[4, 2], &x)),
            Some(ArrayRef::f64(&[5, 3], &y)),
            Some(ArrayRef::f32(&[4, 1], &b)),
            None,
        ];
        let errors = check_all_arguments(&sig, &arrays).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{text:#?}");
        assert!(text[0].contains("argument `x` (Vi(3)) has shape (4, 2)"));
        assert!(text[1].contains("argument `b` is float32 but `x` is float64"));
        assert!(text[2].contains("`b`") && text[2].contains("5 rows against 4"));
        // The single-error check reports the first of them.
        let all: Vec<ArrayRef> = arrays
            .iter()
            .map(|a| a.unwrap_or(ArrayRef::f64(&[], &s)))
            .collect();
        assert_eq!(check_arguments(&sig, &all).unwrap_err(), errors[0]);
    }

    #[test]
    fn a_zero_d_array_is_a_pm_1() {
        let sig = signature();
        let (x, y, b, s) = ([0.0f64; 6], [0.0f64; 9], [0.0f64; 3], [0.5f64]);
        let with_s = |shape: &'static [usize]| {
            check_arguments(
                &sig,
                &[
                    ArrayRef::f64(&[2, 3], &x),
                    ArrayRef::f64(&[3, 3], &y),
                    ArrayRef::f64(&[3], &b),
                    ArrayRef::f64(shape, &s),
                ],
            )
        };
        for shape in [&[][..], &[1], &[1, 1]] {
            let size = with_s(shape).expect("a scalar parameter");
            assert_eq!((size.n, size.m), (2, 3));
        }
        let mut wide = signature();
        wide.args[3].dim = 2;
        let two = [0.0f64; 2];
        let error = check_arguments(
            &wide,
            &[
                ArrayRef::f64(&[2, 3], &x),
                ArrayRef::f64(&[3, 3], &y),
                ArrayRef::f64(&[3], &b),
                ArrayRef::f64(&[], &two[..1]),
            ],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("expected (2,) or (1, 2)"),
            "{error}"
        );
    }

    #[test]
    fn index_columns_follow_the_contract_layout() {
        let k = |kind, k, n| Reduction::with_k(kind, k, n);
        assert_eq!(
            index_columns(&k(ReductionKind::KMinArgKMin, 3, 2)),
            Some(6..12)
        );
        assert_eq!(index_columns(&k(ReductionKind::ArgKMin, 3, 2)), Some(0..6));
        assert_eq!(
            index_columns(&Reduction::new(ReductionKind::MinArgMin, 2)),
            Some(2..4)
        );
        assert_eq!(
            index_columns(&Reduction::new(ReductionKind::ArgMax, 1)),
            Some(0..1)
        );
        assert_eq!(
            index_columns(&Reduction::new(ReductionKind::MaxSumShiftExp, 1)),
            None
        );
        assert_eq!(index_columns(&Reduction::new(ReductionKind::Sum, 4)), None);
    }

    #[test]
    fn split_columns_and_int64_indices() {
        let a = HostArray::from_f32(vec![2, 4], vec![0.5, 1.5, 3.0, 1.0, 2.5, 0.25, 0.0, 2.0]);
        let (indices, values) = a.split_columns(2..4);
        assert_eq!(
            values,
            HostArray::from_f32(vec![2, 2], vec![0.5, 1.5, 2.5, 0.25])
        );
        assert_eq!(indices.to_indices().data, vec![3, 1, 0, 2]);
        assert_eq!(indices.to_indices().shape, vec![2, 2]);
        let dir = std::env::temp_dir().join(format!("keops-arrays-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("idx.npy");
        indices.to_indices().write_npy(&path).unwrap();
        assert_eq!(IndexArray::read_npy(&path).unwrap(), indices.to_indices());
        // An int64 file is not a float array.
        assert!(matches!(
            HostArray::read_npy(&path),
            Err(NpyError::DType(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
