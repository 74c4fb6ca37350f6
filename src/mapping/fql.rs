//! Triggers: the subset of Segment's FQL that decides which events a subscription receives.
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | field op (string | null)
//! field   := type | event | name | userId | a dotted path such as properties.plan
//! op      := "=" | "!="
//! ```
//! Keywords are case-insensitive. A missing field is never equal to a string, so
//! `event != "Order Completed"` holds for an identify call, as in Segment. `field = null` holds
//! when the field is missing or `null`, so `context.device.token != null` means "has a token".
//!
//! Segment's own destination declares `event == "Cart Updated"`, which its FQL library
//! silently misreads (reference/iterable-actions.md §3); here `==` is a configuration error.

use super::js;
use serde_json::Value;

/// A parsed trigger.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    Eq(Vec<String>, String),
    Ne(Vec<String>, String),
    /// `field = null`: missing or JSON `null`.
    IsNull(Vec<String>),
    And(Box<Trigger>, Box<Trigger>),
    Or(Box<Trigger>, Box<Trigger>),
    Not(Box<Trigger>),
}

/// A trigger that does not parse: the text, the byte offset and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid trigger {text:?} at offset {offset}: {why}")]
pub struct TriggerSyntaxError {
    pub text: String,
    pub offset: usize,
    pub why: String,
}

impl Trigger {
    pub fn parse(text: &str) -> Result<Trigger, TriggerSyntaxError> {
        let tokens = tokenize(text)?;
        let mut p = Parser {
            text,
            tokens,
            pos: 0,
        };
        let t = p.or()?;
        match p.peek() {
            None => Ok(t),
            Some(tok) => Err(p.error(tok.offset, "expected \"and\", \"or\" or the end")),
        }
    }

    pub fn matches(&self, event: &Value) -> bool {
        match self {
            Trigger::Eq(path, lit) => field_equals(event, path, lit),
            Trigger::Ne(path, lit) => !field_equals(event, path, lit),
            Trigger::IsNull(path) => {
                matches!(js::get(event, path).as_deref(), None | Some(Value::Null))
            }
            Trigger::And(a, b) => a.matches(event) && b.matches(event),
            Trigger::Or(a, b) => a.matches(event) || b.matches(event),
            Trigger::Not(a) => !a.matches(event),
        }
    }
}

fn field_equals(event: &Value, path: &[String], lit: &str) -> bool {
    match js::get(event, path).as_deref() {
        Some(Value::String(s)) => s == lit,
        Some(Value::Number(n)) => js::json_number_to_string(n) == lit,
        Some(Value::Bool(b)) => b.to_string() == lit,
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Eq,
    Ne,
    LParen,
    RParen,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    offset: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, TriggerSyntaxError> {
    let err = |offset: usize, why: &str| TriggerSyntaxError {
        text: text.into(),
        offset,
        why: why.into(),
    };
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Token { tok: Tok::LParen, offset: i });
                i += 1;
            }
            b')' => {
                out.push(Token { tok: Tok::RParen, offset: i });
                i += 1;
            }
            b'=' if b.get(i + 1) == Some(&b'=') => {
                return Err(err(i, "\"==\" is not FQL; write a single \"=\""));
            }
            b'=' => {
                out.push(Token { tok: Tok::Eq, offset: i });
                i += 1;
            }
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push(Token { tok: Tok::Ne, offset: i });
                i += 2;
            }
            b'"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    match text[i..].chars().next() {
                        None => return Err(err(start, "unterminated string")),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let next = text[i + 1..].chars().next();
                            match next {
                                Some(ch) => {
                                    s.push(ch);
                                    i += 1 + ch.len_utf8();
                                }
                                None => return Err(err(start, "unterminated string")),
                            }
                        }
                        Some(ch) => {
                            s.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push(Token { tok: Tok::Str(s), offset: start });
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'$'))
                {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(text[start..i].to_string()),
                    offset: start,
                });
            }
            _ => {
                return Err(err(
                    i,
                    "unexpected character (FQL here supports fields, =, !=, and, or, not, parentheses and \"strings\")",
                ))
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, offset: usize, why: &str) -> TriggerSyntaxError {
        TriggerSyntaxError {
            text: self.text.into(),
            offset,
            why: why.into(),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token { tok: Tok::Ident(s), .. }) if s.eq_ignore_ascii_case(kw))
    }

    fn end_offset(&self) -> usize {
        self.text.len()
    }

    fn or(&mut self) -> Result<Trigger, TriggerSyntaxError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            left = Trigger::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Trigger, TriggerSyntaxError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.pos += 1;
            left = Trigger::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Trigger, TriggerSyntaxError> {
        if self.keyword("not") {
            self.pos += 1;
            return Ok(Trigger::Not(Box::new(self.unary()?)));
        }
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error(self.end_offset(), "expected a condition"));
        };
        match tok.tok {
            Tok::LParen => {
                self.pos += 1;
                let inner = self.or()?;
                match self.peek() {
                    Some(Token {
                        tok: Tok::RParen, ..
                    }) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    Some(t) => Err(self.error(t.offset, "expected \")\"")),
                    None => Err(self.error(self.end_offset(), "expected \")\"")),
                }
            }
            Tok::Ident(field) => {
                self.pos += 1;
                let op = match self.peek() {
                    Some(Token { tok: Tok::Eq, .. }) => Tok::Eq,
                    Some(Token { tok: Tok::Ne, .. }) => Tok::Ne,
                    Some(t) => return Err(self.error(t.offset, "expected \"=\" or \"!=\"")),
                    None => return Err(self.error(self.end_offset(), "expected \"=\" or \"!=\"")),
                };
                self.pos += 1;
                let path = js::split_path(field.trim_start_matches("$."));
                if self.keyword("null") {
                    self.pos += 1;
                    let is_null = Trigger::IsNull(path);
                    return Ok(if op == Tok::Eq {
                        is_null
                    } else {
                        Trigger::Not(Box::new(is_null))
                    });
                }
                let lit = match self.peek() {
                    Some(Token {
                        tok: Tok::Str(s), ..
                    }) => s.clone(),
                    Some(t) => return Err(self.error(t.offset, "expected a \"quoted string\"")),
                    None => {
                        return Err(self.error(self.end_offset(), "expected a \"quoted string\""))
                    }
                };
                self.pos += 1;
                Ok(if op == Tok::Eq {
                    Trigger::Eq(path, lit)
                } else {
                    Trigger::Ne(path, lit)
                })
            }
            _ => Err(self.error(tok.offset, "expected a field, \"not\" or \"(\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn presets_match_what_segment_matches() {
        let track = Trigger::parse(
            r#"type = "track" and event != "Order Completed" and event != "Cart Updated""#,
        )
        .unwrap();
        assert!(track.matches(&json!({"type": "track", "event": "Video Played"})));
        assert!(!track.matches(&json!({"type": "track", "event": "Order Completed"})));
        assert!(!track.matches(&json!({"type": "identify"})));
    }

    #[test]
    fn not_or_and_parentheses_compose() {
        let t =
            Trigger::parse(r#"not (type = "page" or type = "screen") AND event = "A""#).unwrap();
        assert!(t.matches(&json!({"type": "track", "event": "A"})));
        assert!(!t.matches(&json!({"type": "page", "event": "A"})));
        let t = Trigger::parse(r#"properties.plan = "pro""#).unwrap();
        assert!(t.matches(&json!({"properties": {"plan": "pro"}})));
    }

    #[test]
    fn null_means_missing_or_null() {
        let has = Trigger::parse("context.device.token != null").unwrap();
        assert!(has.matches(&json!({"context": {"device": {"token": "abc"}}})));
        assert!(has.matches(&json!({"context": {"device": {"token": ""}}})));
        assert!(!has.matches(&json!({"context": {"device": {"token": null}}})));
        assert!(!has.matches(&json!({"context": {}})));
        let none = Trigger::parse("traits.x = NULL").unwrap();
        assert!(none.matches(&json!({"traits": {}})));
        assert!(!none.matches(&json!({"traits": {"x": 0}})));
        // A quoted "null" is the string.
        let s = Trigger::parse(r#"traits.x = "null""#).unwrap();
        assert!(!s.matches(&json!({"traits": {}})));
    }

    #[test]
    fn errors_say_where_and_what() {
        let e = Trigger::parse(r#"type = "track" and event == "Cart Updated""#).unwrap_err();
        assert_eq!(e.offset, 25);
        assert!(e.why.contains("=="));
        let e = Trigger::parse(r#"type = track"#).unwrap_err();
        assert!(e.why.contains("quoted string"), "{e}");
        let e = Trigger::parse(r#"(type = "a""#).unwrap_err();
        assert!(e.why.contains(")"));
        assert!(Trigger::parse("").is_err());
        assert!(Trigger::parse(r#"type = "a" "b""#).is_err());
    }
}
