//! Output for people: aligned columns, relative times, colour only on a terminal, and no
//! control character that came from outside.
//!
//! Event ids, headers, payloads and error texts come from producers and handlers; a terminal
//! reads an escape sequence in them as a command (clear the screen, set the title, rewrite a
//! line). So every text the commands print goes through [`Console`], which writes control
//! characters as JSON-style escapes ([`escape`]) and adds its own colours only afterwards. The
//! escapes are those of a JSON string, so a JSON line printed the same way still parses to the
//! exact strings it holds.

use std::borrow::Cow;
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

    /// One line on stdout, its control characters escaped ([`escape`]).
    pub(crate) fn line(&mut self, text: impl AsRef<str>) {
        let text = escape(text.as_ref());
        self.write_out(&text);
    }

    /// One line on stderr, its control characters escaped ([`escape`]).
    pub(crate) fn warn(&mut self, text: impl AsRef<str>) {
        let text = escape(text.as_ref());
        self.write_err(&text);
    }

    /// One line on stdout made of `parts`, each escaped ([`escape`]) and then painted in its
    /// colour (when colours are allowed).
    pub(crate) fn styled(&mut self, parts: &[(&str, Colour)]) {
        let line: String = parts
            .iter()
            .map(|(text, colour)| self.paint(*colour, &escape(text)))
            .collect();
        self.write_out(&line);
    }

    /// What the command-line parser rendered (help, usage errors), unchanged: it is the
    /// program's own text and the operator's arguments, with the parser's colours.
    pub(crate) fn parser_output(&mut self, text: &str, to_stderr: bool) {
        if to_stderr {
            self.write_err(text);
        } else {
            self.write_out(text);
        }
    }

    fn write_out(&mut self, text: &str) {
        match &mut self.out {
            Some(buffer) => {
                buffer.push_str(text);
                buffer.push('\n');
            }
            None => println!("{text}"),
        }
    }

    fn write_err(&mut self, text: &str) {
        match &mut self.err {
            Some(buffer) => {
                buffer.push_str(text);
                buffer.push('\n');
            }
            None => eprintln!("{text}"),
        }
    }

    /// `text` in `colour` when colours are allowed. Private: a painted string handed to
    /// [`Console::line`] would have its colour escaped; [`Console::styled`] paints after
    /// escaping.
    fn paint(&self, colour: Colour, text: &str) -> String {
        if self.colour && colour != Colour::Plain {
            format!("{}{text}\x1b[0m", colour.code())
        } else {
            text.to_owned()
        }
    }

    /// Prints an aligned table, its cells escaped ([`escape`]); the last column is cut to the
    /// terminal width.
    pub(crate) fn table(&mut self, headers: &[&str], rows: &[Vec<(String, Colour)>]) {
        let columns = headers.len();
        let header_cells: Vec<(Cow<'_, str>, Colour)> =
            headers.iter().map(|h| (escape(h), Colour::Bold)).collect();
        let rows: Vec<Vec<(Cow<'_, str>, Colour)>> = rows
            .iter()
            .map(|row| row.iter().map(|(text, c)| (escape(text), *c)).collect())
            .collect();
        let mut widths: Vec<usize> = header_cells
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &rows {
            for (i, (text, _)) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let fixed: usize = widths[..columns.saturating_sub(1)]
            .iter()
            .map(|w| w + 2)
            .sum();
        let last_width = self.width.map(|w| w.saturating_sub(fixed).max(10));
        for row in std::iter::once(&header_cells).chain(&rows) {
            let mut line = String::new();
            for (i, (text, colour)) in row.iter().enumerate().take(columns) {
                let last = i + 1 == columns;
                let text = match (last, last_width) {
                    (true, Some(max)) => cut(text, max),
                    _ => text.to_string(),
                };
                let pad = if last {
                    0
                } else {
                    widths[i] - text.chars().count() + 2
                };
                line.push_str(&self.paint(*colour, &text));
                line.push_str(&" ".repeat(pad));
            }
            self.write_out(line.trim_end());
        }
    }
}

/// `text` with every control character written as an escape: `\n`, `\r`, `\t`, and `\u001b`
/// (four hex digits) for the others — the C0 controls with ESC, DEL, the C1 controls
/// (U+0080-U+009F, among them the one-character CSI U+009B) and the bidirectional formatting
/// characters, which reorder what a terminal shows. Everything else, a backslash included, is
/// left as it is, so ordinary text reads as before.
///
/// These are JSON's string escapes, and in a line of JSON such characters can only stand
/// inside strings: escaping a JSON line keeps it valid JSON of the same value.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters (Unicode `Cc`) and the bidirectional formatting characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
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

    const HOSTILE: &str =
        "id\x1b[2J\x1b]0;title\x07 tab\there\r\nnext \u{9b}31m \u{7f} \u{202e}gnp.exe \\ \u{1b}";

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape(HOSTILE),
            "id\\u001b[2J\\u001b]0;title\\u0007 tab\\there\\r\\nnext \\u009b31m \\u007f \\u202egnp.exe \\ \\u001b"
        );
        assert!(matches!(escape("plain ünïcödé — ok"), Cow::Borrowed(_)));
    }

    #[test]
    fn an_escaped_json_line_is_the_same_json() {
        let value = serde_json::json!({"id": HOSTILE, HOSTILE: [HOSTILE]});
        let line = serde_json::to_string(&value).expect("json");
        let escaped = escape(&line);
        assert!(!escaped.chars().any(needs_escape), "{escaped}");
        let parsed: serde_json::Value = serde_json::from_str(&escaped).expect("still JSON");
        assert_eq!(parsed, value);
    }

    #[test]
    fn every_output_escapes_but_keeps_its_own_colours() {
        let mut console = Console::capture();
        console.colour = true;
        console.line(HOSTILE);
        console.warn(HOSTILE);
        console.styled(&[("kind ", Colour::Plain), (HOSTILE, Colour::Red)]);
        console.table(
            &["ID", "ERROR"],
            &[vec![
                (HOSTILE.into(), Colour::Bold),
                (HOSTILE.into(), Colour::Plain),
            ]],
        );
        let (out, err) = (console.out.unwrap(), console.err.unwrap());
        let own = ["\x1b[1m", "\x1b[31m", "\x1b[0m"];
        for text in [&out, &err] {
            let mut rest = text.clone();
            for code in own {
                rest = rest.replace(code, "");
            }
            assert!(
                !rest.chars().any(|c| c != '\n' && needs_escape(c)),
                "{rest:?}"
            );
        }
        assert_eq!(out.lines().count(), 4, "{out:?}");
        assert!(out.contains("\x1b[31mid\\u001b[2J"), "{out:?}");
        assert_eq!(err.lines().count(), 1, "{err:?}");
    }
}
