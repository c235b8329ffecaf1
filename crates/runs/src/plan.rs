//! What a run will do, decided before it starts (pure): the datasets it computes, the dates
//! each recomputes, and the partitions it owns.

use std::collections::{BTreeMap, BTreeSet};

use strata_medallion::pipeline::Pipeline;
use strata_medallion::stages::{owned_keys, RunOptions, Window};
use strata_medallion::types::{Grain, ReadMode};

use crate::error::{Error, Result};

/// What a run will do, fixed before it starts: per dataset, the window it recomputes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The cleaned datasets to compute, with the dates each recomputes (none: all).
    pub cleaned: Vec<(String, Option<Window>)>,
    /// The models to compute, in dependency order, with the dates each recomputes.
    pub models: Vec<(String, Option<Window>)>,
    /// The sources to land.
    pub sources: Vec<String>,
    /// Dataset → the partition keys the run owns and replaces (empty: the whole dataset).
    pub boundary: BTreeMap<String, Vec<String>>,
}

/// The plan of a run (pure): which datasets it computes over which dates, and the partitions it
/// owns. A cleaned dataset of month grain recomputes whole months; a model recomputes the dates
/// its inputs change on, plus the `reads_days` after them that read those dates (a 7-day
/// rolling sum of a changed day U changes U through U+6). A dataset a model reads whole
/// (`reads = { users = "all" }`) is computed whole.
pub fn plan(pipeline: &Pipeline, options: &RunOptions) -> Result<Plan> {
    let chosen = select(pipeline, &options.only)?;
    let selected = |name: &str| options.only.is_empty() || chosen.contains(name);
    // A dataset a model reads whole is computed whole: its rows for every date must be there,
    // whatever the window (a user who signed up in January is joined to February's orders).
    let read_whole: BTreeSet<&str> = pipeline
        .model_order
        .iter()
        .filter(|m| selected(m))
        .flat_map(|m| pipeline.models[m].reads.iter())
        .filter(|(_, mode)| **mode == ReadMode::All)
        .map(|(d, _)| d.as_str())
        .collect();
    let window_of = |name: &str| options.window.filter(|_| !read_whole.contains(name));
    let mut boundary = BTreeMap::new();
    let mut windows: BTreeMap<String, Option<Window>> = BTreeMap::new();
    let mut cleaned = Vec::new();
    let mut sources = BTreeSet::new();
    for (name, def) in &pipeline.cleaned {
        if !selected(name) {
            continue;
        }
        sources.insert(def.source.clone());
        // A reference dataset (no business date) is computed and published whole.
        let w = match (window_of(name), def.partition_column()) {
            (_, None) => None,
            (Some(w), Some(_)) if def.grain == Grain::Month => Some(w.whole_months()),
            (other, Some(_)) => other,
        };
        let keys: Vec<String> = match (w, def.partition_column()) {
            (Some(w), Some(part)) => owned_keys(&part, def.grain, w).into_iter().collect(),
            _ => Vec::new(),
        };
        let mut q_keys: Vec<String> = w
            .map(|w| owned_keys("quarantine_date", def.grain, w).into_iter().collect())
            .unwrap_or_default();
        if w.is_some() {
            q_keys.push(format!("quarantine_date={}", strata_publish::names::NULL_PARTITION));
        }
        boundary.insert(name.clone(), keys);
        boundary.insert(format!("{name}.quarantine"), q_keys);
        windows.insert(name.clone(), w);
        cleaned.push((name.clone(), w));
    }
    let mut models = Vec::new();
    for name in &pipeline.model_order {
        if !selected(name) {
            continue;
        }
        let def = &pipeline.models[name];
        // The dates to recompute: where the inputs it reads by date change, plus the model's
        // look-back spill; everything when there is no window. An input read whole changes no
        // particular date of the model (a changed customer changes every order's row): the run
        // recomputes its own window, and a restatement of every date is a full run.
        // A model without a business date is a full-refresh model: computed whole.
        let w = window_of(name).filter(|_| def.business_date.is_some()).map(|w| {
            let ranges: Vec<Window> = pipeline.model_deps[name]
                .iter()
                .filter(|d| def.reads.get(*d) != Some(&ReadMode::All))
                .filter_map(|d| windows.get(d).copied().flatten())
                .collect();
            let (from, to) = if ranges.is_empty() {
                (w.from, w.to)
            } else {
                (
                    ranges.iter().map(|r| r.from).min().expect("non-empty"),
                    ranges.iter().map(|r| r.to).max().expect("non-empty"),
                )
            };
            let w = Window { from, to: to + chrono::Duration::days(def.reads_days.into()) };
            if def.grain == Grain::Month {
                w.whole_months()
            } else {
                w
            }
        });
        let keys: Vec<String> = match (w, def.partition_column()) {
            (Some(w), Some(part)) => owned_keys(&part, def.grain, w).into_iter().collect(),
            _ => Vec::new(),
        };
        boundary.insert(name.clone(), keys);
        windows.insert(name.clone(), w);
        models.push((name.clone(), w));
    }
    let sources = if options.only.is_empty() {
        pipeline.sources.keys().cloned().collect()
    } else {
        sources.into_iter().collect()
    };
    Ok(Plan { cleaned, models, sources, boundary })
}

/// The datasets `--only` selects (pure). Each selector is a cleaned dataset or model by name,
/// a glob of names (`daily_*`), `+X` (X and everything it reads, transitively: what a rebuild
/// of X needs) or `X+` (X and everything that reads it: what a change of X affects). A
/// selector that matches nothing is an error listing the datasets.
pub fn select(pipeline: &Pipeline, selectors: &[String]) -> Result<BTreeSet<String>> {
    let names: Vec<&String> = pipeline.cleaned.keys().chain(pipeline.models.keys()).collect();
    let computed = |n: &str| pipeline.cleaned.contains_key(n) || pipeline.models.contains_key(n);
    let mut out = BTreeSet::new();
    for sel in selectors {
        let up = sel.starts_with('+');
        let down = sel.len() > 1 && sel.ends_with('+');
        let core = sel.trim_start_matches('+').trim_end_matches('+');
        let matched: Vec<&String> = if core.contains(['*', '?', '[']) {
            let pattern = glob::Pattern::new(core)
                .map_err(|e| Error::Plan(format!("--only {sel:?} is not a valid pattern ({e})")))?;
            names.iter().copied().filter(|n| pattern.matches(n)).collect()
        } else {
            names.iter().copied().filter(|n| n.as_str() == core).collect()
        };
        if matched.is_empty() {
            return Err(Error::Plan(format!(
                "--only names {sel:?}, which matches no cleaned dataset or model of {} \
                 (datasets: {}); +X adds what X reads, X+ what reads X",
                pipeline.file.display(),
                names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        for m in matched {
            out.insert(m.clone());
            let mut stack = vec![m.clone()];
            while let Some(n) = stack.pop().filter(|_| up) {
                for d in pipeline.model_deps.get(&n).into_iter().flatten() {
                    if computed(d) && out.insert(d.clone()) {
                        stack.push(d.clone());
                    }
                }
            }
            let mut stack = vec![m.clone()];
            while let Some(n) = stack.pop().filter(|_| down) {
                for (model, deps) in &pipeline.model_deps {
                    if deps.contains(&n) && out.insert(model.clone()) {
                        stack.push(model.clone());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Why a run replaces a partition, or a whole dataset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "why")]
pub enum Why {
    /// A date the run was asked for.
    InWindow,
    /// The quarantine's rows whose business date is missing: every windowed run owns them.
    Undated,
    /// One of the `lookback_days` before the window, recomputed for late data.
    Lookback,
    /// In a month of the window (month grain recomputes whole months).
    WholeMonth,
    /// Recomputed because an input it reads by date changes on that date.
    Downstream { inputs: Vec<String> },
    /// After the window: the model reads `reads_days` back, so a changed day U changes its
    /// days U through U + reads_days.
    Spillover { reads_days: u32 },
    /// The whole dataset: a run without a window.
    FullRun,
    /// The whole dataset: it has no business date (a reference dataset, a full-refresh model).
    NoBusinessDate,
    /// The whole dataset: a model reads it whole (`reads = { x = "all" }`).
    ReadWhole { by: Vec<String> },
}

/// What a run does to one dataset, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub dataset: String,
    /// Replaced whole (with the reason), or partition by partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whole: Option<Why>,
    /// Partition key → why it is replaced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<(String, Why)>,
}

/// Why the plan replaces what it does (pure): for every dataset it writes, the whole dataset
/// with the reason, or each owned partition with its reason. `lookback_days` tells the dates
/// asked for from the look-back ones; it is the same plan [`plan`] made, explained.
pub fn explain(pipeline: &Pipeline, options: &RunOptions, plan: &Plan) -> Vec<Step> {
    let lookback = chrono::Duration::days(pipeline.settings.lookback_days.into());
    let asked = options.window.map(|w| Window { from: (w.from + lookback).min(w.to), to: w.to });
    let read_whole: BTreeMap<&str, Vec<String>> = {
        let mut m: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (model, _) in &plan.models {
            for (d, mode) in &pipeline.models[model].reads {
                if *mode == ReadMode::All {
                    m.entry(d.as_str()).or_default().push(model.clone());
                }
            }
        }
        m
    };
    let day_of = |key: &str| -> Option<chrono::NaiveDate> {
        let value = key.split('/').next()?.split_once('=')?.1;
        chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()
    };
    let mut steps = Vec::new();
    let whole_why = |name: &str, dated: bool| -> Why {
        if !dated {
            Why::NoBusinessDate
        } else if let Some(by) = read_whole.get(name) {
            Why::ReadWhole { by: by.clone() }
        } else {
            Why::FullRun
        }
    };
    for (name, w) in &plan.cleaned {
        let def = &pipeline.cleaned[name];
        let dated = def.business_date.is_some();
        for ds in [name.clone(), format!("{name}.quarantine")] {
            let keys = &plan.boundary[&ds];
            if keys.is_empty() || w.is_none() {
                steps.push(Step {
                    dataset: ds,
                    whole: Some(whole_why(name, dated)),
                    partitions: vec![],
                });
                continue;
            }
            let partitions = keys
                .iter()
                .map(|k| {
                    let why = match (day_of(k), asked) {
                        _ if k.ends_with(strata_publish::names::NULL_PARTITION) => Why::Undated,
                        _ if def.grain == Grain::Month => Why::WholeMonth,
                        (Some(d), Some(a)) if d >= a.from && d <= a.to => Why::InWindow,
                        (Some(_), Some(_)) => Why::Lookback,
                        // The quarantine's rows without a date.
                        _ => Why::InWindow,
                    };
                    (k.clone(), why)
                })
                .collect();
            steps.push(Step { dataset: ds, whole: None, partitions });
        }
    }
    let windows: BTreeMap<&str, Option<Window>> =
        plan.cleaned.iter().chain(&plan.models).map(|(n, w)| (n.as_str(), *w)).collect();
    for (name, w) in &plan.models {
        let def = &pipeline.models[name];
        let keys = &plan.boundary[name];
        let Some(w) = w.filter(|_| !keys.is_empty()) else {
            let dated = def.business_date.is_some();
            steps.push(Step {
                dataset: name.clone(),
                whole: Some(whole_why(name, dated)),
                partitions: vec![],
            });
            continue;
        };
        let _ = w;
        let ran = options.window;
        let partitions = keys
            .iter()
            .map(|k| {
                let why = match (day_of(k), asked, ran) {
                    _ if def.grain == Grain::Month => Why::WholeMonth,
                    (Some(d), Some(a), _) if d >= a.from && d <= a.to => Why::InWindow,
                    (Some(d), _, Some(r)) if d >= r.from && d <= r.to => Why::Lookback,
                    (Some(d), _, Some(r)) if d > r.to => {
                        Why::Spillover { reads_days: def.reads_days }
                    }
                    _ => {
                        // Before the window: an input recomputes that date (a month-grain
                        // input's whole month, say).
                        let inputs = pipeline.model_deps[name]
                            .iter()
                            .filter(|dep| def.reads.get(*dep) != Some(&ReadMode::All))
                            .filter(|dep| {
                                windows.get(dep.as_str()).copied().flatten().is_some_and(|iw| {
                                    day_of(k).is_some_and(|d| d >= iw.from && d <= iw.to)
                                })
                            })
                            .cloned()
                            .collect();
                        Why::Downstream { inputs }
                    }
                };
                (k.clone(), why)
            })
            .collect();
        steps.push(Step { dataset: name.clone(), whole: None, partitions });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn shop() -> Pipeline {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/shop/strata.toml");
        Pipeline::load(&file).unwrap_or_else(|e| panic!("{}", e.message))
    }

    fn options(window: Option<(&str, &str)>, only: &[&str]) -> RunOptions {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_default();
        RunOptions {
            window: window.map(|(f, t)| Window { from: day(f), to: day(t) }),
            only: only.iter().map(|s| s.to_string()).collect(),
            memory_limit: 256 << 20,
            target_partitions: 1,
            force: false,
            adopt: Vec::new(),
            refresh_references: false,
            lease: std::time::Duration::from_secs(60),
            clock: None,
            backfill: Default::default(),
        }
    }

    fn window_of<'a>(list: &'a [(String, Option<Window>)], name: &str) -> Option<&'a Window> {
        list.iter().find(|(n, _)| n == name).and_then(|(_, w)| w.as_ref())
    }

    #[test]
    fn a_full_run_computes_everything_and_owns_whole_datasets() {
        let p = plan(&shop(), &options(None, &[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.sources, ["customers", "orders"]);
        let names: Vec<&str> = p.models.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["daily_revenue", "revenue_7d"], "dependency order");
        assert!(p.boundary.values().all(Vec::is_empty), "whole datasets: {:?}", p.boundary);
        assert_eq!(p.boundary.len(), 6, "two cleaned, their quarantines, two models");
    }

    #[test]
    fn a_window_spills_over_into_the_days_that_read_it() {
        let p = plan(&shop(), &options(Some(("2026-01-02", "2026-01-03")), &[]))
            .unwrap_or_else(|e| panic!("{e}"));
        let orders = window_of(&p.cleaned, "orders").copied();
        assert_eq!(
            orders.map(|w| (w.from.to_string(), w.to.to_string())),
            Some(("2026-01-02".into(), "2026-01-03".into()))
        );
        // daily_revenue reads only its day; revenue_7d's days read the 6 days before them.
        let daily = window_of(&p.models, "daily_revenue").map(|w| w.to.to_string());
        assert_eq!(daily.as_deref(), Some("2026-01-03"));
        let rolling =
            window_of(&p.models, "revenue_7d").map(|w| (w.from.to_string(), w.to.to_string()));
        assert_eq!(rolling, Some(("2026-01-02".into(), "2026-01-09".into())));
        assert_eq!(p.boundary["revenue_7d"].len(), 8, "{:?}", p.boundary["revenue_7d"]);
        assert_eq!(p.boundary["orders"], ["order_date=2026-01-02", "order_date=2026-01-03"]);
        // A month-grain dataset recomputes the whole month.
        let customers =
            window_of(&p.cleaned, "customers").map(|w| (w.from.to_string(), w.to.to_string()));
        assert_eq!(customers, Some(("2026-01-01".into(), "2026-01-31".into())));
        assert_eq!(p.boundary["customers"], ["signup_date_month=2026-01"]);
        // Quarantined rows without a date are owned by every windowed run of their dataset.
        assert!(p.boundary["orders.quarantine"]
            .iter()
            .any(|k| k.contains("__HIVE_DEFAULT_PARTITION__")));
    }

    /// A model joining a month-grain input by date recomputes the input's whole month; read
    /// whole (`reads = { customers = "all" }`), the input does not widen the model's window.
    #[test]
    fn an_input_read_whole_does_not_widen_a_models_window() {
        let mut shop = shop();
        shop.model_deps.get_mut("daily_revenue").map(|d| d.insert("customers".into()));
        let days = |p: &Pipeline| {
            let plan = plan(p, &options(Some(("2026-01-02", "2026-01-03")), &[]))
                .unwrap_or_else(|e| panic!("{e}"));
            window_of(&plan.models, "daily_revenue").map(|w| (w.from.to_string(), w.to.to_string()))
        };
        assert_eq!(days(&shop), Some(("2026-01-01".into(), "2026-01-31".into())));
        if let Some(m) = shop.models.get_mut("daily_revenue") {
            m.reads.insert("customers".into(), ReadMode::All);
        }
        assert_eq!(days(&shop), Some(("2026-01-02".into(), "2026-01-03".into())));
        // ...and is computed whole in every run that computes the model.
        let plan = plan(&shop, &options(Some(("2026-01-02", "2026-01-03")), &[]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(window_of(&plan.cleaned, "customers"), None);
        assert!(plan.boundary["customers"].is_empty(), "the whole dataset");
        assert_eq!(plan.boundary["orders"].len(), 2);
    }

    /// The seed's case: a 30-day rolling model whose input changed on June 15 replaces June 15
    /// through July 14, and the plan says why for each day.
    #[test]
    fn a_changed_day_spills_over_into_the_rolling_days_that_read_it() {
        let mut shop = shop();
        if let Some(m) = shop.models.get_mut("revenue_7d") {
            m.reads_days = 29;
        }
        shop.settings.lookback_days = 0;
        let opts = options(Some(("2026-06-15", "2026-06-15")), &[]);
        let p = plan(&shop, &opts).unwrap_or_else(|e| panic!("{e}"));
        let rolling =
            window_of(&p.models, "revenue_7d").map(|w| (w.from.to_string(), w.to.to_string()));
        assert_eq!(rolling, Some(("2026-06-15".into(), "2026-07-14".into())));
        let steps = explain(&shop, &opts, &p);
        let step = steps.iter().find(|s| s.dataset == "revenue_7d").unwrap();
        assert_eq!(step.partitions.len(), 30);
        assert_eq!(step.partitions[0], ("order_date=2026-06-15".into(), Why::InWindow));
        assert_eq!(
            step.partitions[29],
            ("order_date=2026-07-14".into(), Why::Spillover { reads_days: 29 })
        );
        // The month-grain customers recompute June whole; orders only the day.
        let customers = steps.iter().find(|s| s.dataset == "customers").unwrap();
        assert_eq!(
            customers.partitions,
            vec![("signup_date_month=2026-06".into(), Why::WholeMonth)]
        );
        // With a look-back of 2 days, the two days before are look-back days.
        shop.settings.lookback_days = 2;
        let opts = options(Some(("2026-06-13", "2026-06-15")), &[]);
        let p = plan(&shop, &opts).unwrap_or_else(|e| panic!("{e}"));
        let orders = explain(&shop, &opts, &p).into_iter().find(|s| s.dataset == "orders").unwrap();
        let whys: Vec<&Why> = orders.partitions.iter().map(|(_, w)| w).collect();
        assert_eq!(whys, [&Why::Lookback, &Why::Lookback, &Why::InWindow]);
        // A full run replaces every dataset whole.
        let full = options(None, &[]);
        let p = plan(&shop, &full).unwrap_or_else(|e| panic!("{e}"));
        assert!(explain(&shop, &full, &p).iter().all(|s| s.whole == Some(Why::FullRun)));
    }

    /// Selectors: names, globs, `+X` (upstream) and `X+` (downstream).
    #[test]
    fn selectors_pick_a_dataset_with_its_upstream_or_downstream() {
        let shop = shop();
        let set = |sels: &[&str]| {
            let sels: Vec<String> = sels.iter().map(|s| s.to_string()).collect();
            select(&shop, &sels).map(|s| s.into_iter().collect::<Vec<_>>())
        };
        assert_eq!(set(&["orders"]).unwrap(), ["orders"]);
        assert_eq!(set(&["orders+"]).unwrap(), ["daily_revenue", "orders", "revenue_7d"]);
        assert_eq!(set(&["+revenue_7d"]).unwrap(), ["daily_revenue", "orders", "revenue_7d"]);
        assert_eq!(set(&["+daily_revenue"]).unwrap(), ["daily_revenue", "orders"]);
        assert_eq!(set(&["*revenue*"]).unwrap(), ["daily_revenue", "revenue_7d"]);
        assert_eq!(
            set(&["cust*", "daily_revenue+"]).unwrap(),
            ["customers", "daily_revenue", "revenue_7d"]
        );
        assert!(set(&["nosuch*"]).unwrap_err().to_string().contains("matches no cleaned dataset"));
        // A change of orders, planned downstream: the models follow its window, with spillover.
        let mut opts = options(Some(("2026-01-02", "2026-01-02")), &["orders+"]);
        opts.only = vec!["orders+".into()];
        let p = plan(&shop, &opts).unwrap_or_else(|e| panic!("{e}"));
        assert!(p.cleaned.iter().all(|(n, _)| n == "orders"));
        let rolling =
            window_of(&p.models, "revenue_7d").map(|w| (w.from.to_string(), w.to.to_string()));
        assert_eq!(rolling, Some(("2026-01-02".into(), "2026-01-08".into())));
    }

    #[test]
    fn only_selects_datasets_and_their_sources() {
        let p = plan(&shop(), &options(Some(("2026-01-02", "2026-01-02")), &["daily_revenue"]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(p.cleaned.is_empty() && p.sources.is_empty());
        assert_eq!(p.boundary.keys().collect::<Vec<_>>(), ["daily_revenue"]);
        let err = plan(&shop(), &options(None, &["nosuch"])).unwrap_err();
        assert!(err.to_string().contains("--only names \"nosuch\""), "{err}");
    }
}
