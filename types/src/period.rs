//! Budget periods on UTC calendar boundaries, computed from milliseconds since
//! the Unix epoch with integer civil-date arithmetic (no clock, no tz data).

use serde::{Deserialize, Serialize};

const MS_PER_DAY: i64 = 86_400_000;

/// How often a budget resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Daily,
    /// ISO weeks: Monday 00:00 UTC.
    Weekly,
    /// Calendar months.
    Monthly,
    /// Never resets.
    Total,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "daily" => Some(Period::Daily),
            "weekly" => Some(Period::Weekly),
            "monthly" => Some(Period::Monthly),
            "total" => Some(Period::Total),
            _ => None,
        }
    }

    /// The start (inclusive) of the period containing `now_ms`.
    pub fn start_ms(self, now_ms: u64) -> u64 {
        let days = (now_ms as i64).div_euclid(MS_PER_DAY);
        let start_day = match self {
            Period::Total => return 0,
            Period::Daily => days,
            // 1970-01-01 was a Thursday: day 0 is weekday 3 counting Monday as 0.
            Period::Weekly => days - (days + 3).rem_euclid(7),
            Period::Monthly => {
                let (y, m, _) = civil_from_days(days);
                days_from_civil(y, m, 1)
            }
        };
        (start_day * MS_PER_DAY) as u64
    }

    /// The end (exclusive) of the period containing `now_ms`; `None` for `total`.
    pub fn end_ms(self, now_ms: u64) -> Option<u64> {
        let start_day = (self.start_ms(now_ms) as i64) / MS_PER_DAY;
        let end_day = match self {
            Period::Total => return None,
            Period::Daily => start_day + 1,
            Period::Weekly => start_day + 7,
            Period::Monthly => {
                let (y, m, _) = civil_from_days(start_day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                days_from_civil(ny, nm, 1)
            }
        };
        Some((end_day * MS_PER_DAY) as u64)
    }
}

/// `2026-12-01T00:00:00Z` for milliseconds since the epoch (UTC, RFC 3339).
pub fn utc_rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32, h: i64) -> u64 {
        (days_from_civil(y, m, d) * MS_PER_DAY + h * 3_600_000) as u64
    }

    #[test]
    fn civil_round_trips() {
        for z in [-800_000i64, -1, 0, 1, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2026, 11, 28), 20_785);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(ms(2026, 12, 1, 0)), "2026-12-01T00:00:00Z");
        assert_eq!(utc_rfc3339(ms(2028, 2, 29, 23) + 59 * 60_000 + 58_999), "2028-02-29T23:59:58Z");
    }

    #[test]
    fn boundaries_are_utc_calendar() {
        // Saturday 2026-11-28 23:00 UTC.
        let now = ms(2026, 11, 28, 23);
        assert_eq!(Period::Daily.start_ms(now), ms(2026, 11, 28, 0));
        assert_eq!(Period::Daily.end_ms(now), Some(ms(2026, 11, 29, 0)));
        assert_eq!(Period::Weekly.start_ms(now), ms(2026, 11, 23, 0)); // Monday
        assert_eq!(Period::Weekly.end_ms(now), Some(ms(2026, 11, 30, 0)));
        assert_eq!(Period::Monthly.start_ms(now), ms(2026, 11, 1, 0));
        assert_eq!(Period::Monthly.end_ms(now), Some(ms(2026, 12, 1, 0)));
        assert_eq!(Period::Total.start_ms(now), 0);
        assert_eq!(Period::Total.end_ms(now), None);
        // December rolls into the next year; February of a leap year has 29 days.
        assert_eq!(Period::Monthly.end_ms(ms(2026, 12, 31, 5)), Some(ms(2027, 1, 1, 0)));
        assert_eq!(Period::Monthly.end_ms(ms(2028, 2, 10, 0)), Some(ms(2028, 3, 1, 0)));
        // A Monday at midnight starts its own week.
        assert_eq!(Period::Weekly.start_ms(ms(2026, 11, 30, 0)), ms(2026, 11, 30, 0));
    }
}
