//! Output for people: aligned columns, relative times, colour only on a terminal.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A colour for a cell (ANSI, used only when the output is a terminal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Colour {
    Plain,
    Bold,
    Red,
    Yellow,
    Green,
    Dim,
}

impl Colour {
    fn code(self) -> &'static str {
        match self {
            Colour::Plain => "",
            Colour::Bold => "\x1b[1m",
            Colour::Red => "\x1b[31m",
            Colour::Yellow => "\x1b[33m",
            Colour::Green => "\x1b[32m",
            Colour::Dim => "\x1b[2m",
        }
    }
}

/// Where output goes and how it may look.
#[derive(Debug)]
pub(crate) struct Console {
    /// Captured stdout (`None`: print directly).
    pub(crate) out: Option<String>,
    /// Captured stderr (`None`: print directly).
    pub(crate) err: Option<String>,
    /// ANSI colours allowed.
    pub(crate) colour: bool,
    /// Terminal width, when writing to a terminal.
    pub(crate) width: Option<usize>,
}

impl Console {
    /// Prints to the process's stdout/stderr; colour and width when stdout is a terminal.
    pub(crate) fn terminal() -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        Self {
            out: None,
            err: None,
            colour: tty && std::env::var_os("NO_COLOR").is_none(),
            width: tty
                .then(|| terminal_size::terminal_size().map(|(w, _)| usize::from(w.0)))
                .flatten(),
        }
    }

    /// Captures everything, without colour or width limit.
    pub(crate) fn capture() -> Self {
        Self {
            out: Some(String::new()),
            err: Some(String::new()),
            colour: false,
            width: None,
        }
    }

    /// One line on stdout.
    pub(crate) fn line(&mut self, text: impl AsRef<str>) {
        match &mut self.out {
            Some(buffer) => {
                buffer.push_str(text.as_ref());
                buffer.push('\n');
            }
            None => println!("{}", text.as_ref()),
        }
    }

    /// One line on stderr.
    pub(crate) fn warn(&mut self, text: impl AsRef<str>) {
        match &mut self.err {
            Some(buffer) => {
                buffer.push_str(text.as_ref());
                buffer.push('\n');
            }
            None => eprintln!("{}", text.as_ref()),
        }
    }

    /// `text` in `colour` when colours are allowed.
    pub(crate) fn paint(&self, colour: Colour, text: &str) -> String {
        if self.colour && colour != Colour::Plain {
            format!("{}{text}\x1b[0m", colour.code())
        } else {
            text.to_owned()
        }
    }

    /// Prints an aligned table; the last column is cut to the terminal width.
    pub(crate) fn table(&mut self, headers: &[&str], rows: &[Vec<(String, Colour)>]) {
        let columns = headers.len();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, (text, _)) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let fixed: usize = widths[..columns.saturating_sub(1)]
            .iter()
            .map(|w| w + 2)
            .sum();
        let last_width = self.width.map(|w| w.saturating_sub(fixed).max(10));
        let header_cells: Vec<(String, Colour)> = headers
            .iter()
            .map(|h| (h.to_string(), Colour::Bold))
            .collect();
        for row in std::iter::once(&header_cells).chain(rows) {
            let mut line = String::new();
            for (i, (text, colour)) in row.iter().enumerate().take(columns) {
                let last = i + 1 == columns;
                let text = match (last, last_width) {
                    (true, Some(max)) => cut(text, max),
                    _ => text.clone(),
                };
                let pad = if last {
                    0
                } else {
                    widths[i] - text.chars().count() + 2
                };
                line.push_str(&self.paint(*colour, &text));
                line.push_str(&" ".repeat(pad));
            }
            self.line(line.trim_end());
        }
    }
}

/// `text` cut to `max` characters, with `…` when cut.
pub(crate) fn cut(text: &str, max: usize) -> String {
    let text = text.lines().next().unwrap_or("");
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `3s ago`, `12m ago`, `2h ago`, `4d ago` (relative to `now`).
pub(crate) fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    if secs < 0 {
        return "just now".into();
    }
    let secs = secs as u64;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `200ms`, `1s`, `1.5s`, `30s`, `5m`, `1h`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_and_durations() {
        let now = Utc::now();
        assert_eq!(ago(now - chrono::Duration::seconds(5), now), "5s ago");
        assert_eq!(ago(now - chrono::Duration::minutes(12), now), "12m ago");
        assert_eq!(ago(now - chrono::Duration::hours(30), now), "1d ago");
        assert_eq!(duration(Duration::from_millis(200)), "200ms");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(cut("abcdef", 4), "abc…");
    }

    #[test]
    fn tables_align() {
        let mut console = Console::capture();
        console.table(
            &["A", "LONG"],
            &[vec![
                ("xyz".into(), Colour::Plain),
                ("1".into(), Colour::Red),
            ]],
        );
        assert_eq!(console.out.unwrap(), "A    LONG\nxyz  1\n");
    }
}
