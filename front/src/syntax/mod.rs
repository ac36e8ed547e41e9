//! The `.kf` front end: lexer ([`token`]), syntax tree ([`ast`]) and parser ([`parse`]).

pub mod ast;
pub mod parse;
pub mod token;

pub use parse::{lex, parse};
