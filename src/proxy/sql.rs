//! Just enough SQL for the proxy: split a simple-Query string into statements and tell which
//! kind each statement is.
//!
//! The proxy must know where a transaction begins and ends, which statements change the schema
//! (they are replicated in the global order, see DESIGN.md "DDL"), which ones only concern this
//! replica, and which ones cannot work under replication at all (they are refused with SQLSTATE
//! 0A000 before they reach PostgreSQL). It does not parse SQL: a scanner that knows PostgreSQL's
//! lexical rules (string literals, quoted identifiers, dollar quotes, nested comments) yields the
//! tokens outside literals and comments, and the classifier looks at keywords. Whatever it does
//! not recognise is `Kind::Other` and goes to PostgreSQL unchanged, which reports syntax errors.
//!
//! The scanner assumes `standard_conforming_strings = on` (a backslash is literal in `'...'`);
//! turning it off through the proxy is refused, because the statement boundaries found here
//! would then differ from PostgreSQL's.

use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

/// Splits the text of a simple-Query message into its statements: each is the statement's text
/// without the terminating `;`, trimmed of surrounding whitespace; statements that are empty or
/// consist only of comments are dropped.
///
/// Like psql, a `;` inside parentheses (`CREATE RULE ... DO (a; b)`) or inside the
/// `BEGIN ATOMIC ... END` body of `CREATE [OR REPLACE] FUNCTION|PROCEDURE` does not end the
/// statement. An unterminated literal or comment makes the rest of the text part of the last
/// statement, so PostgreSQL reports the error.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut current = Statement::starting_at(0);
    for tok in Scanner::new(sql) {
        if tok.is_punct(b';') && current.at_top_level() {
            current.finish(sql, tok.start, &mut statements);
            current = Statement::starting_at(tok.end);
        } else {
            current.observe(&tok);
        }
    }
    current.finish(sql, sql.len(), &mut statements);
    statements
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// BEGIN / START TRANSACTION [modes]; BEGIN WORK/TRANSACTION. `read_only` when READ ONLY was
    /// asked. (Statements asking SERIALIZABLE are `Refused`, not `Begin`.)
    Begin { read_only: bool },
    /// COMMIT / END [WORK|TRANSACTION] [AND [NO] CHAIN]. `chain` for AND CHAIN.
    Commit { chain: bool },
    /// ROLLBACK / ABORT [WORK|TRANSACTION] [AND [NO] CHAIN] — but not ROLLBACK TO [SAVEPOINT] x,
    /// not ROLLBACK PREPARED.
    Rollback { chain: bool },
    /// SAVEPOINT x, RELEASE [SAVEPOINT] x, ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x.
    Savepoint,
    /// SET TRANSACTION ... / SET SESSION CHARACTERISTICS AS TRANSACTION ... with an isolation
    /// level other than SERIALIZABLE (or only READ WRITE/READ ONLY/DEFERRABLE modes). The proxy
    /// answers these itself.
    SetTransaction,
    /// Must run outside a transaction block and only concerns this replica (the proxy runs it
    /// locally, unreplicated): VACUUM, ANALYZE/ANALYSE, CHECKPOINT, CLUSTER, REINDEX (any form,
    /// also CONCURRENTLY), DISCARD ...
    LocalMaintenance,
    /// Replicated schema change (the proxy sends these as their own Query message): CREATE,
    /// ALTER, DROP, COMMENT ON, GRANT, REVOKE, SECURITY LABEL, IMPORT FOREIGN SCHEMA, REFRESH
    /// MATERIALIZED VIEW, ALTER DEFAULT PRIVILEGES, REASSIGN OWNED, DROP OWNED, and
    /// `SELECT ... INTO new_table` — except the refused forms and temporary objects (`CREATE TEMP
    /// ...`, `SELECT ... INTO TEMP`, names qualified by `pg_temp`), which are `Other`: they live
    /// in this session only and are not captured.
    Ddl,
    /// TRUNCATE [TABLE] ...
    Truncate,
    /// Refused: the proxy answers SQLSTATE 0A000 with `message` and `hint`.
    Refused { message: String, hint: String },
    /// Everything else (SELECT, INSERT/UPDATE/DELETE/MERGE, WITH ..., COPY, SET, SHOW, RESET,
    /// PREPARE, EXECUTE, DEALLOCATE, DECLARE/FETCH/MOVE/CLOSE, EXPLAIN, DO, CALL, LOCK, VALUES,
    /// TABLE, ...).
    Other,
}

/// Classifies one statement (as returned by `split_statements`, or the text of a Parse message,
/// which may still carry comments or a trailing `;`).
///
/// Text that holds several statements (PostgreSQL rejects that in a Parse message) is refused
/// if any of them is, and otherwise classified by its first statement.
pub fn classify(stmt: &str) -> Kind {
    let statements = split_statements(stmt);
    let Some(first) = statements.first() else {
        return Kind::Other;
    };
    let first = classify_one(first);
    if matches!(first, Kind::Refused { .. }) {
        return first;
    }
    statements[1..]
        .iter()
        .map(|s| classify_one(s))
        .find(|k| matches!(k, Kind::Refused { .. }))
        .unwrap_or(first)
}

// ---------------------------------------------------------------------------------------------
// Scanner
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokKind {
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
struct Token<'a> {
    kind: TokKind,
    text: &'a str,
    start: usize,
    end: usize,
}

impl Token<'_> {
    fn is_word(&self, keyword: &str) -> bool {
        self.kind == TokKind::Word && self.text.eq_ignore_ascii_case(keyword)
    }

    fn is_any_word(&self, keywords: &[&str]) -> bool {
        keywords.iter().any(|k| self.is_word(k))
    }

    fn is_punct(&self, c: u8) -> bool {
        self.kind == TokKind::Punct && self.text.as_bytes() == [c]
    }

    /// The name an identifier stands for: unquoted words fold to lower case (ASCII only, as
    /// PostgreSQL does for multi-byte encodings), quoted ones keep their case.
    fn ident(&self) -> Option<Cow<'_, str>> {
        match self.kind {
            TokKind::Word => Some(Cow::Owned(self.text.to_ascii_lowercase())),
            TokKind::QuotedIdent => Some(unquote(self.text, '"')),
            _ => None,
        }
    }

    /// The value a setting is given as (`TO serializable`, `= 'serializable'`, `= "x"`, `= 0`),
    /// lower-cased: setting names and enum/bool values are case-insensitive.
    fn setting_value(&self) -> Option<String> {
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
fn unquote(text: &str, quote: char) -> Cow<'_, str> {
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
fn literal_text(text: &str) -> Cow<'_, str> {
    if let Some(after_dollar) = text.strip_prefix('$') {
        // `$tag$body$tag$`: the delimiter is everything up to the second `$`.
        let delimiter_len = after_dollar.find('$').map_or(text.len(), |i| i + 2);
        let body = &text[delimiter_len..];
        return Cow::Borrowed(body.strip_suffix(&text[..delimiter_len]).unwrap_or(body));
    }
    unquote(text, '\'')
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Bytes >= 0x80 are letters to PostgreSQL's lexer, so every non-ASCII character is part of an
/// identifier. (It also keeps every position the scanner stops at a char boundary: it only
/// stops next to ASCII bytes.)
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

fn trim_space(s: &str) -> &str {
    // Not `str::trim`: a non-ASCII space such as U+00A0 is an identifier character to PostgreSQL.
    s.trim_matches(|c: char| c.is_ascii() && is_space(c as u8))
}

/// Yields the tokens of SQL text, skipping whitespace and comments. Every call consumes at least
/// one byte, and all positions are clamped to the text, so it always terminates.
struct Scanner<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(src: &'a str) -> Self {
        Scanner {
            src,
            bytes: src.as_bytes(),
            pos: 0,
        }
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.bytes.get(i).copied()
    }

    /// Skips a `--` comment up to (not including) the end of the line.
    fn skip_line_comment(&mut self) {
        let rest = &self.bytes[self.pos..];
        self.pos += rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
    }

    /// Skips a `/* */` comment; they nest. False when it is not terminated.
    fn skip_block_comment(&mut self) -> bool {
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
    fn skip_quoted(&mut self, from: usize, quote: u8, backslash: bool) {
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
    fn dollar(&mut self, start: usize) -> TokKind {
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
    fn number(&mut self, start: usize) {
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
    fn word(&mut self, start: usize) -> TokKind {
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
enum Head {
    Start,
    Create,
    CreateOr,
    CreateOrReplace,
    Routine,
    Other,
}

impl Head {
    fn after(self, tok: &Token) -> Head {
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
struct Statement {
    start: usize,
    has_tokens: bool,
    paren_depth: usize,
    head: Head,
    /// Open `BEGIN ATOMIC` / `CASE` blocks of a routine body, each closed by `END`.
    atomic_depth: usize,
    after_begin: bool,
}

impl Statement {
    fn starting_at(start: usize) -> Self {
        Statement {
            start,
            has_tokens: false,
            paren_depth: 0,
            head: Head::Start,
            atomic_depth: 0,
            after_begin: false,
        }
    }

    fn at_top_level(&self) -> bool {
        self.paren_depth == 0 && self.atomic_depth == 0
    }

    fn observe(&mut self, tok: &Token) {
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

    fn finish<'a>(&self, sql: &'a str, end: usize, out: &mut Vec<&'a str>) {
        if self.has_tokens {
            out.push(trim_space(&sql[self.start..end]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// A position in the tokens of one statement, for reading keywords in order.
struct Cursor<'t, 'a> {
    toks: &'t [Token<'a>],
    pos: usize,
}

impl<'t, 'a> Cursor<'t, 'a> {
    fn new(toks: &'t [Token<'a>]) -> Self {
        Cursor { toks, pos: 0 }
    }

    fn peek(&self) -> Option<&'t Token<'a>> {
        self.toks.get(self.pos)
    }

    fn peek_is(&self, keyword: &str) -> bool {
        self.peek().is_some_and(|t| t.is_word(keyword))
    }

    fn bump(&mut self) -> Option<&'t Token<'a>> {
        let tok = self.peek()?;
        self.pos += 1;
        Some(tok)
    }

    fn eat(&mut self, keyword: &str) -> bool {
        let found = self.peek_is(keyword);
        self.pos += usize::from(found);
        found
    }

    fn eat_punct(&mut self, c: u8) -> bool {
        let found = self.peek().is_some_and(|t| t.is_punct(c));
        self.pos += usize::from(found);
        found
    }

    /// Eats the first of `keywords` that comes next, if any, and says which.
    fn eat_any(&mut self, keywords: &[&'static str]) -> Option<&'static str> {
        let found = keywords.iter().copied().find(|k| self.peek_is(k))?;
        self.pos += 1;
        Some(found)
    }

    /// Eats all of `keywords` in order, or nothing.
    fn eat_seq(&mut self, keywords: &[&str]) -> bool {
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
    fn next_word(&mut self) -> Option<String> {
        let tok = self.peek().filter(|t| t.kind == TokKind::Word)?;
        self.pos += 1;
        Some(tok.text.to_ascii_lowercase())
    }

    fn rest(&self) -> &'t [Token<'a>] {
        &self.toks[self.pos.min(self.toks.len())..]
    }
}

/// True when the statement is a COPY (it may switch the connection into
/// copy mode, so nothing may be pipelined behind it).
pub fn is_copy(stmt: &str) -> bool {
    let toks: Vec<Token> = Scanner::new(stmt).collect();
    Cursor::new(&toks).next_word().as_deref() == Some("copy")
}

fn classify_one(stmt: &str) -> Kind {
    let toks: Vec<Token> = Scanner::new(stmt).collect();
    if let Some(refusal) = refused_anywhere(&toks) {
        return refusal;
    }
    match classify_by_head(&toks) {
        Kind::Ddl => names_tashkent_schema(&toks).unwrap_or(Kind::Ddl),
        kind => kind,
    }
}

fn classify_by_head(toks: &[Token]) -> Kind {
    let mut c = Cursor::new(toks);
    let Some(head) = c.next_word() else {
        return Kind::Other;
    };
    match head.as_str() {
        "begin" => {
            c.eat_any(&["work", "transaction"]);
            begin(c.rest())
        }
        "start" if c.eat("transaction") => begin(c.rest()),
        "commit" | "end" => end_transaction(&head, &mut c, true),
        "rollback" | "abort" => end_transaction(&head, &mut c, false),
        "savepoint" | "release" => Kind::Savepoint,
        "prepare" => prepare_statement(&mut c),
        "set" => set_statement(&mut c),
        "listen" | "unlisten" | "notify" => notification_refused(&head.to_ascii_uppercase()),
        "load" => refused(
            "LOAD is not supported: it loads a library into one server process of one replica only",
            "Configure libraries with shared_preload_libraries or session_preload_libraries on every replica.",
        ),
        "vacuum" | "analyze" | "analyse" | "checkpoint" | "cluster" | "reindex" | "discard" => {
            Kind::LocalMaintenance
        }
        "create" => create_statement(&mut c),
        "alter" => alter_statement(&mut c),
        "drop" => drop_statement(&mut c),
        "comment" | "grant" | "revoke" | "security" | "import" | "refresh" | "reassign" => Kind::Ddl,
        "truncate" => Kind::Truncate,
        "select" | "with" => select_into(toks),
        _ => Kind::Other,
    }
}

// ---- transaction control ----

/// The transaction modes of BEGIN / START TRANSACTION / SET TRANSACTION.
struct TxModes {
    serializable: bool,
    read_only: bool,
}

fn tx_modes(toks: &[Token]) -> TxModes {
    let mut modes = TxModes {
        serializable: false,
        read_only: false,
    };
    for (i, tok) in toks.iter().enumerate() {
        // Transaction modes are keywords only, so SERIALIZABLE can only be the isolation level.
        modes.serializable |= tok.is_word("serializable");
        if tok.is_word("read") {
            match toks.get(i + 1) {
                Some(t) if t.is_word("only") => modes.read_only = true,
                Some(t) if t.is_word("write") => modes.read_only = false,
                _ => {}
            }
        }
    }
    modes
}

fn begin(modes: &[Token]) -> Kind {
    let modes = tx_modes(modes);
    if modes.serializable {
        return serializable_refused();
    }
    Kind::Begin {
        read_only: modes.read_only,
    }
}

/// COMMIT/END (`commit`) or ROLLBACK/ABORT, after the first word.
fn end_transaction(head: &str, c: &mut Cursor, commit: bool) -> Kind {
    if c.eat("prepared") {
        return two_phase_refused(&format!("{} PREPARED", head.to_ascii_uppercase()));
    }
    c.eat_any(&["work", "transaction"]);
    if !commit && c.eat("to") {
        return Kind::Savepoint;
    }
    let chain = c.eat("and") && !c.eat("no") && c.eat("chain");
    if commit {
        Kind::Commit { chain }
    } else {
        Kind::Rollback { chain }
    }
}

fn prepare_statement(c: &mut Cursor) -> Kind {
    // `PREPARE transaction AS ...` prepares a statement named "transaction";
    // `PREPARE TRANSACTION 'gid'` is two-phase commit.
    let named_statement =
        matches!(c.toks.get(c.pos + 1), Some(t) if t.is_word("as") || t.is_punct(b'('));
    if c.eat("transaction") && !named_statement {
        return two_phase_refused("PREPARE TRANSACTION");
    }
    Kind::Other
}

// ---- SET and settings ----

fn set_statement(c: &mut Cursor) -> Kind {
    let scope = c.eat_any(&["session", "local"]);
    let characteristics = ["characteristics", "as", "transaction"];
    if c.eat("transaction")
        || (scope == Some("session") && c.eat_seq(&characteristics))
        || (c.peek_is("session") && c.eat("session") && c.eat_seq(&characteristics))
    {
        if c.eat("snapshot") {
            return refused(
                "SET TRANSACTION SNAPSHOT is not supported: an exported snapshot belongs to one \
                 replica, and tashkent chooses each transaction's snapshot itself",
                "Do the work that must share a snapshot in one transaction.",
            );
        }
        if tx_modes(c.rest()).serializable {
            return serializable_refused();
        }
        return Kind::SetTransaction;
    }
    setting_assignment(c, "SET").unwrap_or(Kind::Other)
}

/// Reads `name {TO|=} value[, value ...]` (or `name FROM CURRENT`) at the cursor, as in SET and in
/// the SET clause of a function, and checks it.
fn setting_assignment(c: &mut Cursor, context: &str) -> Option<Kind> {
    let mut name = c.bump()?.ident()?.to_ascii_lowercase();
    while c.eat_punct(b'.') {
        name.push('.');
        name.push_str(&c.bump()?.ident()?.to_ascii_lowercase());
    }
    let mut values = Vec::new();
    if c.eat("to") || c.eat_punct(b'=') {
        while let Some(value) = c.peek().and_then(|t| t.setting_value()) {
            c.pos += 1;
            values.push(value);
            if !c.eat_punct(b',') {
                break;
            }
        }
    }
    check_setting(context, &name, &values)
}

/// Refuses settings that break replication; `values` are lower-cased.
fn check_setting(context: &str, name: &str, values: &[String]) -> Option<Kind> {
    let first = values.first().map(String::as_str).unwrap_or("");
    match name {
        "session_replication_role" => Some(refused(
            format!(
                "{context} session_replication_role is not supported: it would switch off \
                 tashkent's writeset capture"
            ),
            "Leave session_replication_role at its default (origin).",
        )),
        "default_transaction_isolation" | "transaction_isolation" if first == "serializable" => {
            Some(serializable_refused())
        }
        "standard_conforming_strings" if is_false(first) => Some(refused(
            format!(
                "{context} standard_conforming_strings = off is not supported: the tashkent \
                 proxy reads SQL text with standard-conforming strings"
            ),
            "Use E'...' literals for backslash escapes.",
        )),
        "search_path" | "schema" if values.iter().any(|v| lists_tashkent(v)) => {
            Some(tashkent_schema_refused())
        }
        _ if name.starts_with("tashkent.") => Some(tashkent_schema_refused()),
        _ => None,
    }
}

/// PostgreSQL's spellings of a false boolean (it accepts unique prefixes).
fn is_false(v: &str) -> bool {
    !v.is_empty()
        && ("false".starts_with(v)
            || "no".starts_with(v)
            || (v.len() >= 2 && "off".starts_with(v))
            || v == "0")
}

/// True when a search_path value (possibly a comma-separated list) contains the schema tashkent.
fn lists_tashkent(v: &str) -> bool {
    v.split(',')
        .any(|s| trim_space(s).trim_matches('"') == "tashkent")
}

// ---- schema changes ----

/// Leading modifiers of CREATE before the object type.
const CREATE_MODIFIERS: &[&str] = &[
    "global",
    "local",
    "temp",
    "temporary",
    "unlogged",
    "unique",
    "default",
    "trusted",
    "procedural",
    "constraint",
    "recursive",
];

fn create_statement(c: &mut Cursor) -> Kind {
    c.eat_seq(&["or", "replace"]);
    let mut temporary = false;
    while let Some(modifier) = c.eat_any(CREATE_MODIFIERS) {
        temporary |= modifier.starts_with("temp");
    }
    if temporary || creates_in_pg_temp(c.rest()) {
        // A temporary object lives in this session only (and temp tables are not captured).
        return Kind::Other;
    }
    let Some(object) = c.next_word() else {
        return Kind::Ddl;
    };
    match object.as_str() {
        "database" | "role" | "group" | "tablespace" => cluster_wide_refused("CREATE", &object),
        "user" if !c.peek_is("mapping") => cluster_wide_refused("CREATE", &object),
        "index" if c.eat("concurrently") => concurrently_refused("CREATE INDEX CONCURRENTLY"),
        "event" if c.peek_is("trigger") => event_trigger_refused("CREATE"),
        // A rule's actions run wherever the table is written, so they must not notify either.
        "rule" if c.rest().iter().any(|t| t.is_word("notify")) => {
            notification_refused("CREATE RULE ... NOTIFY")
        }
        "function" | "procedure" => routine_settings(c.rest()).unwrap_or(Kind::Ddl),
        _ => Kind::Ddl,
    }
}

/// True when the object a CREATE makes is qualified by `pg_temp` (its name comes before the
/// first `(` or `AS`; later a `pg_temp.` qualifier is only a reference).
fn creates_in_pg_temp(toks: &[Token]) -> bool {
    let end = toks
        .iter()
        .position(|t| t.is_punct(b'(') || t.is_word("as"))
        .unwrap_or(toks.len());
    qualifies(&toks[..end], |name| name == "pg_temp")
}

fn alter_statement(c: &mut Cursor) -> Kind {
    let Some(object) = c.next_word() else {
        return Kind::Ddl;
    };
    match object.as_str() {
        "system" => cluster_wide_refused("ALTER", &object),
        "database" | "role" | "group" | "tablespace" => cluster_wide_refused("ALTER", &object),
        "user" if !c.peek_is("mapping") => cluster_wide_refused("ALTER", &object),
        "event" if c.peek_is("trigger") => event_trigger_refused("ALTER"),
        "function" | "procedure" | "routine" => routine_settings(c.rest()).unwrap_or(Kind::Ddl),
        _ => disables_trigger(c.rest()).unwrap_or(Kind::Ddl),
    }
}

fn drop_statement(c: &mut Cursor) -> Kind {
    let Some(object) = c.next_word() else {
        return Kind::Ddl;
    };
    match object.as_str() {
        "database" | "role" | "group" | "tablespace" => cluster_wide_refused("DROP", &object),
        "user" if !c.peek_is("mapping") => cluster_wide_refused("DROP", &object),
        "index" if c.eat("concurrently") => concurrently_refused("DROP INDEX CONCURRENTLY"),
        "event" if c.peek_is("trigger") => event_trigger_refused("DROP"),
        _ => Kind::Ddl,
    }
}

/// ALTER TABLE ... DISABLE TRIGGER / ENABLE REPLICA TRIGGER / ENABLE ALWAYS TRIGGER: the capture
/// triggers would stop firing (or fire in the applier, too).
fn disables_trigger(toks: &[Token]) -> Option<Kind> {
    const FORMS: [&[&str]; 3] = [
        &["disable", "trigger"],
        &["enable", "replica", "trigger"],
        &["enable", "always", "trigger"],
    ];
    let form = FORMS.iter().find(|form| {
        toks.windows(form.len())
            .any(|w| w.iter().zip(form.iter()).all(|(t, k)| t.is_word(k)))
    })?;
    Some(refused(
        format!(
            "ALTER TABLE ... {} is not supported: it would disable or bypass tashkent's writeset capture",
            form.join(" ").to_ascii_uppercase()
        ),
        "Leave triggers enabled; drop a trigger you do not want (DROP TRIGGER is replicated).",
    ))
}

/// The `SET name ...` clauses of CREATE/ALTER FUNCTION|PROCEDURE|ROUTINE: a function may carry
/// its own settings, e.g. `SET session_replication_role = replica`.
fn routine_settings(toks: &[Token]) -> Option<Kind> {
    let mut depth = 0usize;
    for (i, tok) in toks.iter().enumerate() {
        depth = paren_depth_after(depth, tok);
        if depth == 0 && tok.is_word("set") {
            let mut c = Cursor { toks, pos: i + 1 };
            if let Some(refusal) = setting_assignment(&mut c, "SET") {
                return Some(refusal);
            }
        }
    }
    None
}

/// `SELECT ... INTO new_table` creates a table: schema change, unless the table is temporary.
fn select_into(toks: &[Token]) -> Kind {
    let mut depth = 0usize;
    for (i, tok) in toks.iter().enumerate() {
        depth = paren_depth_after(depth, tok);
        let follows_insert = i > 0 && toks[i - 1].is_any_word(&["insert", "merge"]);
        if depth == 0 && tok.is_word("into") && !follows_insert {
            let mut c = Cursor { toks, pos: i + 1 };
            let mut temporary = false;
            while let Some(w) =
                c.eat_any(&["temp", "temporary", "local", "global", "unlogged", "table"])
            {
                temporary |= w.starts_with("temp");
            }
            let in_pg_temp = qualifies(&c.rest()[..c.rest().len().min(2)], |n| n == "pg_temp");
            return if temporary || in_pg_temp {
                Kind::Other
            } else {
                Kind::Ddl
            };
        }
    }
    Kind::Other
}

fn paren_depth_after(depth: usize, tok: &Token) -> usize {
    if tok.is_punct(b'(') {
        depth + 1
    } else if tok.is_punct(b')') {
        depth.saturating_sub(1)
    } else {
        depth
    }
}

/// A schema change whose object is the schema tashkent itself (`DROP SCHEMA tashkent`,
/// `ALTER TABLE t SET SCHEMA tashkent`, `GRANT ... IN SCHEMA tashkent`) names it without a `.`.
fn names_tashkent_schema(toks: &[Token]) -> Option<Kind> {
    for (i, tok) in toks.iter().enumerate() {
        if !tok.is_any_word(&["schema", "schemas"]) {
            continue;
        }
        let mut c = Cursor { toks, pos: i + 1 };
        c.eat_seq(&["if", "not", "exists"]);
        c.eat_seq(&["if", "exists"]);
        while let Some(name) = c.bump().and_then(|t| t.ident()) {
            if name == "tashkent" {
                return Some(tashkent_schema_refused());
            }
            if !c.eat_punct(b',') {
                break;
            }
        }
    }
    None
}

// ---- refusals that apply wherever they appear ----

/// Function calls and names that are refused in any statement: advisory locks, `pg_notify(`,
/// the schema `tashkent` as a qualifier, and `set_config(...)` of a refused setting.
fn refused_anywhere(toks: &[Token]) -> Option<Kind> {
    for (i, tok) in toks.iter().enumerate() {
        let Some(name) = tok.ident() else { continue };
        let next = toks.get(i + 1);
        let called = next.is_some_and(|t| t.is_punct(b'('));
        if name.starts_with("pg_advisory") || name.starts_with("pg_try_advisory") {
            return Some(refused(
                format!("advisory lock function {} is not supported: advisory locks are held on one replica only", tok.text),
                "Lock by writing a row instead (e.g. UPDATE a row of a lock table): concurrent \
                 writers of one row conflict across replicas.",
            ));
        }
        if name == "pg_notify" && called {
            return Some(notification_refused("pg_notify()"));
        }
        if name == "tashkent" && next.is_some_and(|t| t.is_punct(b'.')) {
            return Some(tashkent_schema_refused());
        }
        if name == "set_config" && called {
            if let Some(refusal) = set_config_call(&toks[i + 2..]) {
                return Some(refusal);
            }
        }
    }
    None
}

/// The arguments of `set_config('name', 'value', ...)`, when both are literals.
fn set_config_call(args: &[Token]) -> Option<Kind> {
    match args {
        [name, comma, value, ..] if name.kind == TokKind::Str && comma.is_punct(b',') => {
            let name = literal_text(name.text).to_ascii_lowercase();
            let value = value.setting_value().unwrap_or_default();
            check_setting("set_config of", trim_space(&name), &[value])
        }
        _ => None,
    }
}

/// True when one of `toks` is an identifier accepted by `is_schema` followed by `.`.
fn qualifies(toks: &[Token], is_schema: impl Fn(&str) -> bool) -> bool {
    toks.windows(2)
        .any(|w| w[1].is_punct(b'.') && w[0].ident().is_some_and(|n| is_schema(&n)))
}

// ---- refusal messages ----

fn refused(message: impl Into<String>, hint: impl Into<String>) -> Kind {
    Kind::Refused {
        message: message.into(),
        hint: hint.into(),
    }
}

fn notification_refused(what: &str) -> Kind {
    refused(
        format!("{what} is not supported: notifications are delivered by one replica only"),
        "Poll a table for changes, or use a message queue outside the database.",
    )
}

fn two_phase_refused(what: &str) -> Kind {
    refused(
        format!("{what} is not supported: tashkent does not support two-phase commit"),
        "Use a plain COMMIT: tashkent certifies and orders the commit for all replicas itself.",
    )
}

fn serializable_refused() -> Kind {
    refused(
        "SERIALIZABLE is not supported: tashkent provides generalized snapshot isolation (REPEATABLE READ)",
        "Use REPEATABLE READ; where write skew matters, make the conflicting transactions update a common row.",
    )
}

fn cluster_wide_refused(verb: &str, object: &str) -> Kind {
    refused(
        format!(
            "{verb} {} is not supported: databases, roles, tablespaces and system settings are \
             cluster-wide and not replicated by tashkent",
            object.to_ascii_uppercase()
        ),
        "Run it on every PostgreSQL server directly, not through the tashkent proxy.",
    )
}

fn concurrently_refused(what: &str) -> Kind {
    refused(
        format!("{what} is not supported: it cannot run in the replicated global order"),
        "Omit CONCURRENTLY: the statement is then replicated in the global order.",
    )
}

fn event_trigger_refused(verb: &str) -> Kind {
    refused(
        format!(
            "{verb} EVENT TRIGGER is not supported: event triggers could disable or bypass \
             tashkent's capture of schema changes"
        ),
        "Use ordinary triggers; event triggers are reserved to tashkent.",
    )
}

fn tashkent_schema_refused() -> Kind {
    refused(
        "referring to schema tashkent is not supported: it is the replication middleware's own schema",
        "Keep your objects in other schemas; tashkent's internal state is not accessible through the proxy.",
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(cases: &[(&str, Kind)]) {
        for (sql, want) in cases {
            assert_eq!(&classify(sql), want, "classify({sql:?})");
        }
    }

    /// Each statement must be refused with a message containing the needle.
    fn check_refused(cases: &[(&str, &str)]) {
        for (sql, needle) in cases {
            match classify(sql) {
                Kind::Refused { message, hint } => {
                    assert!(
                        message.to_lowercase().contains(&needle.to_lowercase()),
                        "classify({sql:?}): message {message:?} lacks {needle:?}"
                    );
                    assert!(!hint.is_empty(), "classify({sql:?}): no hint");
                }
                other => panic!("classify({sql:?}) = {other:?}, want refused ({needle})"),
            }
        }
    }

    fn check_not_refused(cases: &[&str]) {
        for sql in cases {
            let kind = classify(sql);
            assert!(
                !matches!(kind, Kind::Refused { .. }),
                "classify({sql:?}) = {kind:?}"
            );
        }
    }

    // ---- scanning ----

    #[test]
    fn scanner_tokens() {
        use TokKind::*;
        let sql =
            "SELECT E'a\\'b' \"q\"\"\" $t$x$t$ $1 1.5e3 .5 x.y a$b -- c\n/* d /* e */ */ U&'f' <>;";
        let toks: Vec<(TokKind, &str)> = Scanner::new(sql).map(|t| (t.kind, t.text)).collect();
        assert_eq!(
            toks,
            [
                (Word, "SELECT"),
                (Str, "E'a\\'b'"),
                (QuotedIdent, "\"q\"\"\""),
                (Str, "$t$x$t$"),
                (Param, "$1"),
                (Number, "1.5e3"),
                (Number, ".5"),
                (Word, "x"),
                (Punct, "."),
                (Word, "y"),
                (Word, "a$b"),
                (Str, "U&'f'"),
                (Punct, "<"),
                (Punct, ">"),
                (Punct, ";"),
            ]
        );
        let unterminated: Vec<TokKind> = Scanner::new("x /* y").map(|t| t.kind).collect();
        assert_eq!(unterminated, [Word, Unterminated]);
    }

    #[test]
    fn literal_and_identifier_values() {
        let tok = |sql| Scanner::new(sql).next().unwrap();
        assert_eq!(tok("'it''s'").setting_value().unwrap(), "it's");
        assert_eq!(
            tok("$x$Serializable$x$").setting_value().unwrap(),
            "serializable"
        );
        assert_eq!(tok("E'OFF'").setting_value().unwrap(), "off");
        assert_eq!(tok("\"A\"\"b\"").ident().unwrap(), "A\"b");
        assert_eq!(tok("TashKent").ident().unwrap(), "tashkent");
        assert_eq!(
            tok("'unterminated").setting_value().unwrap(),
            "unterminated"
        );
    }

    // ---- classification ----

    #[test]
    fn begin_forms() {
        let rw = Kind::Begin { read_only: false };
        let ro = Kind::Begin { read_only: true };
        check(&[
            ("BEGIN", rw.clone()),
            ("begin;", rw.clone()),
            ("Begin Work", rw.clone()),
            ("BEGIN TRANSACTION", rw.clone()),
            ("START TRANSACTION", rw.clone()),
            ("start transaction read only", ro.clone()),
            ("BEGIN READ ONLY", ro.clone()),
            ("BEGIN /* x */ READ -- y\n ONLY", ro.clone()),
            (
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                ro.clone(),
            ),
            ("BEGIN ISOLATION LEVEL READ COMMITTED", rw.clone()),
            ("BEGIN READ ONLY, READ WRITE", rw.clone()),
            (
                "START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE",
                ro.clone(),
            ),
            (
                "begin transaction isolation level read uncommitted",
                rw.clone(),
            ),
            ("  -- comment\n BEGIN  ", rw),
            ("/* c */ BEGIN WORK READ ONLY", ro),
        ]);
    }

    #[test]
    fn commit_and_rollback_forms() {
        let commit = Kind::Commit { chain: false };
        let rollback = Kind::Rollback { chain: false };
        check(&[
            ("COMMIT", commit.clone()),
            ("commit work", commit.clone()),
            ("COMMIT TRANSACTION", commit.clone()),
            ("END", commit.clone()),
            ("end transaction;", commit.clone()),
            ("COMMIT AND CHAIN", Kind::Commit { chain: true }),
            ("COMMIT WORK AND NO CHAIN", commit.clone()),
            ("end and /* */ chain", Kind::Commit { chain: true }),
            ("ROLLBACK", rollback.clone()),
            ("rollback work", rollback.clone()),
            ("ABORT", rollback.clone()),
            ("abort transaction", rollback.clone()),
            ("ROLLBACK AND CHAIN", Kind::Rollback { chain: true }),
            ("ABORT AND NO CHAIN", rollback),
        ]);
    }

    #[test]
    fn savepoint_forms() {
        check(&[
            ("SAVEPOINT a", Kind::Savepoint),
            ("savepoint \"my point\"", Kind::Savepoint),
            ("RELEASE SAVEPOINT a", Kind::Savepoint),
            ("release a", Kind::Savepoint),
            ("ROLLBACK TO SAVEPOINT a", Kind::Savepoint),
            ("rollback to a", Kind::Savepoint),
            ("ROLLBACK WORK TO SAVEPOINT a", Kind::Savepoint),
            ("ROLLBACK TRANSACTION /* x */ TO a", Kind::Savepoint),
        ]);
    }

    #[test]
    fn set_transaction_forms() {
        check(&[
            (
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                Kind::SetTransaction,
            ),
            ("set transaction read only", Kind::SetTransaction),
            (
                "SET TRANSACTION READ WRITE, NOT DEFERRABLE",
                Kind::SetTransaction,
            ),
            (
                "SET LOCAL TRANSACTION ISOLATION LEVEL READ COMMITTED",
                Kind::SetTransaction,
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                Kind::SetTransaction,
            ),
            (
                "set session characteristics as transaction read only",
                Kind::SetTransaction,
            ),
            (
                "SET SESSION SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                Kind::SetTransaction,
            ),
        ]);
    }

    #[test]
    fn local_maintenance_forms() {
        for sql in [
            "VACUUM",
            "vacuum analyze pgbench_branches",
            "VACUUM (FULL, ANALYZE) t",
            "ANALYZE t",
            "analyse",
            "CHECKPOINT",
            "CLUSTER t USING i",
            "REINDEX TABLE t",
            "reindex table concurrently t",
            "REINDEX (VERBOSE) INDEX CONCURRENTLY i",
            "REINDEX DATABASE d",
            "DISCARD ALL",
            "discard plans",
        ] {
            assert_eq!(classify(sql), Kind::LocalMaintenance, "{sql}");
        }
    }

    #[test]
    fn ddl_forms() {
        for sql in [
            "CREATE TABLE t (id int PRIMARY KEY)",
            "create table pgbench_history(tid int,bid int,aid int,delta int,mtime timestamp,filler char(22))",
            "CREATE UNLOGGED TABLE u (a int)",
            "CREATE TABLE t2 AS SELECT * FROM pg_temp.src",
            "CREATE OR REPLACE VIEW v AS SELECT 1",
            "CREATE UNIQUE INDEX i ON t (a)",
            "CREATE INDEX IF NOT EXISTS i ON t (a)",
            "CREATE USER MAPPING FOR current_user SERVER s",
            "CREATE EXTENSION IF NOT EXISTS pg_trgm",
            "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = public AS 'SELECT 1'",
            "CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END",
            "CREATE RULE r AS ON INSERT TO t DO ALSO INSERT INTO log VALUES (1)",
            "CREATE SCHEMA app",
            "CREATE SCHEMA AUTHORIZATION app",
            "CREATE MATERIALIZED VIEW mv AS SELECT 1",
            "alter table pgbench_branches add primary key (bid)",
            "ALTER TABLE t ENABLE TRIGGER tr",
            "ALTER TABLE t ALTER COLUMN a SET DEFAULT 0",
            "ALTER USER MAPPING FOR u SERVER s OPTIONS (SET password 'x')",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO r",
            "ALTER FUNCTION f() SET work_mem = '64MB'",
            "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            "DROP INDEX i",
            "DROP OWNED BY r",
            "DROP USER MAPPING FOR u SERVER s",
            "DROP SCHEMA app CASCADE",
            "COMMENT ON TABLE t IS 'LISTEN; NOTIFY'",
            "GRANT SELECT ON t TO r",
            "REVOKE ALL ON t FROM PUBLIC",
            "SECURITY LABEL ON TABLE t IS 'x'",
            "IMPORT FOREIGN SCHEMA s FROM SERVER f INTO app",
            "REFRESH MATERIALIZED VIEW CONCURRENTLY mv",
            "REASSIGN OWNED BY a TO b",
            "SELECT * INTO new_table FROM t",
            "select a, b into unlogged table copy_t from t",
            "WITH x AS (SELECT 1 AS a) SELECT a INTO t2 FROM x",
        ] {
            assert_eq!(classify(sql), Kind::Ddl, "{sql}");
        }
    }

    #[test]
    fn truncate_forms() {
        for sql in [
            "TRUNCATE t",
            "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            "TRUNCATE ONLY t RESTART IDENTITY CASCADE",
        ] {
            assert_eq!(classify(sql), Kind::Truncate, "{sql}");
        }
    }

    #[test]
    fn other_forms() {
        for sql in [
            "",
            "   ",
            "-- only a comment",
            "/* only */ /* comments */",
            ";",
            "SELECT 1",
            "(SELECT 1)",
            "select abalance from pgbench_accounts where aid = 42",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
            "INSERT INTO t SELECT * FROM s",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "WITH x AS (SELECT 1) MERGE INTO t USING x ON true WHEN MATCHED THEN DO NOTHING",
            "DELETE FROM t WHERE a = 1",
            "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
            "copy pgbench_accounts from stdin with (freeze on)",
            "SET work_mem = '64MB'",
            "SET search_path TO app, public",
            "SET default_transaction_isolation = 'repeatable read'",
            "SET standard_conforming_strings = on",
            "SET session_replication_role_x = 1",
            "SET SESSION AUTHORIZATION app",
            "SET TIME ZONE 'UTC'",
            "SHOW transaction_isolation",
            "RESET ALL",
            "PREPARE p (int) AS SELECT $1",
            "PREPARE transaction AS SELECT 1",
            "EXECUTE p(1)",
            "DEALLOCATE ALL",
            "DECLARE c CURSOR FOR SELECT 1",
            "FETCH 10 FROM c",
            "MOVE c",
            "CLOSE c",
            "EXPLAIN ANALYZE SELECT 1",
            "DO $$ BEGIN PERFORM 1; END $$",
            "CALL p()",
            "LOCK TABLE t IN EXCLUSIVE MODE",
            "VALUES (1), (2)",
            "TABLE t",
            "CREATE TEMP TABLE tmp (a int)",
            "create local temporary table tmp as select 1",
            "CREATE TEMPORARY VIEW v AS SELECT 1",
            "CREATE TABLE pg_temp.t (a int)",
            "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "SELECT * INTO TEMP t2 FROM t",
            "SELECT * INTO pg_temp.t2 FROM t",
            "START",
        ] {
            assert_eq!(classify(sql), Kind::Other, "{sql:?}");
        }
    }

    #[test]
    fn parse_message_text_with_comments_and_semicolon() {
        check(&[
            ("BEGIN;", Kind::Begin { read_only: false }),
            (
                "/* leading */ COMMIT ; -- trailing",
                Kind::Commit { chain: false },
            ),
            ("-- x\nTRUNCATE t;\n", Kind::Truncate),
        ]);
        // Several statements: refused if any is.
        check_refused(&[("SELECT 1; LISTEN x", "LISTEN")]);
        check(&[("BEGIN; SELECT 1", Kind::Begin { read_only: false })]);
    }

    // ---- refusals ----

    #[test]
    fn notification_refusals() {
        check_refused(&[
            ("LISTEN chan", "LISTEN"),
            ("listen \"Chan\"", "LISTEN"),
            ("UNLISTEN *", "UNLISTEN"),
            ("Notify chan, 'payload'", "NOTIFY"),
            ("SELECT pg_notify('chan', 'x')", "pg_notify"),
            ("select PG_NOTIFY ('chan', 'x')", "pg_notify"),
            ("SELECT pg_catalog.pg_notify('c', 'x')", "pg_notify"),
            ("SELECT \"pg_notify\"('c', 'x')", "pg_notify"),
            (
                "CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY chan",
                "NOTIFY",
            ),
            (
                "/* c */ LISTEN /* d */ x",
                "notifications are delivered by one replica only",
            ),
        ]);
    }

    #[test]
    fn two_phase_refusals() {
        check_refused(&[
            ("PREPARE TRANSACTION 'gid'", "PREPARE TRANSACTION"),
            ("prepare /* x */ transaction 'gid'", "two-phase"),
            ("COMMIT PREPARED 'gid'", "COMMIT PREPARED"),
            ("commit prepared 'gid'", "two-phase"),
            ("ROLLBACK PREPARED 'gid'", "ROLLBACK PREPARED"),
            ("Rollback -- c\n Prepared 'gid'", "two-phase"),
        ]);
    }

    #[test]
    fn serializable_refusals() {
        check_refused(&[
            ("BEGIN ISOLATION LEVEL SERIALIZABLE", "SERIALIZABLE"),
            ("BEGIN /* x */ ISOLATION LEVEL serializable", "SERIALIZABLE"),
            (
                "begin transaction isolation level serializable, read only, deferrable",
                "SERIALIZABLE",
            ),
            (
                "START TRANSACTION ISOLATION -- c\n LEVEL SeRiAlIzAbLe",
                "SERIALIZABLE",
            ),
            (
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "SERIALIZABLE",
            ),
            (
                "SET TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE",
                "SERIALIZABLE",
            ),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "SERIALIZABLE",
            ),
            (
                "SET default_transaction_isolation = 'serializable'",
                "SERIALIZABLE",
            ),
            (
                "set default_transaction_isolation to serializable",
                "SERIALIZABLE",
            ),
            (
                "SET SESSION default_transaction_isolation TO 'SERIALIZABLE'",
                "SERIALIZABLE",
            ),
            (
                "SET LOCAL default_transaction_isolation = \"serializable\"",
                "SERIALIZABLE",
            ),
            ("SET transaction_isolation = 'serializable'", "SERIALIZABLE"),
            (
                "SELECT set_config('default_transaction_isolation', 'serializable', false)",
                "SERIALIZABLE",
            ),
            (
                "SET default_transaction_isolation = 'serializable'",
                "generalized snapshot isolation",
            ),
        ]);
    }

    #[test]
    fn advisory_lock_refusals() {
        check_refused(&[
            ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
            ("select PG_ADVISORY_XACT_LOCK(1, 2)", "advisory"),
            ("SELECT pg_try_advisory_lock(42)", "pg_try_advisory_lock"),
            ("SELECT pg_advisory_unlock_all()", "advisory"),
            ("SELECT pg_catalog.pg_advisory_lock_shared(1)", "advisory"),
            ("SELECT \"pg_advisory_lock\"(1)", "advisory"),
            (
                "UPDATE t SET a = 1 WHERE pg_try_advisory_xact_lock(id)",
                "advisory",
            ),
            ("PREPARE p AS SELECT pg_advisory_lock($1)", "advisory"),
            (
                "SELECT 1 FROM t WHERE pg_advisory_lock /* x */ (1) IS NULL",
                "one replica only",
            ),
        ]);
    }

    #[test]
    fn cluster_wide_refusals() {
        check_refused(&[
            ("CREATE DATABASE d", "CREATE DATABASE"),
            ("alter database d set work_mem = '1MB'", "ALTER DATABASE"),
            ("DROP DATABASE IF EXISTS d", "DROP DATABASE"),
            ("CREATE ROLE r LOGIN", "CREATE ROLE"),
            (
                "ALTER ROLE r SET default_transaction_isolation = 'read committed'",
                "ALTER ROLE",
            ),
            ("DROP ROLE r", "DROP ROLE"),
            ("CREATE USER u PASSWORD 'x'", "CREATE USER"),
            ("alter user u with password 'x'", "ALTER USER"),
            ("DROP USER IF EXISTS u", "DROP USER"),
            ("CREATE GROUP g", "CREATE GROUP"),
            ("ALTER GROUP g ADD USER u", "ALTER GROUP"),
            ("DROP GROUP g", "DROP GROUP"),
            ("CREATE TABLESPACE ts LOCATION '/x'", "CREATE TABLESPACE"),
            ("ALTER TABLESPACE ts RENAME TO ts2", "ALTER TABLESPACE"),
            ("DROP TABLESPACE ts", "DROP TABLESPACE"),
            ("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM"),
            ("alter /* c */ system reset all", "cluster-wide"),
        ]);
    }

    #[test]
    fn concurrently_refusals() {
        check_refused(&[
            (
                "CREATE INDEX CONCURRENTLY i ON t (a)",
                "CREATE INDEX CONCURRENTLY",
            ),
            (
                "create unique index concurrently if not exists i on t (a)",
                "CONCURRENTLY",
            ),
            ("DROP INDEX CONCURRENTLY i", "DROP INDEX CONCURRENTLY"),
            (
                "drop index /* x */ concurrently if exists i",
                "global order",
            ),
        ]);
    }

    #[test]
    fn capture_refusals() {
        check_refused(&[
            ("ALTER TABLE t DISABLE TRIGGER ALL", "DISABLE TRIGGER"),
            ("alter table t disable trigger user", "writeset capture"),
            ("ALTER TABLE ONLY t DISABLE TRIGGER tr", "DISABLE TRIGGER"),
            ("ALTER TABLE t ADD COLUMN b int, ENABLE REPLICA TRIGGER tr", "ENABLE REPLICA TRIGGER"),
            ("ALTER TABLE t ENABLE /* x */ ALWAYS TRIGGER tr", "ENABLE ALWAYS TRIGGER"),
            ("ALTER FOREIGN TABLE f DISABLE TRIGGER ALL", "DISABLE TRIGGER"),
            ("CREATE EVENT TRIGGER e ON ddl_command_start EXECUTE FUNCTION f()", "EVENT TRIGGER"),
            ("ALTER EVENT TRIGGER tashkent_ddl_end DISABLE", "EVENT TRIGGER"),
            ("drop event trigger if exists e", "EVENT TRIGGER"),
            ("SET session_replication_role = replica", "session_replication_role"),
            ("set session session_replication_role to 'replica'", "session_replication_role"),
            ("SET LOCAL session_replication_role = DEFAULT", "session_replication_role"),
            ("SET \"session_replication_role\" = replica", "session_replication_role"),
            ("SELECT set_config('session_replication_role', 'replica', false)", "session_replication_role"),
            (
                "CREATE FUNCTION f() RETURNS void LANGUAGE sql SET session_replication_role = replica AS 'DELETE FROM t'",
                "session_replication_role",
            ),
            ("ALTER FUNCTION f() SET session_replication_role TO replica", "session_replication_role"),
        ]);
    }

    #[test]
    fn tashkent_schema_refusals() {
        check_refused(&[
            ("SELECT * FROM tashkent.applied", "schema tashkent"),
            ("select * from TASHKENT.applied", "schema tashkent"),
            ("SELECT * FROM \"tashkent\".applied", "schema tashkent"),
            (
                "SELECT * FROM tashkent /* x */ . applied",
                "schema tashkent",
            ),
            ("DELETE FROM tashkent.applied", "middleware's own schema"),
            ("CALL tashkent.apply('x')", "schema tashkent"),
            ("SET tashkent.ws = ''", "schema tashkent"),
            (
                "SELECT set_config('tashkent.ws', '', true)",
                "schema tashkent",
            ),
            ("DROP SCHEMA tashkent CASCADE", "schema tashkent"),
            ("drop schema if exists app, tashkent", "schema tashkent"),
            ("ALTER SCHEMA tashkent RENAME TO x", "schema tashkent"),
            ("ALTER TABLE t SET SCHEMA tashkent", "schema tashkent"),
            (
                "GRANT ALL ON ALL TABLES IN SCHEMA tashkent TO r",
                "schema tashkent",
            ),
            (
                "ALTER DEFAULT PRIVILEGES IN SCHEMA tashkent GRANT SELECT ON TABLES TO r",
                "schema tashkent",
            ),
            ("SET search_path TO tashkent, public", "schema tashkent"),
            ("SET search_path = 'public', 'tashkent'", "schema tashkent"),
        ]);
    }

    #[test]
    fn other_refusals() {
        check_refused(&[
            (
                "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
                "SET TRANSACTION SNAPSHOT",
            ),
            ("set transaction snapshot '1'", "snapshot"),
            ("LOAD 'auto_explain'", "LOAD"),
            ("load '$libdir/plugins/x'", "LOAD"),
            ("SET standard_conforming_strings = off", "conforming"),
            ("SET standard_conforming_strings TO false", "conforming"),
            ("set standard_conforming_strings = 'OFF'", "conforming"),
            ("SET standard_conforming_strings = 0", "conforming"),
            (
                "SELECT set_config('standard_conforming_strings', 'off', false)",
                "conforming",
            ),
            (
                "ALTER FUNCTION f() SET standard_conforming_strings = off",
                "conforming",
            ),
        ]);
    }

    #[test]
    fn not_refused() {
        check_not_refused(&[
            "SELECT 'pg_advisory_lock(1)'",
            "SELECT $$pg_advisory_lock(1)$$",
            "SELECT 1 -- pg_advisory_lock(1)",
            "SELECT 1 /* pg_notify( */",
            "SELECT \"tashkentx\".a",
            "SELECT tashkentx.a FROM tashkentx",
            "SELECT tashkent_col FROM t",
            "SELECT t.tashkent FROM t",
            "SELECT 'tashkent.applied'",
            "SELECT \"Tashkent\".a",
            "INSERT INTO t VALUES ('LISTEN')",
            "INSERT INTO t VALUES ('NOTIFY x'), (E'LISTEN \\' y')",
            "-- NOTIFY\nSELECT 1",
            "/* LISTEN x */ SELECT 1",
            "SELECT notify FROM t",
            "SELECT pg_notify FROM t",
            "SELECT 'SERIALIZABLE'",
            "SET application_name = 'serializable'",
            "SELECT my_pg_advisory_lock(1)",
            "COMMENT ON TABLE t IS 'DROP DATABASE x'",
            "SELECT 1 AS serializable",
            "CREATE SCHEMA AUTHORIZATION tashkent",
            "SET search_path = tashkent_app",
            "SELECT current_setting('tashkent.ws')",
            "CREATE INDEX i ON t (concurrently)",
            "REINDEX INDEX CONCURRENTLY i",
            "SELECT e'\\'; LISTEN x; --'",
        ]);
    }

    // ---- splitting ----

    fn split(sql: &str) -> Vec<&str> {
        split_statements(sql)
    }

    #[test]
    fn split_basic() {
        assert_eq!(split("SELECT 1"), ["SELECT 1"]);
        assert_eq!(split("SELECT 1;"), ["SELECT 1"]);
        assert_eq!(split("  SELECT 1 ;  SELECT 2  "), ["SELECT 1", "SELECT 2"]);
        assert_eq!(split(";;; ;\n;"), Vec::<&str>::new());
        assert_eq!(split(""), Vec::<&str>::new());
        assert_eq!(split("SELECT 1; -- done"), ["SELECT 1"]);
        assert_eq!(
            split("SELECT 1; /* a */ /* b */ ; SELECT 2"),
            ["SELECT 1", "SELECT 2"]
        );
        assert_eq!(split("-- lead\nSELECT 1"), ["-- lead\nSELECT 1"]);
        assert_eq!(
            split("SELECT 1 -- trailing; comment\n;"),
            ["SELECT 1 -- trailing; comment"]
        );
        // A non-ASCII space is an identifier character to PostgreSQL: not trimmed.
        assert_eq!(split("\u{a0}SELECT 1"), ["\u{a0}SELECT 1"]);
    }

    #[test]
    fn split_quotes() {
        assert_eq!(
            split("SELECT 'a;b'; SELECT 2"),
            ["SELECT 'a;b'", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT 'it''s;'; SELECT 2"),
            ["SELECT 'it''s;'", "SELECT 2"]
        );
        // standard_conforming_strings: a backslash is literal in '...'.
        assert_eq!(
            split(r"SELECT 'a\'; SELECT 2"),
            [r"SELECT 'a\'", "SELECT 2"]
        );
        // E'...': \' does not end the string, \\ is a backslash.
        assert_eq!(
            split(r"SELECT E'a\'; b'; SELECT 2"),
            [r"SELECT E'a\'; b'", "SELECT 2"]
        );
        assert_eq!(
            split(r"SELECT e'\\'; SELECT 2"),
            [r"SELECT e'\\'", "SELECT 2"]
        );
        assert_eq!(
            split(r"SELECT E'x''; y'; SELECT 2"),
            [r"SELECT E'x''; y'", "SELECT 2"]
        );
        // An identifier ending in e is not an E-string prefix.
        assert_eq!(
            split(r"SELECT type'a\'; SELECT 2"),
            [r"SELECT type'a\'", "SELECT 2"]
        );
        assert_eq!(
            split(r"SELECT U&'\0061;'; SELECT 2"),
            [r"SELECT U&'\0061;'", "SELECT 2"]
        );
        assert_eq!(
            split(r"SELECT B'1;', X'f;', N'n\'; SELECT 2"),
            [r"SELECT B'1;', X'f;', N'n\'", "SELECT 2"]
        );
        assert_eq!(
            split(r#"SELECT "a;""b"; SELECT 2"#),
            [r#"SELECT "a;""b""#, "SELECT 2"]
        );
        assert_eq!(
            split(r#"SELECT U&"a;"; SELECT 2"#),
            [r#"SELECT U&"a;""#, "SELECT 2"]
        );
        assert_eq!(
            split("SELECT 'x'\n'y;'; SELECT 2"),
            ["SELECT 'x'\n'y;'", "SELECT 2"]
        );
    }

    #[test]
    fn split_dollar_quotes() {
        assert_eq!(
            split("SELECT $$a;b$$; SELECT 2"),
            ["SELECT $$a;b$$", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT $t$ $$; $x$ $t$; SELECT 2"),
            ["SELECT $t$ $$; $x$ $t$", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT $_1$;$_1$; SELECT 2"),
            ["SELECT $_1$;$_1$", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT $é$;$é$; SELECT 2"),
            ["SELECT $é$;$é$", "SELECT 2"]
        );
        // $1 is a parameter, not a quote.
        assert_eq!(split("SELECT $1; SELECT $2"), ["SELECT $1", "SELECT $2"]);
        assert_eq!(split("SELECT $1$a; SELECT 2"), ["SELECT $1$a", "SELECT 2"]);
        // A $ inside an identifier does not start a quote.
        assert_eq!(
            split("SELECT a$b$; SELECT $b$"),
            ["SELECT a$b$", "SELECT $b$"]
        );
        assert_eq!(
            split("SELECT a$$; SELECT 2 $$"),
            ["SELECT a$$", "SELECT 2 $$"]
        );
        // A tag cannot start with a digit or hold other characters: lone `$`.
        assert_eq!(
            split("SELECT $a-b$; SELECT 2"),
            ["SELECT $a-b$", "SELECT 2"]
        );
        // A longer delimiter does not close a shorter one.
        assert_eq!(
            split("SELECT $a$ $ab$ ; $a$; SELECT 2"),
            ["SELECT $a$ $ab$ ; $a$", "SELECT 2"]
        );
        assert_eq!(
            split("DO $body$ BEGIN PERFORM 1; END $body$; SELECT 2"),
            ["DO $body$ BEGIN PERFORM 1; END $body$", "SELECT 2"]
        );
    }

    #[test]
    fn split_comments() {
        assert_eq!(
            split("SELECT 1 /* ; */; SELECT 2"),
            ["SELECT 1 /* ; */", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT 1 /* a /* b ; */ c ; */; SELECT 2"),
            ["SELECT 1 /* a /* b ; */ c ; */", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT 1 -- ;\n; SELECT 2"),
            ["SELECT 1 -- ;", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT 1 -- ;\r; SELECT 2"),
            ["SELECT 1 -- ;", "SELECT 2"]
        );
        assert_eq!(split("SELECT 1 --;"), ["SELECT 1 --;"]);
        assert_eq!(
            split("SELECT 1-/*;*/2; SELECT 2"),
            ["SELECT 1-/*;*/2", "SELECT 2"]
        );
        assert_eq!(
            split("SELECT 2 */ 3; SELECT 4"),
            ["SELECT 2 */ 3", "SELECT 4"]
        );
        // Comments in quotes are not comments, quotes in comments are not quotes.
        assert_eq!(split("SELECT '--'; SELECT 2"), ["SELECT '--'", "SELECT 2"]);
        assert_eq!(split("SELECT '/*'; SELECT 2"), ["SELECT '/*'", "SELECT 2"]);
        assert_eq!(
            split("SELECT 1 /* ' */; SELECT 2 -- '\n"),
            ["SELECT 1 /* ' */", "SELECT 2 -- '"]
        );
    }

    #[test]
    fn split_unterminated() {
        assert_eq!(split("SELECT 'abc; SELECT 2"), ["SELECT 'abc; SELECT 2"]);
        assert_eq!(
            split("SELECT E'abc\\'; SELECT 2"),
            ["SELECT E'abc\\'; SELECT 2"]
        );
        assert_eq!(split("SELECT \"abc; SELECT 2"), ["SELECT \"abc; SELECT 2"]);
        assert_eq!(split("SELECT $$abc; SELECT 2"), ["SELECT $$abc; SELECT 2"]);
        assert_eq!(
            split("SELECT 1 /* abc; SELECT 2"),
            ["SELECT 1 /* abc; SELECT 2"]
        );
        assert_eq!(
            split("SELECT 1 /* a /* b */; SELECT 2"),
            ["SELECT 1 /* a /* b */; SELECT 2"]
        );
        // An unterminated comment alone is kept, so PostgreSQL reports it.
        assert_eq!(split("SELECT 1; /* abc"), ["SELECT 1", "/* abc"]);
        assert_eq!(split("SELECT E'\\"), ["SELECT E'\\"]);
        assert_eq!(split("SELECT 'é"), ["SELECT 'é"]);
    }

    #[test]
    fn split_parentheses_and_atomic_bodies() {
        let rule = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))";
        assert_eq!(split(&format!("{rule}; SELECT 2")), [rule, "SELECT 2"]);
        let function = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\n  \
                        SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\n  SELECT (CASE WHEN true THEN 3 END);\nEND";
        assert_eq!(
            split(&format!("{function};\nSELECT f(1);")),
            [function, "SELECT f(1)"]
        );
        let procedure = "create or replace procedure p() language sql begin atomic insert into t values (1); end";
        assert_eq!(
            split(&format!("{procedure}; CALL p()")),
            [procedure, "CALL p()"]
        );
        // BEGIN/END elsewhere are transaction control.
        assert_eq!(
            split("BEGIN; SELECT 1; END; COMMIT"),
            ["BEGIN", "SELECT 1", "END", "COMMIT"]
        );
        assert_eq!(
            split("CREATE TABLE t (a int); BEGIN; SELECT CASE WHEN true THEN 1 END; END"),
            [
                "CREATE TABLE t (a int)",
                "BEGIN",
                "SELECT CASE WHEN true THEN 1 END",
                "END"
            ]
        );
        // A function named begin does not open a body (psql's heuristic would merge these).
        assert_eq!(
            split("CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'; LISTEN x"),
            [
                "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                "LISTEN x"
            ]
        );
        // A stray ')' does not make the depth negative.
        assert_eq!(split("SELECT 1); SELECT 2"), ["SELECT 1)", "SELECT 2"]);
        // An unclosed '(' keeps the rest in one statement (a syntax error for PostgreSQL).
        assert_eq!(split("SELECT (1; SELECT 2"), ["SELECT (1; SELECT 2"]);
    }

    #[test]
    fn split_client_strings() {
        // pgbench's tpcb-like transaction, sent as one simple Query.
        let pgbench = "BEGIN;\nUPDATE pgbench_accounts SET abalance = abalance + -4242 WHERE aid = 17;\n\
                       SELECT abalance FROM pgbench_accounts WHERE aid = 17;\n\
                       UPDATE pgbench_tellers SET tbalance = tbalance + -4242 WHERE tid = 3;\n\
                       UPDATE pgbench_branches SET bbalance = bbalance + -4242 WHERE bid = 1;\n\
                       INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 17, -4242, CURRENT_TIMESTAMP);\n\
                       END;";
        let statements = split(pgbench);
        assert_eq!(statements.len(), 7);
        assert_eq!(classify(statements[0]), Kind::Begin { read_only: false });
        assert!(statements[1..6].iter().all(|s| classify(s) == Kind::Other));
        assert_eq!(classify(statements[6]), Kind::Commit { chain: false });
        // pgbench -i.
        let init = "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers;\
                    create table pgbench_tellers(tid int not null,bid int,tbalance int,filler char(84)) with (fillfactor=100);\
                    truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers";
        let kinds: Vec<Kind> = split(init).into_iter().map(classify).collect();
        assert_eq!(kinds, [Kind::Ddl, Kind::Ddl, Kind::Truncate]);
        // psql's \d t.
        let describe = "SELECT c.oid,\n  n.nspname,\n  c.relname\nFROM pg_catalog.pg_class c\n     \
                        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n\
                        WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default\n  \
                        AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 2, 3;";
        assert_eq!(split(describe), [describe.trim_end_matches(';')]);
        assert_eq!(classify(describe), Kind::Other);
        // psql -c with several statements and comments.
        assert_eq!(
            split("BEGIN; -- start\nINSERT INTO t VALUES ('a;b', $$c;d$$); /* done */ COMMIT;"),
            [
                "BEGIN",
                "-- start\nINSERT INTO t VALUES ('a;b', $$c;d$$)",
                "/* done */ COMMIT"
            ]
        );
    }

    // ---- properties ----

    /// Statements with tricky quoting; none ends in a `--` comment (it would swallow the `;`).
    const POOL: &[&str] = &[
        "SELECT 1",
        "SELECT 'a;b'",
        "SELECT 'it''s; fine'",
        r"SELECT E'it\'s; fine'",
        r"SELECT e'\\'",
        r"SELECT 'back\'",
        r"SELECT U&'d\0061t;a'",
        r"SELECT B'1010', X'1F', N'n;'",
        r#"SELECT "semi;colon""quoted" FROM t"#,
        "SELECT $$a;b$$",
        "SELECT $fn$ $$ ; $fn $fn$",
        "SELECT $1::int, a$b, $2",
        "SELECT 1 /* ; /* nested ; */ still ; */ + 2",
        "SELECT 1 -- ; comment\n + 2",
        "SELECT 'x'\n'y;'",
        "INSERT INTO t VALUES ('LISTEN; NOTIFY')",
        "SELECT 1e5, .5, 1.e3, 1e'\\';'",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END",
        "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))",
        "CREATE FUNCTION g() RETURNS int AS 'SELECT 1; SELECT 2' LANGUAGE sql",
        "DO $body$ BEGIN PERFORM 1; END $body$",
        "BEGIN",
        "END",
        "CREATE FUNCTION begin() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "SELECT 'ünïcødé;' AS \"ß;\"",
    ];

    /// Pieces that hold no statement.
    const FILLER: &[&str] = &[
        "",
        " ",
        "\n\t",
        "/* only ; comment */",
        "-- line ; comment\n",
    ];

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(sql in any::<String>()) {
            check_split_invariants(&sql);
            let _ = classify(&sql);
        }

        #[test]
        fn never_panics_on_sql_like_text(sql in r#"([a-zA-Z_$'"\\;/*\-\n ()&.,0-9é]|begin|atomic|end|case|create|function|E'|U&|\$\$|\$a\$|--|/\*|\*/){0,40}"#) {
            check_split_invariants(&sql);
            let _ = classify(&sql);
        }

        #[test]
        fn joined_statements_split_back(picks in prop::collection::vec(0..POOL.len(), 0..8)) {
            let stmts: Vec<&str> = picks.iter().map(|&i| POOL[i]).collect();
            let sql = stmts.join(";");
            prop_assert_eq!(split_statements(&sql), stmts);
        }

        #[test]
        fn filler_and_padding_are_dropped(
            picks in prop::collection::vec((0..POOL.len() + FILLER.len(), "[ \t\n]{0,2}", "[ \t\n]{0,2}"), 0..10),
            trailing_semicolon in any::<bool>(),
        ) {
            let mut want = Vec::new();
            let mut pieces = Vec::new();
            for (i, before, after) in &picks {
                match POOL.get(*i) {
                    Some(stmt) => {
                        want.push(*stmt);
                        pieces.push(format!("{before}{stmt}{after}"));
                    }
                    None => pieces.push(FILLER[i - POOL.len()].to_string()),
                }
            }
            let mut sql = pieces.join(";");
            if trailing_semicolon {
                sql.push(';');
            }
            prop_assert_eq!(split_statements(&sql), want);
        }
    }

    /// Every statement is a non-empty, trimmed slice of the input, in order, not overlapping.
    fn check_split_invariants(sql: &str) {
        let mut from = 0;
        for stmt in split_statements(sql) {
            assert!(!stmt.is_empty());
            assert_eq!(stmt, trim_space(stmt));
            let at = stmt.as_ptr() as usize - sql.as_ptr() as usize;
            assert!(at >= from && at + stmt.len() <= sql.len());
            from = at + stmt.len();
        }
    }
}
