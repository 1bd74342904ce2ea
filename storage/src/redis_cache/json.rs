//! Just enough JSON for the values of `mf:{t}:alerts:open`: one flat object whose
//! values are strings or integers. Written here rather than with `serde_json` to keep
//! the storage crate's dependencies as they are; the output is standard JSON (RFC
//! 8259), identical in shape to `serde_json::to_string(&AlertEvent)`, so dashboards
//! parse it with any JSON library.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A value of a flat object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
}

/// Builds `{"k":"v","n":1}` in insertion order.
pub(crate) struct ObjectWriter {
    out: String,
}

impl ObjectWriter {
    pub(crate) fn new() -> Self {
        Self {
            out: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(',');
        }
        write_string(&mut self.out, key);
        self.out.push(':');
    }

    pub(crate) fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        write_string(&mut self.out, value);
        self
    }

    pub(crate) fn int(mut self, key: &str, value: i64) -> Self {
        self.key(key);
        // Writing to a String cannot fail.
        let _ = write!(self.out, "{value}");
        self
    }

    pub(crate) fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses a flat object of strings and integers; anything else (nesting, floats,
/// `true`, duplicate keys, trailing bytes) is an error saying where.
pub(crate) fn parse_object(text: &str) -> Result<HashMap<String, Value>, String> {
    let mut parser = Parser {
        bytes: text.as_bytes(),
        text,
        at: 0,
    };
    let object = parser.object()?;
    parser.skip_whitespace();
    if parser.at != parser.bytes.len() {
        return Err(parser.error("trailing characters"));
    }
    Ok(object)
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{}'", byte as char)))
        }
    }

    fn object(&mut self) -> Result<HashMap<String, Value>, String> {
        self.expect(b'{')?;
        let mut object = HashMap::new();
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Ok(object);
        }
        loop {
            self.skip_whitespace();
            let key = self.string()?;
            self.expect(b':')?;
            self.skip_whitespace();
            let value = match self.bytes.get(self.at) {
                Some(b'"') => Value::Str(self.string()?),
                Some(b'-' | b'0'..=b'9') => Value::Int(self.integer()?),
                _ => return Err(self.error("expected a string or an integer")),
            };
            if object.insert(key, value).is_some() {
                return Err(self.error("duplicate key"));
            }
            self.skip_whitespace();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(object);
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn integer(&mut self) -> Result<i64, String> {
        let start = self.at;
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        if let Some(b'.' | b'e' | b'E') = self.bytes.get(self.at) {
            return Err(self.error("expected an integer"));
        }
        self.text[start..self.at]
            .parse()
            .map_err(|_| self.error("expected an integer that fits 64 bits"))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .filter(|d| d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| self.error("bad \\u escape"))?;
        let value = u32::from_str_radix(digits, 16).map_err(|_| self.error("bad \\u escape"))?;
        self.at += 4;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, String> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return Err(self.error("expected '\"'"));
        }
        self.at += 1;
        let mut out = String::new();
        let mut run = self.at;
        loop {
            match self.bytes.get(self.at) {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    out.push_str(&self.text[run..self.at]);
                    self.at += 1;
                    return Ok(out);
                }
                Some(b) if *b < 0x20 => return Err(self.error("control character in string")),
                Some(b'\\') => {
                    out.push_str(&self.text[run..self.at]);
                    self.at += 1;
                    let escaped = *self
                        .bytes
                        .get(self.at)
                        .ok_or_else(|| self.error("unterminated escape"))?;
                    self.at += 1;
                    match escaped {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
                                    return Err(self.error("unpaired surrogate"));
                                }
                                self.at += 2;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err(self.error("unpaired surrogate"));
                                }
                                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                high
                            };
                            out.push(
                                char::from_u32(code).ok_or_else(|| self.error("bad code point"))?,
                            );
                        }
                        _ => return Err(self.error("unknown escape")),
                    }
                    run = self.at;
                }
                // Multi-byte UTF-8 is copied through with its run.
                Some(_) => self.at += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn writes_and_reads_a_flat_object() {
        let text = ObjectWriter::new()
            .str("detail", "say \"hi\"\\ \n\t\u{1} é 💧")
            .int("at", -5)
            .int("big", i64::MAX)
            .finish();
        assert_eq!(
            text,
            r#"{"detail":"say \"hi\"\\ \n\t\u0001 é 💧","at":-5,"big":9223372036854775807}"#
        );
        let object = parse_object(&text).unwrap();
        assert_eq!(
            object["detail"],
            Value::Str("say \"hi\"\\ \n\t\u{1} é 💧".into())
        );
        assert_eq!(object["at"], Value::Int(-5));
        assert_eq!(object["big"], Value::Int(i64::MAX));
        assert_eq!(parse_object(" { } ").unwrap(), HashMap::new());
        let escaped = parse_object(r#"{"a":"\ud83d\udca7\/\b\f\r"}"#).unwrap();
        assert_eq!(escaped["a"], Value::Str("💧/\u{8}\u{c}\r".into()));
    }

    #[test]
    fn rejects_what_it_does_not_write() {
        for bad in [
            "",
            "[]",
            r#"{"a":1.5}"#,
            r#"{"a":true}"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":1} x"#,
            r#"{"a":"\ud83d"}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":99999999999999999999}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a" 1}"#,
            r#"{"a":1,}"#,
        ] {
            assert!(parse_object(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_string_and_integer_round_trip(s in any::<String>(), n in any::<i64>()) {
            let text = ObjectWriter::new().str("s", &s).int("n", n).finish();
            let object = parse_object(&text).unwrap();
            prop_assert_eq!(&object["s"], &Value::Str(s));
            prop_assert_eq!(&object["n"], &Value::Int(n));
        }
    }
}
