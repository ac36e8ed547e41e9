//! Tokens -> AST. Statements and formulas are parsed by chumsky; the file's block structure
//! (`kernel NAME { ... }`) and statement boundaries are found first by a scan over the tokens,
//! so that the parser recovers at every statement: each error is reported once, and the rest of
//! the file is still parsed and checked.
//!
//! A statement starts at `let`, or at `NAME =` outside any brackets. Newlines are not
//! significant; `;` may end a statement.

use super::ast::{BinOp, Expr, ExprKind, File, Ident, KernelDef, Statement};
use super::token::{Spanned, Token};
use crate::diagnostic::Diagnostic;
use crate::source::Span;
use chumsky::input::{Stream, ValueInput};
use chumsky::pratt::{infix, left, prefix, right};
use chumsky::prelude::*;
use logos::Logos;

/// Splits the source into tokens; unknown characters become diagnostics and are skipped. A run
/// of adjacent unknown characters (binary data, a pasted non-ASCII line) is one token and one
/// diagnostic, not one per character.
pub fn lex(text: &str) -> (Vec<Spanned<'_>>, Vec<Diagnostic>) {
    let mut tokens: Vec<Spanned<'_>> = Vec::new();
    let mut errors = Vec::new();
    for (tok, span) in Token::lexer(text).spanned() {
        match tok {
            Ok(tok) => tokens.push((tok, span)),
            Err(()) => match tokens.last_mut() {
                Some((Token::Error, run)) if run.end == span.start => run.end = span.end,
                _ => tokens.push((Token::Error, span)),
            },
        }
    }
    for (tok, span) in &tokens {
        if *tok == Token::Error {
            errors.push(unexpected_characters(&text[span.clone()], span.clone()));
        }
    }
    (tokens, errors)
}

/// How many characters of an unknown run the message quotes.
const QUOTED_CHARACTERS: usize = 16;

fn unexpected_characters(run: &str, span: Span) -> Diagnostic {
    // Escaped, so that control characters and NUL are visible in the message.
    let quoted: String = run
        .chars()
        .take(QUOTED_CHARACTERS)
        .flat_map(char::escape_debug)
        .collect();
    let count = run.chars().count();
    let message = match count {
        1 => format!("unexpected character `{quoted}`"),
        n if n <= QUOTED_CHARACTERS => format!("unexpected characters `{quoted}`"),
        n => format!("{n} unexpected characters, starting `{quoted}...`"),
    };
    Diagnostic::error(message, span, "not part of the .kf language")
}

/// How deeply brackets (and runs of unary signs) may nest. Every stage after the parser walks
/// the tree recursively; at this depth they need well under the compiler's own stack
/// ([`crate::isolate::STACK_BYTES`]; 200 000 levels were measured to fit), and no formula a
/// person or a program writes comes near it. Long flat chains (`a + b + c + ...`, a million
/// terms) are not limited by it.
pub const MAX_NESTING: usize = 50_000;

/// The first place where brackets or unary signs nest deeper than [`MAX_NESTING`].
fn too_deep(tokens: &[Spanned<'_>]) -> Option<Diagnostic> {
    let mut depth = 0usize;
    let mut signs = 0usize;
    for (tok, span) in tokens {
        match tok {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            _ => {}
        }
        signs = if matches!(tok, Token::Minus | Token::Plus) {
            signs + 1
        } else {
            0
        };
        if depth > MAX_NESTING || signs > MAX_NESTING {
            return Some(
                Diagnostic::error(
                    format!("the formula nests more than {MAX_NESTING} levels deep"),
                    span.clone(),
                    "nested too deeply here",
                )
                .with_help("write it with `let` bindings, or as a flat chain (`a + b + c`)"),
            );
        }
    }
    None
}

/// Parses a whole file. Always returns a tree (possibly missing the broken statements) and
/// every syntax diagnostic found.
pub fn parse(text: &str) -> (File, Vec<Diagnostic>) {
    let (tokens, mut diagnostics) = lex(text);
    if let Some(deep) = too_deep(&tokens) {
        diagnostics.push(deep);
        return (
            File {
                kernels: Vec::new(),
            },
            diagnostics,
        );
    }
    let mut kernels = Vec::new();
    let mut pos = 0;
    while pos < tokens.len() {
        match parse_kernel(&tokens, pos, text.len(), &mut diagnostics) {
            Ok((kernel, next)) => {
                kernels.push(kernel);
                pos = next;
            }
            Err(next) => pos = next,
        }
    }
    (File { kernels }, diagnostics)
}

/// Parses `kernel NAME { ... }` starting at token `pos`. On a broken header, reports it and
/// returns the index of the next `kernel` keyword to resume from.
fn parse_kernel(
    tokens: &[Spanned<'_>],
    pos: usize,
    eof: usize,
    diagnostics: &mut Vec<Diagnostic>,
) -> Result<(KernelDef, usize), usize> {
    let skip_to_next_kernel = |from: usize| {
        tokens[from..]
            .iter()
            .position(|(t, _)| *t == Token::Kernel)
            .map_or(tokens.len(), |k| from + k)
    };
    let (first, first_span) = &tokens[pos];
    if *first != Token::Kernel {
        diagnostics.push(
            Diagnostic::error(
                format!("expected `kernel`, found {first}"),
                first_span.clone(),
                "a file is a list of `kernel NAME { ... }` blocks",
            )
            .with_help("declarations and formulas go inside a kernel block"),
        );
        return Err(skip_to_next_kernel(pos + 1));
    }
    let name = match tokens.get(pos + 1) {
        Some((Token::Ident(name), span)) => Ident {
            name: name.to_string(),
            span: span.clone(),
        },
        other => {
            let (found, span) = describe(other, eof);
            diagnostics.push(Diagnostic::error(
                format!("expected the kernel's name after `kernel`, found {found}"),
                span,
                "expected a name here",
            ));
            return Err(skip_to_next_kernel(pos + 1));
        }
    };
    let open = match tokens.get(pos + 2) {
        Some((Token::LBrace, span)) => span.clone(),
        other => {
            let (found, span) = describe(other, eof);
            diagnostics.push(Diagnostic::error(
                format!("expected `{{` after `kernel {}`, found {found}", name.name),
                span,
                "expected `{` here",
            ));
            return Err(skip_to_next_kernel(pos + 1));
        }
    };
    // Find the matching `}`; braces appear only as kernel delimiters, so depth is 1 here.
    let body_start = pos + 3;
    let close = tokens[body_start..]
        .iter()
        .position(|(t, _)| matches!(t, Token::RBrace | Token::Kernel | Token::LBrace))
        .map(|k| body_start + k);
    let (body_end, next, end_offset) = match close.map(|k| (k, tokens[k].0)) {
        Some((k, Token::RBrace)) => (k, k + 1, tokens[k].1.end),
        other => {
            let stop = other.map_or(tokens.len(), |(k, _)| k);
            let found_span = other.map_or(eof..eof, |(k, _)| tokens[k].1.clone());
            diagnostics.push(
                Diagnostic::error(
                    format!("kernel `{}` is not closed", name.name),
                    found_span,
                    "expected `}` before this point",
                )
                .with_label(open.clone(), "the kernel's body opens here"),
            );
            let next = match other {
                Some((k, Token::LBrace)) => skip_to_next_kernel(k),
                _ => stop,
            };
            (
                stop,
                next,
                tokens.get(stop.saturating_sub(1)).map_or(eof, |t| t.1.end),
            )
        }
    };
    let body = parse_statements(&tokens[body_start..body_end], diagnostics);
    let span = tokens[pos].1.start..end_offset;
    Ok((KernelDef { name, body, span }, next))
}

fn describe(token: Option<&Spanned<'_>>, eof: usize) -> (String, Span) {
    match token {
        Some((t, span)) => (t.to_string(), span.clone()),
        None => ("end of file".to_string(), eof..eof),
    }
}

/// Splits a kernel body into statements and parses each one on its own.
fn parse_statements(tokens: &[Spanned<'_>], diagnostics: &mut Vec<Diagnostic>) -> Vec<Statement> {
    let mut starts = Vec::new();
    let mut depth = 0i32;
    for (k, (tok, _)) in tokens.iter().enumerate() {
        match tok {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
            _ => {}
        }
        let previous = k.checked_sub(1).map(|p| tokens[p].0);
        let starts_here = k == 0
            || previous == Some(Token::Semicolon)
            // `let` and `=` never occur inside a formula: they start a statement even after an
            // unclosed bracket, which is then reported where its statement ends.
            || *tok == Token::Let
            // `NAME =` (but not the `g =` of `let g =`)
            || (matches!(tok, Token::Ident(_))
                && matches!(tokens.get(k + 1), Some((Token::Assign, _)))
                && previous != Some(Token::Let))
            // A name or number right after a complete operand cannot continue a formula: it
            // starts the next line (typically the reduction after a `let`).
            || (depth <= 0
                && matches!(tok, Token::Ident(_) | Token::Number(_))
                && matches!(
                    previous,
                    Some(Token::RParen | Token::RBracket | Token::Ident(_) | Token::Number(_))
                ));
        if starts_here {
            depth = 0;
            starts.push(k);
        }
    }
    let mut statements = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(tokens.len());
        let mut slice = &tokens[start..end];
        while let Some(((Token::Semicolon, _), rest)) = slice.split_last() {
            slice = rest;
        }
        if slice.is_empty() {
            continue;
        }
        let eoi = slice[slice.len() - 1].1.end;
        if slice.iter().any(|(t, _)| *t == Token::Error) {
            statements.push(Statement::Invalid(slice[0].1.start..eoi));
            continue;
        }
        let stream =
            Stream::from_iter(slice.iter().map(|(t, s)| (*t, SimpleSpan::from(s.clone()))))
                .map(SimpleSpan::from(eoi..eoi), |(t, s): (_, _)| (t, s));
        let (stmt, errors) = statement_parser().parse(stream).into_output_errors();
        match stmt.filter(|_| errors.is_empty()) {
            Some(stmt) => statements.push(stmt),
            None => statements.push(Statement::Invalid(slice[0].1.start..eoi)),
        }
        // One error per statement: after the first, the rest of the statement is noise.
        if let Some(error) = errors.into_iter().next() {
            diagnostics.push(syntax_error(error));
        }
    }
    statements
}

fn syntax_error(error: Rich<'_, Token<'_>, SimpleSpan>) -> Diagnostic {
    let span = error.span().into_range();
    let found = match error.found() {
        Some(t) => t.to_string(),
        None => "end of statement".to_string(),
    };
    let mut expected: Vec<String> = error
        .expected()
        .map(|e| match e {
            chumsky::error::RichPattern::Token(t) => t.to_string(),
            chumsky::error::RichPattern::Label(l) => l.to_string(),
            chumsky::error::RichPattern::EndOfInput => "the end of the statement".to_string(),
            other => other.to_string(),
        })
        .collect();
    expected.sort();
    expected.dedup();
    let expected = match expected.as_slice() {
        [] => "something else".to_string(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    };
    Diagnostic::error(
        format!("syntax error: expected {expected}, found {found}"),
        span,
        match error.found() {
            Some(_) => format!("unexpected {found}"),
            None => "the statement ends here".to_string(),
        },
    )
}

type Extra<'t, 's> = extra::Err<Rich<'t, Token<'s>, SimpleSpan>>;

fn statement_parser<'t, 's: 't, I>() -> impl Parser<'t, I, Statement, Extra<'t, 's>>
where
    I: ValueInput<'t, Token = Token<'s>, Span = SimpleSpan>,
{
    let expr = expr_parser();
    let ident = ident_parser();
    let let_stmt = just(Token::Let)
        .ignore_then(ident.clone())
        .then_ignore(just(Token::Assign))
        .then(expr.clone())
        .map(|(name, value)| Statement::Let { name, value });
    let decl = ident
        .then_ignore(just(Token::Assign))
        .then(expr.clone())
        .map(|(name, value)| Statement::Decl { name, value });
    choice((let_stmt, decl, expr.map(Statement::Expr))).then_ignore(end())
}

fn ident_parser<'t, 's: 't, I>() -> impl Parser<'t, I, Ident, Extra<'t, 's>> + Clone
where
    I: ValueInput<'t, Token = Token<'s>, Span = SimpleSpan>,
{
    select! { Token::Ident(name) => name }
        .map_with(|name: &str, e| {
            let span: SimpleSpan = e.span();
            Ident {
                name: name.to_string(),
                span: span.into_range(),
            }
        })
        .labelled("a name")
}

fn expr_parser<'t, 's: 't, I>() -> impl Parser<'t, I, Expr, Extra<'t, 's>> + Clone
where
    I: ValueInput<'t, Token = Token<'s>, Span = SimpleSpan>,
{
    recursive(|expr| {
        let args = expr
            .clone()
            .separated_by(just(Token::Comma))
            .allow_trailing()
            .collect::<Vec<Expr>>()
            .delimited_by(just(Token::LParen), just(Token::RParen));
        let call_or_name = ident_parser()
            .then(args.or_not())
            .map_with(|(callee, args), e| {
                let span: SimpleSpan = e.span();
                Expr {
                    kind: match args {
                        Some(args) => ExprKind::Call { callee, args },
                        None => ExprKind::Name(callee.name),
                    },
                    span: span.into_range(),
                }
            });
        let number = select! { Token::Number(text) => text }
            .map_with(|text: &str, e| {
                let span: SimpleSpan = e.span();
                Expr {
                    kind: ExprKind::Number {
                        value: text.parse().unwrap_or(f64::NAN),
                        text: text.to_string(),
                    },
                    span: span.into_range(),
                }
            })
            .labelled("a number");
        let list = expr
            .clone()
            .separated_by(just(Token::Comma))
            .allow_trailing()
            .collect::<Vec<Expr>>()
            .delimited_by(just(Token::LBracket), just(Token::RBracket))
            .map_with(|items, e| {
                let span: SimpleSpan = e.span();
                Expr {
                    kind: ExprKind::List(items),
                    span: span.into_range(),
                }
            });
        let parens = expr
            .clone()
            .delimited_by(just(Token::LParen), just(Token::RParen));

        // Everything but the infix `|`, which binds loosest (as in Python) and would otherwise
        // swallow the bars of `|f|g|`.
        let arith = recursive(|arith| {
            let bar_scalprod = just(Token::Bar)
                .ignore_then(arith.clone())
                .then_ignore(just(Token::Bar))
                .then(arith.clone())
                .then_ignore(just(Token::Bar))
                .map_with(|(lhs, rhs), e| {
                    let span: SimpleSpan = e.span();
                    Expr {
                        kind: ExprKind::BarScalprod {
                            lhs: Box::new(lhs),
                            rhs: Box::new(rhs),
                        },
                        span: span.into_range(),
                    }
                });
            let atom = choice((number, call_or_name, list, parens, bar_scalprod))
                .labelled("a formula")
                .boxed();
            atom.pratt((
                infix(
                    right(5),
                    just(Token::StarStar).or(just(Token::Caret)),
                    |l, _, r, e| binary(BinOp::Pow, l, r, e.span()),
                ),
                prefix(4, just(Token::Minus), |_, inner: Expr, e| Expr {
                    kind: ExprKind::Neg(Box::new(inner)),
                    span: SimpleSpan::into_range(e.span()),
                }),
                prefix(4, just(Token::Plus), |_, inner: Expr, _| inner),
                infix(left(3), just(Token::Star), |l, _, r, e| {
                    binary(BinOp::Mul, l, r, e.span())
                }),
                infix(left(3), just(Token::Slash), |l, _, r, e| {
                    binary(BinOp::Div, l, r, e.span())
                }),
                infix(left(2), just(Token::Plus), |l, _, r, e| {
                    binary(BinOp::Add, l, r, e.span())
                }),
                infix(left(2), just(Token::Minus), |l, _, r, e| {
                    binary(BinOp::Sub, l, r, e.span())
                }),
            ))
            .boxed()
        });
        arith
            .clone()
            .foldl_with(just(Token::Bar).ignore_then(arith).repeated(), |l, r, e| {
                binary(BinOp::Bar, l, r, e.span())
            })
            .boxed()
    })
}

fn binary(op: BinOp, lhs: Expr, rhs: Expr, span: SimpleSpan) -> Expr {
    Expr {
        kind: ExprKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
        span: span.into_range(),
    }
}
