//! Finds the line of an element of a block-style YAML document from its path
//! (`operators[1].input[0].shape`), so that definition errors can name it.
//!
//! The YAML parser gives values without positions; this scanner reads the text's indentation
//! the way block-style YAML is written (keys `k:`, items `- `, comments `#`). Where the text is
//! in flow style (`{...}`, `[...]`) the line of the nearest enclosing element found is given.

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dash,
    Key(String),
}

#[derive(Debug, Clone)]
struct Token {
    line: usize,
    col: usize,
    kind: Kind,
}

/// The text's entry tokens, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Locator {
    tokens: Vec<Token>,
}

/// Strips a comment: `#` at the start or after whitespace, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_space => return &line[..i],
            None => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// The key of `text` if it starts with `key:` (followed by a space or the end).
fn key_of(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let (key, rest) = if bytes.first() == Some(&b'"') || bytes.first() == Some(&b'\'') {
        let q = text[..1].to_owned();
        let end = text[1..].find(&q)? + 1;
        (text[1..end].to_owned(), &text[end + 1..])
    } else {
        let colon = text.find(':')?;
        let key = &text[..colon];
        if key.is_empty() || key.starts_with(['[', '{', '-', '#']) {
            return None;
        }
        (key.trim_end().to_owned(), &text[colon..])
    };
    let rest = rest.strip_prefix(':')?;
    (rest.is_empty() || rest.starts_with(' ')).then_some(key)
}

impl Locator {
    pub(crate) fn new(text: &str) -> Locator {
        let mut tokens = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = strip_comment(raw).trim_end();
            let mut col = line.len() - line.trim_start().len();
            let mut rest = line.trim_start();
            if rest.is_empty() || rest.starts_with("---") || rest.starts_with("...") {
                continue;
            }
            loop {
                if rest == "-" || rest.starts_with("- ") {
                    tokens.push(Token {
                        line: n + 1,
                        col,
                        kind: Kind::Dash,
                    });
                    let after = rest[1..].trim_start();
                    col += rest.len() - after.len();
                    rest = after;
                    if rest.is_empty() {
                        break;
                    }
                    continue;
                }
                if let Some(key) = key_of(rest) {
                    tokens.push(Token {
                        line: n + 1,
                        col,
                        kind: Kind::Key(key),
                    });
                }
                break;
            }
        }
        Locator { tokens }
    }

    /// The end (exclusive token index) of the region owned by token `i`.
    fn region_end(&self, i: usize) -> usize {
        let owner = &self.tokens[i];
        self.tokens[i + 1..]
            .iter()
            .position(|t| match (&owner.kind, &t.kind) {
                // A key owns what is indented deeper, and a sequence at its own indentation.
                (Kind::Key(_), Kind::Dash) => t.col < owner.col,
                (Kind::Key(_), Kind::Key(_)) => t.col <= owner.col,
                // An item owns what follows until the next item or key at its column or left.
                (Kind::Dash, _) => t.col <= owner.col,
            })
            .map_or(self.tokens.len(), |p| i + 1 + p)
    }

    /// The 1-based line of the element at `path` (the deepest element found on the way).
    pub(crate) fn line(&self, path: &[Seg]) -> Option<usize> {
        let (mut start, mut end) = (0, self.tokens.len());
        let mut found: Option<usize> = None;
        for seg in path {
            let region = &self.tokens[start..end];
            let hit = match seg {
                Seg::Key(k) => {
                    let col = region
                        .iter()
                        .find(|t| matches!(t.kind, Kind::Key(_)))
                        .map(|t| t.col);
                    col.and_then(|col| {
                        region
                            .iter()
                            .position(|t| t.col == col && t.kind == Kind::Key(k.clone()))
                    })
                }
                Seg::Index(n) => {
                    let col = region.iter().find(|t| t.kind == Kind::Dash).map(|t| t.col);
                    col.and_then(|col| {
                        region
                            .iter()
                            .enumerate()
                            .filter(|(_, t)| t.kind == Kind::Dash && t.col == col)
                            .nth(*n)
                            .map(|(p, _)| p)
                    })
                }
            };
            let Some(p) = hit else {
                return found.map(|i| self.tokens[i].line);
            };
            let i = start + p;
            found = Some(i);
            start = i + 1;
            end = self.region_end(i);
        }
        found.map(|i| self.tokens[i].line)
    }
}

/// Parses a dotted path with indices (`operators[1].input[0].shape`) into segments.
pub(crate) fn segments(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key.to_owned()));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(n) = rest[1..close].parse() {
                out.push(Seg::Index(n));
            }
            rest = &rest[close + 1..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
api-version: 0.5.0 # version
name: p
operators:
- name: a
  input:
  - path: /input
    type: stream
  output:
    - name: out # comment
      shape: [1, -1]
- name: b
  input:
  - from: a
    name: out
";

    fn line(path: &str) -> Option<usize> {
        Locator::new(TEXT).line(&segments(path))
    }

    #[test]
    fn finds_keys_items_and_nested_ports() {
        assert_eq!(line("api-version"), Some(1));
        assert_eq!(line("operators"), Some(3));
        assert_eq!(line("operators[0]"), Some(4));
        assert_eq!(line("operators[0].name"), Some(4));
        assert_eq!(line("operators[0].input[0].type"), Some(7));
        assert_eq!(line("operators[0].output[0].shape"), Some(10));
        assert_eq!(line("operators[1].input[0].name"), Some(14));
        assert_eq!(line("operators[1].input[0].from"), Some(13));
    }

    #[test]
    fn a_missing_element_gives_its_nearest_parent() {
        assert_eq!(line("operators[1].input[0].shape"), Some(13));
        assert_eq!(line("operators[0].output[0].shape[1]"), Some(10));
        assert_eq!(line("operators[5]"), Some(3));
        assert_eq!(line("nothing"), None);
    }
}
