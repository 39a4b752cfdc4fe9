//! UTC days as the report writes them (`YYYY-MM-DD`), to and from Unix time.

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)).map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub(crate) fn day_of(unix: u64) -> String {
    let (y, m, d) = civil((unix / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The Unix time at the start of `day` (`YYYY-MM-DD`); 0 when it does not parse.
pub(crate) fn day_start(day: &str) -> u64 {
    let mut parts = day.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    match (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    ) {
        (Some(y), Some(m), Some(d)) => (days_from_civil(y, m, d).max(0) as u64) * 86_400,
        _ => 0,
    }
}

/// Whether `day` is a date as the report takes it.
pub(crate) fn is_day(day: &str) -> bool {
    day.len() == 10 && day_start(day) > 0 && day_of(day_start(day)) == day
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_convert_both_ways() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_796_083_200), "2026-12-01");
        assert_eq!(day_start("2026-12-01"), 1_796_083_200);
        assert_eq!(day_of(day_start("2024-02-29")), "2024-02-29");
        assert!(is_day("2026-12-01"));
        assert!(!is_day("2026-13-01") && !is_day("yesterday") && !is_day("2026-02-30"));
    }
}
