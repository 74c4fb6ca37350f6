//! The delivery page as pure functions: data in, HTML out. Every value that comes from an event
//! or the partner goes through [`Html::text`] (escaped); only `&'static str` literals are
//! written raw, so an event cannot add markup. No script, no inline style (the page's
//! Content-Security-Policy forbids both): charts are inline SVG with presentation attributes.

use crate::audit::queries::{AttemptRow, BacklogRow, EventRow, FailureRow, FlowRow};
use chrono::{DateTime, Utc};
use std::fmt::Write;

/// HTML under construction: literals raw, everything else escaped.
#[derive(Debug, Default)]
pub struct Html(String);

impl Html {
    /// Markup written by this module (a literal: it cannot hold event data).
    pub fn raw(&mut self, s: &'static str) -> &mut Html {
        self.0.push_str(s);
        self
    }

    /// Any text, escaped for element content and quoted attribute values.
    pub fn text(&mut self, s: &str) -> &mut Html {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        self
    }

    /// A number (no escaping needed, but it goes through here so that no `format!` output is
    /// ever written raw).
    pub fn num(&mut self, n: impl std::fmt::Display) -> &mut Html {
        let mut s = String::new();
        let _ = write!(s, "{n}");
        self.text(&s)
    }

    /// `<td>text</td>`
    fn td(&mut self, s: &str) -> &mut Html {
        self.raw("<td>").text(s).raw("</td>")
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A connection paused by the dispatcher, and why.
#[derive(Debug, Clone)]
pub struct Paused {
    pub connection: String,
    pub direction: String,
    pub reason: String,
}

/// What the page shows.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub now: DateTime<Utc>,
    pub mode: &'static str,
    pub connections: Vec<String>,
    /// One-minute buckets of the last hour, starting at `hour_since`.
    pub hour: Vec<FlowRow>,
    pub hour_since: DateTime<Utc>,
    /// One-hour buckets of the last day, starting at `day_since`.
    pub day: Vec<FlowRow>,
    pub day_since: DateTime<Utc>,
    pub backlog: Vec<BacklogRow>,
    pub failures: Vec<FailureRow>,
    pub paused: Vec<Paused>,
    pub search: Option<Search>,
}

/// A search by messageId or user and what it found.
#[derive(Debug, Clone)]
pub struct Search {
    pub query: String,
    pub events: Vec<(EventRow, Vec<AttemptRow>)>,
    /// The search found more than it shows.
    pub truncated: bool,
}

const DIRECTIONS: [(&str, &str); 2] = [
    ("segment_to_iterable", "Segment → Iterable"),
    ("iterable_to_segment", "Iterable → Segment"),
];

fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn page(d: &Dashboard) -> String {
    let mut h = Html::default();
    h.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<title>Gateway delivery</title><link rel=\"stylesheet\" href=\"/ui/style.css\">")
        .raw("</head><body><header><h1>Segment ⇄ Iterable gateway</h1><p class=\"meta\">mode ")
        .text(d.mode)
        .raw(" · ")
        .text(&time(&d.now))
        .raw("</p>");
    search_form(&mut h, d.search.as_ref().map(|s| s.query.as_str()));
    h.raw("</header><main>");
    if let Some(s) = &d.search {
        search_results(&mut h, s);
    }
    paused(&mut h, &d.paused);
    h.raw("<section id=\"connections\"><h2>Events in and out</h2>");
    if d.connections.is_empty() {
        h.raw("<p class=\"empty\">No connection is configured.</p>");
    }
    for c in &d.connections {
        connection_charts(&mut h, d, c);
    }
    h.raw("</section>");
    backlog(&mut h, &d.backlog, d.now);
    failures(&mut h, &d.failures);
    h.raw("</main></body></html>");
    h.into_string()
}

fn search_form(h: &mut Html, q: Option<&str>) {
    h.raw("<form method=\"get\" action=\"/ui\" role=\"search\">")
        .raw("<input type=\"search\" name=\"q\" id=\"q\" placeholder=\"messageId, userId or email\" value=\"")
        .text(q.unwrap_or(""))
        .raw("\"><button type=\"submit\">Search</button></form>");
}

fn paused(h: &mut Html, paused: &[Paused]) {
    h.raw("<section id=\"paused\"><h2>Paused connections</h2>");
    if paused.is_empty() {
        h.raw("<p class=\"empty\">None.</p></section>");
        return;
    }
    h.raw("<table><thead><tr><th>connection</th><th>direction</th><th>reason</th></tr></thead><tbody>");
    for p in paused {
        h.raw("<tr class=\"bad\">")
            .td(&p.connection)
            .td(&p.direction)
            .td(&p.reason)
            .raw("</tr>");
    }
    h.raw("</tbody></table></section>");
}

fn connection_charts(h: &mut Html, d: &Dashboard, connection: &str) {
    h.raw("<article class=\"connection\"><h3>")
        .text(connection)
        .raw("</h3>");
    for (direction, label) in DIRECTIONS {
        let of = |rows: &[FlowRow]| -> Vec<FlowRow> {
            rows.iter()
                .filter(|r| r.connection == connection && r.direction == direction)
                .cloned()
                .collect()
        };
        let (hour, day) = (of(&d.hour), of(&d.day));
        if day.is_empty() && hour.is_empty() {
            continue;
        }
        let total = |rows: &[FlowRow]| {
            rows.iter()
                .fold((0, 0), |(i, o), r| (i + r.events_in, o + r.events_out))
        };
        let ((hi, ho), (di, dout)) = (total(&hour), total(&day));
        h.raw("<div class=\"direction\"><h4>")
            .text(label)
            .raw("</h4>");
        h.raw("<figure><figcaption>last hour: ")
            .num(hi)
            .raw(" in (bars), ")
            .num(ho)
            .raw(" out (line)</figcaption>");
        chart(h, &buckets(&hour, d.hour_since, 60, 60), "min");
        h.raw("</figure><figure><figcaption>last day: ")
            .num(di)
            .raw(" in, ")
            .num(dout)
            .raw(" out</figcaption>");
        chart(h, &buckets(&day, d.day_since, 3600, 24), "h");
        h.raw("</figure></div>");
    }
    let none = !d
        .day
        .iter()
        .chain(&d.hour)
        .any(|r| r.connection == connection);
    if none {
        h.raw("<p class=\"empty\">No traffic in the last day.</p>");
    }
    h.raw("</article>");
}

/// (in, out) per bucket, `n` buckets of `secs` from `since`.
pub fn buckets(rows: &[FlowRow], since: DateTime<Utc>, secs: i64, n: usize) -> Vec<(i64, i64)> {
    let mut out = vec![(0, 0); n];
    for r in rows {
        let i = (r.bucket - since).num_seconds() / secs;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            slot.0 += r.events_in;
            slot.1 += r.events_out;
        }
    }
    out
}

/// Bars for events in, a line for events out; the scale is the larger of both.
pub fn chart(h: &mut Html, data: &[(i64, i64)], unit: &'static str) {
    const W: f64 = 360.0;
    const H: f64 = 80.0;
    let max = data
        .iter()
        .map(|(i, o)| (*i).max(*o))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let step = W / data.len().max(1) as f64;
    h.raw("<svg class=\"chart\" viewBox=\"0 0 360 96\" width=\"360\" height=\"96\" role=\"img\"><title>")
        .raw("events in (bars) and out (line), peak ")
        .num(max as i64)
        .raw("</title>");
    for (k, (i, _)) in data.iter().enumerate().filter(|(_, (i, _))| *i > 0) {
        let bar = (*i as f64 / max) * H;
        h.raw("<rect class=\"in\" x=\"")
            .num(format!("{:.1}", k as f64 * step + 0.5))
            .raw("\" y=\"")
            .num(format!("{:.1}", H - bar))
            .raw("\" width=\"")
            .num(format!("{:.1}", (step - 1.0).max(0.5)))
            .raw("\" height=\"")
            .num(format!("{bar:.1}"))
            .raw("\"><title>")
            .num(*i)
            .raw(" in</title></rect>");
    }
    let points: Vec<String> = data
        .iter()
        .enumerate()
        .map(|(k, (_, o))| {
            format!(
                "{:.1},{:.1}",
                k as f64 * step + step / 2.0,
                H - (*o as f64 / max) * H
            )
        })
        .collect();
    h.raw("<polyline class=\"out\" fill=\"none\" points=\"")
        .text(&points.join(" "))
        .raw("\"/>");
    h.raw("<text x=\"0\" y=\"94\" class=\"axis\">-")
        .num(data.len())
        .text(unit)
        .raw("</text><text x=\"360\" y=\"94\" text-anchor=\"end\" class=\"axis\">now · peak ")
        .num(max as i64)
        .raw("</text></svg>");
}

fn age(secs: f64) -> String {
    crate::cli::audit::age(secs)
}

fn backlog(h: &mut Html, rows: &[BacklogRow], now: DateTime<Utc>) {
    h.raw("<section id=\"backlog\"><h2>Backlog</h2>");
    if rows.is_empty() {
        h.raw("<p class=\"empty\">Nothing waits for delivery.</p></section>");
        return;
    }
    h.raw(
        "<table><thead><tr><th>connection</th><th>direction</th><th>events</th><th>in flight</th>",
    )
    .raw("<th>retrying</th><th>oldest age</th><th>next due</th></tr></thead><tbody>");
    for r in rows {
        h.raw("<tr>")
            .td(&r.connection)
            .td(&r.direction)
            .td(&r.events.to_string())
            .td(&r.in_flight.to_string())
            .td(&r.waiting_to_retry.to_string())
            .td(&age(r.oldest_age_secs))
            .td(&if r.next_due_at <= now {
                "now".to_string()
            } else {
                time(&r.next_due_at)
            })
            .raw("</tr>");
    }
    h.raw("</tbody></table></section>");
}

fn failures(h: &mut Html, rows: &[FailureRow]) {
    h.raw("<section id=\"failures\"><h2>Failures by reason, last 24 hours</h2>");
    if rows.is_empty() {
        h.raw("<p class=\"empty\">None.</p></section>");
        return;
    }
    h.raw(
        "<table><thead><tr><th>connection</th><th>direction</th><th>endpoint</th><th>reason</th>",
    )
    .raw("<th>status</th><th>outcome</th><th>attempts</th><th>events</th><th>last seen</th>")
    .raw("</tr></thead><tbody>");
    for r in rows {
        h.raw("<tr>")
            .td(&r.connection)
            .td(&r.direction)
            .td(&r.endpoint)
            .td(r.reason.as_deref().unwrap_or("-"))
            .td(&r.status.map_or_else(|| "-".into(), |s| s.to_string()))
            .td(&r.outcome)
            .td(&r.attempts.to_string())
            .td(&r.events.to_string())
            .td(&time(&r.last_seen))
            .raw("</tr>");
    }
    h.raw("</tbody></table></section>");
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn search_results(h: &mut Html, s: &Search) {
    h.raw("<section id=\"results\"><h2>Search: ")
        .text(&s.query)
        .raw("</h2>");
    if s.events.is_empty() {
        h.raw("<p class=\"empty\">No event has this messageId, userId, anonymousId or email.</p></section>");
        return;
    }
    if s.truncated {
        h.raw("<p class=\"meta\">Showing the newest events only.</p>");
    }
    for (e, attempts) in &s.events {
        h.raw("<article class=\"event\"><h3>")
            .text(&e.message_id)
            .raw(" <span class=\"state ")
            .text(&e.state)
            .raw("\">")
            .text(&e.state)
            .raw("</span></h3><dl>");
        let fields: [(&'static str, String); 9] = [
            ("connection", e.connection.clone()),
            ("direction", e.direction.clone()),
            ("type", e.call_type.clone().unwrap_or_default()),
            ("user", e.user_key.clone()),
            ("received", time(&e.received_at)),
            ("why", e.state_reason.clone().unwrap_or_default()),
            ("action", e.action.clone().unwrap_or_default()),
            ("attempts", e.attempts.to_string()),
            ("replays", e.replays.to_string()),
        ];
        for (k, v) in fields {
            h.raw("<dt>").raw(k).raw("</dt><dd>").text(&v).raw("</dd>");
        }
        h.raw("</dl><details><summary>event as received</summary><pre class=\"payload\">")
            .text(&pretty(&e.payload))
            .raw("</pre></details>");
        if attempts.is_empty() {
            h.raw("<p class=\"empty\">No delivery attempt.</p>");
        }
        for a in attempts {
            h.raw("<div class=\"attempt\"><p><b>attempt ")
                .num(a.attempt)
                .raw("</b> (generation ")
                .num(a.generation)
                .raw(") · ")
                .text(&time(&a.attempted_at))
                .raw(" · ")
                .text(&a.method)
                .raw(" ")
                .text(&a.url)
                .raw(" · <span class=\"outcome ")
                .text(&a.outcome)
                .raw("\">")
                .text(&a.outcome)
                .raw("</span> · status ")
                .text(&a.status.map_or_else(|| "-".into(), |s| s.to_string()))
                .raw(" · ")
                .num(a.events)
                .raw(" events</p>");
            if let Some(err) = &a.error {
                h.raw("<p class=\"error\">").text(err).raw("</p>");
            }
            h.raw("<details><summary>mapped request</summary><pre>")
                .text(&a.request_body.as_ref().map(pretty).unwrap_or_default())
                .raw("</pre></details><details><summary>answer</summary><pre>")
                .text(a.response_body.as_deref().unwrap_or(""))
                .raw("</pre></details></div>");
        }
        h.raw("</article>");
    }
    h.raw("</section>");
}

/// The page's style sheet (served from /ui/style.css: the CSP allows no inline style).
pub const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0}.meta{color:#9aa3b5;margin:0}
form{margin-left:auto}input[type=search]{width:320px;padding:6px}button{padding:6px 12px}
main{padding:12px 24px}section{margin-bottom:24px}h2{font-size:16px;border-bottom:1px solid #d5d9e0}
.connection{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:8px 16px;margin-bottom:12px}
.direction{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}.direction h4{width:100%;margin:4px 0}
figure{margin:0}figcaption{color:#5b6477}
.chart rect.in{fill:#6c8ef5}.chart polyline.out{stroke:#12a150;stroke-width:2}.chart .axis{font-size:10px;fill:#5b6477}
table{border-collapse:collapse;background:#fff}th,td{border:1px solid #d5d9e0;padding:4px 8px;text-align:left;vertical-align:top}
tr.bad td{background:#fde8e8}.empty{color:#5b6477}
.event{background:#fff;border:1px solid #d5d9e0;border-radius:6px;padding:8px 16px;margin-bottom:12px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px}dt{color:#5b6477}dd{margin:0;word-break:break-all}
pre{background:#f0f2f5;padding:8px;overflow:auto;max-height:320px;white-space:pre-wrap;word-break:break-all}
.state,.outcome{padding:1px 6px;border-radius:4px;background:#e4e7ec;font-size:12px}
.delivered{background:#d3f5df}.dead,.failed{background:#fde8e8}.pending,.retry,.in_flight{background:#fff3cd}
.attempt{border-top:1px dashed #d5d9e0;padding-top:4px}.error{color:#b42318}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_literals_are_not() {
        let mut h = Html::default();
        h.raw("<b>")
            .text("<script>alert('x')</script> & \"q\"")
            .raw("</b>");
        assert_eq!(
            h.into_string(),
            "<b>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;</b>"
        );
    }

    #[test]
    fn buckets_place_rows_by_time_and_drop_those_outside() {
        let since = DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let row = |min: i64, i: i64, o: i64| FlowRow {
            connection: "c".into(),
            direction: "segment_to_iterable".into(),
            bucket: since + chrono::Duration::minutes(min),
            events_in: i,
            events_out: o,
        };
        let b = buckets(&[row(0, 3, 1), row(2, 5, 0), row(90, 7, 7)], since, 60, 3);
        assert_eq!(b, vec![(3, 1), (0, 0), (5, 0)]);
    }
}
