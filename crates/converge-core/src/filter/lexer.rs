//! Splitting filter text into tokens.
//!
//! Whitespace is not a token, but every token records whether whitespace came before it: the
//! grammar cares in a few places (`NOT` must be followed by whitespace, `-` must not, `AND` and
//! `OR` need it on both sides, `attributes.KEY` is written without any).

use super::FilterError;

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `,`
    Comma,
    /// `.`
    Dot,
    /// `:`
    Colon,
    /// `=`
    Equals,
    /// `!=`
    NotEquals,
    /// `-` (negation)
    Minus,
    /// A run of ASCII letters, digits, `_` and `-` (not starting with `-`): keywords, the
    /// `attributes` identifier, function names and bare keys alike; the parser tells them apart.
    Word(String),
    /// A string literal, already unescaped.
    Str(String),
    /// Text that is not a token. Lexing stops here; the parser reports this error when it gets
    /// this far, so that an earlier syntax error is reported first, as a reader would expect.
    Invalid(FilterError),
    /// The end of the text.
    End,
}

/// A token and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    /// What it is.
    pub(crate) kind: TokenKind,
    /// Byte offset of its first character.
    pub(crate) start: usize,
    /// Whether whitespace comes right before it.
    pub(crate) space_before: bool,
}

impl Token {
    /// Whether the token is this exact word (keywords are case-sensitive).
    pub(crate) fn is_word(&self, word: &str) -> bool {
        matches!(&self.kind, TokenKind::Word(w) if w == word)
    }
}

/// Splits `src` into tokens, ending with one [`TokenKind::End`] or [`TokenKind::Invalid`].
pub(crate) fn tokenize(src: &str) -> Vec<Token> {
    let mut lexer = Lexer { src, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        let space_before = lexer.skip_whitespace();
        let start = lexer.pos;
        let (kind, last) = match lexer.next_token(start) {
            Ok(TokenKind::End) => (TokenKind::End, true),
            Ok(kind) => (kind, false),
            Err(error) => (TokenKind::Invalid(error), true),
        };
        tokens.push(Token {
            kind,
            start,
            space_before,
        });
        if last {
            return tokens;
        }
    }
}

/// Whether `c` may start a word.
fn starts_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `c` may continue a word.
fn continues_word(c: char) -> bool {
    starts_word(c) || c == '-'
}

/// A cursor over the text.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Skips whitespace; tells whether there was any.
    fn skip_whitespace(&mut self) -> bool {
        let before = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
        self.pos > before
    }

    /// Reads the token starting at `start` (after any whitespace).
    fn next_token(&mut self, start: usize) -> Result<TokenKind, FilterError> {
        let Some(c) = self.bump() else {
            return Ok(TokenKind::End);
        };
        let kind = match c {
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            ',' => TokenKind::Comma,
            '.' => TokenKind::Dot,
            ':' => TokenKind::Colon,
            '=' => TokenKind::Equals,
            '-' => TokenKind::Minus,
            '!' if self.peek() == Some('=') => {
                self.pos += 1;
                TokenKind::NotEquals
            }
            '!' => {
                return Err(FilterError::new(
                    start,
                    "expected '=' after '!'; negate with NOT or '-'",
                ));
            }
            '"' | '\'' => TokenKind::Str(self.string(c, start)?),
            c if starts_word(c) => TokenKind::Word(self.word(start)),
            c => return Err(unexpected_character(c, start)),
        };
        Ok(kind)
    }

    /// Reads the rest of a word whose first character was consumed.
    fn word(&mut self, start: usize) -> String {
        while self.peek().is_some_and(continues_word) {
            self.pos += 1;
        }
        self.src[start..self.pos].to_owned()
    }

    /// Reads the rest of a string literal whose opening quote was consumed.
    fn string(&mut self, quote: char, start: usize) -> Result<String, FilterError> {
        let mut out = String::new();
        loop {
            let at = self.pos;
            let Some(c) = self.bump() else {
                return Err(FilterError::new(
                    start,
                    format!("unterminated string: expected a closing {quote}"),
                ));
            };
            match c {
                c if c == quote => return Ok(out),
                '\\' => out.push(self.escape(at, quote, start)?),
                c if c.is_control() => {
                    return Err(FilterError::new(
                        at,
                        "control characters in a string must be escaped (e.g. \\n, \\u0001)",
                    ));
                }
                c => out.push(c),
            }
        }
    }

    /// Reads an escape sequence whose backslash (at `at`) was consumed.
    fn escape(&mut self, at: usize, quote: char, string_start: usize) -> Result<char, FilterError> {
        let Some(c) = self.bump() else {
            return Err(FilterError::new(
                string_start,
                format!("unterminated string: expected a closing {quote}"),
            ));
        };
        let simple = match c {
            'a' => '\u{07}',
            'b' => '\u{08}',
            'f' => '\u{0C}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{0B}',
            '\\' | '\'' | '"' | '?' | '`' => c,
            'x' | 'X' => return self.code_point(at, 16, 2),
            'u' => return self.code_point(at, 16, 4),
            'U' => return self.code_point(at, 16, 8),
            '0'..='3' => {
                self.pos = at + 1;
                return self.code_point(at, 8, 3);
            }
            _ => {
                return Err(FilterError::new(
                    at,
                    format!(
                        "invalid escape sequence '\\{c}': expected one of \\a \\b \\f \\n \\r \\t \
                         \\v \\\\ \\' \\\" \\? \\`, \\xHH, \\ooo, \\uHHHH or \\UHHHHHHHH"
                    ),
                ));
            }
        };
        Ok(simple)
    }

    /// Reads exactly `digits` digits in `radix` and turns them into a character.
    fn code_point(&mut self, at: usize, radix: u32, digits: usize) -> Result<char, FilterError> {
        let end = self.pos + digits;
        let value = self
            .src
            .get(self.pos..end)
            .filter(|text| text.chars().all(|c| c.is_digit(radix)))
            .and_then(|text| u32::from_str_radix(text, radix).ok());
        let Some(value) = value else {
            let kind = if radix == 16 { "hexadecimal" } else { "octal" };
            return Err(FilterError::new(
                at,
                format!("invalid escape sequence: expected {digits} {kind} digits"),
            ));
        };
        self.pos = end;
        char::from_u32(value).ok_or_else(|| {
            FilterError::new(
                at,
                format!("invalid escape sequence: {value:#x} is not a Unicode scalar value"),
            )
        })
    }
}

/// The error for a character that cannot start any token, with a hint where one helps.
fn unexpected_character(c: char, at: usize) -> FilterError {
    let message = match c {
        '&' => "unexpected character '&': combine conditions with AND".to_owned(),
        '|' => "unexpected character '|': combine conditions with OR".to_owned(),
        '<' | '>' | '~' => format!(
            "unsupported operator '{c}': use ':', '=', '!=' or hasPrefix(attributes.KEY, \"prefix\")"
        ),
        c if c.is_ascii() => format!("unexpected character {c:?}"),
        c => format!(
            "unexpected character {c:?}: keys with characters other than ASCII letters, digits, \
             '_' and '-' must be quoted, e.g. attributes:\"key\""
        ),
    };
    FilterError::new(at, message)
}
