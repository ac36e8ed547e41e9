//! The syntax tree of a `.kf` file. Every node keeps its byte span; `Display` prints the file
//! back as `.kf` text (fully parenthesised where precedence could be in doubt).

use crate::source::Span;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub kernels: Vec<KernelDef>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KernelDef {
    pub name: Ident,
    pub body: Vec<Statement>,
    /// From `kernel` to the closing brace.
    pub span: Span,
}

/// Dropped without recursion: a long generated sum is a left-deep tree as deep as it is long,
/// and the caller that drops it may have a small stack (the front end itself runs on
/// [`crate::isolate`]'s).
impl Drop for KernelDef {
    fn drop(&mut self) {
        let mut pending: Vec<Expr> = Vec::new();
        for statement in &mut self.body {
            match statement {
                Statement::Decl { value, .. }
                | Statement::Let { value, .. }
                | Statement::Expr(value) => pending.push(std::mem::replace(value, Expr::leaf())),
                Statement::Invalid(_) => {}
            }
        }
        while let Some(mut expr) = pending.pop() {
            match &mut expr.kind {
                ExprKind::Number { .. } | ExprKind::Name(_) => {}
                ExprKind::Call { args, .. } | ExprKind::List(args) => pending.append(args),
                ExprKind::Neg(inner) => pending.push(std::mem::replace(inner, Expr::leaf())),
                ExprKind::Binary { lhs, rhs, .. } | ExprKind::BarScalprod { lhs, rhs } => {
                    pending.push(std::mem::replace(lhs, Expr::leaf()));
                    pending.push(std::mem::replace(rhs, Expr::leaf()));
                }
            }
            // `expr` now holds leaves only: dropping it does not recurse.
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Statement {
    /// `x = Vi(3)`: declares an argument.
    Decl { name: Ident, value: Expr },
    /// `let g = formula`
    Let { name: Ident, value: Expr },
    /// A formula on its own: the kernel's reduction when it is the last statement.
    Expr(Expr),
    /// A statement with a syntax error (already reported): kept so that later stages know
    /// something stood there and do not report its absence.
    Invalid(Span),
}

impl Statement {
    pub fn span(&self) -> Span {
        match self {
            Statement::Decl { name, value } | Statement::Let { name, value } => {
                name.span.start..value.span.end
            }
            Statement::Expr(e) => e.span.clone(),
            Statement::Invalid(span) => span.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `**` or `^`
    Pow,
    /// `f | g`, the scalar product
    Bar,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "**",
            BinOp::Bar => "|",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A numeric literal; `text` is kept to tell `2` from `2.0`.
    Number {
        value: f64,
        text: String,
    },
    Name(String),
    Call {
        callee: Ident,
        args: Vec<Expr>,
    },
    /// `[1, 2]`: integer lists, as TensorDot takes them.
    List(Vec<Expr>),
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `|f|g|`: the scalar product written with bars.
    BarScalprod {
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
}

impl Expr {
    /// A node without children, to leave behind when a subtree is taken out.
    fn leaf() -> Expr {
        Expr {
            kind: ExprKind::Name(String::new()),
            span: 0..0,
        }
    }
}

impl ExprKind {
    /// The integer a literal spells, if it is one (`3`, not `3.0`).
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            ExprKind::Number { text, .. } => text.parse().ok(),
            ExprKind::Neg(inner) => inner.kind.as_integer().map(|v| -v),
            _ => None,
        }
    }
}

impl fmt::Display for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, kernel) in self.kernels.iter().enumerate() {
            if k > 0 {
                writeln!(f)?;
            }
            write!(f, "{kernel}")?;
        }
        Ok(())
    }
}

impl fmt::Display for KernelDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {} {{", self.name.name)?;
        for stmt in &self.body {
            writeln!(f, "    {stmt}")?;
        }
        writeln!(f, "}}")
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Decl { name, value } => write!(f, "{} = {}", name.name, Bare(value)),
            Statement::Let { name, value } => write!(f, "let {} = {}", name.name, Bare(value)),
            Statement::Expr(e) => write!(f, "{}", Bare(e)),
            Statement::Invalid(_) => f.write_str("<syntax error>"),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Number { text, .. } => f.write_str(text),
            ExprKind::Name(n) => f.write_str(n),
            ExprKind::Call { callee, args } => {
                write!(f, "{}(", callee.name)?;
                write_list(f, args)?;
                f.write_str(")")
            }
            ExprKind::Neg(e) if !matches!(e.kind, ExprKind::Neg(_)) => write!(f, "-{}", Bare(e)),
            ExprKind::List(items) => {
                f.write_str("[")?;
                write_list(f, items)?;
                f.write_str("]")
            }
            ExprKind::Neg(e) => write!(f, "-({e})"),
            ExprKind::Binary { op, lhs, rhs } => write!(f, "({lhs} {} {rhs})", op.symbol()),
            ExprKind::BarScalprod { lhs, rhs } => write!(f, "|{lhs}|{rhs}|"),
        }
    }
}

/// An expression where no parenthesis is needed around it (a call argument, a statement).
struct Bare<'a>(&'a Expr);

impl fmt::Display for Bare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            ExprKind::Binary { op, lhs, rhs } => write!(f, "{lhs} {} {rhs}", op.symbol()),
            _ => write!(f, "{}", self.0),
        }
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Expr]) -> fmt::Result {
    for (k, item) in items.iter().enumerate() {
        if k > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{}", Bare(item))?;
    }
    Ok(())
}
