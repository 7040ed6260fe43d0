//! A Prometheus `/metrics` page, parsed by a real text-format parser (a malformed page fails the
//! test), and read the way a test asks: a series' value by name and labels, the set of series.

use std::collections::BTreeSet;

use prom_text_format_parser::{Type, ValueType};

/// One sample: its series' name (a histogram's with `_bucket`, `_sum` or `_count`), its labels
/// sorted, its value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Each metric family: its name, its `# TYPE` (`counter`, `gauge`, `histogram`, ...) and
    /// whether it has a `# HELP` line.
    pub families: Vec<(String, String, bool)>,
}

impl Scrape {
    /// Panics, showing the page, if it is not the Prometheus text format.
    pub fn parse(text: &str) -> Scrape {
        let parsed = prom_text_format_parser::Scrape::parse(text)
            .unwrap_or_else(|e| panic!("not the Prometheus text format ({e:?}):\n{text}"));
        let mut samples = Vec::new();
        let mut families = Vec::new();
        for metric in &parsed.metrics {
            families.push((
                metric.name.clone(),
                metric.kind.to_string(),
                metric.help_desc.is_some(),
            ));
            for sample in &metric.samples {
                let suffix = match (metric.kind, sample.value.value_type) {
                    (Type::Histogram, ValueType::Sample) => "_bucket",
                    (Type::Histogram | Type::Summary, ValueType::Sum) => "_sum",
                    (Type::Histogram | Type::Summary, ValueType::Count) => "_count",
                    _ => "",
                };
                let mut labels: Vec<_> = sample
                    .labels
                    .iter()
                    .map(|l| (l.key.clone(), l.value.clone()))
                    .collect();
                labels.sort();
                samples.push(Sample {
                    name: format!("{}{suffix}", metric.name),
                    labels,
                    value: sample.value.value.as_f64(),
                });
            }
        }
        Scrape { samples, families }
    }

    /// GETs `url` (with `token` as bearer, if any) and parses it; `None` if it does not answer.
    pub async fn get(url: &str, token: Option<&str>) -> Option<Scrape> {
        let mut request = reqwest::Client::new().get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.ok()?;
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        Some(Scrape::parse(&response.text().await.ok()?))
    }

    /// The sum of the samples of `name` whose labels include `labels` (0 if there are none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .sum::<f64>()
            + 0.0
    }

    /// Every series, as `name[(label, value), ...]`.
    pub fn series(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect()
    }
}
