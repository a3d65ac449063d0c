//! Retention rules: which backups of a group survive, and which rule keeps each.
//!
//! The rules and their meaning are restic's `forget --keep-*` (a scheduler moving from restic
//! keeps the same backups): the backups of a group are walked newest first; `keep-last N`
//! keeps the N newest; `keep-hourly N` keeps the newest backup of each of the N newest hours
//! that have one (and `daily`, `weekly` by ISO week, `monthly`, `yearly` alike); `keep-within
//! 1y2m3d4h` keeps every backup newer than that span before the group's newest backup. A backup
//! is kept if any rule keeps it. Times are UTC.

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// A span of calendar time, as restic's `--keep-within`: years, months, days and hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Span {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

impl Span {
    /// Parses `1y2m3d4h` (any of the parts, in this order; `m` is months).
    pub fn parse(text: &str) -> Result<Span> {
        let bad = || Error::Config(format!("'{text}' is not a span like 1y2m3d4h"));
        let mut span = Span::default();
        let mut digits = String::new();
        let mut last_unit = 0;
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                'y' => 1,
                'm' => 2,
                'd' => 3,
                'h' => 4,
                _ => return Err(bad()),
            };
            let n: u32 = digits.parse().map_err(|_| bad())?;
            if unit <= last_unit {
                return Err(bad());
            }
            match unit {
                1 => span.years = n,
                2 => span.months = n,
                3 => span.days = n,
                _ => span.hours = n,
            }
            last_unit = unit;
            digits.clear();
        }
        if !digits.is_empty() || last_unit == 0 {
            return Err(bad());
        }
        Ok(span)
    }

    /// `t` minus this span, with Go's calendar normalisation (as restic computes it: a month
    /// back from 31 March is "31 February", that is 3 March). None before year -9999.
    fn before(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let months_total = i64::from(t.year()) * 12 + i64::from(u8::from(t.month()))
            - 1
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(months_total.div_euclid(12)).ok()?;
        let month =
            time::Month::try_from(u8::try_from(months_total.rem_euclid(12) + 1).ok()?).ok()?;
        let first = time::Date::from_calendar_date(year, month, 1).ok()?;
        // Day d of that month, counted from its first day: overflow runs into the next month.
        let date = first.checked_add(time::Duration::days(i64::from(t.day()) - 1))?;
        let date = date.checked_sub(time::Duration::days(i64::from(self.days)))?;
        let at = date.with_time(t.time()).assume_utc();
        at.checked_sub(time::Duration::hours(i64::from(self.hours)))
    }
}

/// How many backups each rule keeps (None: the rule is off). A count of `u32::MAX` keeps every
/// one (restic's `-1`, "unlimited").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub yearly: Option<u32>,
    pub within: Option<Span>,
}

impl Policy {
    /// No rule is set: such a policy would remove everything, and is refused by callers.
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// The rules, in the order their reasons are listed.
const RULES: [&str; 6] = ["last", "hourly", "daily", "weekly", "monthly", "yearly"];

/// One backup's fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub backup_id: String,
    pub created_unix: u64,
    /// The rules that keep it (`"last"`, `"daily"`, `"within"`, …); empty: it goes.
    pub kept_by: Vec<&'static str>,
}

/// Decides, for one group of backups `(id, created_unix)` in any order, which `policy` keeps.
/// Returns the decisions newest first (ties broken by id, so the result does not depend on the
/// listing order).
pub fn decide(policy: &Policy, backups: &[(String, u64)]) -> Result<Vec<Decision>> {
    let mut list: Vec<(String, u64, OffsetDateTime)> = backups
        .iter()
        .map(|(id, t)| {
            let at = i64::try_from(*t)
                .ok()
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
                .ok_or_else(|| {
                    Error::Config(format!("backup {id} has an impossible time ({t})"))
                })?;
            Ok((id.clone(), *t, at))
        })
        .collect::<Result<_>>()?;
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let counts = [
        policy.last,
        policy.hourly,
        policy.daily,
        policy.weekly,
        policy.monthly,
        policy.yearly,
    ];
    let mut left: Vec<Option<u32>> = counts.to_vec();
    let mut last_bucket: [Option<i64>; 6] = [None; 6];
    let cutoff = match (policy.within, list.first()) {
        (Some(span), Some(newest)) => span.before(newest.2),
        _ => None,
    };
    let mut out = Vec::with_capacity(list.len());
    for (nr, (id, unix, at)) in list.into_iter().enumerate() {
        let mut kept_by = Vec::new();
        if let (Some(_), Some(cutoff)) = (policy.within, cutoff)
            && at > cutoff
        {
            kept_by.push("within");
        }
        for (rule, n) in left.iter_mut().enumerate() {
            let Some(count) = n else { continue };
            if *count == 0 {
                continue;
            }
            let bucket = bucket(rule, nr, at);
            if last_bucket[rule] != Some(bucket) {
                last_bucket[rule] = Some(bucket);
                if *count != u32::MAX {
                    *count -= 1;
                }
                kept_by.push(RULES[rule]);
            }
        }
        kept_by.sort_by_key(|r| RULES.iter().position(|x| x == r).unwrap_or(RULES.len()));
        out.push(Decision {
            backup_id: id,
            created_unix: unix,
            kept_by,
        });
    }
    Ok(out)
}

/// The bucket of a backup for `rule` (restic's): its position for `last`, else the hour,
/// day, ISO week, month or year it falls in.
fn bucket(rule: usize, nr: usize, t: OffsetDateTime) -> i64 {
    let (y, m, d, h) = (
        i64::from(t.year()),
        i64::from(u8::from(t.month())),
        i64::from(t.day()),
        i64::from(t.hour()),
    );
    match rule {
        0 => nr as i64,
        1 => y * 1_000_000 + m * 10_000 + d * 100 + h,
        2 => y * 10_000 + m * 100 + d,
        3 => {
            let (iso_year, week, _) = t.to_iso_week_date();
            i64::from(iso_year) * 100 + i64::from(week)
        }
        4 => y * 100 + m,
        _ => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> u64 {
        let t = humantime::parse_rfc3339(text).unwrap();
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    fn kept(policy: &Policy, times: &[&str]) -> Vec<String> {
        let list: Vec<(String, u64)> = times.iter().map(|t| (t.to_string(), at(t))).collect();
        decide(policy, &list)
            .unwrap()
            .into_iter()
            .filter(|d| !d.kept_by.is_empty())
            .map(|d| d.backup_id)
            .collect()
    }

    #[test]
    fn spans_parse_in_order_only() {
        assert_eq!(
            Span::parse("1y2m3d4h").unwrap(),
            Span {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
        assert_eq!(Span::parse("36h").unwrap().hours, 36);
        for bad in ["", "5", "3d1y", "1w", "d", "1y1y", "-1d", "99999999999d"] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_month_back_normalises_as_go_does() {
        let t = OffsetDateTime::from_unix_timestamp(at("2026-03-31T12:00:00Z") as i64).unwrap();
        let back = Span {
            months: 1,
            ..Span::default()
        }
        .before(t)
        .unwrap();
        assert_eq!(back.unix_timestamp() as u64, at("2026-03-03T12:00:00Z"));
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let times = [
            "2026-11-20T23:00:00Z",
            "2026-11-20T10:00:00Z",
            "2026-11-19T08:00:00Z",
            "2026-11-17T08:00:00Z",
            "2026-11-17T07:00:00Z",
        ];
        let p = Policy {
            daily: Some(2),
            ..Policy::default()
        };
        assert_eq!(
            kept(&p, &times),
            ["2026-11-20T23:00:00Z", "2026-11-19T08:00:00Z"]
        );
        let p = Policy {
            daily: Some(u32::MAX),
            last: Some(1),
            ..Policy::default()
        };
        assert_eq!(
            kept(&p, &times),
            [
                "2026-11-20T23:00:00Z",
                "2026-11-19T08:00:00Z",
                "2026-11-17T08:00:00Z"
            ]
        );
    }
}
