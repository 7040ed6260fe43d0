//! Just enough of PostgreSQL's lexical rules to cut a migration into statements and read its
//! `-- gito:` headers and `-- gito-lint:` acknowledgements: quotes, dollar quotes and comments
//! must never be mistaken for a `;`. `lint` matches on the tokens; a `-- gito: no-transaction`
//! migration is run one statement at a time with them.

/// One token: words are lower-cased, quoted identifiers keep their case (without the quotes),
/// strings keep their quotes, every other character is its own token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    pub kind: TokenKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Word,
    QuotedIdent,
    String,
    Number,
    Punct,
}

impl Token {
    /// A keyword or unquoted identifier equal to `word` (lower case).
    pub fn is(&self, word: &str) -> bool {
        self.kind == TokenKind::Word && self.text == word
    }

    /// An identifier (quoted or not) as PostgreSQL folds it.
    pub fn ident(&self) -> Option<&str> {
        matches!(self.kind, TokenKind::Word | TokenKind::QuotedIdent).then_some(self.text.as_str())
    }
}

/// One statement: its tokens, its text as written (without the `;`) and the line it starts on.
#[derive(Debug, Clone)]
pub struct Statement {
    pub tokens: Vec<Token>,
    pub text: String,
    pub line: usize,
}

/// A `--` comment: its text after `--`, trimmed, and its line (1-based).
#[derive(Debug, Clone)]
pub struct Comment {
    pub text: String,
    pub line: usize,
}

#[derive(Debug, Default)]
pub struct Parsed {
    pub statements: Vec<Statement>,
    pub comments: Vec<Comment>,
}

/// Cuts `sql` into statements; comments are collected apart. Unterminated quotes end at the end
/// of the text (PostgreSQL would refuse the file; lint and the runner then report its error).
pub fn parse(sql: &str) -> Parsed {
    let chars: Vec<char> = sql.chars().collect();
    let mut parsed = Parsed::default();
    let mut line = 1;
    let mut i = 0;
    let mut tokens: Vec<Token> = Vec::new();
    let mut start: Option<(usize, usize)> = None; // (char index, line) of the statement's first token
    let finish = |tokens: &mut Vec<Token>,
                  start: &mut Option<(usize, usize)>,
                  end: usize,
                  parsed: &mut Parsed| {
        if let Some((from, line)) = start.take()
            && !tokens.is_empty()
        {
            parsed.statements.push(Statement {
                tokens: std::mem::take(tokens),
                text: chars[from..end]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_owned(),
                line,
            });
        }
        tokens.clear();
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '-' && next == Some('-') {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |p| i + p);
            parsed.comments.push(Comment {
                text: chars[i + 2..end]
                    .iter()
                    .collect::<String>()
                    .trim()
                    .to_owned(),
                line,
            });
            i = end;
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            continue;
        }
        if c == ';' {
            finish(&mut tokens, &mut start, i, &mut parsed);
            i += 1;
            continue;
        }
        if start.is_none() {
            start = Some((i, line));
        }
        let from = i;
        let kind;
        if c == '\'' || c == '"' {
            // '' and "" inside are escaped quotes.
            i += 1;
            loop {
                match chars.get(i) {
                    None => break,
                    Some(&q) if q == c => {
                        if chars.get(i + 1) == Some(&c) {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&ch) => {
                        if ch == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            if c == '"' {
                let inner: String = chars[from + 1..i.saturating_sub(1).max(from + 1)]
                    .iter()
                    .collect();
                tokens.push(Token {
                    text: inner.replace("\"\"", "\""),
                    kind: TokenKind::QuotedIdent,
                });
                continue;
            }
            kind = TokenKind::String;
        } else if c == '$'
            && let Some(tag_len) = dollar_tag(&chars[i..])
        {
            let tag: Vec<char> = chars[i..i + tag_len].to_vec();
            i += tag_len;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i..].starts_with(&tag) {
                    i += tag_len;
                    break;
                }
                if chars[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            kind = TokenKind::String;
        } else if c.is_alphabetic() || c == '_' {
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            kind = TokenKind::Word;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            kind = TokenKind::Number;
        } else {
            i += 1;
            kind = TokenKind::Punct;
        }
        let text: String = chars[from..i].iter().collect();
        tokens.push(Token {
            text: if kind == TokenKind::Word {
                text.to_lowercase()
            } else {
                text
            },
            kind,
        });
    }
    finish(&mut tokens, &mut start, chars.len(), &mut parsed);
    parsed
}

/// The length of `$$` or `$tag$` at the start of `rest`, if it opens a dollar quote.
fn dollar_tag(rest: &[char]) -> Option<usize> {
    let end = rest[1..].iter().position(|&c| c == '$')? + 1;
    let tag = &rest[1..end];
    let valid = tag.iter().all(|c| c.is_alphanumeric() || *c == '_')
        && tag.first().is_none_or(|c| !c.is_ascii_digit());
    valid.then_some(end + 1)
}

/// The `-- gito: key[=value]` header lines of a migration, in order.
pub fn headers(sql: &str) -> Vec<(String, Option<String>)> {
    sql.lines()
        .filter_map(|l| l.trim().strip_prefix("-- gito:"))
        .map(|h| {
            let h = h.trim();
            match h.split_once('=') {
                Some((k, v)) => (k.trim().to_owned(), Some(v.trim().to_owned())),
                None => (h.to_owned(), None),
            }
        })
        .collect()
}

/// What the checksum covers: the file without its `-- gito-lint:` acknowledgement lines, so that
/// acknowledging a finding in an applied migration does not count as modifying it. A file
/// without such lines hashes exactly as sqlx (and gito before acknowledgements) hashed it.
pub fn checksummed(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains("-- gito-lint:") {
        return std::borrow::Cow::Borrowed(sql);
    }
    std::borrow::Cow::Owned(
        sql.split_inclusive('\n')
            .filter(|l| !l.trim_start().starts_with("-- gito-lint:"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_in_quotes_comments_and_dollar_bodies_do_not_split() {
        let sql = "-- a; comment\nCREATE TABLE \"x;y\" (v text DEFAULT 'a;''b');\n/* c; /* nested; */ */\n\
                   CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $body$ SELECT 1; $body$;\nSELECT $$;$$";
        let parsed = parse(sql);
        assert_eq!(parsed.statements.len(), 3, "{parsed:#?}");
        assert_eq!(parsed.statements[0].line, 2);
        assert_eq!(parsed.statements[0].tokens[2].text, "x;y");
        assert_eq!(parsed.statements[1].line, 4);
        assert_eq!(parsed.statements[2].line, 5);
        assert_eq!(parsed.comments[0].text, "a; comment");
    }

    #[test]
    fn acknowledgement_lines_are_left_out_of_the_checksum_and_nothing_else() {
        let plain = "CREATE TABLE a (id int);\n";
        assert_eq!(checksummed(plain), plain);
        assert_eq!(
            checksummed("-- gito-lint: allow rename: no reader\nCREATE TABLE a (id int);\n"),
            plain
        );
    }
}
