//! Dates as Segment's Iterable destination treats them.
//!
//! * `convertDatesInObject`: ISO-looking strings in `dataFields` become
//!   `YYYY-MM-DD HH:mm:ss +00:00`; date-only strings stay as they are.
//! * `createdAt`: `dayjs(x).unix()`, whole seconds.
//! * the `date-like` format that decides whether `createdAt` is accepted.
//!
//! Those go through JavaScript's `new Date(string)`, so this module carries a port of V8's date
//! string parser (`src/date/dateparser-inl.h`: the ES5 ISO path and the legacy fallback) and
//! of dayjs's `parseDate`. Offset-less times are read as UTC (DESIGN §2, difference 3).

use serde_json::Value;
use std::sync::LazyLock;

/// `isoDateRegExp` of `iterable/utils.ts`.
static ISO_DATE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])(?:([ T])([0-9]{2}):?([0-9]{2})(?::?([0-9]{2})(?:[,.]([0-9]+))?)?(?:(Z)|([+\-])([0-9]{2})(?::?([0-9]{2}))?)?)?$",
    )
    .expect("static regex")
});

/// dayjs's `REGEX_PARSE` (JavaScript `\s` is Unicode white space).
static DAYJS_PARSE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^([0-9]{4})[-/]?([0-9]{1,2})?[-/]?([0-9]{0,2})[Tt\s\x{feff}]*([0-9]{1,2})?:?([0-9]{1,2})?:?([0-9]{1,2})?[.:]?([0-9]+)?$",
    )
    .expect("static regex")
});

const MS_PER_DAY: f64 = 86_400_000.0;
const MAX_TIME: f64 = 8.64e15;

/// Converts date-like strings inside `dataFields`, recursing into objects and arrays.
/// A string the regex accepts but `new Date` rejects is left unchanged (Segment sends `null`:
/// DESIGN §2, difference 2).
pub fn convert_dates_in_object(value: &mut Value) {
    match value {
        Value::Object(map) => map.values_mut().for_each(convert_dates_in_object),
        Value::Array(items) => items.iter_mut().for_each(convert_dates_in_object),
        Value::String(s) => {
            if let Some(converted) = convert_date_string(s) {
                *s = converted;
            }
        }
        _ => {}
    }
}

/// Whether Segment's `convertDatesInObject` would touch the string at all (its regex).
pub fn is_iso_candidate(s: &str) -> bool {
    s.len() > 10 && ISO_DATE.is_match(s)
}

/// The replacement for one string, or `None` to keep it.
pub fn convert_date_string(s: &str) -> Option<String> {
    // Cheap pre-check: every candidate starts with `dddd-`.
    let b = s.as_bytes();
    if b.len() < 10 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return None;
    }
    if b.len() == 10 || !ISO_DATE.is_match(s) {
        return None; // date-only strings are kept (and so are non-candidates)
    }
    let ms = v8_parse(s)?;
    Some(format!("{} +00:00", iso_seconds(ms)))
}

/// `toISOString()` without the fraction, `T` replaced by a space.
fn iso_seconds(ms: f64) -> String {
    let days = (ms / MS_PER_DAY).floor();
    let in_day = ms - days * MS_PER_DAY;
    let (y, m, d) = civil_from_days(days as i64);
    let secs = (in_day / 1000.0).floor() as i64;
    let year = if (0..=9999).contains(&y) {
        format!("{y:04}")
    } else if y < 0 {
        format!("-{:06}", -y)
    } else {
        format!("+{y:06}")
    };
    format!(
        "{year}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `dayjs(value).unix()`; `None` is `undefined` (now). NaN serialises as `null`.
pub fn dayjs_unix(value: Option<&Value>, now_ms: i64) -> Value {
    let ms = match value {
        None => Some(now_ms as f64),
        Some(Value::Number(n)) => n.as_f64().and_then(time_clip),
        Some(Value::String(s)) => dayjs_parse(s),
        Some(_) => None,
    };
    match ms {
        Some(ms) => Value::from((ms / 1000.0).floor() as i64),
        None => Value::Null,
    }
}

/// actions-core's `date-like` format.
pub fn is_date_like(s: &str) -> bool {
    // `String(Number(s)) === s` only holds for digits, signs, dots, exponents, or the two
    // words; skip formatting a number for anything else (every ISO date).
    let maybe_numeric = s == "NaN"
        || s.ends_with("Infinity")
        || s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e'));
    let n = if maybe_numeric {
        super::js::string_to_number(s)
    } else {
        f64::NAN
    };
    if maybe_numeric && super::js::number_to_string(n) == s {
        return time_clip(n * 1000.0).is_some();
    }
    dayjs_parse(s).is_some()
}

/// dayjs's `parseDate` for a string: local components when `REGEX_PARSE` matches and the string
/// does not end in `Z`, else `new Date(string)`.
pub fn dayjs_parse(s: &str) -> Option<f64> {
    if !s.ends_with(['z', 'Z']) {
        if let Some(c) = DAYJS_PARSE.captures(s) {
            let num = |i: usize| c.get(i).map(|m| m.as_str()).filter(|s| !s.is_empty());
            let int = |i: usize, default: f64| {
                num(i).map_or(default, |v| v.parse::<f64>().unwrap_or(0.0))
            };
            let month = num(2).map_or(0.0, |m| m.parse::<f64>().unwrap_or(1.0) - 1.0);
            let ms: f64 = num(7).map_or(0.0, |f| f[..f.len().min(3)].parse().unwrap_or(0.0));
            let mut year = int(1, 0.0);
            if (0.0..=99.0).contains(&year) {
                year += 1900.0; // `new Date(y, ...)` maps two-digit years
            }
            let day = make_day(year, month, int(3, 1.0));
            let time =
                int(4, 0.0) * 3_600_000.0 + int(5, 0.0) * 60_000.0 + int(6, 0.0) * 1000.0 + ms;
            return time_clip(day * MS_PER_DAY + time);
        }
    }
    v8_parse(s)
}

fn time_clip(ms: f64) -> Option<f64> {
    (ms.is_finite() && ms.abs() <= MAX_TIME).then(|| ms.trunc() + 0.0)
}

/// ECMAScript MakeDay (month may overflow).
fn make_day(year: f64, month: f64, date: f64) -> f64 {
    let ym = year + (month / 12.0).floor();
    let mn = month.rem_euclid(12.0);
    if !ym.is_finite() || ym.abs() > 400_000.0 {
        return f64::NAN;
    }
    days_from_civil(ym as i64, mn as u32 + 1, 1) as f64 + date - 1.0
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ---------------------------------------------------------------------------------------------
// V8's `new Date(string)`.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    /// value (first 9 significant digits), length in characters
    Number(i64, usize),
    Symbol(char),
    /// keyword type, value, length
    Word(Kw, i64, usize),
    WhiteSpace,
    Unknown,
    End,
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kw {
    Month,
    AmPm,
    Zone,
    TimeSeparator,
    Other,
}

struct Scanner {
    chars: Vec<char>,
    pos: usize,
    next: Tok,
}

impl Scanner {
    fn new(s: &str) -> Scanner {
        let mut sc = Scanner {
            chars: s.chars().collect(),
            pos: 0,
            next: Tok::End,
        };
        sc.next = sc.scan();
        sc
    }
    fn peek(&self) -> Tok {
        self.next
    }
    fn advance(&mut self) -> Tok {
        let t = self.next;
        self.next = self.scan();
        t
    }
    fn skip_symbol(&mut self, c: char) -> bool {
        if self.next == Tok::Symbol(c) {
            self.advance();
            true
        } else {
            false
        }
    }
    fn ch(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }
    fn scan(&mut self) -> Tok {
        let Some(c) = self.ch() else { return Tok::End };
        let start = self.pos;
        if c.is_ascii_digit() {
            while self.ch() == Some('0') {
                self.pos += 1;
            }
            let (mut n, mut i) = (0i64, 0);
            while let Some(d) = self.ch().filter(char::is_ascii_digit) {
                if i < 9 {
                    n = n * 10 + (d as i64 - '0' as i64);
                }
                i += 1;
                self.pos += 1;
            }
            return Tok::Number(n, self.pos - start);
        }
        if matches!(c, ':' | '-' | '+' | '.' | ')') {
            self.pos += 1;
            return Tok::Symbol(c);
        }
        if c >= 'A' && !is_js_white_space(c) {
            let mut word = String::new();
            while let Some(w) = self.ch().filter(|w| *w >= 'A' && !is_js_white_space(*w)) {
                if word.chars().count() < 3 {
                    word.push(w.to_ascii_lowercase());
                }
                self.pos += 1;
            }
            let len = self.pos - start;
            let (kw, v) = keyword(&word, len);
            return Tok::Word(kw, v, len);
        }
        if is_js_white_space(c) {
            while self.ch().is_some_and(is_js_white_space) {
                self.pos += 1;
            }
            return Tok::WhiteSpace;
        }
        if c == '(' {
            let mut depth = 0;
            while let Some(p) = self.ch() {
                if p == '(' {
                    depth += 1;
                } else if p == ')' {
                    depth -= 1;
                }
                self.pos += 1;
                if depth == 0 {
                    break;
                }
            }
            return Tok::Unknown;
        }
        self.pos += 1;
        Tok::Unknown
    }
}

fn is_js_white_space(c: char) -> bool {
    c.is_whitespace() || c == '\u{feff}'
}

fn keyword(prefix: &str, len: usize) -> (Kw, i64) {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    if let Some(i) = MONTHS.iter().position(|m| *m == prefix) {
        return (Kw::Month, i as i64 + 1);
    }
    if len > 3 {
        return (Kw::Other, 0); // only month names may be longer than their keyword
    }
    match prefix {
        "am" => (Kw::AmPm, 0),
        "pm" => (Kw::AmPm, 12),
        "ut" | "utc" | "z" | "gmt" => (Kw::Zone, 0),
        "cdt" => (Kw::Zone, -5),
        "cst" => (Kw::Zone, -6),
        "edt" => (Kw::Zone, -4),
        "est" => (Kw::Zone, -5),
        "mdt" => (Kw::Zone, -6),
        "mst" => (Kw::Zone, -7),
        "pdt" => (Kw::Zone, -7),
        "pst" => (Kw::Zone, -8),
        "t" => (Kw::TimeSeparator, 0),
        _ => (Kw::Other, 0),
    }
}

fn is_z(t: Tok) -> bool {
    matches!(t, Tok::Word(Kw::Zone, 0, 1))
}

fn fixed(t: Tok, len: usize) -> Option<i64> {
    match t {
        Tok::Number(n, l) if l == len => Some(n),
        _ => None,
    }
}

const NONE: i64 = i64::MIN;

struct Day {
    comp: [i64; 3],
    index: usize,
    named_month: i64,
    iso: bool,
}

impl Day {
    fn add(&mut self, n: i64) -> bool {
        if self.index < 3 {
            self.comp[self.index] = n;
            self.index += 1;
            true
        } else {
            false
        }
    }
    fn write(&mut self) -> Option<(i64, i64, i64)> {
        if self.index < 1 {
            return None;
        }
        while self.index < 3 {
            self.comp[self.index] = 1;
            self.index += 1;
        }
        let is_day = |x: i64| (1..=31).contains(&x);
        let (mut year, month, day);
        if self.named_month == NONE {
            if self.iso || !is_day(self.comp[0]) {
                (year, month, day) = (self.comp[0], self.comp[1], self.comp[2]);
            } else {
                (month, day, year) = (self.comp[0], self.comp[1], self.comp[2]);
            }
        } else {
            month = self.named_month;
            if !is_day(self.comp[0]) {
                (year, day) = (self.comp[0], self.comp[1]);
            } else {
                (day, year) = (self.comp[0], self.comp[1]);
            }
        }
        if !self.iso {
            if (0..=49).contains(&year) {
                year += 2000;
            } else if (50..=99).contains(&year) {
                year += 1900;
            }
        }
        ((1..=12).contains(&month) && is_day(day)).then_some((year, month - 1, day))
    }
}

struct Time {
    comp: [i64; 4],
    index: usize,
    hour_offset: i64,
}

impl Time {
    fn is_empty(&self) -> bool {
        self.index == 0
    }
    fn is_expecting(&self, n: i64) -> bool {
        (self.index == 1 && (0..60).contains(&n))
            || (self.index == 2 && (0..60).contains(&n))
            || (self.index == 3 && (0..1000).contains(&n))
    }
    fn add(&mut self, n: i64) -> bool {
        if self.index < 4 {
            self.comp[self.index] = n;
            self.index += 1;
            true
        } else {
            false
        }
    }
    fn add_final(&mut self, n: i64) -> bool {
        if !self.add(n) {
            return false;
        }
        while self.index < 4 {
            self.comp[self.index] = 0;
            self.index += 1;
        }
        true
    }
    fn write(&mut self) -> Option<f64> {
        while self.index < 4 {
            self.comp[self.index] = 0;
            self.index += 1;
        }
        let [mut h, m, s, ms] = self.comp;
        if self.hour_offset != NONE {
            if !(0..=12).contains(&h) {
                return None;
            }
            h = h % 12 + self.hour_offset;
        }
        let ok = (0..24).contains(&h)
            && (0..60).contains(&m)
            && (0..60).contains(&s)
            && (0..1000).contains(&ms);
        if !(ok || (h == 24 && m == 0 && s == 0 && ms == 0)) {
            return None;
        }
        Some((h * 3_600_000 + m * 60_000 + s * 1000 + ms) as f64)
    }
}

struct Zone {
    sign: i64,
    hour: i64,
    minute: i64,
}

impl Zone {
    fn set(&mut self, hours: i64) {
        self.sign = if hours < 0 { -1 } else { 1 };
        self.hour = hours.abs();
        self.minute = 0;
    }
    fn is_expecting(&self, n: i64) -> bool {
        self.hour != NONE && self.minute == NONE && (0..60).contains(&n)
    }
    fn is_utc(&self) -> bool {
        self.hour == 0 && self.minute == 0
    }
    fn is_empty(&self) -> bool {
        self.hour == NONE
    }
    /// Offset in seconds; `None` inside means local time.
    fn write(&mut self) -> Option<Option<i64>> {
        if self.sign == NONE {
            return Some(None);
        }
        let h = if self.hour == NONE { 0 } else { self.hour };
        let m = if self.minute == NONE { 0 } else { self.minute };
        let total = h.checked_mul(3600)?.checked_add(m * 60)?;
        if total > (1 << 30) - 1 {
            return None;
        }
        Some(Some(self.sign * total))
    }
}

fn read_milliseconds(t: Tok) -> i64 {
    let Tok::Number(mut n, len) = t else { return 0 };
    if len == 1 {
        n *= 100;
    } else if len == 2 {
        n *= 10;
    } else if len > 3 {
        let mut l = len.min(9);
        let mut factor = 1;
        while l > 3 {
            factor *= 10;
            l -= 1;
        }
        n /= factor;
    }
    n
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the form Segment's libraries send, parsed directly.
/// Anything else (and any value out of range) goes through the full parser.
fn fast_iso_utc(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[b.len() - 1] != b'Z'
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as i64)
        })
    };
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let ms = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', frac @ ..] if !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) => {
            // V8 keeps the first three digits.
            let mut v = 0;
            for i in 0..3 {
                v = v * 10 + frac.get(i).map_or(0, |c| (c - b'0') as i64);
            }
            v
        }
        _ => return None,
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let days = make_day(y as f64, (mo - 1) as f64, d as f64);
    time_clip(days * MS_PER_DAY + ((h * 3600 + mi * 60 + sec) * 1000 + ms) as f64)
}

/// `new Date(s).valueOf()` in V8 with the local time zone set to UTC; `None` is NaN.
pub fn v8_parse(s: &str) -> Option<f64> {
    if let Some(ms) = fast_iso_utc(s) {
        return Some(ms);
    }
    let mut sc = Scanner::new(s);
    let mut day = Day {
        comp: [0; 3],
        index: 0,
        named_month: NONE,
        iso: false,
    };
    let mut time = Time {
        comp: [0; 4],
        index: 0,
        hour_offset: NONE,
    };
    let mut tz = Zone {
        sign: NONE,
        hour: NONE,
        minute: NONE,
    };
    let next = parse_es5(&mut sc, &mut day, &mut time, &mut tz);
    if next == Tok::Invalid {
        return None;
    }
    let mut has_read_number = day.index > 0;
    let mut token = next;
    while token != Tok::End {
        match token {
            Tok::Number(n, _) => {
                has_read_number = true;
                if sc.skip_symbol(':') {
                    if sc.skip_symbol(':') {
                        if !time.is_empty() {
                            return None;
                        }
                        time.add(n);
                        time.add(0);
                    } else {
                        if !time.add(n) {
                            return None;
                        }
                        if sc.peek() == Tok::Symbol('.') {
                            sc.advance();
                        }
                    }
                } else if sc.peek() == Tok::Symbol('.') && time.is_expecting(n) {
                    sc.advance();
                    time.add(n);
                    if !matches!(sc.peek(), Tok::Number(..)) {
                        return None;
                    }
                    let ms = read_milliseconds(sc.advance());
                    if ms < 0 {
                        return None;
                    }
                    time.add_final(ms);
                } else if sc.peek() == Tok::Symbol('.') {
                    // `SkipSymbol('.')` consumed the dot even though the branch was not taken.
                    sc.advance();
                    if tz.is_expecting(n) {
                        tz.minute = n;
                    } else if time.is_expecting(n) {
                        unreachable_time_final(&mut time, n, &sc)?;
                    } else {
                        if !day.add(n) {
                            return None;
                        }
                        sc.skip_symbol('-');
                    }
                } else if tz.is_expecting(n) {
                    tz.minute = n;
                } else if time.is_expecting(n) {
                    unreachable_time_final(&mut time, n, &sc)?;
                } else {
                    if !day.add(n) {
                        return None;
                    }
                    sc.skip_symbol('-');
                }
            }
            Tok::Word(kw, value, _) => {
                if kw == Kw::AmPm && !time.is_empty() {
                    time.hour_offset = value;
                } else if kw == Kw::Month {
                    day.named_month = value;
                    sc.skip_symbol('-');
                } else if kw == Kw::Zone && has_read_number {
                    tz.set(value);
                } else {
                    if has_read_number {
                        return None;
                    }
                    if matches!(sc.peek(), Tok::Number(..)) {
                        return None;
                    }
                }
            }
            Tok::Symbol(c @ ('+' | '-')) if tz.is_utc() || !time.is_empty() => {
                tz.sign = if c == '+' { 1 } else { -1 };
                let (mut n, mut len) = (0, 0);
                if let Tok::Number(v, l) = sc.peek() {
                    sc.advance();
                    (n, len) = (v, l);
                }
                has_read_number = true;
                if sc.peek() == Tok::Symbol(':') {
                    tz.hour = n;
                    tz.minute = NONE;
                } else if len == 1 || len == 2 {
                    tz.hour = n;
                    tz.minute = 0;
                } else if len == 3 || len == 4 {
                    tz.hour = n / 100;
                    tz.minute = n % 100;
                } else {
                    return None;
                }
            }
            Tok::Symbol('+' | '-' | ')') if has_read_number => return None,
            _ => {}
        }
        token = sc.advance();
    }
    let (y, m, d) = day.write()?;
    let t = time.write()?;
    let offset = tz.write()?;
    let days = make_day(y as f64, m as f64, d as f64);
    let mut ms = days * MS_PER_DAY + t;
    if let Some(off) = offset {
        ms -= off as f64 * 1000.0;
    }
    time_clip(ms)
}

/// `time.AddFinal(n)` then V8's check that the time is followed by the end, white space, `Z`
/// or a sign.
fn unreachable_time_final(time: &mut Time, n: i64, sc: &Scanner) -> Option<()> {
    time.add_final(n);
    match sc.peek() {
        Tok::End | Tok::WhiteSpace | Tok::Symbol('+' | '-') => Some(()),
        t if is_z(t) => Some(()),
        _ => None,
    }
}

/// `ParseES5DateTime`: returns the first token it did not handle, `End` on a full ES5 match,
/// or `Invalid`.
fn parse_es5(sc: &mut Scanner, day: &mut Day, time: &mut Time, tz: &mut Zone) -> Tok {
    if let Tok::Symbol(c @ ('+' | '-')) = sc.peek() {
        let sign_tok = sc.advance();
        let Some(year) = fixed(sc.peek(), 6) else {
            return sign_tok;
        };
        if c == '-' && year == 0 {
            return sign_tok;
        }
        sc.advance();
        day.add(if c == '-' { -year } else { year });
    } else if let Some(year) = fixed(sc.peek(), 4) {
        sc.advance();
        day.add(year);
    } else {
        return sc.advance();
    }
    if sc.skip_symbol('-') {
        match fixed(sc.peek(), 2) {
            Some(m) if (1..=12).contains(&m) => {
                sc.advance();
                day.add(m);
            }
            _ => return sc.advance(),
        }
        if sc.skip_symbol('-') {
            match fixed(sc.peek(), 2) {
                Some(d) if (1..=31).contains(&d) => {
                    sc.advance();
                    day.add(d);
                }
                _ => return sc.advance(),
            }
        }
    }
    if !matches!(sc.peek(), Tok::Word(Kw::TimeSeparator, _, _)) {
        if sc.peek() != Tok::End {
            return sc.advance();
        }
    } else {
        sc.advance();
        let Some(h) = fixed(sc.peek(), 2).filter(|h| (0..=24).contains(h)) else {
            return Tok::Invalid;
        };
        let hour_is_24 = h == 24;
        sc.advance();
        time.add(h);
        if !sc.skip_symbol(':') {
            return Tok::Invalid;
        }
        let Some(m) =
            fixed(sc.peek(), 2).filter(|m| (0..60).contains(m) && !(hour_is_24 && *m > 0))
        else {
            return Tok::Invalid;
        };
        sc.advance();
        time.add(m);
        if sc.skip_symbol(':') {
            let Some(s) =
                fixed(sc.peek(), 2).filter(|s| (0..60).contains(s) && !(hour_is_24 && *s > 0))
            else {
                return Tok::Invalid;
            };
            sc.advance();
            time.add(s);
            if sc.skip_symbol('.') {
                match sc.peek() {
                    Tok::Number(n, _) if !(hour_is_24 && n > 0) => {
                        let ms = read_milliseconds(sc.advance());
                        time.add(ms);
                    }
                    _ => return Tok::Invalid,
                }
            }
        }
        if is_z(sc.peek()) {
            sc.advance();
            tz.set(0);
        } else if let Tok::Symbol(c @ ('+' | '-')) = sc.peek() {
            sc.advance();
            tz.sign = if c == '+' { 1 } else { -1 };
            if let Some(hm) = fixed(sc.peek(), 4) {
                sc.advance();
                let (h, m) = (hm / 100, hm % 100);
                if !(0..24).contains(&h) || !(0..60).contains(&m) {
                    return Tok::Invalid;
                }
                tz.hour = h;
                tz.minute = m;
            } else {
                let Some(h) = fixed(sc.peek(), 2).filter(|h| (0..24).contains(h)) else {
                    return Tok::Invalid;
                };
                sc.advance();
                tz.hour = h;
                if !sc.skip_symbol(':') {
                    return Tok::Invalid;
                }
                let Some(m) = fixed(sc.peek(), 2).filter(|m| (0..60).contains(m)) else {
                    return Tok::Invalid;
                };
                sc.advance();
                tz.minute = m;
            }
        }
        if sc.peek() != Tok::End {
            return Tok::Invalid;
        }
    }
    if tz.is_empty() && time.is_empty() {
        tz.set(0);
    }
    day.iso = true;
    Tok::End
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(s: &str) -> Option<String> {
        convert_date_string(s)
    }

    #[test]
    fn reference_conversions_hold() {
        assert_eq!(
            conv("2023-05-17T22:49:53.310Z").as_deref(),
            Some("2023-05-17 22:49:53 +00:00")
        );
        assert_eq!(conv("2023-05-17"), None);
        assert_eq!(
            conv("2023-02-30T00:00:00Z").as_deref(),
            Some("2023-03-02 00:00:00 +00:00")
        );
        assert_eq!(
            conv("2023-05-17T22:49:53+02:00").as_deref(),
            Some("2023-05-17 20:49:53 +00:00")
        );
        assert_eq!(
            conv("2023-05-17T22:49:53-0530").as_deref(),
            Some("2023-05-18 04:19:53 +00:00")
        );
        assert_eq!(
            conv("2023-05-17 22:49").as_deref(),
            Some("2023-05-17 22:49:00 +00:00")
        );
        // Accepted by the regex, rejected by V8: kept as sent.
        assert_eq!(conv("2023-05-17T2249"), None);
        assert_eq!(conv("2023-05-17T22:49:53,5Z"), None);
        for keep in [
            "1234",
            "1234-12",
            "1234-12-00",
            "1234-12-99",
            "2023-13-01T00:00:00Z",
            "20230517T224953Z",
            "2023-05-17T22",
        ] {
            assert_eq!(conv(keep), None, "{keep}");
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_parser() {
        for s in [
            "2024-01-01T00:00:00.000Z",
            "2023-05-17T22:49:53.310Z",
            "2023-02-30T00:00:00Z",
            "1999-12-31T23:59:59.9999Z",
            "0001-01-01T00:00:00.1Z",
            "2024-02-29T12:00:00.12Z",
        ] {
            assert_eq!(fast_iso_utc(s), v8_parse_full(s), "{s}");
        }
    }

    fn v8_parse_full(s: &str) -> Option<f64> {
        // The same input with an explicit `+00:00` offset bypasses the fast path.
        v8_parse(&format!("{}+00:00", &s[..s.len() - 1]))
    }

    #[test]
    fn created_at_follows_dayjs() {
        let unix = |v: Value| dayjs_unix(Some(&v), 0);
        assert_eq!(unix(json!("2024-01-01T00:00:00.000Z")), json!(1704067200));
        assert_eq!(unix(json!("2024-01-02")), json!(1704153600));
        assert_eq!(unix(json!("1704164645")), json!(-8350743600i64));
        assert_eq!(unix(json!(1704067200123i64)), json!(1704067200));
        assert_eq!(dayjs_unix(None, 5_000), json!(5));
        assert_eq!(
            unix(json!("Tue, 02 Jan 2024 03:04:05 GMT")),
            json!(1704164645)
        );
        assert_eq!(unix(json!("garbage")), Value::Null);
    }

    #[test]
    fn date_like_accepts_what_dayjs_parses_and_numeric_strings() {
        for ok in [
            "2024-01-02",
            "1704164645",
            "Jan 2, 2024",
            "2024-01-02T03:04:05+02:00",
        ] {
            assert!(is_date_like(ok), "{ok}");
        }
        for bad in ["", "abc", "true", "2024-13-45T99:99:99Z"] {
            assert!(!is_date_like(bad), "{bad}");
        }
    }
}
