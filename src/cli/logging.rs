//! Process logging for `herald run`: `--log.format=logfmt|json` and `--log.level`, named and
//! shaped as in Prometheus and Alertmanager. Every event is exactly one line: logfmt escapes
//! newlines inside values (a multi-line error such as a refused reload's diagnostics stays on
//! its line) and JSON escapes them by construction. `RUST_LOG`, when set, overrides
//! `--log.level` with a full per-module filter (`RUST_LOG=herald=debug,info`).

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// `--log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `ts=… level=info msg="…" key=value` (the default, as in Prometheus).
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// `--log.level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Installs the global subscriber (a second call, never made by the binary, is a no-op).
pub fn init(format: LogFormat, level: LogLevel) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(level.directive())),
        _ => EnvFilter::new(level.directive()),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false);
    let _ = match format {
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// The logfmt line format: `ts`, `level`, `target`, `msg`, then the event's fields.
struct Logfmt;

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let ts = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = format!("ts={ts} level={} target={}", meta.level().as_str().to_ascii_lowercase(), meta.target());
        line.push_str(" msg=");
        push_value(&mut line, &fields.message);
        for (k, v) in &fields.rest {
            let _ = write!(line, " {k}=");
            push_value(&mut line, v);
        }
        writeln!(w, "{line}")
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.rest.push((field.name(), value));
        }
    }
}

/// Appends a logfmt value: bare when it is a simple token, else quoted with `"`, `\` and
/// control characters escaped (so a value never breaks the line).
fn push_value(out: &mut String, v: &str) {
    let bare = !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::push_value;

    #[test]
    fn values_never_break_the_line() {
        let q = |v: &str| {
            let mut s = String::new();
            push_value(&mut s, v);
            s
        };
        assert_eq!(q("checkout"), "checkout");
        assert_eq!(q("rule fired"), "\"rule fired\"");
        assert_eq!(q("a\nb \"c\""), "\"a\\nb \\\"c\\\"\"");
        assert_eq!(q(""), "\"\"");
        assert_eq!(q("k=v"), "\"k=v\"");
    }
}
