//! The `.kf` front end: lexer ([`token`]), syntax tree ([`ast`]) and parser ([`parse`]), and
//! kernels built as data into the same tree ([`build`]).

pub mod ast;
pub mod build;
pub mod parse;
pub mod token;

pub use parse::{lex, parse};
