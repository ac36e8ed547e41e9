//! The formula IR, one for every stage from the checker to code generation: an egg
//! `RecExpr<Node>` (children before parents, shared subformulas stored once) with a side table
//! per node (dimension, dependence on i/j, source span) and the kernel's variables.

pub mod op;
pub mod sexpr;

pub use op::{Op, TensorDotSpec};

use crate::source::Span;
use egg::{Id, Language, RecExpr};
use keops_runtime::{ArgSpec, Category};
use std::fmt;

/// One node: an operator and its operands.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub op: Op,
    pub children: Vec<Id>,
}

impl Node {
    pub fn leaf(op: Op) -> Node {
        Node {
            op,
            children: Vec::new(),
        }
    }

    pub fn new(op: Op, children: Vec<Id>) -> Node {
        Node { op, children }
    }
}

impl Language for Node {
    type Discriminant = Op;

    fn discriminant(&self) -> Op {
        self.op.clone()
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.children.len() == other.children.len()
    }

    fn children(&self) -> &[Id] {
        &self.children
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.children
    }
}

/// What a subformula depends on: the KeOps category of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deps {
    pub i: bool,
    pub j: bool,
}

impl Deps {
    pub const NONE: Deps = Deps { i: false, j: false };

    pub fn of_category(category: Category) -> Deps {
        Deps {
            i: category == Category::I,
            j: category == Category::J,
        }
    }

    pub fn union(self, other: Deps) -> Deps {
        Deps {
            i: self.i || other.i,
            j: self.j || other.j,
        }
    }
}

impl fmt::Display for Deps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.i, self.j) {
            (false, false) => "-",
            (true, false) => "i",
            (false, true) => "j",
            (true, true) => "ij",
        })
    }
}

/// Per-node facts kept beside the `RecExpr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub dim: usize,
    pub deps: Deps,
    /// Where the node was written; nodes made by rewriting have none.
    pub span: Option<Span>,
}

/// A formula over a kernel's variables. The root is the last node.
#[derive(Clone, Debug)]
pub struct Formula {
    pub nodes: RecExpr<Node>,
    pub info: Vec<NodeInfo>,
    pub vars: Vec<ArgSpec>,
}

impl Formula {
    pub fn new(vars: Vec<ArgSpec>) -> Formula {
        Formula {
            nodes: RecExpr::default(),
            info: Vec::new(),
            vars,
        }
    }

    /// Appends a node whose operands are already in the formula; computes its dimension and
    /// category. The dimension rule must hold (the checker verifies it first).
    pub fn push(&mut self, node: Node, span: Option<Span>) -> Result<Id, String> {
        let dims: Vec<usize> = node
            .children
            .iter()
            .map(|&c| self.info[usize::from(c)].dim)
            .collect();
        let (dim, deps) = match &node.op {
            Op::Var(k) => {
                let var = &self.vars[*k as usize];
                (var.dim, Deps::of_category(var.category))
            }
            op => {
                let deps = node
                    .children
                    .iter()
                    .fold(Deps::NONE, |d, &c| d.union(self.info[usize::from(c)].deps));
                (op.output_dim(&dims)?, deps)
            }
        };
        let id = self.nodes.add(node);
        self.info.push(NodeInfo { dim, deps, span });
        Ok(id)
    }

    pub fn len(&self) -> usize {
        self.info.len()
    }

    pub fn is_empty(&self) -> bool {
        self.info.is_empty()
    }

    pub fn root(&self) -> Id {
        Id::from(self.len() - 1)
    }

    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id]
    }

    pub fn info(&self, id: Id) -> &NodeInfo {
        &self.info[usize::from(id)]
    }

    pub fn dim(&self) -> usize {
        self.info(self.root()).dim
    }

    /// Keeps only the nodes that `root` depends on, in order; `root` becomes the last node.
    pub fn extract(&self, root: Id) -> Formula {
        let mut keep = vec![false; self.len()];
        keep[usize::from(root)] = true;
        for k in (0..=usize::from(root)).rev() {
            if keep[k] {
                for &c in &self.nodes[Id::from(k)].children {
                    keep[usize::from(c)] = true;
                }
            }
        }
        let mut out = Formula::new(self.vars.clone());
        let mut map = vec![Id::from(0); self.len()];
        for k in 0..=usize::from(root) {
            if keep[k] {
                let node = &self.nodes[Id::from(k)];
                let children = node.children.iter().map(|&c| map[usize::from(c)]).collect();
                map[k] = out.nodes.add(Node::new(node.op.clone(), children));
                out.info.push(self.info[k].clone());
            }
        }
        out
    }

    /// The formula as KeOps text, operators with infix where KeOps writes them so.
    pub fn to_text(&self, root: Id) -> String {
        // Written front to back from a stack of pieces: linear in the output, and no
        // recursion, however deep the formula.
        let mut out = String::new();
        let mut stack = vec![Piece::Node(root, 0)];
        while let Some(piece) = stack.pop() {
            match piece {
                Piece::Text(text) => out.push_str(&text),
                Piece::Node(id, min_precedence) => {
                    let (pieces, precedence) = self.pieces(id);
                    let wrap = precedence < min_precedence;
                    if wrap {
                        stack.push(Piece::Text(")".into()));
                    }
                    stack.extend(pieces.into_iter().rev());
                    if wrap {
                        stack.push(Piece::Text("(".into()));
                    }
                }
            }
        }
        out
    }

    /// How one node prints: text around its operands (each with the precedence it needs to go
    /// without parentheses), and the node's own precedence.
    fn pieces(&self, id: Id) -> (Vec<Piece>, u8) {
        const SUM: u8 = 1;
        const PRODUCT: u8 = 2;
        const UNARY: u8 = 3;
        const ATOM: u8 = 4;
        let node = self.node(id);
        let child = |k: usize, min: u8| Piece::Node(node.children[k], min);
        let text = |t: &str| Piece::Text(t.to_string());
        let infix =
            |symbol: &str, left: u8, right: u8| vec![child(0, left), text(symbol), child(1, right)];
        match &node.op {
            Op::Var(k) => (vec![Piece::Text(var_text(&self.vars[*k as usize]))], ATOM),
            Op::Const(c) => {
                let precedence = if c.0 < 0.0 { UNARY } else { ATOM };
                (vec![Piece::Text(op::format_real(c.0))], precedence)
            }
            Op::IntCst(k) => (
                vec![Piece::Text(k.to_string())],
                if *k < 0 { UNARY } else { ATOM },
            ),
            Op::Add => (infix(" + ", SUM, PRODUCT), SUM),
            Op::Sub => (infix(" - ", SUM, PRODUCT), SUM),
            Op::Mul => (infix(" * ", PRODUCT, UNARY), PRODUCT),
            Op::Div => (infix(" / ", PRODUCT, UNARY), PRODUCT),
            Op::Neg => (vec![text("-"), child(0, ATOM)], UNARY),
            op => {
                let mut params: Vec<String> = Vec::new();
                match op {
                    Op::Round(d) => params.push(d.to_string()),
                    Op::Pow(m) => params.push(m.to_string()),
                    Op::ClampInt(a, b) => params.extend([a.to_string(), b.to_string()]),
                    Op::SumT(n) | Op::OneHot(n) | Op::Elem(n) => params.push(n.to_string()),
                    Op::ElemT(n, m) => params.extend([n.to_string(), m.to_string()]),
                    Op::Extract(a, b) | Op::ExtractT(a, b) => {
                        params.extend([a.to_string(), b.to_string()])
                    }
                    Op::Zero(d) => params.push(d.to_string()),
                    Op::TensorDot(spec) => params.push(op::tensordot_params(spec)),
                    _ => {}
                }
                let mut pieces = vec![Piece::Text(format!("{}(", op.name()))];
                for k in 0..node.children.len() {
                    if k > 0 {
                        pieces.push(text(", "));
                    }
                    pieces.push(child(k, 0));
                }
                for p in params {
                    if !node.children.is_empty() || pieces.len() > 1 {
                        pieces.push(text(", "));
                    }
                    pieces.push(Piece::Text(p));
                }
                pieces.push(text(")"));
                (pieces, ATOM)
            }
        }
    }
}

/// A part of a formula's text: literal text, or a node to print in place, parenthesised when
/// its precedence is below the given one.
enum Piece {
    Text(String),
    Node(Id, u8),
}

/// A variable as the user wrote it: its name, or `Vi(pos, dim)` for an inline positional one.
fn var_text(var: &ArgSpec) -> String {
    if var.name.chars().all(|c| c.is_ascii_digit()) {
        format!("{}({}, {})", var.category, var.name, var.dim)
    } else {
        var.name.clone()
    }
}

/// One line per node: `%k = Op(%a, %b)   [dim, deps]`.
impl fmt::Display for Formula {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, node) in self.nodes.as_ref().iter().enumerate() {
            let info = &self.info[k];
            let lhs = match &node.op {
                Op::Var(v) => format!(
                    "{} ({})",
                    var_text(&self.vars[*v as usize]),
                    self.vars[*v as usize].category
                ),
                op => {
                    let args: Vec<String> = node.children.iter().map(|c| format!("%{c}")).collect();
                    if args.is_empty() {
                        op.to_string()
                    } else {
                        format!("{op}({})", args.join(", "))
                    }
                }
            };
            writeln!(f, "  %{k:<3} = {lhs:<36} [{}, {}]", info.dim, info.deps)?;
        }
        Ok(())
    }
}
