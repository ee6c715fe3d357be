//! The bench report: figures with their same-run baselines, as JSON
//! (`report.json`) and as a markdown table (`report.md`).

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::stats::Summary;

/// What a figure's numbers mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds per operation.
    Ns,
    /// Nanoseconds per MiB of data.
    NsPerMiB,
    /// Nanoseconds per 4 KiB zone page.
    NsPerPage,
    /// Operations per second.
    PerSec,
}

impl Unit {
    /// The JSON name.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Ns => "ns",
            Unit::NsPerMiB => "ns/MiB",
            Unit::NsPerPage => "ns/page",
            Unit::PerSec => "1/s",
        }
    }

    /// A human-readable value in this unit.
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Ns => format_ns(v),
            Unit::NsPerMiB => format!("{}/MiB", format_ns(v)),
            Unit::NsPerPage => format!("{}/page", format_ns(v)),
            Unit::PerSec => {
                if v >= 10_000.0 {
                    format!("{:.0} k/s", v / 1000.0)
                } else {
                    format!("{v:.0}/s")
                }
            }
        }
    }
}

/// `1234.5` ns → `1.23 µs`.
pub fn format_ns(ns: f64) -> String {
    let a = ns.abs();
    if a < 1_000.0 {
        format!("{ns:.0} ns")
    } else if a < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else if a < 1_000_000_000.0 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// The reference a figure is compared with, measured in the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// What it is.
    pub what: String,
    /// Its samples (same unit as the figure).
    pub value: Summary,
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Stable key, e.g. `sim.call.echo.empty`.
    pub key: String,
    /// Section heading.
    pub section: String,
    /// What was measured.
    pub what: String,
    /// Unit of `value` and the baseline.
    pub unit: Unit,
    /// The samples' summary; the headline number is the median.
    pub value: Summary,
    /// What it is compared with.
    pub baseline: Option<Baseline>,
    /// Conditions worth knowing (engine, sizes, ...).
    pub note: String,
}

impl Figure {
    /// median / baseline median.
    pub fn ratio(&self) -> Option<f64> {
        let b = self.baseline.as_ref()?;
        (b.value.median != 0.0).then(|| self.value.median / b.value.median)
    }
}

/// A section that did not run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Section.
    pub section: String,
    /// Why.
    pub reason: String,
}

/// Everything one `tetd-vmm bench` run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Facts about the run (host, engine, iteration counts, durations).
    pub meta: Map<String, Value>,
    /// Figures in measurement order.
    pub figures: Vec<Figure>,
    /// Sections that could not run.
    pub skipped: Vec<Skipped>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
}

fn summary_json(s: &Summary) -> Value {
    json!({"n": s.n, "min": s.min, "median": s.median, "p99": s.p99, "mean": s.mean})
}

impl Report {
    /// Add a figure.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        key: &str,
        section: &str,
        what: &str,
        unit: Unit,
        value: Summary,
        baseline: Option<(&str, Summary)>,
        note: &str,
    ) {
        self.figures.push(Figure {
            key: key.into(),
            section: section.into(),
            what: what.into(),
            unit,
            value,
            baseline: baseline.map(|(w, v)| Baseline {
                what: w.into(),
                value: v,
            }),
            note: note.into(),
        });
    }

    /// Record that `section` did not run.
    pub fn skip(&mut self, section: &str, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            section: section.into(),
            reason: reason.into(),
        });
    }

    /// The figure with `key`.
    pub fn get(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// `report.json`: `{schema_version, meta, figures: [...], skipped, notes}`.
    pub fn to_json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                json!({
                    "key": f.key,
                    "section": f.section,
                    "what": f.what,
                    "unit": f.unit.name(),
                    "value": summary_json(&f.value),
                    "baseline": f.baseline.as_ref().map(|b| json!({
                        "what": b.what,
                        "value": summary_json(&b.value),
                    })),
                    "ratio": f.ratio(),
                    "note": f.note,
                })
            })
            .collect();
        let skipped: Vec<Value> = self
            .skipped
            .iter()
            .map(|s| json!({"section": s.section, "reason": s.reason}))
            .collect();
        json!({
            "schema_version": 1,
            "meta": Value::Object(self.meta.clone()),
            "figures": figures,
            "skipped": skipped,
            "notes": self.notes,
        })
    }

    /// The markdown table (one table, a section column), skipped sections
    /// and notes.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| section | measurement | median | min | p99 | n | baseline (same run) | baseline median | ratio |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---:|---:|");
        for f in &self.figures {
            // a per-page figure is compared with a whole operation
            let bunit = if f.unit == Unit::NsPerPage {
                Unit::Ns
            } else {
                f.unit
            };
            let (bw, bv) = match &f.baseline {
                Some(b) => (b.what.clone(), bunit.format(b.value.median)),
                None => ("—".into(), "—".into()),
            };
            let ratio = f.ratio().map_or("—".into(), |r| {
                if r >= 100.0 {
                    format!("{r:.0}×")
                } else if r >= 10.0 {
                    format!("{r:.1}×")
                } else {
                    format!("{r:.2}×")
                }
            });
            let (min, p99) = if f.value.n > 1 {
                (f.unit.format(f.value.min), f.unit.format(f.value.p99))
            } else {
                ("".into(), "".into())
            };
            let what = if f.note.is_empty() {
                f.what.clone()
            } else {
                format!("{} ({})", f.what, f.note)
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                f.section,
                what.replace('|', "\\|"),
                f.unit.format(f.value.median),
                min,
                p99,
                f.value.n,
                bw.replace('|', "\\|"),
                bv,
                ratio
            );
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "\nNot measured in this run:\n");
            for k in &self.skipped {
                let _ = writeln!(s, "* {}: {}", k.section, k.reason);
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nNotes:\n");
            for n in &self.notes {
                let _ = writeln!(s, "* {n}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_table_and_json() {
        let mut r = Report::default();
        r.add(
            "a.b",
            "sim",
            "call",
            Unit::Ns,
            Summary::of(&[2000.0, 3000.0, 4000.0]).unwrap(),
            Some(("syscall", Summary::single(1000.0))),
            "echo",
        );
        r.skip("guest", "no kernel");
        let f = r.get("a.b").unwrap();
        assert_eq!(f.ratio(), Some(3.0));
        let md = r.to_markdown();
        assert!(md.contains("| sim | call (echo) | 3.00 µs | 2.00 µs | 4.00 µs | 3 | syscall | 1.00 µs | 3.00× |"), "{md}");
        assert!(md.contains("* guest: no kernel"));
        let j = r.to_json();
        assert_eq!(j["figures"][0]["ratio"], 3.0);
        assert_eq!(j["figures"][0]["value"]["median"], 3000.0);
        assert_eq!(j["skipped"][0]["section"], "guest");
        assert_eq!(format_ns(1_500_000.0), "1.50 ms");
        assert_eq!(Unit::PerSec.format(123_456.0), "123 k/s");
    }
}
