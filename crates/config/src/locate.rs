//! Maps a byte offset of a TOML document to the path of the field there (`host[1].cores`), so
//! that serde's errors (which carry a span but no path) can name their field.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Line and column (both from 1) of byte offset `pos` in `text`.
pub(crate) fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The path of the deepest key or value of `text` whose span contains `pos`, or `None` when
/// `text` does not parse or nothing contains `pos`.
pub(crate) fn field_at(text: &str, pos: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    in_table(doc.get_ref(), pos)
}

fn in_table(table: &DeTable<'_>, pos: usize) -> Option<String> {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        if key.span().contains(&pos) {
            return Some(name.to_owned());
        }
        if let Some(rest) = in_value(value, pos) {
            return Some(format!("{name}{rest}"));
        }
    }
    None
}

/// The path suffix (`.key`, `[i]`, or empty for the value itself) of `pos` inside `value`.
fn in_value(value: &Spanned<DeValue<'_>>, pos: usize) -> Option<String> {
    match value.get_ref() {
        DeValue::Table(table) => {
            if let Some(inner) = in_table(table, pos) {
                return Some(format!(".{inner}"));
            }
        }
        DeValue::Array(array) => {
            for (i, element) in array.iter().enumerate() {
                if let Some(rest) = in_value(element, pos) {
                    return Some(format!("[{i}]{rest}"));
                }
            }
        }
        _ => {}
    }
    value.span().contains(&pos).then(String::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[cluster]\nname = 'a'\n[[host]]\nid = 0\n[[host]]\nid = 1\ncores = 'x'\n";

    #[test]
    fn finds_keys_values_and_array_elements() {
        let at = |needle: &str| DOC.find(needle).map(|p| field_at(DOC, p));
        assert_eq!(at("name"), Some(Some("cluster.name".into())));
        assert_eq!(at("'a'"), Some(Some("cluster.name".into())));
        assert_eq!(at("cores"), Some(Some("host[1].cores".into())));
        assert_eq!(at("'x'"), Some(Some("host[1].cores".into())));
        let second_header = DOC.rfind("[[host]]");
        assert_eq!(
            second_header.map(|p| field_at(DOC, p)),
            Some(Some("host[1]".into()))
        );
    }

    #[test]
    fn line_and_column_count_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
