//! Roles alike on every replica (`tashkent admin`).
//!
//! Roles are cluster-wide objects of each PostgreSQL server, outside any
//! database, so no replicated transaction can carry them and the proxy
//! refuses role statements. Authentication is relayed to the replica a
//! client connects through, so every replica must know every role with
//! the same password: this applies one statement to all of them at once.
//! The password travels only as one SCRAM-SHA-256 verifier computed here
//! (one salt), so every replica stores the identical secret and never
//! sees the password itself.

use crate::error::{Error, Result};
use crate::ops::pg::connect;
use crate::ops::targets::Target;

/// A role to create.
#[derive(Debug, Clone, Default)]
pub struct RoleSpec {
    pub name: String,
    /// None: a role without a password (it cannot log in by password).
    pub password: Option<String>,
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
}

/// One change to the roles of every replica.
#[derive(Debug, Clone)]
pub enum RoleChange {
    Create(RoleSpec),
    SetPassword { name: String, password: String },
    Drop { name: String },
}

impl RoleChange {
    /// The statement every replica runs (with the password as a SCRAM
    /// verifier).
    pub fn sql(&self) -> String {
        match self {
            RoleChange::Create(r) => {
                let mut sql = format!("CREATE ROLE {}", ident(&r.name));
                for (on, yes, no) in [
                    (r.login, "LOGIN", "NOLOGIN"),
                    (r.superuser, "SUPERUSER", "NOSUPERUSER"),
                    (r.createdb, "CREATEDB", "NOCREATEDB"),
                    (r.createrole, "CREATEROLE", "NOCREATEROLE"),
                ] {
                    sql.push(' ');
                    sql.push_str(if on { yes } else { no });
                }
                if let Some(p) = &r.password {
                    sql.push_str(&format!(" PASSWORD {}", literal(&verifier(p))));
                }
                sql
            }
            RoleChange::SetPassword { name, password } => format!(
                "ALTER ROLE {} PASSWORD {}",
                ident(name),
                literal(&verifier(password))
            ),
            RoleChange::Drop { name } => format!("DROP ROLE {}", ident(name)),
        }
    }
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub replicas: Vec<String>,
}

/// Applies `change` to every replica of `targets`, all or none: the
/// statement runs in an open transaction on each, and only when it
/// succeeded on all of them do they commit. (A replica that fails between
/// the others' COMMITs is named in the error; rerun after fixing it.)
pub async fn apply(targets: &[Target], change: &RoleChange) -> Result<Applied> {
    if targets.is_empty() {
        return Err(Error::Config(
            "no replica to apply the role change to".into(),
        ));
    }
    let sql = change.sql();
    let mut sessions = Vec::new();
    for t in targets {
        let client = connect(&t.conninfo).await?;
        sessions.push((t.name.clone(), client));
    }
    let mut failed = None;
    for (name, client) in &sessions {
        let ran = client.batch_execute(&format!("BEGIN; {sql}")).await;
        if let Err(e) = ran {
            failed = Some(format!("{name}: {}", pg_message(&e)));
            break;
        }
    }
    if let Some(why) = failed {
        for (_, client) in &sessions {
            let _ = client.batch_execute("ROLLBACK").await;
        }
        return Err(Error::Config(format!(
            "nothing changed on any replica: {why}"
        )));
    }
    let mut done = Vec::new();
    for (name, client) in &sessions {
        if let Err(e) = client.batch_execute("COMMIT").await {
            return Err(Error::Config(format!(
                "committed on {} but not on {name}: {}",
                if done.is_empty() {
                    "none".to_string()
                } else {
                    done.join(", ")
                },
                pg_message(&e)
            )));
        }
        done.push(name.clone());
    }
    Ok(Applied { replicas: done })
}

/// The server's own message, when there is one.
fn pg_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} ({})", d.message(), d.code().code()))
        .unwrap_or_else(|| e.to_string())
}

fn verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_quote_names_and_carry_only_a_verifier() {
        let sql = RoleChange::Create(RoleSpec {
            name: "app\"user".into(),
            password: Some("s3cret'".into()),
            login: true,
            ..RoleSpec::default()
        })
        .sql();
        assert!(
            sql.starts_with(
                "CREATE ROLE \"app\"\"user\" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD 'SCRAM-SHA-256$4096:"
            ),
            "{sql}"
        );
        assert!(!sql.contains("s3cret"), "{sql}");
        assert_eq!(
            RoleChange::Drop { name: "x".into() }.sql(),
            "DROP ROLE \"x\""
        );
    }
}
