//! fleet-demo-agent: the bundled DEMO agent. It answers questions about a small
//! dataset of FICTIONAL companies (`agents/demo/financials.csv`) with no API keys
//! and no network, so the whole queue can be tried, and its answers checked, on
//! any machine.
//!
//! Usage: `fleet-demo-agent --data financials.csv`. The question comes from the
//! file named by `FLEET_QUERY_FILE`, else from `FLEET_QUERY`, else from stdin.
//! The answer is one JSON object on stdout: `{"answer": "...", "company": ...,
//! "metric": ..., "year": ..., "value": ..., "source": "financials.csv"}`.
//!
//! Exit codes follow sysexits, which the command runtime maps to error classes:
//! 64 bad usage, 65 a question it cannot answer, 66 the data file is unreadable
//! (all permanent: trying again gives the same result).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Value, json};

const USAGE: &str = "usage: fleet-demo-agent --data PATH\n\
    The question is read from the file named by FLEET_QUERY_FILE, else from\n\
    FLEET_QUERY, else from stdin. Prints a JSON object with the answer.";
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const METRIC_NAMES: &str = "revenue, operating income, net income, net margin, operating margin";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data_path = match parse_args(&args) {
        Ok(Some(path)) => path,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let csv = match std::fs::read_to_string(&data_path) {
        Ok(csv) => csv,
        Err(e) => {
            eprintln!("cannot read {}: {e}", data_path.display());
            return ExitCode::from(EX_NOINPUT);
        }
    };
    let data = match Dataset::parse(&csv) {
        Ok(data) => data,
        Err(message) => {
            eprintln!("{}: {message}", data_path.display());
            return ExitCode::from(EX_DATAERR);
        }
    };
    let question = match read_question() {
        Ok(question) if !question.trim().is_empty() => question,
        Ok(_) => {
            eprintln!("no question given (stdin, FLEET_QUERY and FLEET_QUERY_FILE are empty)");
            return ExitCode::from(EX_USAGE);
        }
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(EX_DATAERR);
        }
    };
    match answer_question(&question, &data, &source_name(&data_path)) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("cannot answer: {message}");
            ExitCode::from(EX_DATAERR)
        }
    }
}

/// `Ok(None)` asks for the usage text.
fn parse_args(args: &[String]) -> Result<Option<PathBuf>, String> {
    let mut data = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--data" => {
                let path = rest.next().ok_or("--data needs a path")?;
                data = Some(PathBuf::from(path));
            }
            other => match other.strip_prefix("--data=") {
                Some(path) => data = Some(PathBuf::from(path)),
                None => return Err(format!("unknown argument: {other}")),
            },
        }
    }
    data.map(Some)
        .ok_or_else(|| "--data is required".to_string())
}

fn read_question() -> Result<String, String> {
    if let Some(path) = std::env::var_os("FLEET_QUERY_FILE").filter(|p| !p.is_empty()) {
        return std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read FLEET_QUERY_FILE {}: {e}", path.display()));
    }
    if let Some(query) = std::env::var_os("FLEET_QUERY").filter(|q| !q.is_empty()) {
        return query
            .into_string()
            .map_err(|_| "FLEET_QUERY is not UTF-8".to_string());
    }
    let mut question = String::new();
    std::io::stdin()
        .read_to_string(&mut question)
        .map_err(|e| format!("cannot read the question from stdin: {e}"))?;
    Ok(question)
}

fn source_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[derive(Debug)]
struct Company {
    name: String,
    ticker: String,
}

/// One company's figures for one fiscal year, in USD millions.
#[derive(Debug)]
struct Record {
    company: usize,
    year: u16,
    revenue: i64,
    operating_income: i64,
    net_income: i64,
}

#[derive(Debug)]
struct Dataset {
    companies: Vec<Company>,
    records: Vec<Record>,
    first_year: u16,
    last_year: u16,
}

const HEADER: &str = "company,ticker,fiscal_year,revenue,operating_income,net_income";

impl Dataset {
    fn parse(csv: &str) -> Result<Dataset, String> {
        let mut lines = csv.lines().enumerate();
        match lines.next() {
            Some((_, header)) if header.trim() == HEADER => {}
            _ => return Err(format!("the first line must be `{HEADER}`")),
        }
        let mut companies: Vec<Company> = Vec::new();
        let mut records = Vec::new();
        for (index, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let at = |message: &str| format!("line {}: {message}", index + 1);
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [name, ticker, year, revenue, operating_income, net_income] = fields[..] else {
                return Err(at("expected 6 comma-separated fields"));
            };
            let number = |field: &str| -> Result<i64, String> {
                field
                    .parse()
                    .map_err(|_| at(&format!("not a number: {field}")))
            };
            let company = match companies.iter().position(|c| c.ticker == ticker) {
                Some(existing) => existing,
                None => {
                    companies.push(Company {
                        name: name.to_string(),
                        ticker: ticker.to_string(),
                    });
                    companies.len() - 1
                }
            };
            records.push(Record {
                company,
                year: year
                    .parse()
                    .map_err(|_| at(&format!("not a year: {year}")))?,
                revenue: number(revenue)?,
                operating_income: number(operating_income)?,
                net_income: number(net_income)?,
            });
        }
        let first_year = records.iter().map(|r| r.year).min().ok_or("no data rows")?;
        let last_year = records.iter().map(|r| r.year).max().ok_or("no data rows")?;
        Ok(Dataset {
            companies,
            records,
            first_year,
            last_year,
        })
    }

    fn record(&self, company: usize, year: u16) -> Result<&Record, String> {
        self.records
            .iter()
            .find(|r| r.company == company && r.year == year)
            .ok_or_else(|| format!("no FY{year} figures for {}", self.label(company)))
    }

    fn value(&self, company: usize, metric: Metric, year: u16) -> Result<f64, String> {
        metric.of(self.record(company, year)?).ok_or_else(|| {
            format!(
                "{} is undefined for {} in FY{year} (no revenue)",
                metric.label(),
                self.label(company)
            )
        })
    }

    /// "Acme Robotics (ACME)".
    fn label(&self, company: usize) -> String {
        let c = &self.companies[company];
        format!("{} ({})", c.name, c.ticker)
    }

    fn covered_years(&self) -> String {
        format!("FY{}–FY{}", self.first_year, self.last_year)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    Revenue,
    OperatingIncome,
    NetIncome,
    NetMargin,
    OperatingMargin,
}

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::Revenue => "revenue",
            Metric::OperatingIncome => "operating_income",
            Metric::NetIncome => "net_income",
            Metric::NetMargin => "net_margin",
            Metric::OperatingMargin => "operating_margin",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Revenue => "revenue",
            Metric::OperatingIncome => "operating income",
            Metric::NetIncome => "net income",
            Metric::NetMargin => "net margin",
            Metric::OperatingMargin => "operating margin",
        }
    }

    /// Margins are percentages of revenue; the rest are amounts in USD millions.
    fn is_margin(self) -> bool {
        matches!(self, Metric::NetMargin | Metric::OperatingMargin)
    }

    fn unit(self) -> &'static str {
        if self.is_margin() {
            "percent"
        } else {
            "USD millions"
        }
    }

    fn of(self, r: &Record) -> Option<f64> {
        let percent_of_revenue =
            |part: i64| (r.revenue != 0).then(|| part as f64 * 100.0 / r.revenue as f64);
        match self {
            Metric::Revenue => Some(r.revenue as f64),
            Metric::OperatingIncome => Some(r.operating_income as f64),
            Metric::NetIncome => Some(r.net_income as f64),
            Metric::NetMargin => percent_of_revenue(r.net_income),
            Metric::OperatingMargin => percent_of_revenue(r.operating_income),
        }
    }

    /// "$1,342 million" or "9.2%".
    fn show(self, value: f64) -> String {
        if self.is_margin() {
            format!("{value:.1}%")
        } else {
            money(value)
        }
    }

    /// The value as it goes into the JSON: whole millions, or a percentage to one decimal.
    fn json(self, value: f64) -> Value {
        if self.is_margin() {
            json!(round1(value))
        } else {
            json!(value.round() as i64)
        }
    }
}

/// What a question asks for.
#[derive(Debug, Clone, PartialEq)]
enum Question {
    /// One figure of one company in one year.
    Value {
        company: usize,
        metric: Metric,
        year: u16,
        year_given: bool,
    },
    /// The change of a figure between two years.
    Growth {
        company: usize,
        metric: Metric,
        from: u16,
        to: u16,
    },
    /// The company with the highest (or lowest) figure in a year.
    Leader {
        metric: Metric,
        year: u16,
        highest: bool,
    },
    /// The year in which a company's figure was highest (or lowest).
    BestYear {
        company: usize,
        metric: Metric,
        highest: bool,
    },
    /// Two companies side by side in one year.
    Compare {
        first: usize,
        second: usize,
        metric: Metric,
        year: u16,
    },
}

const GROWTH_WORDS: &[&str] = &[
    "grow",
    "grew",
    "grown",
    "growth",
    "growing",
    "increase",
    "increased",
    "change",
    "changed",
    "rise",
    "rose",
    "decline",
    "declined",
    "fall",
    "fell",
    "drop",
    "dropped",
];
const HIGHEST_WORDS: &[&str] = &[
    "highest",
    "largest",
    "most",
    "biggest",
    "top",
    "led",
    "lead",
    "leader",
    "leading",
    "best",
    "greatest",
    "strongest",
];
const LOWEST_WORDS: &[&str] = &["lowest", "smallest", "least", "worst", "weakest", "fewest"];

/// Lowercase words of the question; punctuation and apostrophes split words, so
/// "Acme Robotics'" and "ACME's" both yield the company's words.
fn words(question: &str) -> Vec<String> {
    question
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_question(question: &str, data: &Dataset) -> Result<Question, String> {
    let words = words(question);
    let has_any = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
    let companies = find_companies(&words, data);
    let years = find_years(&words);
    for &year in &years {
        if year < data.first_year || year > data.last_year {
            return Err(format!(
                "there is no data for FY{year}; the data covers {}",
                data.covered_years()
            ));
        }
    }
    let metric = find_metric(&words);
    let need_metric =
        || metric.ok_or_else(|| format!("which figure? The data holds {METRIC_NAMES}"));
    let one_year = || match years[..] {
        [] => Ok((data.last_year, false)),
        [year] => Ok((year, true)),
        _ => Err("name one year for this kind of question".to_string()),
    };
    let highest = !has_any(LOWEST_WORDS);
    let superlative = has_any(HIGHEST_WORDS) || has_any(LOWEST_WORDS);

    match companies[..] {
        [] if superlative || has_any(&["which", "who"]) => Ok(Question::Leader {
            metric: need_metric()?,
            year: one_year()?.0,
            highest,
        }),
        [] => Err(format!(
            "no company from the data is named; the companies are {}",
            data.companies
                .iter()
                .map(|c| format!("{} ({})", c.name, c.ticker))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        [company] if superlative && has_any(&["year", "when"]) => Ok(Question::BestYear {
            company,
            metric: need_metric()?,
            highest,
        }),
        [company] if has_any(GROWTH_WORDS) || years.len() >= 2 => {
            let (from, to) = match years[..] {
                [] => (data.first_year, data.last_year),
                [year] => (year.checked_sub(1).unwrap_or(year), year),
                _ => (
                    *years.iter().min().unwrap_or(&data.first_year),
                    *years.iter().max().unwrap_or(&data.last_year),
                ),
            };
            if from < data.first_year {
                return Err(format!(
                    "there is no FY{from} to compare FY{to} with; the data covers {}",
                    data.covered_years()
                ));
            }
            Ok(Question::Growth {
                company,
                metric: metric.unwrap_or(Metric::Revenue),
                from,
                to,
            })
        }
        [company] => {
            let (year, year_given) = one_year()?;
            Ok(Question::Value {
                company,
                metric: need_metric()?,
                year,
                year_given,
            })
        }
        [first, second, ..] => Ok(Question::Compare {
            first,
            second,
            metric: metric.unwrap_or(Metric::Revenue),
            year: one_year()?.0,
        }),
    }
}

/// Companies named in the question (full name, first word of the name, or
/// ticker), in the order they appear.
fn find_companies(words: &[String], data: &Dataset) -> Vec<usize> {
    let mut found: Vec<(usize, usize)> = Vec::new();
    for (index, company) in data.companies.iter().enumerate() {
        let name = self::words(&company.name);
        let first_word = name.iter().take(1).cloned().collect();
        let aliases = [name.clone(), first_word, self::words(&company.ticker)];
        let position = aliases
            .iter()
            .filter(|alias| !alias.is_empty())
            .filter_map(|alias| {
                words
                    .windows(alias.len())
                    .position(|window| window == alias.as_slice())
            })
            .min();
        if let Some(position) = position {
            found.push((position, index));
        }
    }
    found.sort();
    found.into_iter().map(|(_, index)| index).collect()
}

/// Four-digit years, also written `FY2023`, in order, without repeats.
fn find_years(words: &[String]) -> Vec<u16> {
    let mut years = Vec::new();
    for word in words {
        let digits = word.strip_prefix("fy").unwrap_or(word);
        if digits.len() == 4
            && let Ok(year) = digits.parse::<u16>()
            && (1900..=2100).contains(&year)
            && !years.contains(&year)
        {
            years.push(year);
        }
    }
    years
}

fn find_metric(words: &[String]) -> Option<Metric> {
    let text = format!(" {} ", words.join(" "));
    let has = |phrases: &[&str]| phrases.iter().any(|p| text.contains(&format!(" {p} ")));
    // Margins first: "operating margin" also holds "operating", "profit margin" holds "profit".
    if has(&["operating margin", "operating margins", "ebit margin"]) {
        Some(Metric::OperatingMargin)
    } else if has(&["margin", "margins"]) {
        Some(Metric::NetMargin)
    } else if has(&[
        "operating income",
        "operating profit",
        "operating profits",
        "ebit",
    ]) {
        Some(Metric::OperatingIncome)
    } else if has(&[
        "net income",
        "income",
        "profit",
        "profits",
        "profitable",
        "earnings",
        "bottom line",
    ]) {
        Some(Metric::NetIncome)
    } else if has(&["revenue", "revenues", "sales", "turnover", "top line"]) {
        Some(Metric::Revenue)
    } else {
        None
    }
}

/// The JSON object printed for a question, with the answer in words.
fn answer_question(question: &str, data: &Dataset, source: &str) -> Result<Value, String> {
    let parsed = parse_question(question, data)?;
    let mut answer = answer(&parsed, data)?;
    answer["source"] = json!(source);
    Ok(answer)
}

fn answer(question: &Question, data: &Dataset) -> Result<Value, String> {
    match *question {
        Question::Value {
            company,
            metric,
            year,
            year_given,
        } => {
            let value = data.value(company, metric, year)?;
            let r = data.record(company, year)?;
            let mut text = format!(
                "{} {} in FY{year}{}: {}",
                data.label(company),
                metric.label(),
                if year_given {
                    ""
                } else {
                    " (the latest year in the data)"
                },
                metric.show(value)
            );
            if metric.is_margin() {
                let part = if metric == Metric::NetMargin {
                    ("net income", r.net_income)
                } else {
                    ("operating income", r.operating_income)
                };
                text += &format!(
                    " ({} {} on revenue of {})",
                    part.0,
                    money(part.1 as f64),
                    money(r.revenue as f64)
                );
            }
            Ok(json!({
                "answer": text + ".",
                "company": data.companies[company].name,
                "ticker": data.companies[company].ticker,
                "metric": metric.key(),
                "year": year,
                "value": metric.json(value),
                "unit": metric.unit(),
            }))
        }
        Question::Growth {
            company,
            metric,
            from,
            to,
        } => {
            let start = data.value(company, metric, from)?;
            let end = data.value(company, metric, to)?;
            let who = format!("{} {}", data.label(company), metric.label());
            let span = format!(
                "from FY{from} ({}) to FY{to} ({})",
                metric.show(start),
                metric.show(end)
            );
            let (text, value, unit) = if metric.is_margin() {
                let points = end - start;
                (
                    format!("{who} {} {span}", change_in_points(points)),
                    json!(round1(points)),
                    "percentage points",
                )
            } else if start > 0.0 {
                let percent = (end - start) * 100.0 / start;
                let verb = if percent >= 0.0 { "grew" } else { "fell" };
                (
                    format!("{who} {verb} {:.1}% {span}", percent.abs()),
                    json!(round1(percent)),
                    "percent",
                )
            } else {
                // A growth rate from zero or from a loss means nothing; give the change.
                let change = end - start;
                let sign = if change >= 0.0 { "+" } else { "" };
                (
                    format!(
                        "{who} changed by {sign}{} {span}; a growth rate is undefined when the starting value is not positive",
                        money(change)
                    ),
                    json!(change.round() as i64),
                    "USD millions",
                )
            };
            Ok(json!({
                "answer": text + ".",
                "company": data.companies[company].name,
                "ticker": data.companies[company].ticker,
                "metric": metric.key(),
                "year": to,
                "from_year": from,
                "start_value": metric.json(start),
                "end_value": metric.json(end),
                "value": value,
                "unit": unit,
            }))
        }
        Question::Leader {
            metric,
            year,
            highest,
        } => {
            let mut ranking = Vec::new();
            for company in 0..data.companies.len() {
                ranking.push((data.value(company, metric, year)?, company));
            }
            ranking.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            if !highest {
                ranking.reverse();
            }
            let [(value, leader), (next_value, next), ..] = ranking[..] else {
                return Err("the data needs at least two companies to rank".into());
            };
            let text = format!(
                "{} had the {} {} in FY{year}: {}. Next: {} at {}.",
                data.label(leader),
                if highest { "highest" } else { "lowest" },
                metric.label(),
                metric.show(value),
                data.label(next),
                metric.show(next_value)
            );
            Ok(json!({
                "answer": text,
                "company": data.companies[leader].name,
                "ticker": data.companies[leader].ticker,
                "metric": metric.key(),
                "year": year,
                "value": metric.json(value),
                "unit": metric.unit(),
                "runner_up": data.companies[next].name,
            }))
        }
        Question::BestYear {
            company,
            metric,
            highest,
        } => {
            let mut by_year = Vec::new();
            for year in data.first_year..=data.last_year {
                by_year.push((data.value(company, metric, year)?, year));
            }
            let pick = if highest {
                by_year.iter().max_by(|a, b| a.0.total_cmp(&b.0))
            } else {
                by_year.iter().min_by(|a, b| a.0.total_cmp(&b.0))
            };
            let &(value, year) = pick.ok_or("no years in the data")?;
            let text = format!(
                "{} had its {} {} of {} in FY{year}: {}.",
                data.label(company),
                if highest { "highest" } else { "lowest" },
                metric.label(),
                data.covered_years(),
                metric.show(value)
            );
            Ok(json!({
                "answer": text,
                "company": data.companies[company].name,
                "ticker": data.companies[company].ticker,
                "metric": metric.key(),
                "year": year,
                "value": metric.json(value),
                "unit": metric.unit(),
            }))
        }
        Question::Compare {
            first,
            second,
            metric,
            year,
        } => {
            // Margins are compared as shown (one decimal), so the stated gap is
            // the difference of the two numbers the reader sees.
            let shown = |v: f64| if metric.is_margin() { round1(v) } else { v };
            let a = shown(data.value(first, metric, year)?);
            let b = shown(data.value(second, metric, year)?);
            let verdict = if metric.json(a) == metric.json(b) {
                "they are equal".to_string()
            } else {
                let (winner, gap) = if a > b {
                    (first, a - b)
                } else {
                    (second, b - a)
                };
                let gap = if metric.is_margin() {
                    format!("{:.1} percentage points", gap)
                } else {
                    money(gap)
                };
                format!("{} is higher by {gap}", data.companies[winner].name)
            };
            let text = format!(
                "{} in FY{year}: {} {}, {} {}; {verdict}.",
                capitalise(metric.label()),
                data.label(first),
                metric.show(a),
                data.label(second),
                metric.show(b),
            );
            let (ta, tb) = (
                &data.companies[first].ticker,
                &data.companies[second].ticker,
            );
            Ok(json!({
                "answer": text,
                "company": [data.companies[first].name, data.companies[second].name],
                "ticker": [ta, tb],
                "metric": metric.key(),
                "year": year,
                "value": {ta.as_str(): metric.json(a), tb.as_str(): metric.json(b)},
                "unit": metric.unit(),
            }))
        }
    }
}

fn change_in_points(points: f64) -> String {
    if points >= 0.0 {
        format!("rose {points:.1} percentage points")
    } else {
        format!("fell {:.1} percentage points", -points)
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// USD millions with thousands separators: "$1,342 million", "-$70 million".
fn money(millions: f64) -> String {
    let whole = millions.round() as i64;
    let digits = whole.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if whole < 0 { "-" } else { "" };
    format!("{sign}${grouped} million")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = include_str!("../../../agents/demo/financials.csv");
    const QUERIES: &str = include_str!("../../../agents/demo/queries.txt");

    fn data() -> Dataset {
        Dataset::parse(CSV).unwrap()
    }

    fn ask(question: &str) -> Value {
        answer_question(question, &data(), "financials.csv")
            .unwrap_or_else(|e| panic!("{question:?}: {e}"))
    }

    #[test]
    fn the_dataset_has_eight_companies_over_six_years() {
        let data = data();
        assert_eq!(data.companies.len(), 8);
        assert_eq!((data.first_year, data.last_year), (2019, 2024));
        assert_eq!(data.records.len(), 48);
    }

    #[test]
    fn a_figure_of_a_company_in_a_year() {
        let a = ask("What was Acme Robotics' revenue in 2023?");
        assert_eq!(a["value"], 1342);
        assert_eq!(a["company"], "Acme Robotics");
        assert_eq!(a["metric"], "revenue");
        assert_eq!(a["year"], 2023);
        assert_eq!(a["source"], "financials.csv");
        assert_eq!(
            a["answer"],
            "Acme Robotics (ACME) revenue in FY2023: $1,342 million."
        );
        assert_eq!(ask("what was acme's REVENUE in 2023")["value"], 1342);
        assert_eq!(ask("What was ACME's revenue in 2023?")["value"], 1342);
        assert_eq!(
            ask("What was Globex Corporation's net income in FY2021?")["value"],
            181
        );
        assert_eq!(
            ask("What was Initech's operating income in 2024?")["value"],
            159
        );
        assert_eq!(
            ask("What was Umbrella Biotech's net income in 2019?")["value"],
            -70
        );
        assert_eq!(
            ask("What were Vandelay Imports' sales in 2022?")["value"],
            334
        );
    }

    #[test]
    fn without_a_year_the_latest_year_is_used_and_said() {
        let a = ask("What is Hooli's revenue?");
        assert_eq!(a["year"], 2024);
        assert_eq!(a["value"], 4150);
        assert!(a["answer"].as_str().unwrap().contains("latest year"), "{a}");
    }

    #[test]
    fn margins_are_percentages_of_revenue() {
        // 257 / 2790 = 9.21%
        let a = ask("What was Globex's net margin in 2023?");
        assert_eq!(a["value"], 9.2);
        assert_eq!(a["metric"], "net_margin");
        assert_eq!(a["unit"], "percent");
        // 113 / 1130 = 10.0%
        let a = ask("What was the operating margin of Contoso Cloud in 2022?");
        assert_eq!(a["value"], 10.0);
        assert_eq!(a["metric"], "operating_margin");
        // 30 / 388 = 7.73%
        assert_eq!(
            ask("What was Initech Software's profit margin in 2019?")["value"],
            7.7
        );
    }

    #[test]
    fn growth_between_two_years() {
        // (1518 - 820) / 820 = 85.12%
        let a = ask("How much did Acme Robotics' revenue grow from 2019 to 2024?");
        assert_eq!(a["value"], 85.1);
        assert_eq!(
            (a["from_year"].clone(), a["year"].clone()),
            (json!(2019), json!(2024))
        );
        assert_eq!(
            (a["start_value"].clone(), a["end_value"].clone()),
            (json!(820), json!(1518))
        );
        // One year: the change from the year before. (2380 - 2210) / 2210 = 7.69%
        let a = ask("How much did Globex's revenue grow in 2021?");
        assert_eq!(
            (a["from_year"].clone(), a["value"].clone()),
            (json!(2020), json!(7.7))
        );
        // A fall. (2210 - 2450) / 2450 = -9.80%
        let a = ask("How did GLBX revenue change from 2019 to 2020?");
        assert_eq!(a["value"], -9.8);
        assert!(a["answer"].as_str().unwrap().contains("fell 9.8%"), "{a}");
        // No years: the whole range. (1640 - 540) / 540 = 203.7%
        assert_eq!(ask("How fast did Contoso Cloud grow?")["value"], 203.7);
    }

    #[test]
    fn growth_from_a_loss_is_reported_as_a_change() {
        let a = ask("How much did Umbrella Biotech's net income change from 2019 to 2024?");
        assert_eq!(a["value"], 125);
        assert_eq!(a["unit"], "USD millions");
    }

    #[test]
    fn margin_changes_are_in_percentage_points() {
        // 2021: 445 / 3710 = 11.99%; 2022: 341 / 3588 = 9.50%
        let a = ask("By how much did Hooli's net margin change from 2021 to 2022?");
        assert_eq!(a["value"], -2.5);
        assert_eq!(a["unit"], "percentage points");
    }

    #[test]
    fn the_leader_of_a_metric_in_a_year() {
        let a = ask("Which company had the highest revenue in 2022?");
        assert_eq!(
            (a["company"].clone(), a["value"].clone()),
            (json!("Hooli Media"), json!(3588))
        );
        assert_eq!(a["runner_up"], "Globex Corporation");
        let a = ask("Which company had the lowest net income in 2019?");
        assert_eq!(
            (a["company"].clone(), a["value"].clone()),
            (json!("Umbrella Biotech"), json!(-70))
        );
        // 2024 net margins: Initech 126/795 = 15.85%, ahead of Hooli 473/4150 = 11.40%.
        let a = ask("Which company had the highest net margin in 2024?");
        assert_eq!(
            (a["company"].clone(), a["value"].clone()),
            (json!("Initech Software"), json!(15.8))
        );
        assert_eq!(a["runner_up"], "Hooli Media");
        let a = ask("Which company led in operating income in 2020?");
        assert_eq!(
            (a["company"].clone(), a["value"].clone()),
            (json!("Hooli Media"), json!(502))
        );
    }

    #[test]
    fn the_best_year_of_a_company() {
        let a = ask("In which year did Northwind Logistics have its highest revenue?");
        assert_eq!(
            (a["year"].clone(), a["value"].clone()),
            (json!(2024), json!(2112))
        );
        let a = ask("In which year did Vandelay Imports have its lowest net income?");
        assert_eq!(
            (a["year"].clone(), a["value"].clone()),
            (json!(2020), json!(3))
        );
    }

    #[test]
    fn two_companies_compared() {
        let a = ask("Compare Globex and Initech revenue in 2023");
        assert_eq!(
            a["company"],
            json!(["Globex Corporation", "Initech Software"])
        );
        assert_eq!(a["value"], json!({"GLBX": 2790, "INIT": 703}));
        assert!(
            a["answer"]
                .as_str()
                .unwrap()
                .contains("Globex Corporation is higher by $2,087 million"),
            "{a}"
        );
        // No year and no metric named beyond "margins": FY2024 net margins,
        // 270/2904 = 9.30% and 126/795 = 15.85%.
        let a = ask("Compare Globex and Initech margins");
        assert_eq!(a["year"], 2024);
        assert_eq!(a["value"], json!({"GLBX": 9.3, "INIT": 15.8}));
        assert!(
            a["answer"]
                .as_str()
                .unwrap()
                .ends_with("higher by 6.5 percentage points."),
            "{a}"
        );
        let a = ask("Did Northwind or Vandelay have higher operating income in 2021?");
        assert_eq!(a["value"], json!({"NWND": 139, "VNDL": 18}));
        let a = ask("Compare the net income of HOOL and GLBX in 2020");
        assert_eq!(a["ticker"], json!(["HOOL", "GLBX"]));
        assert_eq!(a["value"], json!({"HOOL": 377, "GLBX": 129}));
    }

    #[test]
    fn questions_it_cannot_answer_are_refused_with_a_reason() {
        let data = data();
        let refuse = |q: &str| answer_question(q, &data, "financials.csv").unwrap_err();
        assert!(refuse("What is the weather in Paris?").contains("no company"));
        assert!(refuse("What was Wayne Enterprises' revenue in 2023?").contains("no company"));
        assert!(refuse("What was Acme's revenue in 2031?").contains("FY2019–FY2024"));
        assert!(refuse("How much did Acme's revenue grow in 2019?").contains("no FY2018"));
        assert!(refuse("Who is Acme's CEO?").contains("which figure"));
        assert!(
            refuse("Which company had the highest revenue in 2020 and 2021?").contains("one year")
        );
    }

    #[test]
    fn every_example_query_is_answered() {
        let data = data();
        let queries: Vec<&str> = QUERIES.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(queries.len() >= 24, "{}", queries.len());
        for query in queries {
            let answer = answer_question(query, &data, "financials.csv")
                .unwrap_or_else(|e| panic!("{query:?}: {e}"));
            assert!(
                answer["answer"].as_str().is_some_and(|a| !a.is_empty()),
                "{query}"
            );
            assert!(answer.get("value").is_some(), "{query}");
        }
    }

    #[test]
    fn arguments_and_data_errors() {
        let args = |a: &[&str]| parse_args(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(args(&["--data", "x.csv"]), Ok(Some(PathBuf::from("x.csv"))));
        assert_eq!(args(&["--data=y.csv"]), Ok(Some(PathBuf::from("y.csv"))));
        assert_eq!(args(&["--help"]), Ok(None));
        assert!(args(&[]).is_err());
        assert!(args(&["--data"]).is_err());
        assert!(args(&["--verbose"]).is_err());
        assert!(Dataset::parse("a,b\n").is_err());
        let bad = format!("{HEADER}\nAcme,ACME,2019,lots,1,1\n");
        assert!(Dataset::parse(&bad).unwrap_err().contains("line 2"));
    }

    #[test]
    fn money_is_grouped_by_thousands() {
        assert_eq!(money(1342.0), "$1,342 million");
        assert_eq!(money(-70.0), "-$70 million");
        assert_eq!(money(1234567.0), "$1,234,567 million");
        assert_eq!(money(0.0), "$0 million");
    }
}
