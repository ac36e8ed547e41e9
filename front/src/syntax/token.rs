//! Tokens of the `.kf` language (logos).

use logos::Logos;
use std::fmt;

#[derive(Logos, Clone, Copy, Debug, PartialEq)]
#[logos(skip r"[ \t\r\n\f]+")]
// Comments run to the end of the line, after `#` or `//`.
#[logos(skip(r"(#|//)[^\n]*", allow_greedy = true))]
pub enum Token<'src> {
    #[token("kernel")]
    Kernel,
    #[token("let")]
    Let,
    #[regex("[A-Za-z_][A-Za-z0-9_]*")]
    Ident(&'src str),
    #[regex(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")]
    Number(&'src str),
    #[token("(")]
    LParen,
    #[token(")")]
    RParen,
    #[token("{")]
    LBrace,
    #[token("}")]
    RBrace,
    #[token("[")]
    LBracket,
    #[token("]")]
    RBracket,
    #[token(",")]
    Comma,
    #[token(";")]
    Semicolon,
    #[token("=")]
    Assign,
    #[token("+")]
    Plus,
    #[token("-")]
    Minus,
    #[token("*")]
    Star,
    #[token("/")]
    Slash,
    #[token("**")]
    StarStar,
    #[token("^")]
    Caret,
    #[token("|")]
    Bar,
    /// A character outside the language (reported by the lexer); the statement holding it is
    /// not parsed, so it is reported once.
    Error,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Kernel => f.write_str("`kernel`"),
            Token::Let => f.write_str("`let`"),
            Token::Ident(s) => write!(f, "name `{s}`"),
            Token::Number(s) => write!(f, "number `{s}`"),
            Token::LParen => f.write_str("`(`"),
            Token::RParen => f.write_str("`)`"),
            Token::LBrace => f.write_str("`{`"),
            Token::RBrace => f.write_str("`}`"),
            Token::LBracket => f.write_str("`[`"),
            Token::RBracket => f.write_str("`]`"),
            Token::Comma => f.write_str("`,`"),
            Token::Semicolon => f.write_str("`;`"),
            Token::Assign => f.write_str("`=`"),
            Token::Plus => f.write_str("`+`"),
            Token::Minus => f.write_str("`-`"),
            Token::Star => f.write_str("`*`"),
            Token::Slash => f.write_str("`/`"),
            Token::StarStar => f.write_str("`**`"),
            Token::Caret => f.write_str("`^`"),
            Token::Bar => f.write_str("`|`"),
            Token::Error => f.write_str("an invalid character"),
        }
    }
}

/// A token with its byte span.
pub type Spanned<'src> = (Token<'src>, std::ops::Range<usize>);

/// The token stream of a file, one token per line (`kind  start..end`): the lexer's `Display`.
pub struct TokenList<'src>(pub Vec<Spanned<'src>>);

impl fmt::Display for TokenList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (tok, span) in &self.0 {
            writeln!(f, "{:>5}..{:<5} {tok}", span.start, span.end)?;
        }
        Ok(())
    }
}
