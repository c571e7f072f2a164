//! Evaluating a filter against a message's attributes.

use crate::message::Attributes;

use super::ast::Expr;

impl Expr {
    /// Whether attributes satisfy this node.
    ///
    /// A missing attribute fails `=` and `hasPrefix` and satisfies `!=`: `attributes.k != "v"`
    /// is exactly `NOT attributes.k = "v"`, as in Pub/Sub.
    pub(crate) fn matches(&self, attributes: &Attributes) -> bool {
        match self {
            Expr::Has { key } => attributes.contains_key(key),
            Expr::Equals { key, value } => attributes.get(key) == Some(value),
            Expr::NotEquals { key, value } => attributes.get(key) != Some(value),
            Expr::HasPrefix { key, prefix } => attributes
                .get(key)
                .is_some_and(|actual| actual.starts_with(prefix.as_str())),
            Expr::Not(inner) => !inner.matches(attributes),
            Expr::And(operands) => {
                debug_assert!(operands.len() >= 2, "AND needs two operands");
                operands.iter().all(|operand| operand.matches(attributes))
            }
            Expr::Or(operands) => {
                debug_assert!(operands.len() >= 2, "OR needs two operands");
                operands.iter().any(|operand| operand.matches(attributes))
            }
        }
    }
}
