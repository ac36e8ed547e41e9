//! The normalisations of diffusion geometry, as diagonal scalings `diag(l) A diag(r)` of an
//! operator: the degrees `d = A 1` come from one product, nothing N x N is formed.

use super::operator::{check_operand, check_square};
use super::{LinalgError, LinearOperator};
use std::fmt;
use std::str::FromStr;

/// One normalisation step, applied to the operator as it stands (with `d = A 1` its degrees).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Normalization {
    /// `D^-1 A`: rows sum to one (a random walk's transition matrix).
    Row,
    /// `D^-1/2 A D^-1/2`: symmetric when `A` is, with the eigenvalues of `D^-1 A`.
    Symmetric,
    /// `D^-a A D^-a`: the density correction of diffusion maps (`a = 1` removes the sampling
    /// density; followed by `Row` or `Symmetric`).
    Alpha(f64),
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Normalization::Row => f.write_str("row"),
            Normalization::Symmetric => f.write_str("sym"),
            Normalization::Alpha(a) => write!(f, "alpha={a}"),
        }
    }
}

impl FromStr for Normalization {
    type Err = String;

    /// `row`, `sym` or `alpha=A`.
    fn from_str(s: &str) -> Result<Normalization, String> {
        match s.trim() {
            "row" => Ok(Normalization::Row),
            "sym" | "symmetric" => Ok(Normalization::Symmetric),
            other => {
                let value = other.strip_prefix("alpha=").ok_or_else(|| {
                    format!("unknown normalisation `{other}`: expected row, sym or alpha=A")
                })?;
                let a: f64 = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not a number (in `{other}`)"))?;
                if !a.is_finite() {
                    return Err(format!("alpha must be finite, not {a}"));
                }
                Ok(Normalization::Alpha(a))
            }
        }
    }
}

impl Normalization {
    /// Steps separated by commas: `alpha=1,sym`.
    pub fn parse_list(text: &str) -> Result<Vec<Normalization>, String> {
        text.split(',')
            .filter(|s| !s.trim().is_empty() && s.trim() != "none")
            .map(str::parse)
            .collect()
    }

    /// The exponents `(left, right)` of the degrees this step scales by.
    fn exponents(self) -> (f64, f64) {
        match self {
            Normalization::Row => (-1.0, 0.0),
            Normalization::Symmetric => (-0.5, -0.5),
            Normalization::Alpha(a) => (-a, -a),
        }
    }
}

/// `diag(left) A diag(right)` for a square `A`.
pub struct Scaled<A> {
    pub op: A,
    left: Vec<f64>,
    right: Vec<f64>,
    /// The degrees the last `Symmetric` step divided by, when it was the last step: what turns
    /// its eigenvectors into the random walk's.
    symmetric_degrees: Option<Vec<f64>>,
}

impl<A: LinearOperator> Scaled<A> {
    /// `A` itself (both scalings one).
    pub fn identity(op: A) -> Result<Scaled<A>, LinalgError> {
        let n = check_square(&op, "a normalisation")?;
        Ok(Scaled {
            op,
            left: vec![1.0; n],
            right: vec![1.0; n],
            symmetric_degrees: None,
        })
    }

    /// `A` normalised by each step in turn; each step costs one product (its degrees).
    pub fn normalized(op: A, steps: &[Normalization]) -> Result<Scaled<A>, LinalgError> {
        let mut scaled = Scaled::identity(op)?;
        for &step in steps {
            scaled = scaled.normalize(step)?;
        }
        Ok(scaled)
    }

    /// The degrees of the operator as it stands: its product with the ones vector.
    pub fn degrees(&self) -> Result<Vec<f64>, LinalgError> {
        self.apply(&vec![1.0; self.cols()], 1)
    }

    /// This operator normalised by one more step.
    pub fn normalize(mut self, step: Normalization) -> Result<Scaled<A>, LinalgError> {
        let degrees = self.degrees()?;
        if let Some((row, &value)) = degrees
            .iter()
            .enumerate()
            .find(|(_, d)| !(**d > 0.0 && d.is_finite()))
        {
            return Err(LinalgError::NonPositiveDegree { row, value });
        }
        let (l, r) = step.exponents();
        for ((left, right), d) in self.left.iter_mut().zip(&mut self.right).zip(&degrees) {
            *left *= d.powf(l);
            *right *= d.powf(r);
        }
        self.symmetric_degrees = (step == Normalization::Symmetric).then_some(degrees);
        Ok(self)
    }

    /// The eigenvectors `psi = D^-1/2 phi` of the random walk `D^-1 A` from eigenvectors `phi`
    /// (`N x k`, row-major) of this operator when its last step was `Symmetric`
    /// (`D^-1/2 A D^-1/2`, `A` the operator before that step, `D` its degrees): same
    /// eigenvalues, and `psi^T D psi = 1` for a unit `phi`. Scaled by `lambda^t` they are the
    /// diffusion-map coordinates.
    pub fn random_walk_eigenvectors(&self, phi: &[f64], k: usize) -> Result<Vec<f64>, LinalgError> {
        let Some(degrees) = &self.symmetric_degrees else {
            return Err(LinalgError::Parameter(
                "the random walk's eigenvectors come from an operator whose last normalisation step is `sym`".into(),
            ));
        };
        if k == 0 || phi.len() != degrees.len() * k {
            return Err(LinalgError::OperandShape {
                len: phi.len(),
                rows: degrees.len(),
                ncols: k,
            });
        }
        Ok(phi
            .iter()
            .enumerate()
            .map(|(e, v)| v / degrees[e / k].sqrt())
            .collect())
    }

    /// The degrees `D` the last step divided by, when that step was `Symmetric`: with `phi`
    /// a unit eigenvector of this operator and `psi = D^-1/2 phi`
    /// ([`Scaled::random_walk_eigenvectors`]), the random walk `P = D^-1 A` has
    /// `P^t = sum_k lambda_k^t psi_k (D psi_k)^T`.
    pub fn symmetric_degrees(&self) -> Option<&[f64]> {
        self.symmetric_degrees.as_deref()
    }

    /// The diagonal scalings `(left, right)`.
    pub fn scalings(&self) -> (&[f64], &[f64]) {
        (&self.left, &self.right)
    }
}

impl<A: LinearOperator> LinearOperator for Scaled<A> {
    fn rows(&self) -> usize {
        self.op.rows()
    }
    fn cols(&self) -> usize {
        self.op.cols()
    }
    fn apply(&self, x: &[f64], ncols: usize) -> Result<Vec<f64>, LinalgError> {
        check_operand(self, x, ncols)?;
        let scaled: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(k, v)| v * self.right[k / ncols])
            .collect();
        let mut y = self.op.apply(&scaled, ncols)?;
        for (k, v) in y.iter_mut().enumerate() {
            *v *= self.left[k / ncols];
        }
        Ok(y)
    }
    fn diagonal(&self) -> Result<Vec<f64>, LinalgError> {
        let mut d = self.op.diagonal()?;
        for (i, d) in d.iter_mut().enumerate() {
            *d *= self.left[i] * self.right[i];
        }
        Ok(d)
    }
}
