//! The parity table of the backends' documentation and the end-to-end suite's parity scenarios
//! must name the same scenarios: the table is what users read about the backends, the suite is
//! what proves it.

use std::{collections::BTreeSet, path::Path};

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The file that holds the parity table, under a `## Parity` heading.
const BACKENDS_DOC: &str = "portwatch/docs/backends.md";

/// The `parity::name` scenarios the parity table names, one per row.
fn table_rows(doc: &str) -> Vec<String> {
    let section = doc
        .split("\n## ")
        .find(|section| section.starts_with("Parity"))
        .unwrap_or_else(|| panic!("{BACKENDS_DOC} has no Parity section"));
    section
        .lines()
        .filter(|line| {
            line.starts_with('|') && !line.starts_with("|---") && !line.starts_with("| case")
        })
        .map(|row| {
            let last = row
                .trim_end_matches('|')
                .rsplit('|')
                .next()
                .unwrap_or_default();
            last.trim().trim_matches('`').to_string()
        })
        .collect()
}

/// The `parity::name` scenarios the suite registers.
fn suite_scenarios(main_rs: &str) -> BTreeSet<String> {
    main_rs
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|word| word.starts_with("parity::"))
        .map(str::to_string)
        .collect()
}

#[test]
fn parity_table_and_suite_name_the_same_scenarios() {
    let rows = table_rows(&read(BACKENDS_DOC));
    let in_table: BTreeSet<String> = rows.iter().cloned().collect();
    assert_eq!(
        in_table.len(),
        rows.len(),
        "a scenario has two rows: {rows:?}"
    );
    let in_suite = suite_scenarios(&read("tests/e2e/main.rs"));
    assert!(
        !in_suite.is_empty(),
        "no parity scenarios found in tests/e2e/main.rs"
    );
    assert_eq!(
        in_table, in_suite,
        "{BACKENDS_DOC} parity table (left) and tests/e2e/main.rs (right) differ"
    );
}
