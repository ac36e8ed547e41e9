//! Errors in source text, as values: built where they are found, collected, rendered once at
//! the edge (CLI, REPL, snapshot tests) with ariadne.

use crate::source::{SourceFile, Span};
use ariadne::{CharSet, Config, IndexType, Label as AriadneLabel, Report, ReportKind, Source};
use std::fmt;

/// A labelled span inside a diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// Where the error is; the first label is the primary one.
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
    pub help: Option<String>,
    /// The compiler stage whose own invariant broke: a bug of the compiler, never blamed on the
    /// source (rendered without pointing into it).
    pub internal: Option<&'static str>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Span, label: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            labels: vec![Label {
                span,
                message: label.into(),
            }],
            notes: Vec::new(),
            help: None,
            internal: None,
        }
    }

    /// A broken invariant of the compiler's `stage`: reported as the compiler's fault.
    pub fn internal(stage: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            labels: Vec::new(),
            notes: vec![
                "this is a bug of keopsc, not a problem with the input; please report it".into(),
            ],
            help: None,
            internal: Some(stage),
        }
    }

    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }

    pub fn primary_span(&self) -> Span {
        self.labels.first().map_or(0..0, |l| l.span.clone())
    }

    /// Renders with ariadne. `color` is off for snapshots and non-terminals.
    pub fn render(&self, source: &SourceFile, color: bool) -> String {
        self.render_in(source, &Source::from(source.text.as_str()), color)
    }

    /// [`render`](Self::render) with the source's lines already indexed (`lines`, made from
    /// `source.text`): indexing them costs a pass over the whole text, once per file rather
    /// than once per diagnostic.
    fn render_in(&self, source: &SourceFile, lines: &Source<&str>, color: bool) -> String {
        if self.internal.is_some() {
            let mut out = format!("{self}\n");
            for note in &self.notes {
                out.push_str(&format!("  = note: {note} (`{}`)\n", source.name));
            }
            return out;
        }
        let id = source.name.as_str();
        let len = source.text.len();
        let clamp = |s: &Span| s.start.min(len)..s.end.min(len).max(s.start.min(len));
        let config = Config::default()
            .with_color(color)
            .with_index_type(IndexType::Byte)
            .with_char_set(if color {
                CharSet::Unicode
            } else {
                CharSet::Ascii
            });
        let mut report = Report::build(ReportKind::Error, (id, clamp(&self.primary_span())))
            .with_config(config)
            .with_message(&self.message);
        for (k, label) in self.labels.iter().enumerate() {
            report = report.with_label(
                AriadneLabel::new((id, clamp(&label.span)))
                    .with_message(&label.message)
                    .with_order(k as i32),
            );
        }
        for note in &self.notes {
            report = report.with_note(note);
        }
        if let Some(help) = &self.help {
            report = report.with_help(help);
        }
        let mut out = Vec::new();
        // Writing into a Vec cannot fail.
        let _ = report.finish().write((id, lines), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.internal {
            Some(stage) => write!(f, "error: internal error in {stage}: {}", self.message),
            None => write!(f, "error: {}", self.message),
        }
    }
}

/// Renders every diagnostic, in source order.
pub fn render_all(diagnostics: &[Diagnostic], source: &SourceFile, color: bool) -> String {
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| d.primary_span().start);
    let lines = Source::from(source.text.as_str());
    let mut out: String = sorted
        .iter()
        .take(MAX_RENDERED)
        .map(|d| d.render_in(source, &lines, color))
        .collect();
    if sorted.len() > MAX_RENDERED {
        out.push_str(&format!(
            "error: {} more errors in `{}` not shown (the first {MAX_RENDERED} are above)\n",
            sorted.len() - MAX_RENDERED,
            source.name
        ));
    }
    out
}

/// How many diagnostics of one file are rendered: past this, the first error's fix usually
/// changes the rest, and a damaged file (binary data, a wrong file) would bury the first ones.
pub const MAX_RENDERED: usize = 50;

/// The candidate closest to `name` by edit distance, if it is close enough to be a likely typo.
/// Case differences count little, since `sqdist` for `SqDist` is the common slip.
pub fn closest_name<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let exact_case = edit_distance(name, c);
            let any_case = edit_distance(&lower, &c.to_lowercase());
            (any_case.min(exact_case), c)
        })
        // Close enough to be a typo, and not a complete rewrite of a short name (`z` for `x`).
        .filter(|&(d, c)| d <= (c.len().max(name.len()) / 3).max(1) && d < name.chars().count())
        .min_by_key(|&(d, c)| (d, c.len(), c))
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["SqDist", "SqNorm2", "Exp", "Sum"];
        assert_eq!(closest_name("SqDst", names), Some("SqDist"));
        assert_eq!(closest_name("sqdist", names), Some("SqDist"));
        assert_eq!(closest_name("Exq", names), Some("Exp"));
        assert_eq!(closest_name("Banana", names), None);
    }

    #[test]
    fn renders_the_first_errors_of_a_file_and_counts_the_rest() {
        let text = "% ".repeat(MAX_RENDERED + 7);
        let source = SourceFile::new("many.kf", &text);
        let diagnostics: Vec<Diagnostic> = (0..MAX_RENDERED + 7)
            .map(|k| Diagnostic::error(format!("error number {k}"), 2 * k..2 * k + 1, "here"))
            .collect();
        let out = render_all(&diagnostics, &source, false);
        assert!(out.contains("Error: error number 0\n"), "{out}");
        assert!(out.contains(&format!("Error: error number {}\n", MAX_RENDERED - 1)));
        assert!(!out.contains(&format!("Error: error number {}\n", MAX_RENDERED)));
        assert!(out.ends_with(&format!(
            "error: 7 more errors in `many.kf` not shown (the first {MAX_RENDERED} are above)\n"
        )));
    }
}
