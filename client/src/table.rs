//! The command line's plain tables: columns separated by two spaces,
//! numbers right-aligned, no borders (what `kubectl get` prints), sized to
//! their content and never wrapped.

use comfy_table::presets::NOTHING;
use comfy_table::{Cell, CellAlignment, Table};

/// A column heading and whether its values are right-aligned (numbers).
pub(crate) struct Col(pub &'static str, pub bool);

/// Prints `rows` under `cols`.
pub(crate) fn print(cols: &[Col], rows: impl IntoIterator<Item = Vec<String>>) {
    println!("{}", render(cols, rows));
}

pub(crate) fn render(cols: &[Col], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(cols.iter().map(|c| Cell::new(c.0)));
    for r in rows {
        t.add_row(r);
    }
    for (i, c) in cols.iter().enumerate() {
        if let Some(col) = t.column_mut(i) {
            col.set_padding((0, 2));
            if c.1 {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
    }
    t.trim_fmt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_content_and_numbers_align_right() {
        let t = render(
            &[Col("SCOPE", false), Col("SPENT", true), Col("PARENT", false)],
            [
                vec!["team:eng".into(), "$1.50".into(), "-".into()],
                vec!["key:k1".into(), "$12.00".into(), "main".into()],
            ],
        );
        assert_eq!(t, "SCOPE      SPENT  PARENT\nteam:eng   $1.50  -\nkey:k1    $12.00  main");
    }
}
