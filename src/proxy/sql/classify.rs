//! The classifier: what kind of statement a token sequence is, and what
//! is refused (0A000) and why.

use super::scan::*;
use super::*;

/// True when the statement is a COPY (it may switch the connection into
/// copy mode, so nothing may be pipelined behind it).
pub fn is_copy(stmt: &str) -> bool {
    let toks: Vec<Token> = Scanner::new(stmt).collect();
    Cursor::new(&toks).next_word().as_deref() == Some("copy")
}

/// True when the statement drops prepared statements of the session
/// (`DISCARD ALL`, `DEALLOCATE`), the proxy's own among them.
pub fn drops_prepared(stmt: &str) -> bool {
    let toks: Vec<Token> = Scanner::new(stmt).collect();
    let mut c = Cursor::new(&toks);
    match c.next_word().as_deref() {
        Some("deallocate") => true,
        Some("discard") => c.next_word().as_deref() == Some("all"),
        _ => false,
    }
}

pub(super) fn classify_one(stmt: &str) -> Kind {
    let toks: Vec<Token> = Scanner::new(stmt).collect();
    if let Some(show) = proxy_show(&toks) {
        return show;
    }
    if let Some(wait) = proxy_wait_for(&toks) {
        return wait;
    }
    if let Some(set) = proxy_set_statement(&toks) {
        return set;
    }
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
        "savepoint" | "release" => Kind::Savepoint { rollback_to: false },
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

/// `SET [SESSION | LOCAL] tashkent.<name> ...` or `RESET tashkent.<name>`.
fn proxy_set_statement(toks: &[Token]) -> Option<Kind> {
    let mut c = Cursor::new(toks);
    match c.next_word()?.as_str() {
        "set" => {
            let local = c.eat_any(&["session", "local"]) == Some("local");
            proxy_setting(&mut c, local, false)
        }
        "reset" => proxy_setting(&mut c, false, true),
        _ => None,
    }
}

/// `tashkent.<name> {TO | =} value` after SET, or `tashkent.<name>` after
/// RESET (`reset`): a setting of the proxy's own.
fn proxy_setting(c: &mut Cursor, local: bool, reset: bool) -> Option<Kind> {
    let toks = c.rest();
    let name = match toks {
        [schema, dot, name, ..]
            if schema.ident().as_deref() == Some("tashkent") && dot.is_punct(b'.') =>
        {
            name.ident()?.into_owned()
        }
        _ => return None,
    };
    // Only the proxy's own settings: the capture's (tashkent.internal,
    // tashkent.max_writeset_bytes, ...) stay refused.
    if !matches!(
        name.as_str(),
        "consistency" | "consistency_timeout" | "lock_conflicts"
    ) {
        return None;
    }
    let rest = &toks[3..];
    let rest = match rest.last() {
        Some(t) if t.is_punct(b';') => &rest[..rest.len() - 1],
        _ => rest,
    };
    let value = match (reset, rest) {
        (true, []) => None,
        (false, [to, v]) if to.is_word("to") || to.is_punct(b'=') => {
            if v.is_word("default") {
                None
            } else {
                Some(v.setting_value()?)
            }
        }
        _ => return None,
    };
    Some(Kind::ProxySet { name, value, local })
}

/// `SELECT tashkent.wait_for(<version>)`: answered by the proxy itself.
fn proxy_wait_for(toks: &[Token]) -> Option<Kind> {
    let toks = match toks.last() {
        Some(t) if t.is_punct(b';') => &toks[..toks.len() - 1],
        _ => toks,
    };
    match toks {
        [select, schema, dot, name, open, version, close]
            if select.is_word("select")
                && schema.ident().as_deref() == Some("tashkent")
                && dot.is_punct(b'.')
                && name.ident().as_deref() == Some("wait_for")
                && open.is_punct(b'(')
                && close.is_punct(b')') =>
        {
            Some(Kind::ProxyWaitFor {
                version: version.setting_value()?.parse().ok()?,
            })
        }
        _ => None,
    }
}

/// `SHOW tashkent.<name>`: answered by the proxy itself.
fn proxy_show(toks: &[Token]) -> Option<Kind> {
    match toks {
        [show, schema, dot, name]
            if show.ident().as_deref() == Some("show")
                && schema.ident().as_deref() == Some("tashkent")
                && dot.is_punct(b'.') =>
        {
            Some(Kind::ProxyShow {
                name: name.ident()?.into_owned(),
            })
        }
        _ => None,
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
        return Kind::Savepoint { rollback_to: true };
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
        if called && LARGE_OBJECT_FUNCTIONS.contains(&&*name) {
            return Some(large_object_refused(&format!("{}()", tok.text)));
        }
        if name == "large" && next.and_then(Token::ident).as_deref() == Some("object") {
            return Some(large_object_refused("LARGE OBJECT"));
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

/// PostgreSQL's large-object functions: large objects live in
/// `pg_largeobject`, a system catalog that capture cannot see.
const LARGE_OBJECT_FUNCTIONS: [&str; 18] = [
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_put",
    "lo_get",
    "lo_from_bytea",
    "lo_open",
    "lo_close",
    "lo_truncate",
    "lo_truncate64",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    "lowrite",
    "loread",
];

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

fn large_object_refused(what: &str) -> Kind {
    refused(
        format!("{what} is not supported: large objects are not replicated by tashkent"),
        "Store the data in a bytea column (any size up to 1 GB); it is replicated like any other value.",
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
        if matches!(object, "role" | "user" | "group") {
            "Roles: `tashkent admin create-role|set-password|drop-role` applies it to every \
             replica at once. Otherwise run it on every PostgreSQL server directly."
        } else {
            "Run it on every PostgreSQL server directly, not through the tashkent proxy."
        },
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
