//! Reading a server's `/metrics` as Prometheus would: fetched from the
//! metrics listener and parsed with an independent text-format parser
//! (`prometheus-parse`), so the exposition format is checked by more than
//! our own writing of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use prometheus_parse::{Scrape, Value};

use crate::TestApp;

/// One scrape of `app`'s metrics listener.
pub async fn scrape(app: &TestApp) -> Metrics {
    let base = app.metrics_address.as_ref().expect("metrics are on");
    let response = app.client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = crate::header(&response, "content-type");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Metrics { scrape: Scrape::parse(lines).expect("the text format parses"), text }
}

/// A parsed scrape.
#[derive(Debug)]
pub struct Metrics {
    /// The parsed samples.
    pub scrape: Scrape,
    /// The text as served.
    pub text: String,
}

impl Metrics {
    /// The value of the one sample of `name` whose labels include `labels`
    /// (a histogram's `_count` and `_sum` are samples of their own); 0 when
    /// there is none yet, a panic when several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&prometheus_parse::Sample> = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} matches {} samples", matching.len());
        matching.first().map_or(0.0, |s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(_) | Value::Summary(_) => panic!("{name} is not a single value"),
        })
    }

    /// Whether `name` has a `# TYPE` of `kind`.
    pub fn has_type(&self, name: &str, kind: &str) -> bool {
        self.text.lines().any(|l| l == format!("# TYPE {name} {kind}"))
    }
}
