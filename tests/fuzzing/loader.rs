//! The module loader on damaged modules. A module is built once per process (two kernels, f32
//! and f64); each input damages its manifest (as text, or one JSON field at a time) and its
//! library (bytes), writes the result as a module directory and loads it. The property:
//! `Module::load` refuses it with an error, or it loaded exactly the module that was built
//! (same kernels, target and library, and the same results when called). A damaged library is
//! never opened (the checksum is verified first), so no damaged code runs.

use super::Tape;
use keops_runtime::manifest::{Manifest, MANIFEST_FILE};
use keops_runtime::Module;
use keops_runtime::{DType, HostArray};
use keopsc::artifact::{self, Placement};
use keopsc::driver;
use keopsc::source::SourceFile;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The module every input damages.
pub const SOURCE: &str = "\
kernel gauss {
    x = Vi(3)
    y = Vj(3)
    b = Vj(2)
    Sum_Reduction(Exp(-SqDist(x, y)) * b, 0)
}
kernel knn {
    x = Vi(2)
    y = Vj(2)
    ArgKMin_Reduction(SqDist(x, y), 3, 1)
}
";

struct Pristine {
    manifest_text: String,
    manifest: Manifest,
    library: Vec<u8>,
    /// Each kernel's output on [`sample_inputs`], per dtype.
    outputs: Vec<(String, DType, HostArray)>,
    /// Where damaged modules are written: one directory per process.
    scratch: PathBuf,
}

fn work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("keops-fuzz-loader-{}", std::process::id()))
}

fn pristine() -> &'static Pristine {
    static PRISTINE: OnceLock<Pristine> = OnceLock::new();
    PRISTINE.get_or_init(|| {
        let dir = work_dir();
        let built = dir.join("built.kmod");
        let compiled = driver::compile(SourceFile::new("<loader fuzz>", SOURCE))
            .unwrap_or_else(|_| panic!("the loader's module compiles"));
        let report = artifact::build(
            &compiled,
            &[DType::F32, DType::F64],
            &keopsc::codegen::host_cpu(),
            &built,
            &[],
            Placement::Replace,
        )
        .unwrap_or_else(|e| panic!("building the loader's module: {e}"));
        let manifest_text =
            std::fs::read_to_string(built.join(MANIFEST_FILE)).expect("manifest written");
        let library = std::fs::read(built.join(&report.manifest.library)).expect("library");
        let module = Module::load(&built).unwrap_or_else(|e| panic!("the built module: {e}"));
        let outputs = call_all(&module).expect("the built module runs");
        Pristine {
            manifest_text,
            manifest: report.manifest,
            library,
            outputs,
            scratch: dir.join("damaged.kmod"),
        }
    })
}

/// Every kernel of `module` on inputs that fit its signature, in each dtype it has.
fn call_all(module: &Module) -> Result<Vec<(String, DType, HostArray)>, String> {
    let mut out = Vec::new();
    for kernel in module.kernels() {
        for dtype in kernel.dtypes() {
            let inputs = sample_inputs(kernel.signature(), dtype);
            let views: Vec<_> = inputs.iter().map(HostArray::view).collect();
            let result = kernel
                .call(&views)
                .map_err(|e| format!("calling `{}`: {e}", kernel.name()))?;
            out.push((kernel.name().to_string(), dtype, result));
        }
    }
    Ok(out)
}

/// N = 5, M = 7 rows of varied values, in argument order.
fn sample_inputs(sig: &keops_runtime::Signature, dtype: DType) -> Vec<HostArray> {
    sig.args
        .iter()
        .enumerate()
        .map(|(k, a)| {
            let rows = match a.category {
                keops_runtime::Category::I => 5,
                keops_runtime::Category::J => 7,
                keops_runtime::Category::Param => 1,
            };
            let data: Vec<f64> = (0..rows * a.dim)
                .map(|e| ((k * 31 + e * 17 + 1) as f64).sin())
                .collect();
            match dtype {
                DType::F64 => HostArray::from_f64(vec![rows, a.dim], data),
                DType::F32 => {
                    HostArray::from_f32(vec![rows, a.dim], data.iter().map(|&v| v as f32).collect())
                }
            }
        })
        .collect()
}

/// Byte edits of `bytes`, as the tape says.
fn damage_bytes(tape: &mut Tape, bytes: &mut Vec<u8>) {
    for _ in 0..1 + tape.pick(4) {
        if bytes.is_empty() {
            bytes.push(tape.byte());
            continue;
        }
        let pos = tape.pick(bytes.len());
        match tape.pick(5) {
            0 => bytes[pos] = tape.byte(),
            1 => bytes[pos] ^= 1 << tape.pick(8),
            2 => {
                let end = (pos + 1 + tape.pick(16)).min(bytes.len());
                bytes.drain(pos..end);
            }
            3 => {
                let count = 1 + tape.pick(8);
                let inserted: Vec<u8> = (0..count).map(|_| tape.byte()).collect();
                bytes.splice(pos..pos, inserted);
            }
            _ => bytes.truncate(pos),
        }
    }
}

/// Values a damaged JSON field may take: other fields' values, off-by-one numbers, and names
/// the loader knows.
fn replacement(tape: &mut Tape, old: &serde_json::Value, manifest: &Manifest) -> serde_json::Value {
    use serde_json::Value;
    let symbols: Vec<&str> = manifest
        .kernels
        .iter()
        .flat_map(|k| k.entries.iter().map(|e| e.symbol.as_str()))
        .collect();
    match tape.pick(4) {
        0 => match old {
            Value::Number(n) => {
                let v = n.as_i64().unwrap_or(0);
                let delta = *tape.choose(&[1i64, -1, 2, 7, 1 << 20, 1 << 40, i64::MAX / 2]);
                Value::from(v.saturating_add(if tape.pick(2) == 0 { delta } else { -delta }))
            }
            Value::String(s) => {
                let mut bytes = s.clone().into_bytes();
                damage_bytes(tape, &mut bytes);
                Value::from(String::from_utf8_lossy(&bytes).into_owned())
            }
            Value::Array(items) => {
                let mut items = items.clone();
                if !items.is_empty() {
                    let k = tape.pick(items.len());
                    if tape.pick(2) == 0 {
                        items.remove(k);
                    } else {
                        let copy = items[k].clone();
                        items.insert(k, copy);
                    }
                }
                Value::Array(items)
            }
            other => other.clone(),
        },
        1 => Value::from(*tape.choose(&symbols)),
        2 => Value::from(*tape.choose(&[
            "float32", "float64", "Vi", "Vj", "Pm", "Sum", "ArgKMin", "KMin", "Max", "", "x", "y",
            "b", "../x", "avx512f", "fma",
        ])),
        _ => match tape.pick(5) {
            0 => Value::from(0),
            1 => Value::from(*tape.choose(&[1, 2, 3, 4, 8, 16, 64])),
            2 => Value::from(-1),
            3 => Value::Null,
            _ => Value::from(1.5),
        },
    }
}

/// Every leaf and array of a JSON value, as JSON pointers.
fn pointers(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                pointers(v, format!("{at}/{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            out.push(at.clone());
            for (k, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{k}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// The manifest with some fields replaced.
fn damage_fields(tape: &mut Tape, p: &Pristine) -> String {
    let mut value: serde_json::Value =
        serde_json::from_str(&p.manifest_text).expect("the built manifest is JSON");
    for _ in 0..1 + tape.pick(3) {
        let mut all = Vec::new();
        pointers(&value, String::new(), &mut all);
        let at = tape.choose(&all).clone();
        if let Some(slot) = value.pointer_mut(&at) {
            let new = replacement(tape, slot, &p.manifest);
            *slot = new;
        }
    }
    serde_json::to_string_pretty(&value).expect("JSON serialises")
}

/// Writes a file through a fresh inode, so that a library a previous case loaded (and may
/// still be mapped) is never modified in place.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, bytes)?;
    std::fs::rename(&staging, path)
}

/// Damages the built module as `bytes` say, loads it, and checks the property. `Err` says
/// how a damaged module was accepted.
pub fn run(bytes: &[u8]) -> Result<(), String> {
    let p = pristine();
    let mut tape = Tape::new(bytes);
    let mut manifest = p.manifest_text.clone().into_bytes();
    let mut library = p.library.clone();
    let mut write_library = true;
    match tape.pick(6) {
        0 => manifest = tape.rest().to_vec(),
        1 => damage_bytes(&mut tape, &mut manifest),
        2 => damage_bytes(&mut tape, &mut library),
        3 => {
            damage_bytes(&mut tape, &mut manifest);
            damage_bytes(&mut tape, &mut library);
        }
        4 => manifest = damage_fields(&mut tape, p).into_bytes(),
        _ => write_library = false,
    }
    let dir = &p.scratch;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("scratch directory: {e}"))?;
    replace_file(&dir.join(MANIFEST_FILE), &manifest).map_err(|e| e.to_string())?;
    if write_library {
        replace_file(&dir.join(&p.manifest.library), &library).map_err(|e| e.to_string())?;
    }
    let module = match Module::load(dir) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.to_string();
            return Ok(());
        }
    };
    let loaded = module.manifest();
    let what = "a damaged module was loaded";
    if library != p.library {
        return Err(format!("{what}: its library differs from the one built"));
    }
    if loaded.kernels != p.manifest.kernels
        || loaded.target != p.manifest.target
        || loaded.library != p.manifest.library
        || loaded.library_hash != p.manifest.library_hash
    {
        return Err(format!(
            "{what}: its manifest describes other kernels or another target\nbuilt:\n{}\nloaded:\n{}",
            p.manifest_text,
            String::from_utf8_lossy(&manifest)
        ));
    }
    let outputs = call_all(&module)?;
    if outputs != p.outputs {
        return Err(format!("{what}: its kernels give other results"));
    }
    Ok(())
}
