//! The kernel × backend matrix: an aligned table for the terminal, markdown for the file.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use super::Backend;

/// How many lines of a log a failure shows.
const TAIL_LINES: usize = 25;

pub struct Cell {
    pub text: String,
    pub failed: bool,
    /// The console log that explains the cell.
    pub log: Option<PathBuf>,
}

pub struct Row {
    pub kernel: String,
    pub btf: String,
    /// One per backend of the matrix, in its order.
    pub backends: Vec<Cell>,
    pub auto: Cell,
    pub time: String,
}

pub struct Matrix {
    pub backends: Vec<Backend>,
    pub rows: Vec<Row>,
}

/// A failed cell with where it sits.
pub struct Failure<'a> {
    kernel: &'a str,
    column: &'static str,
    cell: &'a Cell,
}

impl Failure<'_> {
    /// The cell, its log's path and the log's last lines.
    pub fn describe_failure(&self) -> String {
        let mut text = format!("{} / {}: {}", self.kernel, self.column, self.cell.text);
        if let Some(log) = &self.cell.log {
            let _ = write!(text, "\n  log: {}", log.display());
            if let Ok(content) = fs::read_to_string(log) {
                let lines: Vec<&str> = content.lines().collect();
                let _ = write!(text, "\n  last {} lines:", TAIL_LINES.min(lines.len()));
                for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
                    let _ = write!(text, "\n    {line}");
                }
            }
        }
        text
    }
}

impl Matrix {
    pub fn failed_cells(&self) -> Vec<Failure<'_>> {
        let mut failed = Vec::new();
        for row in &self.rows {
            let columns = self.backends.iter().map(|backend| backend.name());
            for (column, cell) in columns
                .chain(["auto"])
                .zip(row.backends.iter().chain([&row.auto]))
            {
                if cell.failed {
                    failed.push(Failure {
                        kernel: &row.kernel,
                        column,
                        cell,
                    });
                }
            }
        }
        failed
    }

    pub fn to_text(&self) -> String {
        let table = self.table();
        let mut widths = vec![0; table[0].len()];
        for row in &table {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in &table {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, &width)| format!("{cell:<width$}"))
                .collect();
            text.push_str(line.join("  ").trim_end());
            text.push('\n');
        }
        text
    }

    pub fn to_markdown(&self) -> String {
        let table = self.table();
        let mut text = String::new();
        for (index, row) in table.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|cell| cell.replace('|', "\\|")).collect();
            let _ = writeln!(text, "| {} |", cells.join(" | "));
            if index == 0 {
                let _ = writeln!(text, "|{}", "---|".repeat(row.len()));
            }
        }
        text
    }

    /// Header and rows as text cells.
    fn table(&self) -> Vec<Vec<String>> {
        let mut header = vec!["kernel".to_owned(), "BTF".to_owned()];
        header.extend(
            self.backends
                .iter()
                .map(|backend| backend.name().to_owned()),
        );
        header.extend(["auto".to_owned(), "time".to_owned()]);
        let mut table = vec![header];
        for row in &self.rows {
            let mut cells = vec![row.kernel.clone(), row.btf.clone()];
            cells.extend(row.backends.iter().map(|cell| cell.text.clone()));
            cells.extend([row.auto.text.clone(), row.time.clone()]);
            table.push(cells);
        }
        table
    }
}
