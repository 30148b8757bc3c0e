//! A strict parser for the Prometheus text exposition format (0.0.4), as
//! much of it as `/metrics` serves: `# HELP` and `# TYPE` lines, samples
//! with labels, a value and an optional timestamp. The report reads the
//! counters it prints from it, and the smoke test reads what it scraped
//! with it, so both see the numbers as Prometheus would.

use std::collections::HashSet;
use std::fmt;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, as exposed (`buttress_bulkhead_calls_total`).
    pub name: String,
    /// The labels, in the order of the line.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample has every one of `labels` (and maybe others).
    fn matches(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    samples: Vec<Sample>,
    types: Vec<(String, String)>,
}

/// Why a text is not a valid exposition: the line (from 1) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

impl Exposition {
    /// Parses `text`. Strict: a malformed line, an unknown type, a second
    /// `# TYPE` for one name, a `# TYPE` after the name's samples, or the
    /// same series twice is an error.
    ///
    /// ```
    /// use buttress_demo::Exposition;
    ///
    /// let text = "# TYPE hits_total counter\n\
    ///             hits_total{name=\"a\",kind=\"x\"} 3\n\
    ///             hits_total{name=\"a\",kind=\"y\"} 4\n";
    /// let e = Exposition::parse(text).unwrap();
    /// assert_eq!(e.kind("hits_total"), Some("counter"));
    /// assert_eq!(e.sum("hits_total", &[("name", "a")]), Some(7.0));
    /// assert_eq!(e.value("hits_total", &[("kind", "y")]), Some(4.0));
    /// assert_eq!(e.sum("hits_total", &[("name", "b")]), None);
    /// assert!(Exposition::parse("hits_total{name=a} 3\n").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut out = Exposition::default();
        let mut seen_series: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
        let mut sampled: HashSet<String> = HashSet::new();
        for (index, line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let err = |message: String| ParseError {
                line: line_no,
                message,
            };
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let comment = comment.trim_start_matches([' ', '\t']);
                let mut words = comment.splitn(3, [' ', '\t']);
                match words.next() {
                    Some("TYPE") => {
                        let name = words.next().unwrap_or("");
                        let kind = words.next().unwrap_or("").trim();
                        if !is_metric_name(name) {
                            return Err(err(format!("bad metric name `{name}` in # TYPE")));
                        }
                        if !TYPES.contains(&kind) {
                            return Err(err(format!("unknown type `{kind}` for `{name}`")));
                        }
                        if out.types.iter().any(|(n, _)| n == name) {
                            return Err(err(format!("a second # TYPE for `{name}`")));
                        }
                        if sampled.contains(name) {
                            return Err(err(format!("# TYPE for `{name}` after its samples")));
                        }
                        out.types.push((name.to_owned(), kind.to_owned()));
                    }
                    Some("HELP") => {
                        let name = words.next().unwrap_or("");
                        if !is_metric_name(name) {
                            return Err(err(format!("bad metric name `{name}` in # HELP")));
                        }
                    }
                    // Any other comment is allowed, and means nothing.
                    _ => {}
                }
                continue;
            }
            let sample = parse_sample(line).map_err(err)?;
            let mut key_labels = sample.labels.clone();
            key_labels.sort();
            if !seen_series.insert((sample.name.clone(), key_labels)) {
                return Err(err(format!("series `{}` appears twice", sample.name)));
            }
            sampled.insert(sample.name.clone());
            out.samples.push(sample);
        }
        Ok(out)
    }

    /// Every sample, in the order of the text.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The `# TYPE` of `name`, if the text gave one.
    pub fn kind(&self, name: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
    }

    /// The samples of `name` that have every one of `labels`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(labels))
    }

    /// The sum of the samples of `name` that have every one of `labels`;
    /// `None` when there is no such sample.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let sum = self.select(name, labels).fold(0.0, |acc, s| {
            found = true;
            acc + s.value
        });
        found.then_some(sum)
    }

    /// The value of the one sample of `name` that has every one of
    /// `labels`; `None` when there is none or more than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.select(name, labels);
        let first = matching.next()?;
        matching.next().is_none().then_some(first.value)
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample's labels, in the order of its line.
type Labels = Vec<(String, String)>;

/// `name{labels} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or_else(|| format!("no value in `{line}`"))?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("bad metric name `{name}`"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields
        .next()
        .ok_or_else(|| format!("no value for `{name}`"))?;
    let value = parse_value(value).ok_or_else(|| format!("bad value `{value}` for `{name}`"))?;
    if let Some(timestamp) = fields.next() {
        if timestamp.parse::<i64>().is_err() {
            return Err(format!("bad timestamp `{timestamp}` for `{name}`"));
        }
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the value of `{name}`"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels after `{`, up to and including `}`; returns them and what
/// follows the `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s
            .find('=')
            .ok_or_else(|| "a label without `=`".to_owned())?;
        let key = s[..eq].trim_matches([' ', '\t']);
        if !is_label_name(key) {
            return Err(format!("bad label name `{key}`"));
        }
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("label `{key}` appears twice"));
        }
        s = s[eq + 1..].trim_start_matches([' ', '\t']);
        let quoted = s
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label `{key}` is not quoted"))?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of label `{key}` does not end")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(format!("a bad escape in the value of label `{key}`")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = quoted[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("`,` or `}}` expected after label `{key}`"));
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => {
            // Rust's parser also takes "inf", "infinity" and "nan" in any
            // case, which the format does not.
            if text
                .chars()
                .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
            {
                return None;
            }
            text.parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_prometheus_exporter_writes() {
        let text = "\
# HELP buttress_bulkhead_calls_total Calls of a bulkhead, by kind.
# TYPE buttress_bulkhead_calls_total counter
buttress_bulkhead_calls_total{name=\"gateway\",kind=\"rejected\"} 12
buttress_bulkhead_calls_total{name=\"gateway\",kind=\"permitted\"} 340

# TYPE http_server_request_duration summary
http_server_request_duration{name=\"gateway\",quantile=\"0.5\"} 0.0123
http_server_request_duration_sum{name=\"gateway\"} 4.5e1
http_server_request_duration_count{name=\"gateway\"} 360
odd{l=\"a \\\"quoted\\\" \\\\ value\\n\",} +Inf 1700000000000
";
        let e = Exposition::parse(text).unwrap();
        assert_eq!(e.samples().len(), 6);
        assert_eq!(e.kind("buttress_bulkhead_calls_total"), Some("counter"));
        assert_eq!(e.kind("http_server_request_duration"), Some("summary"));
        assert_eq!(
            e.value(
                "buttress_bulkhead_calls_total",
                &[("name", "gateway"), ("kind", "rejected")]
            ),
            Some(12.0)
        );
        // Two samples match: no single value, but a sum.
        assert_eq!(e.value("buttress_bulkhead_calls_total", &[]), None);
        assert_eq!(e.sum("buttress_bulkhead_calls_total", &[]), Some(352.0));
        assert_eq!(e.value("http_server_request_duration_sum", &[]), Some(45.0));
        let odd = e.select("odd", &[]).next().unwrap();
        assert_eq!(odd.label("l"), Some("a \"quoted\" \\ value\n"));
        assert_eq!(odd.value, f64::INFINITY);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line() {
        for (text, line) in [
            ("ok 1\nbad-name 1\n", 2),
            ("x{a=\"1\"\n", 1),
            ("x{a=1} 1\n", 1),
            ("x{a=\"1\",a=\"2\"} 1\n", 1),
            ("x{a=\"\\t\"} 1\n", 1),
            ("x{1a=\"1\"} 1\n", 1),
            ("x\n", 1),
            ("x one\n", 1),
            ("x inf\n", 1),
            ("x 1 2 3\n", 1),
            ("x 1 soon\n", 1),
            ("# TYPE x countr\n", 1),
            ("# TYPE x counter\n# TYPE x gauge\n", 2),
            ("x 1\n# TYPE x counter\n", 2),
            ("x{a=\"1\"} 1\n\nx{a=\"1\"} 2\n", 3),
            ("x{a=\"1\",b=\"2\"} 1\nx{b=\"2\",a=\"1\"} 2\n", 2),
        ] {
            let err = Exposition::parse(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
        }
    }

    #[test]
    fn comments_blank_lines_and_special_values_pass() {
        let e =
            Exposition::parse("# a comment\n\n# HELP x text\nx -Inf\ny NaN\nz 1.5e-3\n").unwrap();
        assert_eq!(e.value("x", &[]), Some(f64::NEG_INFINITY));
        assert!(e.value("y", &[]).unwrap().is_nan());
        assert_eq!(e.value("z", &[]), Some(0.0015));
        assert_eq!(e.kind("x"), None);
    }
}
