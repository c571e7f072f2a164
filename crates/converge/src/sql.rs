//! What the SQL-backed parts of the SDK (the outbox, the idempotency store) share: table names
//! that are safe to splice into SQL, and recognising a missing table in both dialects.

/// The longest table name (each part), leaving room for the suffixes of index names within
/// PostgreSQL's 63-byte identifiers.
const MAX_NAME_PART: usize = 48;

/// A table name split into its optional schema and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableName {
    /// As given: `name` or `schema.name`.
    pub(crate) qualified: String,
    /// The schema, if qualified.
    pub(crate) schema: Option<String>,
    /// The table itself.
    pub(crate) name: String,
}

/// Parses `name` or `schema.name`. `None` unless each part is a lowercase identifier: the name
/// is spliced into SQL, so only names that need no quoting are accepted.
pub(crate) fn table_name(table: &str) -> Option<TableName> {
    let (schema, name) = match table.split_once('.') {
        Some((schema, name)) => (Some(schema), name),
        None => (None, table),
    };
    if !schema.is_none_or(is_identifier) || !is_identifier(name) {
        return None;
    }
    Some(TableName {
        qualified: table.to_owned(),
        schema: schema.map(str::to_owned),
        name: name.to_owned(),
    })
}

/// Whether `part` is a lowercase SQL identifier that needs no quoting.
fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    part.len() <= MAX_NAME_PART
        && (first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `error` says the table does not exist (PostgreSQL `42P01`, SQLite "no such table"):
/// a configuration mistake that retrying does not fix.
pub(crate) fn is_missing_table(error: &sqlx::Error) -> bool {
    error.as_database_error().is_some_and(|db| {
        db.code().as_deref() == Some("42P01") || db.message().contains("no such table")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_lowercase_identifiers_are_table_names() {
        let ok = table_name("app.converge_outbox").unwrap();
        assert_eq!(ok.schema.as_deref(), Some("app"));
        assert_eq!(ok.name, "converge_outbox");
        assert!(table_name("_t1").is_some());
        for bad in [
            "",
            "Outbox",
            "a-b",
            "1abc",
            "a.b.c",
            "x;drop",
            "a.",
            ".a",
            &"x".repeat(49),
        ] {
            assert!(table_name(bad).is_none(), "{bad:?}");
        }
    }
}
