//! The report: one row per measurement (this project, apalis-redis, ratio), notes on
//! how each was taken, the machine, and the profile of this project's drain path;
//! printed as Markdown and written to `target/bench-report.md`.

use std::fmt::Write;

use crate::util::Machine;

/// One side's result.
#[derive(Debug, Clone)]
pub enum Value {
    /// A measured number.
    Num(f64),
    /// Did not happen within the cap: the true value is above it.
    Above(f64),
    /// Not measured, and why.
    Skipped(String),
}

/// Which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub unit: &'static str,
    pub better: Better,
    pub fleet: Value,
    pub apalis: Value,
}

impl Row {
    pub fn new(scenario: impl Into<String>, unit: &'static str, better: Better) -> Row {
        Row {
            scenario: scenario.into(),
            unit,
            better,
            fleet: Value::Skipped("not run".into()),
            apalis: Value::Skipped("not run".into()),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v >= 10_000.0 {
        // thousands separators for readability
        let s = format!("{:.0}", v);
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_value(v: &Value) -> String {
    match v {
        Value::Num(x) => fmt_num(*x),
        Value::Above(x) => format!("> {} (cap)", fmt_num(*x)),
        Value::Skipped(why) => format!("— ({why})"),
    }
}

/// "How many times better this project is", in the row's direction.
fn fmt_ratio(row: &Row) -> String {
    let advantage = |fleet: f64, apalis: f64| match row.better {
        Better::Higher => fleet / apalis,
        Better::Lower => apalis / fleet,
    };
    match (&row.fleet, &row.apalis) {
        (Value::Num(f), Value::Num(a)) if *f > 0.0 && *a > 0.0 => {
            format!("{:.2}×", advantage(*f, *a))
        }
        (Value::Num(f), Value::Above(a)) if row.better == Better::Lower && *f > 0.0 => {
            format!("> {:.1}×", a / f)
        }
        _ => "—".into(),
    }
}

pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub profile: Vec<String>,
}

impl Report {
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(s, "## Results\n");
        let _ = writeln!(
            s,
            "Machine: {} CPUs (`nproc`), {}, Linux {}, Redis {} (AOF off, `--save \"\"`), load average at start {}.\n",
            m.nproc, m.cpu_model, m.kernel, m.redis_version, m.load_at_start
        );
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "| Scenario | Unit | This project | apalis-redis 1.0 | Ratio (this project's advantage) |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|");
        for r in &self.rows {
            let dir = match r.better {
                Better::Higher => "higher is better",
                Better::Lower => "lower is better",
            };
            let _ = writeln!(
                s,
                "| {} | {} ({dir}) | {} | {} | {} |",
                r.scenario,
                r.unit,
                fmt_value(&r.fleet),
                fmt_value(&r.apalis),
                fmt_ratio(r)
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nHow each row was measured:\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if !self.profile.is_empty() {
            let _ = writeln!(s, "\n## Profile of the drain path\n");
            for p in &self.profile {
                let _ = writeln!(s, "{p}");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_follows_the_direction() {
        let mut r = Row::new("x", "jobs/s", Better::Higher);
        r.fleet = Value::Num(200.0);
        r.apalis = Value::Num(100.0);
        assert_eq!(fmt_ratio(&r), "2.00×");
        r.better = Better::Lower;
        assert_eq!(fmt_ratio(&r), "0.50×");
        r.apalis = Value::Above(1000.0);
        assert_eq!(fmt_ratio(&r), "> 5.0×");
    }

    #[test]
    fn big_numbers_get_separators() {
        assert_eq!(fmt_num(123456.7), "123,457");
        assert_eq!(fmt_num(12.34), "12.3");
    }
}
