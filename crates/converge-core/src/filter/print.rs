//! Printing a filter back to text, in a canonical form that parses to the same tree.
//!
//! Parentheses are added exactly where the grammar needs them to keep the tree's shape: around
//! an `AND`/`OR` group nested in another group, and around anything but a single condition
//! after `NOT`.

use std::fmt::{self, Display, Formatter, Write};

use super::ast::Expr;

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Has { key } => write!(f, "attributes:{}", Key(key)),
            Expr::Equals { key, value } => {
                write!(f, "attributes.{} = {}", Key(key), Quoted(value))
            }
            Expr::NotEquals { key, value } => {
                write!(f, "attributes.{} != {}", Key(key), Quoted(value))
            }
            Expr::HasPrefix { key, prefix } => {
                write!(f, "hasPrefix(attributes.{}, {})", Key(key), Quoted(prefix))
            }
            Expr::Not(inner) if inner.is_restriction() => write!(f, "NOT {inner}"),
            Expr::Not(inner) => write!(f, "NOT ({inner})"),
            Expr::And(operands) => write_group(f, operands, "AND"),
            Expr::Or(operands) => write_group(f, operands, "OR"),
        }
    }
}

/// Writes `a OP b OP …`, parenthesising operands that are groups themselves.
fn write_group(f: &mut Formatter<'_>, operands: &[Expr], operator: &str) -> fmt::Result {
    debug_assert!(operands.len() >= 2, "{operator} needs two operands");
    for (index, operand) in operands.iter().enumerate() {
        if index > 0 {
            write!(f, " {operator} ")?;
        }
        match operand {
            Expr::And(_) | Expr::Or(_) => write!(f, "({operand})")?,
            _ => write!(f, "{operand}")?,
        }
    }
    Ok(())
}

/// Whether a key can be written bare, without quotes; must agree with the lexer's words.
pub(crate) fn is_bare_key(key: &str) -> bool {
    let mut chars = key.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphanumeric() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// An attribute key, bare when the grammar allows it and quoted otherwise.
struct Key<'a>(&'a str);

impl Display for Key<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if is_bare_key(self.0) {
            f.write_str(self.0)
        } else {
            Quoted(self.0).fmt(f)
        }
    }
}

/// A double-quoted string literal with the escapes the lexer understands.
struct Quoted<'a>(&'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}
