//! What a compiled kernel looks like from outside: its arguments (name, category, dimension)
//! and its reduction. The compiler produces these; the runtime checks data against them.

use crate::reduction::Reduction;
use std::fmt;

/// How a variable is indexed: by `i` (`Vi`, one row per output point when axis = 0), by `j`
/// (`Vj`), or not at all (`Pm`, the same for every pair).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    I,
    J,
    Param,
}

impl Category {
    /// The KeOps constructor name.
    pub fn keops_name(self) -> &'static str {
        match self {
            Category::I => "Vi",
            Category::J => "Vj",
            Category::Param => "Pm",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keops_name())
    }
}

/// The reduction axis, KeOps's `tag`: 0 gives one output row per `i` (reducing over `j`),
/// 1 gives one output row per `j` (reducing over `i`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    I,
    J,
}

impl Axis {
    pub fn from_index(axis: i64) -> Option<Axis> {
        match axis {
            0 => Some(Axis::I),
            1 => Some(Axis::J),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Axis::I => 0,
            Axis::J => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgSpec {
    pub name: String,
    pub category: Category,
    pub dim: usize,
}

impl fmt::Display for ArgSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}({})", self.name, self.category, self.dim)
    }
}

/// The calling convention of one kernel: arguments in order, the reduction and its axis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub name: String,
    pub args: Vec<ArgSpec>,
    pub reduction: Reduction,
    pub axis: Axis,
}

impl Signature {
    pub fn output_dim(&self) -> usize {
        self.reduction.output_dim()
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args: Vec<String> = self.args.iter().map(|a| a.to_string()).collect();
        let rows = match self.axis {
            Axis::I => "N",
            Axis::J => "M",
        };
        write!(
            f,
            "kernel {}({}) -> ({rows}, {}) by {} over {}",
            self.name,
            args.join(", "),
            self.output_dim(),
            self.reduction,
            match self.axis {
                Axis::I => "j",
                Axis::J => "i",
            }
        )
    }
}
