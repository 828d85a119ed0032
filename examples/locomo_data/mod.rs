//! LoCoMo's data as the LoCoMo examples read it (`locomo`, `promoter_report`,
//! `locomo_turns`): the sessions of a conversation with their dates and turns, and its
//! questions with their evidence turn ids. The data is CC BY-NC 4.0: it is read from where
//! it lies, never copied into this repository.

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::collections::HashSet;

/// One question: its conversation (project), text, category and evidence turn ids.
// `promoter_report` reads only the text and the evidence.
#[allow(dead_code)]
pub struct Question {
    pub project: String,
    pub text: String,
    pub category: u64,
    pub evidence: HashSet<String>,
}

/// A conversation's sessions in order: name, date (µs), and each turn's id and text.
pub type Session = (String, u64, Vec<(String, String)>);

pub fn sessions(c: &Value) -> Result<Vec<Session>> {
    let conv = &c["conversation"];
    let mut out = Vec::new();
    for n in 1.. {
        let Some(turns) = conv.get(format!("session_{n}")).and_then(|t| t.as_array()) else {
            break;
        };
        let date = conv[format!("session_{n}_date_time")]
            .as_str()
            .ok_or_else(|| anyhow!("session {n} has no date"))?;
        let mut records = Vec::new();
        for t in turns {
            let (Some(speaker), Some(id)) = (t["speaker"].as_str(), t["dia_id"].as_str()) else {
                bail!("a turn of session {n} has no speaker or dia_id");
            };
            let mut text = format!("{speaker} said, \"{}\"", t["text"].as_str().unwrap_or(""));
            if let Some(caption) = t.get("blip_caption").and_then(|c| c.as_str()) {
                text.push_str(&format!(" and shared {caption}"));
            }
            records.push((id.to_string(), text));
        }
        out.push((format!("session_{n}"), parse_date(date)?, records));
    }
    Ok(out)
}

pub fn questions_of(c: &Value, project: &str) -> Result<Vec<Question>> {
    let qa = c["qa"]
        .as_array()
        .ok_or_else(|| anyhow!("{project}: no qa"))?;
    qa.iter()
        .map(|q| {
            let evidence = q["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str())
                .flat_map(|e| e.split([';', ',', ' ']))
                .filter(|e| is_dia_id(e))
                .map(str::to_string)
                .collect();
            Ok(Question {
                project: project.to_string(),
                text: q["question"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{project}: a question without text"))?
                    .to_string(),
                category: q["category"].as_u64().unwrap_or(0),
                evidence,
            })
        })
        .collect()
}

/// `D<n>:<n>`.
fn is_dia_id(e: &str) -> bool {
    let Some(rest) = e.strip_prefix('D') else {
        return false;
    };
    let mut parts = rest.split(':');
    let num =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    num(parts.next()) && num(parts.next()) && parts.next().is_none()
}

/// "1:56 pm on 8 May, 2023" as µs since the epoch (UTC).
fn parse_date(s: &str) -> Result<u64> {
    let bad = || anyhow!("unreadable session date {s:?}");
    let (time, date) = s.split_once(" on ").ok_or_else(bad)?;
    let mut d = date.split([' ', ',']).filter(|p| !p.is_empty());
    let day: i64 = d.next().ok_or_else(bad)?.parse()?;
    let month = d.next().ok_or_else(bad)?;
    let year: i64 = d.next().ok_or_else(bad)?.parse()?;
    let months = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let m = months
        .iter()
        .position(|x| x.eq_ignore_ascii_case(month))
        .ok_or_else(bad)? as i64
        + 1;
    let (clock, half) = time.trim().split_once(' ').ok_or_else(bad)?;
    let (h, min) = clock.split_once(':').ok_or_else(bad)?;
    let mut h: i64 = h.parse()?;
    let min: i64 = min.parse()?;
    if half.eq_ignore_ascii_case("pm") && h != 12 {
        h += 12;
    } else if half.eq_ignore_ascii_case("am") && h == 12 {
        h = 0;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400 + h * 3600 + min * 60) * 1_000_000) as u64)
}
