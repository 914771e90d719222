//! The scanner: PostgreSQL's lexical rules (literals, quoted identifiers,
//! dollar quotes, nested comments), statement boundaries, and a cursor
//! over the words outside literals.

use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// Scanner
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TokKind {
    /// An unquoted identifier or keyword.
    Word,
    /// `"..."`, also `U&"..."`.
    QuotedIdent,
    /// `'...'`, `E'...'`, `B'...'`, `X'...'`, `N'...'`, `U&'...'`, `$tag$...$tag$`.
    Str,
    Number,
    /// `$1`.
    Param,
    /// Any other single character: `( ) , . ;`, operator characters, a lone `$`.
    Punct,
    /// An unterminated block comment. It is a token (not skipped like comments) so that the
    /// statement holding it is not dropped as "only comments": PostgreSQL must see the error.
    Unterminated,
}

/// A token of the SQL text; `text` is `src[start..end]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Token<'a> {
    pub(super) kind: TokKind,
    pub(super) text: &'a str,
    pub(super) start: usize,
    pub(super) end: usize,
}

impl Token<'_> {
    pub(super) fn is_word(&self, keyword: &str) -> bool {
        self.kind == TokKind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    pub(super) fn is_any_word(&self, keywords: &[&str]) -> bool {
        keywords.iter().any(|k| self.is_word(k))
    }

    pub(super) fn is_punct(&self, c: u8) -> bool {
        self.kind == TokKind::Punct && self.text.as_bytes() == [c]
    }

    /// The name an identifier stands for: unquoted words fold to lower case (ASCII only, as
    /// PostgreSQL does for multi-byte encodings), quoted ones keep their case.
    pub(super) fn ident(&self) -> Option<Cow<'_, str>> {
        match self.kind {
            TokKind::Word => Some(Cow::Owned(self.text.to_ascii_lowercase())),
            TokKind::QuotedIdent => Some(unquote(self.text, '"')),
            _ => None,
        }
    }

    /// The value a setting is given as (`TO serializable`, `= 'serializable'`, `= "x"`, `= 0`),
    /// lower-cased: setting names and enum/bool values are case-insensitive.
    pub(super) fn setting_value(&self) -> Option<String> {
        let value = match self.kind {
            TokKind::Word | TokKind::Number => Cow::Borrowed(self.text),
            TokKind::QuotedIdent => unquote(self.text, '"'),
            TokKind::Str => literal_text(self.text),
            _ => return None,
        };
        Some(value.to_ascii_lowercase())
    }
}

/// The contents of a quoted token (`"a""b"` -> `a"b`; any prefix such as `U&` is dropped).
pub(super) fn unquote(text: &str, quote: char) -> Cow<'_, str> {
    let Some(open) = text.find(quote) else {
        return Cow::Borrowed(text);
    };
    let inner = &text[open + 1..];
    let inner = inner.strip_suffix(quote).unwrap_or(inner);
    let doubled: &str = if quote == '"' { "\"\"" } else { "''" };
    if inner.contains(doubled) {
        Cow::Owned(inner.replace(doubled, &doubled[1..]))
    } else {
        Cow::Borrowed(inner)
    }
}

/// The contents of a string literal token, without decoding backslash or Unicode escapes (the
/// values compared against are plain words).
pub(super) fn literal_text(text: &str) -> Cow<'_, str> {
    if let Some(after_dollar) = text.strip_prefix('$') {
        // `$tag$body$tag$`: the delimiter is everything up to the second `$`.
        let delimiter_len = after_dollar.find('$').map_or(text.len(), |i| i + 2);
        let body = &text[delimiter_len..];
        return Cow::Borrowed(body.strip_suffix(&text[..delimiter_len]).unwrap_or(body));
    }
    unquote(text, '\'')
}

pub(super) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Bytes >= 0x80 are letters to PostgreSQL's lexer, so every non-ASCII character is part of an
/// identifier. (It also keeps every position the scanner stops at a char boundary: it only
/// stops next to ASCII bytes.)
pub(super) fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

pub(super) fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

pub(super) fn trim_space(s: &str) -> &str {
    // Not `str::trim`: a non-ASCII space such as U+00A0 is an identifier character to PostgreSQL.
    s.trim_matches(|c: char| c.is_ascii() && is_space(c as u8))
}

/// Yields the tokens of SQL text, skipping whitespace and comments. Every call consumes at least
/// one byte, and all positions are clamped to the text, so it always terminates.
pub(super) struct Scanner<'a> {
    pub(super) src: &'a str,
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(src: &'a str) -> Self {
        Scanner {
            src,
            bytes: src.as_bytes(),
            pos: 0,
        }
    }

    pub(super) fn at(&self, i: usize) -> Option<u8> {
        self.bytes.get(i).copied()
    }

    /// Skips a `--` comment up to (not including) the end of the line.
    pub(super) fn skip_line_comment(&mut self) {
        let rest = &self.bytes[self.pos..];
        self.pos += rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
    }

    /// Skips a `/* */` comment; they nest. False when it is not terminated.
    pub(super) fn skip_block_comment(&mut self) -> bool {
        let mut depth = 0usize;
        let mut i = self.pos;
        while i < self.bytes.len() {
            match (self.bytes[i], self.at(i + 1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    i += 2;
                }
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        self.pos = i;
                        return true;
                    }
                }
                _ => i += 1,
            }
        }
        self.pos = self.bytes.len();
        false
    }

    /// Moves past a literal or identifier quoted by `quote`, whose body starts at `from`.
    /// A doubled quote is an escaped quote; with `backslash` (E'...') so is `\'`.
    pub(super) fn skip_quoted(&mut self, from: usize, quote: u8, backslash: bool) {
        let mut i = from;
        while i < self.bytes.len() {
            let b = self.bytes[i];
            let escaped =
                (backslash && b == b'\\') || (b == quote && self.at(i + 1) == Some(quote));
            if escaped {
                i += 2;
            } else if b == quote {
                self.pos = i + 1;
                return;
            } else {
                i += 1;
            }
        }
        self.pos = self.bytes.len();
    }

    /// At a `$`: a parameter `$1`, a dollar-quoted string `$tag$...$tag$`, or a lone `$`.
    pub(super) fn dollar(&mut self, start: usize) -> TokKind {
        let mut i = start + 1;
        if self.at(i).is_some_and(|b| b.is_ascii_digit()) {
            while self.at(i).is_some_and(|b| b.is_ascii_digit()) {
                i += 1;
            }
            self.pos = i;
            return TokKind::Param;
        }
        // The tag cannot start with a digit (that is a parameter) and cannot contain `$`.
        if self.at(i).is_some_and(is_ident_start) {
            while self
                .at(i)
                .is_some_and(|b| is_ident_start(b) || b.is_ascii_digit())
            {
                i += 1;
            }
        }
        if self.at(i) != Some(b'$') {
            self.pos = start + 1;
            return TokKind::Punct;
        }
        let delimiter = &self.src[start..=i];
        let body = i + 1;
        self.pos = match self.src[body..].find(delimiter) {
            Some(at) => body + at + delimiter.len(),
            None => self.bytes.len(),
        };
        TokKind::Str
    }

    /// A numeric literal. Letters are not consumed (beyond an exponent), so `1e'x'` scans like
    /// PostgreSQL before 15 did: `1`, then the E-string `e'x'` (PostgreSQL 15+ rejects it).
    pub(super) fn number(&mut self, start: usize) {
        let digits = |s: &Self, mut i: usize| {
            while s.at(i).is_some_and(|b| b.is_ascii_digit() || b == b'_') {
                i += 1;
            }
            i
        };
        let mut i = digits(self, start);
        if self.at(i) == Some(b'.') && self.at(i + 1) != Some(b'.') {
            i = digits(self, i + 1);
        }
        if matches!(self.at(i), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.at(i + 1), Some(b'+' | b'-')));
            if self.at(i + 1 + sign).is_some_and(|b| b.is_ascii_digit()) {
                i = digits(self, i + 1 + sign);
            }
        }
        self.pos = i;
    }

    /// An identifier or keyword, or a string with a one-letter prefix: `E'...'` (backslash
    /// escapes), `B'...'`, `X'...'`, `N'...'`, `U&'...'`, and the identifier `U&"..."`.
    pub(super) fn word(&mut self, start: usize) -> TokKind {
        let mut i = start + 1;
        while self.at(i).is_some_and(is_ident_cont) {
            i += 1;
        }
        let prefix = if i == start + 1 {
            self.bytes[start].to_ascii_lowercase()
        } else {
            0
        };
        match (prefix, self.at(i), self.at(i + 1)) {
            (b'e', Some(b'\''), _) => self.skip_quoted(i + 1, b'\'', true),
            (b'b' | b'x' | b'n', Some(b'\''), _) => self.skip_quoted(i + 1, b'\'', false),
            (b'u', Some(b'&'), Some(b'\'')) => self.skip_quoted(i + 2, b'\'', false),
            (b'u', Some(b'&'), Some(b'"')) => {
                self.skip_quoted(i + 2, b'"', false);
                return TokKind::QuotedIdent;
            }
            _ => {
                self.pos = i;
                return TokKind::Word;
            }
        }
        TokKind::Str
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let start = self.pos;
            let b = self.at(start)?;
            let next = self.at(start + 1);
            let kind = match b {
                _ if is_space(b) => {
                    self.pos += 1;
                    continue;
                }
                b'-' if next == Some(b'-') => {
                    self.skip_line_comment();
                    continue;
                }
                b'/' if next == Some(b'*') => {
                    if self.skip_block_comment() {
                        continue;
                    }
                    TokKind::Unterminated
                }
                b'\'' => {
                    self.skip_quoted(start + 1, b'\'', false);
                    TokKind::Str
                }
                b'"' => {
                    self.skip_quoted(start + 1, b'"', false);
                    TokKind::QuotedIdent
                }
                b'$' => self.dollar(start),
                b'0'..=b'9' => {
                    self.number(start);
                    TokKind::Number
                }
                b'.' if next.is_some_and(|n| n.is_ascii_digit()) => {
                    self.number(start);
                    TokKind::Number
                }
                _ if is_ident_start(b) => self.word(start),
                _ => {
                    self.pos += 1;
                    TokKind::Punct
                }
            };
            debug_assert!(self.pos > start, "the scanner must always advance");
            return Some(Token {
                kind,
                text: &self.src[start..self.pos],
                start,
                end: self.pos,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Splitting
// ---------------------------------------------------------------------------------------------

/// How far the first words of a statement match `CREATE [OR REPLACE] FUNCTION|PROCEDURE`: only
/// there can a `BEGIN ATOMIC ... END` body hold semicolons (psql's heuristic, too).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Head {
    Start,
    Create,
    CreateOr,
    CreateOrReplace,
    Routine,
    Other,
}

impl Head {
    pub(super) fn after(self, tok: &Token) -> Head {
        let w = |k: &str| tok.is_word(k);
        match self {
            Head::Start if w("create") => Head::Create,
            Head::Create if w("or") => Head::CreateOr,
            Head::CreateOr if w("replace") => Head::CreateOrReplace,
            Head::Create | Head::CreateOrReplace if w("function") || w("procedure") => {
                Head::Routine
            }
            Head::Routine => Head::Routine,
            _ => Head::Other,
        }
    }
}

/// The statement being split off: where it starts, and what decides whether a `;` ends it.
pub(super) struct Statement {
    pub(super) start: usize,
    pub(super) has_tokens: bool,
    pub(super) paren_depth: usize,
    pub(super) head: Head,
    /// Open `BEGIN ATOMIC` / `CASE` blocks of a routine body, each closed by `END`.
    pub(super) atomic_depth: usize,
    pub(super) after_begin: bool,
}

impl Statement {
    pub(super) fn starting_at(start: usize) -> Self {
        Statement {
            start,
            has_tokens: false,
            paren_depth: 0,
            head: Head::Start,
            atomic_depth: 0,
            after_begin: false,
        }
    }

    pub(super) fn at_top_level(&self) -> bool {
        self.paren_depth == 0 && self.atomic_depth == 0
    }

    pub(super) fn observe(&mut self, tok: &Token) {
        self.has_tokens = true;
        if tok.kind == TokKind::Word {
            self.head = self.head.after(tok);
        }
        if tok.is_punct(b'(') {
            self.paren_depth += 1;
        } else if tok.is_punct(b')') {
            self.paren_depth = self.paren_depth.saturating_sub(1);
        } else if self.head == Head::Routine && self.paren_depth == 0 {
            // BEGIN ATOMIC opens the body; CASE ... END nests inside it. Requiring ATOMIC (psql
            // counts any BEGIN) keeps `CREATE FUNCTION begin() ...; LISTEN x` two statements.
            let opens = (tok.is_word("atomic") && self.after_begin)
                || (tok.is_word("case") && self.atomic_depth > 0);
            if opens {
                self.atomic_depth += 1;
            } else if tok.is_word("end") {
                self.atomic_depth = self.atomic_depth.saturating_sub(1);
            }
        }
        self.after_begin = tok.is_word("begin");
    }

    pub(super) fn finish<'a>(&self, sql: &'a str, end: usize, out: &mut Vec<&'a str>) {
        if self.has_tokens {
            out.push(trim_space(&sql[self.start..end]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// A position in the tokens of one statement, for reading keywords in order.
pub(super) struct Cursor<'t, 'a> {
    pub(super) toks: &'t [Token<'a>],
    pub(super) pos: usize,
}

impl<'t, 'a> Cursor<'t, 'a> {
    pub(super) fn new(toks: &'t [Token<'a>]) -> Self {
        Cursor { toks, pos: 0 }
    }

    pub(super) fn peek(&self) -> Option<&'t Token<'a>> {
        self.toks.get(self.pos)
    }

    pub(super) fn peek_is(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|t| t.is_word(keyword))
    }

    pub(super) fn bump(&mut self) -> Option<&'t Token<'a>> {
        let tok = self.peek()?;
        self.pos += 1;
        Some(tok)
    }

    pub(super) fn eat(&mut self, keyword: &str) -> bool {
        let found = self.peek_is(keyword);
        self.pos += usize::from(found);
        found
    }

    pub(super) fn eat_punct(&mut self, c: u8) -> bool {
        let found = self.peek().is_some_and(|t| t.is_punct(c));
        self.pos += usize::from(found);
        found
    }

    /// Eats the first of `keywords` that comes next, if any, and says which.
    pub(super) fn eat_any(&mut self, keywords: &[&'static str]) -> Option<&'static str> {
        let found = keywords.iter().copied().find(|k| self.peek_is(k))?;
        self.pos += 1;
        Some(found)
    }

    /// Eats all of `keywords` in order, or nothing.
    pub(super) fn eat_seq(&mut self, keywords: &[&str]) -> bool {
        let found = keywords.len() <= self.toks.len().saturating_sub(self.pos)
            && keywords
                .iter()
                .zip(&self.toks[self.pos..])
                .all(|(k, t)| t.is_word(k));
        if found {
            self.pos += keywords.len();
        }
        found
    }

    /// The next token if it is a word, lower-cased.
    pub(super) fn next_word(&mut self) -> Option<String> {
        let tok = self.peek().filter(|t| t.kind == TokKind::Word)?;
        self.pos += 1;
        Some(tok.text.to_ascii_lowercase())
    }

    pub(super) fn rest(&self) -> &'t [Token<'a>] {
        &self.toks[self.pos.min(self.toks.len())..]
    }
}
