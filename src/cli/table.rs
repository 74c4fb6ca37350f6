//! Plain-text tables and the small parsers the operator commands share.

use chrono::{DateTime, Utc};

/// A table with a header, columns padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  ", w = widths[i]));
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

/// One line of free text for a table cell: newlines and tabs as spaces, at most `max` characters.
pub fn cell(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        flat.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    } else {
        flat
    }
}

pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}

pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `90s`, `30m`, `1h`, `2d`, `1w` as seconds.
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 90s, 30m, 1h, 2d)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (s, m, h, d or w; examples: 90s, 30m, 1h, 2d)"
            ))
        }
    };
    Ok(chrono::Duration::seconds(n * secs))
}

/// A time given as a duration ago (`2h`) or as RFC 3339 (`2026-12-02T10:00:00Z`).
pub fn parse_time(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    parse_duration(s)
        .map(|d| now - d)
        .map_err(|_| format!("{s:?} is neither a duration ago (2h) nor an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!(parse_duration("90s").unwrap().num_seconds(), 90);
        assert_eq!(parse_duration("1h").unwrap().num_seconds(), 3600);
        assert_eq!(parse_duration("2d").unwrap().num_seconds(), 172_800);
        assert!(parse_duration("1y").unwrap_err().contains("unknown unit"));
        let now = Utc::now();
        assert_eq!(
            parse_time("30m", now).unwrap(),
            now - chrono::Duration::minutes(30)
        );
        assert_eq!(
            parse_time("2026-12-02T10:00:00Z", now)
                .unwrap()
                .to_rfc3339(),
            "2026-12-02T10:00:00+00:00"
        );
    }

    #[test]
    fn tables_pad_columns_and_cells_lose_control_characters() {
        let mut t = Table::new(&["a", "long header"]);
        t.row(vec!["wide cell".into(), "x".into()]);
        assert_eq!(t.render(), "a          long header\nwide cell  x\n");
        assert_eq!(cell("a\nb\tc", 10), "a b c");
        assert_eq!(cell("abcdef", 4), "abc…");
    }
}
