//! Timestamps as the API writes them, and ages as kubectl shows them.

use jiff::Timestamp;

/// `metav1.Time`: RFC 3339, UTC, whole seconds (`2026-11-22T10:00:00Z`).
pub fn format_time(t: Timestamp) -> String {
    let secs = t.as_second();
    Timestamp::from_second(secs)
        .unwrap_or(t)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `metav1.MicroTime`: RFC 3339, UTC, microseconds (`2026-11-22T10:00:00.123456Z`).
pub fn format_micro_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Parses an RFC 3339 timestamp.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// A Go duration (`40s`, `1h30m`, `1.5h`, `250ms`), as Kubernetes' flags and `@every`
/// take them; whole seconds are kept, finer parts only when under a second.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {text:?}");
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// apimachinery's `HumanDuration`, the AGE column: `45s`, `3m12s`, `47m`, `5h3m`, `2d`, ….
pub fn human_duration(seconds: i64) -> String {
    if seconds < 0 {
        // A clock skew: the real printer shows the duration as zero-ish.
        return "0s".to_owned();
    }
    let s = seconds;
    let minutes = s / 60;
    let hours = s / 3600;
    let days = hours / 24;
    let years = days / 365;
    if s < 120 {
        format!("{s}s")
    } else if minutes < 10 {
        let rem = s % 60;
        if rem == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{rem}s")
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        let rem = minutes % 60;
        if rem == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{rem}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let rem = hours % 24;
        if rem == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{rem}h")
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        let rem = days % 365;
        if rem == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{rem}d")
        }
    } else {
        format!("{years}y")
    }
}

/// The age of an object created at `created` (RFC 3339), as of `now`; `<unknown>` if unset.
pub fn age(created: Option<&str>, now: Timestamp) -> String {
    match created.and_then(parse_time) {
        Some(t) => human_duration(now.as_second() - t.as_second()),
        None => "<unknown>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (100 * 86400, "100d"),
            (3 * 365 * 86400 + 86400, "3y1d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn times_render_in_utc_seconds() {
        let t: Timestamp = "2026-11-22T10:00:00.987Z".parse().unwrap();
        assert_eq!(format_time(t), "2026-11-22T10:00:00Z");
        assert_eq!(format_micro_time(t), "2026-11-22T10:00:00.987000Z");
    }
}
