//! Slurm hostlist expressions (`n[1-2],gpu07`, `rack[1-2]-node[01-02]`), expanded exactly as
//! `scontrol show hostnames` expands them.
//!
//! Grammar: a list of items separated by commas or whitespace (empty items are skipped); an
//! item is literal text with bracket groups `[r,r,…]` where each `r` is `n` or `lo-hi` (decimal,
//! `lo <= hi`). A range is written with the width of its lower bound, zero-padded
//! (`[08-10]` gives `08 09 10`, `[9-011]` gives `9 10 11`). Several groups in one item give
//! every combination, the first group varying slowest. Text after an item's last group is
//! refused, as Slurm refuses it (`a[1-2]b`); so are unbalanced brackets, empty groups or ranges,
//! non-decimal bounds and descending ranges. Duplicates are kept, order is preserved.

/// Most host names one expression may expand to: an announced list is bounded where it is
/// read.
pub const MAX_HOSTS: usize = 1 << 20;

/// Why a hostlist expression is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostlistError {
    /// A `[` without its `]`, a `]` without its `[`, or a `[` inside a group.
    #[error("unbalanced brackets in hostlist {expr:?}")]
    Unbalanced {
        /// The whole expression.
        expr: String,
    },
    /// A range of a bracket group is empty, not decimal, too large or descending.
    #[error("invalid range {range:?} in hostlist {expr:?}")]
    InvalidRange {
        /// The whole expression.
        expr: String,
        /// The range as written.
        range: String,
    },
    /// Text follows the last bracket group of an item (`a[1-2]b`).
    #[error("text {suffix:?} after the last bracket group of {item:?} in hostlist {expr:?}")]
    Suffix {
        /// The whole expression.
        expr: String,
        /// The item.
        item: String,
        /// The text after its last group.
        suffix: String,
    },
    /// The expression names more than [`MAX_HOSTS`] hosts.
    #[error("hostlist {expr:?} names more than {max} hosts")]
    TooLarge {
        /// The whole expression.
        expr: String,
        /// [`MAX_HOSTS`].
        max: usize,
    },
}

/// Expands a hostlist expression into host names, in order; see the [module](self) docs.
///
/// ```
/// use fragmenta_config::hostlist::expand;
/// assert_eq!(expand("login1,c[8-10]").unwrap(), ["login1", "c8", "c9", "c10"]);
/// assert_eq!(
///     expand("rack[1-2]-node[01-02]").unwrap(),
///     ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]
/// );
/// ```
pub fn expand(expr: &str) -> Result<Vec<String>, HostlistError> {
    let mut out = Vec::new();
    for item in split_items(expr)? {
        expand_item(expr, item, &mut out)?;
    }
    Ok(out)
}

/// The items of `expr`: split at commas and whitespace outside brackets.
fn split_items(expr: &str) -> Result<Vec<&str>, HostlistError> {
    let unbalanced = || HostlistError::Unbalanced {
        expr: expr.to_owned(),
    };
    let mut items = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err(unbalanced()),
            ']' if depth == 1 => depth = 0,
            ']' => return Err(unbalanced()),
            c if depth == 0 && (c == ',' || c.is_whitespace()) => {
                if start < i {
                    items.push(&expr[start..i]);
                }
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(unbalanced());
    }
    if start < expr.len() {
        items.push(&expr[start..]);
    }
    Ok(items)
}

/// One bracket group's values, already formatted with their width.
fn parse_group(expr: &str, group: &str) -> Result<Vec<String>, HostlistError> {
    let mut values = Vec::new();
    for range in group.split(',') {
        let invalid = || HostlistError::InvalidRange {
            expr: expr.to_owned(),
            range: range.to_owned(),
        };
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let decimal =
            |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
        if !decimal(lo) || !decimal(hi) {
            return Err(invalid());
        }
        let (a, b): (u64, u64) = match (lo.parse(), hi.parse()) {
            (Ok(a), Ok(b)) if a <= b => (a, b),
            _ => return Err(invalid()),
        };
        if b - a >= MAX_HOSTS as u64 || values.len() + (b - a) as usize > MAX_HOSTS {
            return Err(HostlistError::TooLarge {
                expr: expr.to_owned(),
                max: MAX_HOSTS,
            });
        }
        let width = lo.len();
        values.extend((a..=b).map(|n| format!("{n:0width$}")));
    }
    Ok(values)
}

fn expand_item(expr: &str, item: &str, out: &mut Vec<String>) -> Result<(), HostlistError> {
    // item = text[0] [groups[0]] text[1] [groups[1]] ... text[k], and text[k] must be empty
    // when k > 0.
    let mut texts = Vec::new();
    let mut groups = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close =
            rest[open..]
                .find(']')
                .map(|c| open + c)
                .ok_or_else(|| HostlistError::Unbalanced {
                    expr: expr.to_owned(),
                })?;
        texts.push(&rest[..open]);
        groups.push(parse_group(expr, &rest[open + 1..close])?);
        rest = &rest[close + 1..];
    }
    let Some(last) = groups.pop() else {
        if out.len() >= MAX_HOSTS {
            return Err(HostlistError::TooLarge {
                expr: expr.to_owned(),
                max: MAX_HOSTS,
            });
        }
        out.push(item.to_owned());
        return Ok(());
    };
    if !rest.is_empty() {
        return Err(HostlistError::Suffix {
            expr: expr.to_owned(),
            item: item.to_owned(),
            suffix: rest.to_owned(),
        });
    }
    let total = groups
        .iter()
        .try_fold(last.len(), |n, g| n.checked_mul(g.len()))
        .filter(|&n| n.saturating_add(out.len()) <= MAX_HOSTS);
    if total.is_none() {
        return Err(HostlistError::TooLarge {
            expr: expr.to_owned(),
            max: MAX_HOSTS,
        });
    }
    // Slurm's order: the last group varies fastest; of the groups before it, the last one
    // varies slowest, then the one before it, and so on.
    let mut chosen = vec![""; groups.len()];
    push(&texts, &groups, &mut chosen, groups.len(), &last, out);
    Ok(())
}

/// Emits every name with groups `0..open` still to choose (the later ones are in `chosen`).
fn push<'a>(
    texts: &[&str],
    groups: &'a [Vec<String>],
    chosen: &mut Vec<&'a str>,
    open: usize,
    last: &[String],
    out: &mut Vec<String>,
) {
    if open == 0 {
        let mut prefix = String::new();
        for (i, text) in texts.iter().enumerate() {
            prefix.push_str(text);
            if let Some(value) = chosen.get(i) {
                prefix.push_str(value);
            }
        }
        out.extend(last.iter().map(|v| format!("{prefix}{v}")));
        return;
    }
    for value in &groups[open - 1] {
        chosen[open - 1] = value;
        push(texts, groups, chosen, open - 1, last, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(expr: &str) -> Vec<String> {
        expand(expr).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    #[test]
    fn the_documented_forms() {
        assert_eq!(ok("n[1-2]"), ["n1", "n2"]);
        assert_eq!(
            ok("node[001-003,7]"),
            ["node001", "node002", "node003", "node7"]
        );
        assert_eq!(
            ok("rack[1-2]-node[01-02]"),
            [
                "rack1-node01",
                "rack1-node02",
                "rack2-node01",
                "rack2-node02"
            ]
        );
        assert_eq!(ok("login1,c[8-10]"), ["login1", "c8", "c9", "c10"]);
        // Three groups, in the order `scontrol show hostnames` prints them.
        assert_eq!(
            ok("a[1-2]-b[7-8]-c[0-1]"),
            [
                "a1-b7-c0", "a1-b7-c1", "a2-b7-c0", "a2-b7-c1", "a1-b8-c0", "a1-b8-c1", "a2-b8-c0",
                "a2-b8-c1"
            ]
        );
    }

    #[test]
    fn widths_duplicates_separators() {
        assert_eq!(ok("n[08-10]"), ["n08", "n09", "n10"]);
        assert_eq!(ok("n[9-011]"), ["n9", "n10", "n11"]);
        assert_eq!(ok("n[01-1]"), ["n01"]);
        assert_eq!(ok("n1,n1"), ["n1", "n1"]);
        assert_eq!(ok("n,,m"), ["n", "m"]);
        assert_eq!(ok("n1 n2"), ["n1", "n2"]);
        assert_eq!(ok("n[1-2],[3-4]"), ["n1", "n2", "3", "4"]);
        assert_eq!(ok(""), Vec::<String>::new());
        assert_eq!(ok("gpu07"), ["gpu07"]);
    }

    #[test]
    fn malformed_lists_are_typed_errors() {
        for expr in ["n[1-2", "n[1-2]]", "n[[1]]", "n]"] {
            assert!(
                matches!(expand(expr), Err(HostlistError::Unbalanced { .. })),
                "{expr}"
            );
        }
        for (expr, range) in [
            ("n[3-1]", "3-1"),
            ("x[]", ""),
            ("n[a-b]", "a-b"),
            ("n[1-2,]", ""),
        ] {
            assert_eq!(
                expand(expr),
                Err(HostlistError::InvalidRange {
                    expr: expr.into(),
                    range: range.into()
                })
            );
        }
        assert!(matches!(
            expand("a[1-2]b"),
            Err(HostlistError::Suffix { suffix, .. }) if suffix == "b"
        ));
        assert!(matches!(
            expand("n[0-99999999]"),
            Err(HostlistError::TooLarge { .. })
        ));
        assert!(matches!(
            expand("a[0-9999]b[0-9999]"),
            Err(HostlistError::Suffix { .. } | HostlistError::TooLarge { .. })
        ));
        assert!(matches!(
            expand("a[0-9999]-b[0-9999]"),
            Err(HostlistError::TooLarge { .. })
        ));
    }
}
