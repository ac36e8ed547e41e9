//! A `.kf` source file and byte spans into it.

use std::ops::Range;

/// A byte range in a [`SourceFile`].
pub type Span = Range<usize>;

#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Shown in diagnostics: a path, or a label such as `<repl>`.
    pub name: String,
    pub text: String,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}
