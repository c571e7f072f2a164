//! Recursive-descent parser for the filter grammar.
//!
//! ```text
//! filter      = expression END
//! expression  = term { AND term } | term { OR term }     (no mixing without parentheses)
//! term        = "NOT" WS simple | "-" simple | simple     (one negation per term)
//! simple      = "(" expression ")" | restriction
//! restriction = "attributes" ":" key
//!             | "attributes." key ( "=" | "!=" ) string
//!             | "hasPrefix(" "attributes." key "," string ")"
//! key         = word | string
//! ```
//!
//! Every error names what was expected at the offending token's byte position.

use super::FilterError;
use super::ast::Expr;
use super::lexer::{Token, TokenKind, tokenize};

/// What may start a condition; used in error messages.
const CONDITION: &str = "a condition (attributes:KEY, attributes.KEY = \"value\", \
                         hasPrefix(attributes.KEY, \"prefix\"), NOT, '-' or '(')";

/// Parses a whole filter text (without the length limit, which the caller enforces).
pub(crate) fn parse(src: &str) -> Result<Expr, FilterError> {
    let tokens = tokenize(src);
    let mut parser = Parser { tokens, index: 0 };
    if parser.peek().kind == TokenKind::End {
        return Err(FilterError::new(
            parser.peek().start,
            format!("the filter is empty: expected {CONDITION}"),
        ));
    }
    let expr = parser.expression(None)?;
    match parser.peek().kind {
        TokenKind::End => Ok(expr),
        TokenKind::RParen => parser.fail("unexpected ')' without a matching '('"),
        _ => parser.fail("expected AND, OR or the end of the filter"),
    }
}

/// A boolean operator joining terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Junction {
    And,
    Or,
}

impl Junction {
    fn keyword(self) -> &'static str {
        match self {
            Junction::And => "AND",
            Junction::Or => "OR",
        }
    }

    fn build(self, operands: Vec<Expr>) -> Expr {
        debug_assert!(operands.len() >= 2, "a junction joins at least two terms");
        match self {
            Junction::And => Expr::And(operands),
            Junction::Or => Expr::Or(operands),
        }
    }
}

/// The parser state: the tokens and the index of the next one.
struct Parser {
    tokens: Vec<Token>,
    index: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        debug_assert!(self.index < self.tokens.len(), "read past the End token");
        &self.tokens[self.index]
    }

    /// Consumes the next token (never past the last one).
    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if self.index + 1 < self.tokens.len() {
            self.index += 1;
        }
        token
    }

    /// Fails at the next token; a token that did not lex reports its own error instead, since
    /// it is the first thing wrong in the text.
    fn fail<T>(&self, message: impl Into<String>) -> Result<T, FilterError> {
        let next = self.peek();
        if let TokenKind::Invalid(error) = &next.kind {
            return Err(error.clone());
        }
        Err(FilterError::new(next.start, message))
    }

    /// `expression`; `after` names what came before it, for error messages.
    fn expression(&mut self, after: Option<&str>) -> Result<Expr, FilterError> {
        let first = self.term(after)?;
        let Some(junction) = self.peek_junction()? else {
            return Ok(first);
        };
        let mut operands = vec![first];
        while let Some(next) = self.peek_junction()? {
            if next != junction {
                return self.fail(format!(
                    "{} cannot follow {} without parentheses: write (a {} b) {} c",
                    next.keyword(),
                    junction.keyword(),
                    junction.keyword(),
                    next.keyword()
                ));
            }
            let keyword = self.advance();
            if !keyword.space_before {
                return Err(FilterError::new(
                    keyword.start,
                    format!("expected whitespace before {}", junction.keyword()),
                ));
            }
            if !self.peek().space_before && self.peek().kind != TokenKind::End {
                return self.fail(format!("expected whitespace after {}", junction.keyword()));
            }
            operands.push(self.term(Some(junction.keyword()))?);
        }
        Ok(junction.build(operands))
    }

    /// Whether the next token is `AND` or `OR`; rejects their lower-case spellings.
    fn peek_junction(&self) -> Result<Option<Junction>, FilterError> {
        let TokenKind::Word(word) = &self.peek().kind else {
            return Ok(None);
        };
        match word.as_str() {
            "AND" => Ok(Some(Junction::And)),
            "OR" => Ok(Some(Junction::Or)),
            w if w.eq_ignore_ascii_case("and") => {
                self.fail("operators must be upper case: expected AND")
            }
            w if w.eq_ignore_ascii_case("or") => {
                self.fail("operators must be upper case: expected OR")
            }
            _ => Ok(None),
        }
    }

    /// `term`: an optionally negated `simple`.
    fn term(&mut self, after: Option<&str>) -> Result<Expr, FilterError> {
        let next = self.peek();
        if next.is_word("NOT") {
            self.advance();
            let operand = self.peek();
            if operand.kind != TokenKind::End && !operand.space_before {
                return self.fail("expected whitespace after NOT");
            }
            return Ok(Expr::Not(Box::new(self.simple(Some("NOT"))?)));
        }
        if next.kind == TokenKind::Minus {
            self.advance();
            if self.peek().space_before {
                return self.fail(format!(
                    "expected {CONDITION} directly after '-', without a space"
                ));
            }
            return Ok(Expr::Not(Box::new(self.simple(Some("'-'"))?)));
        }
        self.simple(after)
    }

    /// `simple`: a parenthesised expression or a single restriction.
    fn simple(&mut self, after: Option<&str>) -> Result<Expr, FilterError> {
        let expected = match after {
            Some(after) => format!("expected {CONDITION} after {after}"),
            None => format!("expected {CONDITION}"),
        };
        let next = self.peek().clone();
        match &next.kind {
            TokenKind::LParen => {
                self.advance();
                let inner = self.expression(Some("'('"))?;
                self.close_paren(next.start)?;
                Ok(inner)
            }
            TokenKind::Word(w) if w == "attributes" => self.restriction(),
            TokenKind::Word(w) if w == "hasPrefix" => self.has_prefix(),
            TokenKind::Word(w) if w == "NOT" => {
                self.fail("a condition takes one negation: write NOT (NOT ...)")
            }
            TokenKind::Minus if after.is_some_and(|a| a == "NOT" || a == "'-'") => {
                self.fail("a condition takes one negation: write NOT (NOT ...)")
            }
            TokenKind::Word(w) if w.eq_ignore_ascii_case("not") => {
                self.fail("operators must be upper case: expected NOT")
            }
            TokenKind::Word(w) if self.is_call() => self.fail(format!(
                "unknown function '{w}': hasPrefix is the only function"
            )),
            TokenKind::Str(_) => self.fail(format!(
                "{expected}; a condition starts with the attribute, e.g. attributes.KEY = \"value\""
            )),
            _ => self.fail(expected),
        }
    }

    /// Whether the next token is a word directly followed by `(`.
    fn is_call(&self) -> bool {
        self.tokens
            .get(self.index + 1)
            .is_some_and(|t| t.kind == TokenKind::LParen && !t.space_before)
    }

    /// Consumes the `)` closing the `(` at `open`.
    fn close_paren(&mut self, open: usize) -> Result<(), FilterError> {
        match self.peek().kind {
            TokenKind::RParen => {
                self.advance();
                Ok(())
            }
            TokenKind::End => {
                self.fail(format!("expected ')' to close the '(' at position {open}"))
            }
            _ => self.fail("expected AND, OR or ')'"),
        }
    }

    /// A restriction starting with `attributes`: `attributes:KEY` or `attributes.KEY op "v"`.
    fn restriction(&mut self) -> Result<Expr, FilterError> {
        self.advance();
        match self.peek().kind {
            TokenKind::Colon => {
                self.advance();
                let key = self.key("':'")?;
                Ok(Expr::Has { key })
            }
            TokenKind::Dot => {
                let key = self.member_key()?;
                let operator = self.peek().kind.clone();
                let op = match operator {
                    TokenKind::Equals => "'='",
                    TokenKind::NotEquals => "'!='",
                    TokenKind::Colon => {
                        return self.fail(
                            "expected '=' or '!=' after the attribute key; test for a key with \
                             attributes:KEY",
                        );
                    }
                    _ => return self.fail("expected '=' or '!=' after the attribute key"),
                };
                self.advance();
                let value = self.string(&format!("expected a string after {op}"))?;
                Ok(match operator {
                    TokenKind::Equals => Expr::Equals { key, value },
                    _ => Expr::NotEquals { key, value },
                })
            }
            _ => self.fail("expected '.' or ':' after attributes"),
        }
    }

    /// `.KEY` right after `attributes`, written without whitespace.
    fn member_key(&mut self) -> Result<String, FilterError> {
        if self.peek().kind != TokenKind::Dot {
            return self.fail("expected '.' after attributes");
        }
        if self.peek().space_before {
            return self.fail("unexpected whitespace before '.'");
        }
        self.advance();
        if self.peek().space_before {
            return self.fail("unexpected whitespace after '.'");
        }
        let key = self.key("'.'")?;
        if self.peek().kind == TokenKind::Dot {
            return self.fail("attributes have no nested fields: quote keys that contain '.'");
        }
        Ok(key)
    }

    /// An attribute key: a bare word or a string literal.
    fn key(&mut self, after: &str) -> Result<String, FilterError> {
        let key = match &self.peek().kind {
            TokenKind::Word(word) => word.clone(),
            TokenKind::Str(text) => text.clone(),
            TokenKind::Minus => {
                return self.fail(format!(
                    "expected an attribute key after {after}; quote keys that start with '-'"
                ));
            }
            _ => return self.fail(format!("expected an attribute key after {after}")),
        };
        self.advance();
        Ok(key)
    }

    /// A string literal, or the given error.
    fn string(&mut self, expected: &str) -> Result<String, FilterError> {
        let TokenKind::Str(text) = &self.peek().kind else {
            return self.fail(expected);
        };
        let text = text.clone();
        self.advance();
        Ok(text)
    }

    /// `hasPrefix(attributes.KEY, "prefix")`.
    fn has_prefix(&mut self) -> Result<Expr, FilterError> {
        self.advance();
        if self.peek().kind != TokenKind::LParen {
            return self.fail("expected '(' after hasPrefix");
        }
        if self.peek().space_before {
            return self.fail("unexpected whitespace between hasPrefix and '('");
        }
        self.advance();
        if !self.peek().is_word("attributes") {
            return self.fail("expected attributes.KEY as the first argument of hasPrefix");
        }
        self.advance();
        let key = self.member_key()?;
        if self.peek().kind != TokenKind::Comma {
            return self.fail("expected ',' after the first argument of hasPrefix");
        }
        self.advance();
        let prefix = self.string("expected a string as the second argument of hasPrefix")?;
        if self.peek().kind != TokenKind::RParen {
            return self.fail("expected ')' after the second argument of hasPrefix");
        }
        self.advance();
        Ok(Expr::HasPrefix { key, prefix })
    }
}
