//! One operator applied to its operands' values, in f64: the definitions of lang-spec, written
//! as directly as possible.

use crate::formula::{Op, TensorDotSpec};

/// Writes `op(args)` into `out` (sized to the node's dimension).
pub fn apply(op: &Op, args: &[&[f64]], out: &mut [f64]) {
    if op.is_elementwise() {
        let at = |a: &[f64], k: usize| if a.len() == 1 { a[0] } else { a[k] };
        for (k, o) in out.iter_mut().enumerate() {
            *o = match args {
                [a] => unary(op, at(a, k)),
                [a, b] => binary(op, at(a, k), at(b, k)),
                [a, b, c] => ternary(op, at(a, k), at(b, k), at(c, k)),
                _ => unreachable!("element-wise operators take 1 to 3 operands"),
            };
        }
        return;
    }
    match op {
        Op::Var(_) | Op::Grad | Op::Diff => unreachable!("handled by the evaluator"),
        Op::Const(c) => out[0] = c.0,
        Op::IntCst(k) => out[0] = *k as f64,
        Op::Zero(_) => out.fill(0.0),
        Op::Sum => out[0] = args[0].iter().sum(),
        Op::SumT(_) => out.fill(args[0][0]),
        Op::Max => out[0] = first_extreme(args[0], |a, b| a > b).1,
        Op::Min => out[0] = first_extreme(args[0], |a, b| a < b).1,
        Op::ArgMax => out[0] = first_extreme(args[0], |a, b| a > b).0 as f64,
        Op::ArgMin => out[0] = first_extreme(args[0], |a, b| a < b).0 as f64,
        Op::SqNorm2 => out[0] = args[0].iter().map(|x| x * x).sum(),
        Op::Norm2 => out[0] = args[0].iter().map(|x| x * x).sum::<f64>().sqrt(),
        Op::Normalize => {
            let r = rsqrt(args[0].iter().map(|x| x * x).sum());
            for (o, x) in out.iter_mut().zip(args[0]) {
                *o = r * x;
            }
        }
        Op::SqDist => {
            out[0] = args[0]
                .iter()
                .zip(args[1])
                .map(|(x, y)| (x - y) * (x - y))
                .sum()
        }
        Op::Scalprod => out[0] = args[0].iter().zip(args[1]).map(|(x, y)| x * y).sum(),
        Op::Elem(m) => out[0] = args[0][*m],
        Op::ElemT(_, m) => {
            out.fill(0.0);
            out[*m] = args[0][0];
        }
        Op::Extract(start, len) => out.copy_from_slice(&args[0][*start..start + len]),
        Op::ExtractT(start, _) => {
            out.fill(0.0);
            out[*start..start + args[0].len()].copy_from_slice(args[0]);
        }
        Op::Concat => {
            let n = args[0].len();
            out[..n].copy_from_slice(args[0]);
            out[n..].copy_from_slice(args[1]);
        }
        Op::OneHot(_) => {
            out.fill(0.0);
            // KeOps's index: (int)(f + 0.5), truncating toward zero; out of range gives zeros.
            let index = (args[0][0] + 0.5).trunc();
            if index >= 0.0 && (index as usize) < out.len() {
                out[index as usize] = 1.0;
            }
        }
        Op::MatVecMult => {
            let (a, b) = (args[0], args[1]);
            let k = b.len();
            for (i, o) in out.iter_mut().enumerate() {
                *o = (0..k).map(|c| a[i * k + c] * b[c]).sum();
            }
        }
        Op::VecMatMult => {
            let (b, a) = (args[0], args[1]);
            let m = out.len();
            for (i, o) in out.iter_mut().enumerate() {
                *o = (0..b.len()).map(|c| b[c] * a[c * m + i]).sum();
            }
        }
        Op::TensorProd => {
            let (f, g) = (args[0], args[1]);
            for (k, x) in f.iter().enumerate() {
                for (l, y) in g.iter().enumerate() {
                    out[k * g.len() + l] = x * y;
                }
            }
        }
        Op::TensorDot(spec) => tensordot(spec, args[0], args[1], out),
        Op::WeightedSqNorm => out[0] = weighted_sq_norm(args[0], args[1]),
        Op::WeightedSqDist => {
            let diff: Vec<f64> = args[1].iter().zip(args[2]).map(|(x, y)| x - y).collect();
            out[0] = weighted_sq_norm(args[0], &diff);
        }
        Op::SqNormIso => out[0] = args[0][0] * args[1].iter().map(|x| x * x).sum::<f64>(),
        Op::SqNormDiag => out[0] = args[0].iter().zip(args[1]).map(|(s, x)| s * x * x).sum(),
        Op::SymSqNorm => out[0] = quadratic_form(args[0], args[1]),
        other => unreachable!("`{}` is element-wise", other.name()),
    }
}

fn rsqrt(x: f64) -> f64 {
    // KeOps defines Rsqrt(0) = 0, so that gradients of Sqrt at 0 are 0 rather than NaN.
    if x == 0.0 {
        0.0
    } else {
        1.0 / x.sqrt()
    }
}

fn unary(op: &Op, x: f64) -> f64 {
    match op {
        Op::Neg => -x,
        Op::Exp => x.exp(),
        Op::Log => x.ln(),
        Op::Sqrt => x.sqrt(),
        Op::Rsqrt => rsqrt(x),
        Op::Square => x * x,
        Op::Inv => 1.0 / x,
        Op::Abs => x.abs(),
        Op::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        Op::Step => {
            if x < 0.0 {
                0.0
            } else {
                1.0
            }
        }
        Op::ReLU => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        Op::Sin => x.sin(),
        Op::Cos => x.cos(),
        Op::Asin => x.asin(),
        Op::Acos => x.acos(),
        Op::Atan => x.atan(),
        Op::Floor => x.floor(),
        Op::XLogX => {
            if x == 0.0 {
                0.0
            } else {
                x * x.ln()
            }
        }
        Op::SinXDivX => {
            if x == 0.0 {
                1.0
            } else {
                x.sin() / x
            }
        }
        Op::Round(d) => {
            if *d == 0 {
                x.round()
            } else {
                let scale = 10f64.powi(*d);
                (x * scale).round() / scale
            }
        }
        Op::Pow(m) => x.powi(*m),
        Op::ClampInt(a, b) => clamp(x, *a as f64, *b as f64),
        other => unreachable!("`{}` is not unary", other.name()),
    }
}

fn binary(op: &Op, x: f64, y: f64) -> f64 {
    let indicator = |b: bool| if b { 1.0 } else { 0.0 };
    match op {
        Op::Add => x + y,
        Op::Sub => x - y,
        Op::Mul => x * y,
        Op::Div => x / y,
        Op::Powf => x.powf(y),
        Op::Atan2 => x.atan2(y),
        Op::Equal => indicator(x == y),
        Op::NotEqual => indicator(x != y),
        Op::LessThan => indicator(x < y),
        Op::LessOrEqual => indicator(x <= y),
        other => unreachable!("`{}` is not binary", other.name()),
    }
}

fn ternary(op: &Op, x: f64, a: f64, b: f64) -> f64 {
    match op {
        Op::Clamp => clamp(x, a, b),
        Op::IfElse => {
            if x >= 0.0 {
                a
            } else {
                b
            }
        }
        // Mod(x, n, d) = x - n * Floor((x - d) / n): the representative in [d, d + n).
        Op::Mod => x - a * ((x - b) / a).floor(),
        other => unreachable!("`{}` is not ternary", other.name()),
    }
}

/// KeOps's clamp: the lower bound is tested first, and NaN passes through.
fn clamp(x: f64, a: f64, b: f64) -> f64 {
    if x < a {
        a
    } else if x > b {
        b
    } else {
        x
    }
}

/// (index, value) of the first extreme component: strict comparison, so ties keep the first.
fn first_extreme(v: &[f64], better: impl Fn(f64, f64) -> bool) -> (usize, f64) {
    let mut best = (0, v[0]);
    for (k, &x) in v.iter().enumerate().skip(1) {
        if better(x, best.1) {
            best = (k, x);
        }
    }
    best
}

/// WeightedSqNorm dispatches on the weight's dimension: 1 isotropic, n diagonal, n² full.
fn weighted_sq_norm(s: &[f64], f: &[f64]) -> f64 {
    if s.len() == 1 {
        s[0] * f.iter().map(|x| x * x).sum::<f64>()
    } else if s.len() == f.len() {
        s.iter().zip(f).map(|(s, x)| s * x * x).sum()
    } else {
        quadratic_form(s, f)
    }
}

/// `sum_{a,b} S[a n + b] f_a f_b`, S row-major n x n.
fn quadratic_form(s: &[f64], f: &[f64]) -> f64 {
    let n = f.len();
    let mut total = 0.0;
    for a in 0..n {
        for b in 0..n {
            total += s[a * n + b] * f[a] * f[b];
        }
    }
    total
}

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

/// numpy.tensordot(f, g, axes=(contf, contg)), then kept axis k moved to output axis permute[k].
fn tensordot(spec: &TensorDotSpec, f: &[f64], g: &[f64], out: &mut [f64]) {
    let (sf, sg) = (strides(&spec.dims_f), strides(&spec.dims_g));
    let (kept_f, kept_g) = (spec.kept_f(), spec.kept_g());
    let kept_shape = spec.kept_shape();
    let out_strides = strides(&spec.output_shape());
    let kept_out_stride: Vec<usize> = (0..kept_shape.len())
        .map(|k| match &spec.permute {
            Some(p) => out_strides[p[k]],
            None => out_strides[k],
        })
        .collect();
    let contracted: Vec<usize> = spec.contract_f.iter().map(|&a| spec.dims_f[a]).collect();
    let n_kept: usize = kept_shape.iter().product();
    let n_contracted: usize = contracted.iter().product();
    out.fill(0.0);
    let mut kept_index = vec![0; kept_shape.len()];
    let mut cont_index = vec![0; contracted.len()];
    for flat in 0..n_kept {
        unflatten(flat, &kept_shape, &mut kept_index);
        let mut base_f = 0;
        let mut base_g = 0;
        let mut o = 0;
        for (k, &idx) in kept_index.iter().enumerate() {
            if k < kept_f.len() {
                base_f += idx * sf[kept_f[k]];
            } else {
                base_g += idx * sg[kept_g[k - kept_f.len()]];
            }
            o += idx * kept_out_stride[k];
        }
        let mut total = 0.0;
        for c in 0..n_contracted {
            unflatten(c, &contracted, &mut cont_index);
            let mut a = base_f;
            let mut b = base_g;
            for (k, &idx) in cont_index.iter().enumerate() {
                a += idx * sf[spec.contract_f[k]];
                b += idx * sg[spec.contract_g[k]];
            }
            total += f[a] * g[b];
        }
        out[o] = total;
    }
}

fn unflatten(mut flat: usize, shape: &[usize], index: &mut [usize]) {
    for k in (0..shape.len()).rev() {
        index[k] = flat % shape[k];
        flat /= shape[k];
    }
}
