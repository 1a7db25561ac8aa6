//! Output as lxc prints it: bordered tables, CSV, JSON, YAML and a compact table; sizes and
//! dates in lxc's formats.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use serde::Serialize;

/// `--format` of the list commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// A bordered table.
    #[default]
    Table,
    /// Comma-separated values, no header.
    Csv,
    /// The API objects as JSON.
    Json,
    /// The API objects as YAML.
    Yaml,
    /// A table without borders.
    Compact,
}

/// Writes to stdout; a closed pipe ends the program (exit 0), as it would a Go program.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|_| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("Error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// A table of text cells; a cell may hold several lines.
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let cw = cell.lines().map(|l| l.chars().count()).max().unwrap_or(0);
                if i < w.len() {
                    w[i] = w[i].max(cw);
                }
            }
        }
        w
    }

    /// lxc's table: borders, centred headers, left-aligned cells, a line between rows.
    pub fn bordered(&self) -> String {
        let widths = self.widths();
        let sep: String = widths.iter().fold("+".to_string(), |mut s, w| {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
            s
        });
        let mut out = String::new();
        out.push_str(&sep);
        out.push('\n');
        out.push('|');
        for (h, w) in self.headers.iter().zip(&widths) {
            let gap = w - h.chars().count();
            let left = gap / 2;
            let _ = write!(out, " {}{}{} |", " ".repeat(left), h, " ".repeat(gap - left));
        }
        out.push('\n');
        out.push_str(&sep);
        out.push('\n');
        for row in &self.rows {
            let lines: Vec<Vec<&str>> = (0..widths.len())
                .map(|i| row.get(i).map(|c| c.lines().collect()).unwrap_or_default())
                .collect();
            let height = lines.iter().map(Vec::len).max().unwrap_or(0).max(1);
            for l in 0..height {
                out.push('|');
                for (cell, w) in lines.iter().zip(&widths) {
                    let text = cell.get(l).copied().unwrap_or("");
                    let _ = write!(out, " {}{} |", text, " ".repeat(w - text.chars().count()));
                }
                out.push('\n');
            }
            out.push_str(&sep);
            out.push('\n');
        }
        out
    }

    /// Columns separated by two spaces, no borders.
    pub fn compact(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        let mut line = |cells: &[&str]| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                let text = cells.get(i).copied().unwrap_or("");
                let _ = write!(s, "  {}{}", text, " ".repeat(w - text.chars().count()));
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&self.headers.iter().map(String::as_str).collect::<Vec<_>>());
        for row in &self.rows {
            let lines: Vec<Vec<&str>> = row.iter().map(|c| c.lines().collect()).collect();
            let height = lines.iter().map(Vec::len).max().unwrap_or(0).max(1);
            for l in 0..height {
                let cells: Vec<&str> = lines.iter().map(|c| c.get(l).copied().unwrap_or("")).collect();
                line(&cells);
            }
        }
        out
    }

    /// One line per row, RFC 4180 quoting, no header (like lxc).
    pub fn csv(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| csv_field(c)).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Prints `table` (or `objects`, for JSON and YAML) in `format`.
pub fn print_list<T: Serialize>(format: Format, table: &Table, objects: &T) -> Result<()> {
    match format {
        Format::Table => out!("{}", table.bordered()),
        Format::Compact => out!("{}", table.compact()),
        Format::Csv => out!("{}", table.csv()),
        Format::Json => outln!("{}", serde_json::to_string(objects)?),
        Format::Yaml => out!("{}", yaml(objects)?),
    }
    Ok(())
}

/// YAML, as `lxc ... show` prints it.
pub fn yaml<T: Serialize>(value: &T) -> Result<String> {
    let mut text = serde_saphyr::to_string(value).context("cannot write YAML")?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// A byte count as lxc writes it: `512B`, `1.50KiB`, `2.04MiB`.
pub fn size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.2}{unit}")
}

/// `2024/01/31 10:00 UTC` (lxc info, lxc list's dates); empty for Go's zero time.
pub fn date(t: &DateTime<Utc>) -> String {
    if is_zero(t) {
        return String::new();
    }
    t.format("%Y/%m/%d %H:%M UTC").to_string()
}

/// `Jan 31, 2024 at 10:00am (UTC)` (lxc image list).
pub fn long_date(t: &DateTime<Utc>) -> String {
    if is_zero(t) {
        return String::new();
    }
    t.format("%b %-d, %Y at %-I:%M%P (UTC)").to_string()
}

fn is_zero(t: &DateTime<Utc>) -> bool {
    corral_api::Timestamp(*t).is_zero()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(["NAME", "STATE", "IPV4", "TYPE"]);
        t.row(vec![
            "c1".into(),
            "RUNNING".into(),
            "10.0.0.2 (eth0)\n10.0.1.2 (eth1)".into(),
            "CONTAINER".into(),
        ]);
        t.row(vec!["web, 2".into(), "STOPPED".into(), "".into(), "CONTAINER".into()]);
        t
    }

    #[test]
    fn bordered_like_lxc() {
        assert_eq!(
            sample().bordered(),
            "\
+--------+---------+-----------------+-----------+
|  NAME  |  STATE  |      IPV4       |   TYPE    |
+--------+---------+-----------------+-----------+
| c1     | RUNNING | 10.0.0.2 (eth0) | CONTAINER |
|        |         | 10.0.1.2 (eth1) |           |
+--------+---------+-----------------+-----------+
| web, 2 | STOPPED |                 | CONTAINER |
+--------+---------+-----------------+-----------+
"
        );
        assert_eq!(
            Table::new(["NAME", "STATE"]).bordered(),
            "+------+-------+\n| NAME | STATE |\n+------+-------+\n"
        );
    }

    #[test]
    fn csv_and_compact() {
        assert_eq!(
            sample().csv(),
            "c1,RUNNING,\"10.0.0.2 (eth0)\n10.0.1.2 (eth1)\",CONTAINER\n\"web, 2\",STOPPED,,CONTAINER\n"
        );
        assert_eq!(
            sample().compact(),
            "  NAME    STATE    IPV4             TYPE\n  c1      RUNNING  10.0.0.2 (eth0)  CONTAINER\n                   10.0.1.2 (eth1)\n  web, 2  STOPPED                   CONTAINER\n"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(1023), "1023B");
        assert_eq!(size(1536), "1.50KiB");
        assert_eq!(size(2_138_112), "2.04MiB");
        assert_eq!(size(5 * 1024 * 1024 * 1024), "5.00GiB");
    }

    #[test]
    fn dates() {
        let t: DateTime<Utc> = "2024-01-31T22:05:00Z".parse().unwrap();
        assert_eq!(date(&t), "2024/01/31 22:05 UTC");
        assert_eq!(long_date(&t), "Jan 31, 2024 at 10:05pm (UTC)");
        assert_eq!(date(&corral_api::Timestamp::zero().0), "");
    }

    #[test]
    fn yaml_of_a_map() {
        let v = serde_json::json!({"config": {"limits.cpu": "2"}, "profiles": ["default"], "ephemeral": false});
        let y = yaml(&v).unwrap();
        assert!(y.contains("limits.cpu"), "{y}");
        assert!(y.contains("- default"), "{y}");
    }
}
