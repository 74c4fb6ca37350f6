//! The few JavaScript semantics that Segment's destination code relies on, reproduced exactly:
//! number formatting (`String(n)`, `JSON.stringify`), string-to-number conversion (`+s`),
//! truthiness, and actions-core's lodash-like `get(obj, "a.b[0]")`.
//!
//! Parity with the published code depends on these details (reference/iterable-actions.md §2),
//! so they live in one place instead of being approximated at each call site.

use serde_json::{Number, Value};

/// `Number.prototype.toString()` for a finite or non-finite double.
pub fn number_to_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if x == 0.0 {
        return "0".into(); // -0 prints as "0" too
    }
    // Rust's `{:e}` gives the shortest round-tripping digits, as ECMAScript requires.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let k = digits.len() as i32;
    let n = exp + 1;
    let mut out = String::with_capacity(24);
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n - 1 < 0 { '-' } else { '+' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

/// `String(n)` for a JSON number. Integers that serde kept exact print exactly.
pub fn json_number_to_string(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        number_to_string(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// The white space that `Number(" 12 ")` trims (ECMAScript WhiteSpace and LineTerminator).
fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{d}'
            | ' '
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
            | '\u{feff}'
    )
}

/// `Number(s)` / unary `+s`: NaN when the string is not a numeric literal.
pub fn string_to_number(s: &str) -> f64 {
    let t = s.trim_matches(is_js_space);
    if t.is_empty() {
        return 0.0;
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(rest) = t.strip_prefix(prefix) {
            if rest.is_empty() || !rest.chars().all(|c| c.is_digit(radix)) {
                return f64::NAN;
            }
            return rest.chars().fold(0.0, |acc, c| {
                acc * radix as f64 + c.to_digit(radix).unwrap_or(0) as f64
            });
        }
    }
    let (sign, body) = match t.as_bytes()[0] {
        b'+' => (1.0, &t[1..]),
        b'-' => (-1.0, &t[1..]),
        _ => (1.0, t),
    };
    if body == "Infinity" {
        return sign * f64::INFINITY;
    }
    if !is_decimal_literal(body) {
        return f64::NAN;
    }
    body.parse::<f64>().map(|v| sign * v).unwrap_or(f64::NAN)
}

/// `digits[.digits][e[+-]digits]` or `.digits[...]`: what StrUnsignedDecimalLiteral accepts.
fn is_decimal_literal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// A JSON number from a double, as JavaScript holds it: integral values become integers so that
/// they print without a fraction.
pub fn number_value(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        if x == 0.0 {
            return Value::from(0);
        }
        return Value::from(x as i64);
    }
    Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// JavaScript truthiness of a present value (`undefined` is the caller's `None`).
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A path as actions-core's `get` splits it: on `.`, on `[` before a quote or digit and on `]`
/// after one; quotes are then removed (`a.b[0]`, `a["b c"]`).
pub fn split_path(path: &str) -> Vec<String> {
    let chars: Vec<char> = path.chars().collect();
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next_quote_or_digit = chars
            .get(i + 1)
            .is_some_and(|n| *n == '"' || *n == '\'' || n.is_ascii_digit());
        let prev_quote_or_digit =
            i > 0 && (chars[i - 1] == '"' || chars[i - 1] == '\'' || chars[i - 1].is_ascii_digit());
        if c == '.' || (c == '[' && next_quote_or_digit) {
            parts.push(std::mem::take(&mut cur));
        } else if c == ']' && prev_quote_or_digit {
            // `]+` is one separator.
            while i + 1 < chars.len() && chars[i + 1] == ']' {
                i += 1;
            }
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
        i += 1;
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| p.replace(['\'', '"'], ""))
        .collect()
}

/// `get(obj, path)` with JavaScript's `prevObj && prevObj[key]` walk: a falsy value on the way
/// is returned as is; a missing key is `None` (undefined).
pub fn get<'a>(root: &'a Value, path: &[String]) -> Option<std::borrow::Cow<'a, Value>> {
    use std::borrow::Cow;
    let mut cur: Cow<'a, Value> = Cow::Borrowed(root);
    for key in path {
        if !truthy(&cur) {
            return Some(cur);
        }
        let next = match cur {
            Cow::Borrowed(Value::Object(m)) => m.get(key.as_str()).map(Cow::Borrowed),
            Cow::Borrowed(Value::Array(a)) => index_array(a, key),
            Cow::Borrowed(Value::String(s)) => index_string(s, key),
            Cow::Owned(Value::String(ref s)) => index_string(s, key),
            Cow::Owned(Value::Object(ref m)) => m.get(key.as_str()).cloned().map(Cow::Owned),
            Cow::Owned(Value::Array(ref a)) => {
                index_array(a, key).map(|c| Cow::Owned(c.into_owned()))
            }
            _ => None,
        };
        cur = next?;
    }
    Some(cur)
}

fn index_array<'a>(a: &'a [Value], key: &str) -> Option<std::borrow::Cow<'a, Value>> {
    if key == "length" {
        return Some(std::borrow::Cow::Owned(Value::from(a.len())));
    }
    canonical_index(key)
        .and_then(|i| a.get(i))
        .map(std::borrow::Cow::Borrowed)
}

fn index_string<'a>(s: &str, key: &str) -> Option<std::borrow::Cow<'a, Value>> {
    // JavaScript strings index by UTF-16 code unit.
    let units: Vec<u16> = s.encode_utf16().collect();
    if key == "length" {
        return Some(std::borrow::Cow::Owned(Value::from(units.len())));
    }
    let i = canonical_index(key)?;
    let unit = *units.get(i)?;
    Some(std::borrow::Cow::Owned(Value::String(
        String::from_utf16_lossy(&[unit]),
    )))
}

/// An array index as JavaScript accepts it in `a[key]`: the canonical decimal form only.
fn canonical_index(key: &str) -> Option<usize> {
    if key == "0" || (!key.starts_with('0') && key.bytes().all(|b| b.is_ascii_digit())) {
        key.parse().ok()
    } else {
        None
    }
}

/// `String(v)` for a value, as `String.prototype.replace` and template rendering produce it.
pub fn to_display_string(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => json_number_to_string(n),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::Null => String::new(),
                other => to_display_string(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

/// `JSON.stringify(v)`: numbers print as JavaScript prints them (`19.0` is `19`, `1e21` is
/// `1e+21`), so request bodies are byte-for-byte what Segment's code would send.
pub fn to_json_string(v: &Value) -> String {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, JsFormatter);
    serde::Serialize::serialize(v, &mut ser).expect("serialising a Value to memory cannot fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

struct JsFormatter;

impl serde_json::ser::Formatter for JsFormatter {
    fn write_f64<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        value: f64,
    ) -> std::io::Result<()> {
        if value.is_finite() {
            w.write_all(number_to_string(value).as_bytes())
        } else {
            w.write_all(b"null")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_print_as_javascript_prints_them() {
        let cases = [
            (1.0, "1"),
            (0.1, "0.1"),
            (-0.0, "0"),
            (12.5, "12.5"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1.5e-7, "1.5e-7"),
            (0.000001, "0.000001"),
            (123456789.123, "123456789.123"),
            (-24949647642460.16, "-24949647642460.16"),
            (f64::INFINITY, "Infinity"),
        ];
        for (x, s) in cases {
            assert_eq!(number_to_string(x), s, "{x}");
        }
    }

    #[test]
    fn strings_convert_to_numbers_as_unary_plus_does() {
        assert_eq!(string_to_number(" 12 "), 12.0);
        assert_eq!(string_to_number("12.50"), 12.5);
        assert_eq!(string_to_number("0x10"), 16.0);
        assert_eq!(string_to_number("1e3"), 1000.0);
        assert_eq!(string_to_number(""), 0.0);
        assert_eq!(string_to_number(".5"), 0.5);
        assert_eq!(string_to_number("5."), 5.0);
        assert!(string_to_number("abc").is_nan());
        assert!(string_to_number("1,5").is_nan());
        assert!(string_to_number("inf").is_nan());
        assert!(string_to_number("-0x10").is_nan());
        assert_eq!(string_to_number("-Infinity"), f64::NEG_INFINITY);
    }

    #[test]
    fn paths_split_like_actions_core() {
        assert_eq!(split_path("properties.email"), vec!["properties", "email"]);
        assert_eq!(split_path("a.b[0].c"), vec!["a", "b", "0", "c"]);
        assert_eq!(split_path("a[\"b c\"]"), vec!["a", "b c"]);
        assert_eq!(split_path(""), Vec::<String>::new());
    }

    #[test]
    fn get_returns_falsy_intermediates_like_javascript() {
        let v = json!({"p": null, "e": "", "a": [1, {"x": 2}], "s": "héllo"});
        let p = |s: &str| split_path(s);
        assert_eq!(
            get(&v, &p("p.email")).map(|c| c.into_owned()),
            Some(Value::Null)
        );
        assert_eq!(get(&v, &p("e.x")).map(|c| c.into_owned()), Some(json!("")));
        assert_eq!(get(&v, &p("a.1.x")).map(|c| c.into_owned()), Some(json!(2)));
        assert_eq!(
            get(&v, &p("a.length")).map(|c| c.into_owned()),
            Some(json!(2))
        );
        assert_eq!(get(&v, &p("s.1")).map(|c| c.into_owned()), Some(json!("é")));
        assert!(get(&v, &p("missing.x")).is_none());
    }
}
