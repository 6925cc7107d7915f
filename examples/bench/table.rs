//! [`Table`]: the report's Markdown tables.

use std::fmt::Write as _;

/// A Markdown table whose columns line up in a terminal too; the first
/// column is left-aligned, the others (numbers) right-aligned.
pub(crate) struct Table {
    headers: Vec<String>,
    /// One `Vec` per row, a cell per header; missing cells are blank.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings and no rows yet.
    pub(crate) fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Table {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub(crate) fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Appends the table to `out`, then a blank line, which ends the table
    /// in Markdown.
    pub(crate) fn write_to(&self, out: &mut String) {
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&self.headers[i]))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                if i == 0 {
                    let _ = write!(s, " {cell:<w$} |");
                } else {
                    let _ = write!(s, " {cell:>w$} |");
                }
            }
            s.push('\n');
            s
        };
        out.push_str(&line(&self.headers));
        out.push('|');
        for (i, w) in widths.iter().enumerate() {
            if i == 0 {
                let _ = write!(out, "{}|", "-".repeat(w + 2));
            } else {
                let _ = write!(out, "{}:|", "-".repeat(w + 1));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out.push('\n');
    }
}
