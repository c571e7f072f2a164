//! The syntax tree of a parsed filter.
//!
//! `AND` and `OR` are n-ary rather than binary: a flat `a AND b AND c` is one node, while a
//! parenthesised group stays a node of its own. That keeps the tree a faithful picture of the
//! text, so that printing and re-parsing gives back the very same tree.

/// One node of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    /// `attributes:KEY`: the attribute is present.
    Has {
        /// The attribute key.
        key: String,
    },
    /// `attributes.KEY = "value"`: present with exactly this value.
    Equals {
        /// The attribute key.
        key: String,
        /// The value it must have.
        value: String,
    },
    /// `attributes.KEY != "value"`: absent, or present with another value.
    NotEquals {
        /// The attribute key.
        key: String,
        /// The value it must not have.
        value: String,
    },
    /// `hasPrefix(attributes.KEY, "prefix")`: present, with a value starting with the prefix.
    HasPrefix {
        /// The attribute key.
        key: String,
        /// The prefix the value must start with.
        prefix: String,
    },
    /// `NOT e` or `-e`.
    Not(Box<Expr>),
    /// `a AND b AND …`; always at least two operands.
    And(Vec<Expr>),
    /// `a OR b OR …`; always at least two operands.
    Or(Vec<Expr>),
}

impl Expr {
    /// Whether the node is a single condition on an attribute (a leaf of the tree). Leaves need
    /// no parentheses when negated or combined.
    pub(crate) fn is_restriction(&self) -> bool {
        matches!(
            self,
            Expr::Has { .. }
                | Expr::Equals { .. }
                | Expr::NotEquals { .. }
                | Expr::HasPrefix { .. }
        )
    }
}
