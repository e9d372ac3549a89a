//! CronJob schedules: the standard five-field cron syntax Kubernetes accepts (it parses them
//! with robfig/cron's `ParseStandard`), with names (`jan`, `mon`), ranges, lists, steps
//! (`*/5`, `10-40/10`, `5/15`), `?`, the `@hourly`-style macros and `@every <duration>`.
//!
//! Day of month and day of week combine as cron always has: when both are restricted a day
//! matching either runs; when either is `*` both must match.
//!
//! ```
//! use skiff_core::cron::Schedule;
//! let s: Schedule = "*/15 9-17 * * mon-fri".parse().unwrap();
//! let tz = jiff::tz::TimeZone::UTC;
//! let after = "2026-12-05T17:50:00Z".parse::<jiff::Timestamp>().unwrap().to_zoned(tz);
//! // Saturday and Sunday are skipped.
//! assert_eq!(s.next_after(&after).unwrap().timestamp().to_string(), "2026-12-07T09:00:00Z");
//! ```

use jiff::civil::DateTime;
use jiff::{ToSpan as _, Zoned};

/// Why a schedule is not one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// The five fields, as sets of allowed values.
    Fields(Fields),
    /// `@every <duration>`: a fixed interval after the previous time.
    Every(std::time::Duration),
}

/// The allowed values of each field, one bit per value.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Whether day of month (or of week) was given as `*` or `?`, not restricted.
    dom_any: bool,
    dow_any: bool,
}

struct Range {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Range = Range {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Range = Range {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Range = Range {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Range = Range {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DOW: Range = Range {
    name: "day of week",
    min: 0,
    // 7 is Sunday as well as 0.
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl std::str::FromStr for Schedule {
    type Err = ParseError;

    fn from_str(spec: &str) -> Result<Self, ParseError> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err(ParseError(
                "cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into(),
            ));
        }
        if let Some(every) = spec.strip_prefix("@every ") {
            let d = crate::time::parse_duration(every.trim()).map_err(|e| {
                ParseError(format!(
                    "failed to parse duration @every {}: {e}",
                    every.trim()
                ))
            })?;
            // Whole seconds, at least one, as robfig/cron keeps them.
            return Ok(Schedule::Every(std::time::Duration::from_secs(
                d.as_secs().max(1),
            )));
        }
        let spec = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => {
                return Err(ParseError(format!("unrecognized descriptor: {s}")));
            }
            s => s,
        };
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ParseError(format!(
                "expected exactly 5 fields, found {}: {spec}",
                fields.len()
            )));
        }
        let (dom, dom_any) = field(fields[2], &DOM)?;
        let (dow, dow_any) = field(fields[4], &DOW)?;
        Ok(Schedule::Fields(Fields {
            minute: field(fields[0], &MINUTE)?.0,
            hour: field(fields[1], &HOUR)?.0,
            dom,
            month: field(fields[3], &MONTH)?.0,
            // Sunday as 7 is Sunday as 0.
            dow: (dow | (dow >> 7)) & 0x7f,
            dom_any,
            dow_any,
        }))
    }
}

/// One field: a comma-separated list of `*`, `?`, values, ranges, each with an optional
/// step. Returns the bits and whether the field is unrestricted (`*` or `?` with no step).
fn field(text: &str, range: &Range) -> Result<(u64, bool), ParseError> {
    let mut bits = 0;
    let mut any = false;
    for part in text.split(',') {
        let (span, step) = match part.split_once('/') {
            Some((span, step)) => {
                let step: u32 = step.parse().map_err(|_| {
                    ParseError(format!("failed to parse {} step {step:?}", range.name))
                })?;
                if step == 0 {
                    return Err(ParseError(format!("{} step of zero: {part}", range.name)));
                }
                (span, Some(step))
            }
            None => (part, None),
        };
        let (low, high) = if span == "*" || span == "?" {
            any |= step.unwrap_or(1) == 1;
            (range.min, range.max)
        } else if let Some((low, high)) = span.split_once('-') {
            (value(low, range)?, value(high, range)?)
        } else {
            let low = value(span, range)?;
            // `5/15` is `5-max/15`.
            (low, if step.is_some() { range.max } else { low })
        };
        if low > high {
            return Err(ParseError(format!(
                "beginning of range ({low}) beyond end of range ({high}): {part}"
            )));
        }
        let step = step.unwrap_or(1);
        let mut v = low;
        while v <= high {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, any))
}

fn value(text: &str, range: &Range) -> Result<u32, ParseError> {
    let lower = text.to_ascii_lowercase();
    let v = match range.names.iter().position(|n| *n == lower) {
        Some(i) => i as u32 + range.min,
        None => text
            .parse()
            .map_err(|_| ParseError(format!("failed to parse {} {text:?}", range.name)))?,
    };
    if v < range.min || v > range.max {
        return Err(ParseError(format!(
            "{} {v} out of range [{}, {}]",
            range.name, range.min, range.max
        )));
    }
    Ok(v)
}

impl Fields {
    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.dom & (1 << dt.day()) != 0;
        let dow = self.dow & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        if self.dom_any || self.dow_any {
            dom && dow
        } else {
            dom || dow
        }
    }
}

impl Schedule {
    /// The first time after `after` (in `after`'s time zone) that the schedule fires, or
    /// `None` if it never does in the next five years (`0 0 30 2 *`).
    pub fn next_after(&self, after: &Zoned) -> Option<Zoned> {
        let f = match self {
            Schedule::Every(d) => {
                let next = after.timestamp().as_second() + d.as_secs() as i64;
                return jiff::Timestamp::from_second(next)
                    .ok()
                    .map(|t| t.to_zoned(after.time_zone().clone()));
            }
            Schedule::Fields(f) => f,
        };
        let tz = after.time_zone();
        let start = after.datetime();
        let limit = start.year() + 5;
        // The next whole minute.
        let mut dt = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        while dt.year() <= limit {
            if f.month & (1 << dt.month()) == 0 {
                dt = dt
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .start_of_day();
                continue;
            }
            if !f.day_matches(dt) {
                dt = dt
                    .date()
                    .tomorrow()
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if f.hour & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if f.minute & (1 << dt.minute()) == 0 {
                dt = dt.checked_add(1.minute()).ok()?;
                continue;
            }
            // A time that a DST change skips is run just after it (jiff's compatible
            // disambiguation); one it repeats runs once.
            let zoned = tz.to_ambiguous_zoned(dt).compatible().ok()?;
            if zoned > *after {
                return Some(zoned);
            }
            dt = dt.checked_add(1.minute()).ok()?;
        }
        None
    }

    /// The scheduled times in `(after, until]`, oldest first, at most `limit` + 1 of them
    /// (so that a caller can tell "more than `limit`").
    pub fn times_between(&self, after: &Zoned, until: &Zoned, limit: usize) -> Vec<Zoned> {
        let mut times = Vec::new();
        let mut t = after.clone();
        while let Some(next) = self.next_after(&t) {
            if next > *until || times.len() > limit {
                break;
            }
            times.push(next.clone());
            t = next;
        }
        times
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, tz: &str) -> Zoned {
        let tz = jiff::tz::TimeZone::get(tz).unwrap();
        s.parse::<DateTime>().unwrap().to_zoned(tz).unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        let s: Schedule = spec.parse().unwrap();
        s.next_after(&at(after, "UTC"))
            .unwrap()
            .datetime()
            .to_string()
    }

    #[test]
    fn fields_ranges_steps_and_names() {
        assert_eq!(
            next("*/1 * * * *", "2026-12-05T10:00:30"),
            "2026-12-05T10:01:00"
        );
        assert_eq!(
            next("* * * * *", "2026-12-05T10:00:00"),
            "2026-12-05T10:01:00"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-12-05T10:16:00"),
            "2026-12-05T10:30:00"
        );
        assert_eq!(
            next("5/15 * * * *", "2026-12-05T10:51:00"),
            "2026-12-05T11:05:00"
        );
        assert_eq!(
            next("10-40/10 3 * * *", "2026-12-05T03:41:00"),
            "2026-12-06T03:10:00"
        );
        assert_eq!(
            next("0 0 1 jan,JUL *", "2026-12-05T00:00:00"),
            "2027-01-01T00:00:00"
        );
        assert_eq!(
            next("@hourly", "2026-12-05T10:00:00"),
            "2026-12-05T11:00:00"
        );
        assert_eq!(next("@daily", "2026-12-05T10:00:00"), "2026-12-06T00:00:00");
        assert_eq!(
            next("@weekly", "2026-12-05T10:00:00"),
            "2026-12-06T00:00:00"
        );
        assert_eq!(
            next("@monthly", "2026-12-05T10:00:00"),
            "2027-01-01T00:00:00"
        );
        assert_eq!(
            next("@yearly", "2026-12-05T10:00:00"),
            "2027-01-01T00:00:00"
        );
        // Sunday is 0 and 7.
        assert_eq!(
            next("0 12 * * 7", "2026-12-05T10:00:00"),
            "2026-12-06T12:00:00"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-12-05T10:00:00"),
            "2028-02-29T00:00:00"
        );
        assert_eq!(
            next("@every 90s", "2026-12-05T10:00:00"),
            "2026-12-05T10:01:30"
        );
        let never: Schedule = "0 0 30 2 *".parse().unwrap();
        assert_eq!(never.next_after(&at("2026-12-05T10:00:00", "UTC")), None);
    }

    #[test]
    fn day_of_month_and_week_are_either_when_both_are_restricted() {
        // The 13th, or any Friday: 2026-12-11 is a Friday.
        assert_eq!(
            next("0 0 13 * fri", "2026-12-05T10:00:00"),
            "2026-12-11T00:00:00"
        );
        // With a `*` both must hold: Fridays only.
        assert_eq!(
            next("0 0 * * fri", "2026-12-05T10:00:00"),
            "2026-12-11T00:00:00"
        );
        // A stepped `*` restricts: the 1st, 11th, 21st, 31st, or a Friday.
        assert_eq!(
            next("0 0 */10 * fri", "2026-12-05T10:00:00"),
            "2026-12-11T00:00:00"
        );
        assert_eq!(
            next("0 0 */10 * sun", "2026-12-05T10:00:00"),
            "2026-12-06T00:00:00"
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let s: Schedule = "30 2 * * *".parse().unwrap();
        // 2027-03-28 02:30 does not exist in Berlin: it runs at 03:30 CEST.
        let n = s
            .next_after(&at("2027-03-27T12:00:00", "Europe/Berlin"))
            .unwrap();
        assert_eq!(n.timestamp().to_string(), "2027-03-28T01:30:00Z");
        let s: Schedule = "0 9 * * *".parse().unwrap();
        let n = s
            .next_after(&at("2026-12-05T10:00:00", "America/New_York"))
            .unwrap();
        assert_eq!(n.timestamp().to_string(), "2026-12-06T14:00:00Z");
    }

    #[test]
    fn missed_times_are_listed_up_to_a_limit() {
        let s: Schedule = "*/1 * * * *".parse().unwrap();
        let from = at("2026-12-05T10:00:00", "UTC");
        let to = at("2026-12-05T10:03:30", "UTC");
        let times = s.times_between(&from, &to, 100);
        assert_eq!(times.len(), 3);
        assert_eq!(
            s.times_between(&from, &at("2026-12-06T10:00:00", "UTC"), 100)
                .len(),
            101
        );
    }

    #[test]
    fn bad_schedules_say_why() {
        for (spec, why) in [
            ("* * * *", "expected exactly 5 fields"),
            ("60 * * * *", "minute 60 out of range"),
            ("* * 0 * *", "day of month 0 out of range"),
            ("* * * foo *", "failed to parse month"),
            ("*/0 * * * *", "step of zero"),
            ("5-1 * * * *", "beyond end of range"),
            ("@fortnightly", "unrecognized descriptor"),
            ("TZ=UTC * * * * *", "use timeZone field"),
            ("@every soon", "failed to parse duration"),
        ] {
            let err = spec.parse::<Schedule>().unwrap_err().to_string();
            assert!(err.contains(why), "{spec}: {err}");
        }
    }
}
