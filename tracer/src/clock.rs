//! The two clocks a session reads: CLOCK_MONOTONIC, which the kernel programs stamp events with
//! (`bpf_ktime_get_ns`), and the wall clock, which JSON lines carry next to it so a drop log
//! can be read beside other logs by date.

use serde::Serialize;

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    now(libc::CLOCK_MONOTONIC) as u64
}

/// A CLOCK_MONOTONIC instant (an event's `ts_ns`), written as wall-clock time: RFC 3339, UTC,
/// microseconds (`2026-12-06T16:42:53.123456Z`). The offset between the clocks is read when
/// the line is written, so a clock stepped by NTP is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallTime(pub u64);

impl WallTime {
    pub fn now() -> Self {
        Self(monotonic_ns())
    }

    /// Nanoseconds since the Unix epoch.
    fn unix_ns(self) -> i128 {
        now(libc::CLOCK_REALTIME) - now(libc::CLOCK_MONOTONIC) + self.0 as i128
    }
}

impl Serialize for WallTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Rfc3339(self.unix_ns()))
    }
}

/// Unix nanoseconds as RFC 3339 UTC with microseconds.
struct Rfc3339(i128);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.div_euclid(1_000_000_000);
        let micros = self.0.rem_euclid(1_000_000_000) / 1000;
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }
}

/// Year, month, day of a day count since 1970-01-01 (the proleptic Gregorian calendar, by
/// 400-year eras).
fn civil(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i128::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rfc3339_utc_with_microseconds() {
        let at = |ns: i128| Rfc3339(ns).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        // 2026-12-06T16:42:53.123456789Z
        assert_eq!(at(1_796_575_373_123_456_789), "2026-12-06T16:42:53.123456Z");
        // A leap day, and the last microsecond of a century year that is not a leap year.
        assert_eq!(at(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(4_107_542_399_999_999_000), "2100-02-28T23:59:59.999999Z");
    }

    #[test]
    fn an_events_clock_becomes_todays_date() {
        let v = serde_json::to_value(WallTime::now()).expect("json");
        let s = v.as_str().expect("a string");
        assert_eq!(s.len(), "2026-12-06T16:42:53.123456Z".len(), "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }
}
