//! Located diagnostics: every problem Herald finds in a file is reported as
//! `path:line:col: message`, and loaders collect all of them before refusing.

use std::fmt;

/// How bad a diagnostic is. Errors refuse the input; warnings are printed and accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

/// One problem in one file, at one place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// The file as the user named it.
    pub path: String,
    /// 1-based line; 0 when the problem is about the file as a whole.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub col: u64,
    pub level: Level,
    pub message: String,
}

impl Diagnostic {
    /// An error at a location.
    pub fn error(path: impl Into<String>, line: u64, col: u64, message: impl Into<String>) -> Self {
        Diagnostic { path: path.into(), line, col, level: Level::Error, message: message.into() }
    }
    /// A warning at a location.
    pub fn warning(path: impl Into<String>, line: u64, col: u64, message: impl Into<String>) -> Self {
        Diagnostic { path: path.into(), line, col, level: Level::Warning, message: message.into() }
    }
    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "",
            Level::Warning => "warning: ",
        };
        write!(f, "{}:{}:{}: {}{}", self.path, self.line.max(1), self.col.max(1), level, self.message)
    }
}

/// A collection of diagnostics, kept in the order they were found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    /// True when any is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }
    /// Only the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }
    /// Only the warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }
    /// Sorts by file, line and column (stable), for reading.
    pub fn sort(&mut self) {
        self.0.sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
    }
    /// Appends all of another collection.
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}
