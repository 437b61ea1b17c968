//! A sweep: one scenario run under every combination of a few settings, with a table of
//! outcomes per setting (`zorgmesh sim sweep SCENARIO --vary batch_window_ms=50,200,1000
//! --vary mesh_degree=4,6,8`).

use crate::report::Report;
use crate::scenario::{Scenario, ScenarioError};
use serde::Serialize;

/// Short names of the settings operators vary most, and where they live in a scenario.
/// Any other setting is named by its dotted path (`links.jitter_ms`).
pub const SHORT_NAMES: &[(&str, &str)] = &[
    ("batch_window_ms", "publishing.batch_window_ms"),
    ("batch_max_entries", "publishing.batch_max_entries"),
    ("mesh_degree", "gossip.mesh_degree"),
    ("sync_interval_ms", "sync_interval_ms"),
    ("latency_ms", "links.latency_ms"),
    ("jitter_ms", "links.jitter_ms"),
    ("loss", "links.loss"),
    ("updates", "workload.updates"),
    ("patients", "workload.patients"),
    ("duration_s", "duration_s"),
];

/// Most runs one sweep may make.
pub const MAX_RUNS: usize = 1_000;

/// One setting and the values it takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Variation {
    /// The name as given.
    pub name: String,
    /// Its dotted path in the scenario.
    pub path: String,
    /// The values, as TOML values.
    pub values: Vec<toml::Value>,
}

/// Why a sweep cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A `--vary` that is not `name=value,value...`.
    #[error("--vary {0:?}: expected name=value[,value...]")]
    Syntax(String),
    /// A setting the scenario does not have.
    #[error(
        "--vary {name}: the scenario has no setting {path} (short names: {})",
        short_names()
    )]
    UnknownSetting {
        /// As given.
        name: String,
        /// Where it was looked for.
        path: String,
    },
    /// Too many combinations.
    #[error("{0} runs (at most {MAX_RUNS})")]
    TooMany(usize),
    /// One combination makes an invalid scenario.
    #[error("with {setting}: {source}")]
    Invalid {
        /// The combination.
        setting: String,
        /// Why.
        source: ScenarioError,
    },
    /// The scenario text is not TOML.
    #[error("the scenario is not valid: {0}")]
    Parse(#[from] toml::de::Error),
}

fn short_names() -> String {
    SHORT_NAMES
        .iter()
        .map(|(s, _)| *s)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Variation {
    /// Parses `name=v1,v2,...`; each value is read as TOML (a number, a boolean, or a
    /// string).
    pub fn parse(arg: &str) -> Result<Self, SweepError> {
        let (name, values) = arg
            .split_once('=')
            .ok_or_else(|| SweepError::Syntax(arg.into()))?;
        let name = name.trim();
        if name.is_empty() || values.trim().is_empty() {
            return Err(SweepError::Syntax(arg.into()));
        }
        let path = SHORT_NAMES
            .iter()
            .find(|(short, _)| *short == name)
            .map_or(name, |(_, path)| path)
            .to_owned();
        let values = values
            .split(',')
            .map(|v| {
                let v = v.trim();
                toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .unwrap_or_else(|| toml::Value::String(v.to_owned()))
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            path,
            values,
        })
    }
}

/// One run of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    /// `name=value` of every varied setting.
    pub setting: Setting,
    /// The run's report.
    pub report: Report,
}

/// Every run of a sweep, and the best settings by each measure.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// The scenario's name.
    pub scenario: String,
    /// The seed every run used.
    pub seed: u64,
    /// The runs, in the order of the combinations (the last `--vary` changing fastest).
    pub rows: Vec<SweepRow>,
    /// The row with the lowest p99 propagation among those that converged (ties: fewer
    /// bytes received per node).
    pub best_propagation: Option<usize>,
    /// The row with the fewest bytes received per node among those that converged.
    pub best_traffic: Option<usize>,
}

/// `name=value` of every varied setting of one run.
pub type Setting = Vec<(String, String)>;

/// Every combination of the variations applied to `text`, each checked as a scenario.
pub fn combinations(
    text: &str,
    variations: &[Variation],
) -> Result<Vec<(Setting, Scenario)>, SweepError> {
    let base: toml::Table = toml::from_str(text)?;
    let runs: usize = variations.iter().map(|v| v.values.len()).product();
    if runs > MAX_RUNS {
        return Err(SweepError::TooMany(runs));
    }
    for variation in variations {
        if lookup(&base, &variation.path).is_none() && !has_default(&variation.path) {
            return Err(SweepError::UnknownSetting {
                name: variation.name.clone(),
                path: variation.path.clone(),
            });
        }
    }
    let mut out = Vec::with_capacity(runs);
    for n in 0..runs {
        let mut table = base.clone();
        let mut setting = Vec::new();
        let mut rest = n;
        let mut chosen = vec![0; variations.len()];
        for (i, variation) in variations.iter().enumerate().rev() {
            chosen[i] = rest % variation.values.len();
            rest /= variation.values.len();
        }
        for (variation, &pick) in variations.iter().zip(&chosen) {
            let value = variation.values[pick].clone();
            setting.push((variation.name.clone(), display(&value)));
            set(&mut table, &variation.path, value);
        }
        let text = toml::to_string(&table).expect("a TOML table serializes");
        let scenario = Scenario::parse(&text).map_err(|source| SweepError::Invalid {
            setting: label(&setting),
            source,
        })?;
        out.push((setting, scenario));
    }
    Ok(out)
}

/// `a=1 b=2`, for people.
pub fn label(setting: &[(String, String)]) -> String {
    setting
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn display(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Settings a scenario may leave out (they have defaults).
fn has_default(path: &str) -> bool {
    matches!(
        path,
        "sync_interval_ms"
            | "gossip.mesh_degree"
            | "publishing.batch_window_ms"
            | "publishing.batch_max_entries"
            | "links.jitter_ms"
            | "links.loss"
    )
}

fn lookup<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn set(table: &mut toml::Table, path: &str, value: toml::Value) {
    let parts: Vec<&str> = path.split('.').collect();
    let mut current = table;
    for part in &parts[..parts.len() - 1] {
        current = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a path through tables");
    }
    current.insert(parts[parts.len() - 1].to_owned(), value);
}

impl SweepReport {
    /// Collects the rows and picks the best.
    pub fn new(scenario: String, seed: u64, rows: Vec<SweepRow>) -> Self {
        let converged = || rows.iter().enumerate().filter(|(_, r)| r.report.converged);
        let best_propagation = converged()
            .min_by(|(_, a), (_, b)| {
                a.report
                    .propagation
                    .p99_ms
                    .cmp(&b.report.propagation.p99_ms)
                    .then(
                        a.report
                            .traffic
                            .received_per_node
                            .total_cmp(&b.report.traffic.received_per_node),
                    )
            })
            .map(|(i, _)| i);
        let best_traffic = converged()
            .min_by(|(_, a), (_, b)| {
                a.report
                    .traffic
                    .received_per_node
                    .total_cmp(&b.report.traffic.received_per_node)
            })
            .map(|(i, _)| i);
        Self {
            scenario,
            seed,
            rows,
            best_propagation,
            best_traffic,
        }
    }

    /// The sweep as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a sweep report serializes")
    }

    /// A Markdown table of the outcomes per setting.
    pub fn table(&self) -> String {
        let mut out = format!(
            "sweep of scenario {} (seed {}), {} runs\n\n",
            self.scenario,
            self.seed,
            self.rows.len()
        );
        let names: Vec<&str> = self
            .rows
            .first()
            .map(|r| r.setting.iter().map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        for name in &names {
            out += &format!("| {name} ");
        }
        out += "| p50 ms | p95 ms | p99 ms | received per node | per useful byte | converged after s | |\n";
        out += &"|---".repeat(names.len() + 7);
        out += "|\n";
        for (i, row) in self.rows.iter().enumerate() {
            for (_, value) in &row.setting {
                out += &format!("| {value} ");
            }
            let r = &row.report;
            let mut marks = Vec::new();
            if self.best_propagation == Some(i) {
                marks.push("best p99");
            }
            if self.best_traffic == Some(i) {
                marks.push("least traffic");
            }
            out += &format!(
                "| {} | {} | {} | {:.0} | {:.2} | {} | {} |\n",
                r.propagation.p50_ms,
                r.propagation.p95_ms,
                r.propagation.p99_ms,
                r.traffic.received_per_node,
                r.traffic.received_per_useful_byte,
                r.converged_at_s
                    .map_or("not converged".into(), |at| format!(
                        "{:.1}",
                        at - r.settle_from_s
                    )),
                marks.join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../scenarios/small.toml");

    #[test]
    fn every_combination_is_made_in_order_and_checked() {
        let vary = [
            Variation::parse("batch_window_ms=50,1000").unwrap(),
            Variation::parse("mesh_degree=4,6,8").unwrap(),
        ];
        let runs = combinations(TEXT, &vary).unwrap();
        assert_eq!(runs.len(), 6);
        assert_eq!(label(&runs[0].0), "batch_window_ms=50 mesh_degree=4");
        assert_eq!(label(&runs[5].0), "batch_window_ms=1000 mesh_degree=8");
        assert_eq!(runs[5].1.publishing.batch_window_ms, 1000);
        assert_eq!(runs[5].1.gossip.mesh_degree, 8);
        // A dotted path works too, and a default setting can be varied.
        let loss = Variation::parse("links.loss=0.0,0.05").unwrap();
        assert_eq!(combinations(TEXT, &[loss]).unwrap()[1].1.links.loss, 0.05);
    }

    #[test]
    fn bad_variations_say_what_is_wrong() {
        assert!(matches!(
            Variation::parse("mesh_degree"),
            Err(SweepError::Syntax(_))
        ));
        let unknown = Variation::parse("mesh_size=4").unwrap();
        let error = combinations(TEXT, &[unknown]).unwrap_err().to_string();
        assert!(error.contains("no setting mesh_size"), "{error}");
        let invalid = Variation::parse("mesh_degree=4,40").unwrap();
        let error = combinations(TEXT, &[invalid]).unwrap_err().to_string();
        assert!(error.contains("mesh_degree=40"), "{error}");
        let many = Variation::parse(&format!(
            "updates={}",
            (1..=1001)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ))
        .unwrap();
        assert!(matches!(
            combinations(TEXT, &[many]),
            Err(SweepError::TooMany(1001))
        ));
    }
}
