//! The two clocks a session reads: CLOCK_MONOTONIC, which the kernel programs stamp events with
//! (`bpf_ktime_get_ns`), and the wall clock, which JSON lines carry next to it so a drop log
//! can be read beside other logs by date.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
    fn unix_ns(self) -> i64 {
        realtime_offset(self.0) + self.0 as i64
    }
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, and the monotonic instant it was read at. Read again for
/// an instant more than [`OFFSET_FOR`] away from that, so a clock NTP steps is followed within
/// a second (and a slew of 50 ppm moves a line by 50 µs at most): two clock reads per line
/// cost a busy trace 4 % of its CPU.
static OFFSET: AtomicI64 = AtomicI64::new(0);
static OFFSET_AT: AtomicU64 = AtomicU64::new(0);
const OFFSET_FOR: u64 = 1_000_000_000;

fn realtime_offset(at: u64) -> i64 {
    let read_at = OFFSET_AT.load(Ordering::Relaxed);
    if read_at != 0 && at.abs_diff(read_at) < OFFSET_FOR {
        return OFFSET.load(Ordering::Relaxed);
    }
    let mono = now(libc::CLOCK_MONOTONIC);
    let offset = (now(libc::CLOCK_REALTIME) - mono) as i64;
    OFFSET.store(offset, Ordering::Relaxed);
    OFFSET_AT.store(mono as u64, Ordering::Relaxed);
    offset
}

impl Serialize for WallTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Rfc3339(self.unix_ns()))
    }
}

/// Unix nanoseconds as RFC 3339 UTC with microseconds (64 bits: until 2262; 128-bit
/// arithmetic and formatting cost a busy trace 3 % of its CPU).
struct Rfc3339(i64);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.div_euclid(1_000_000_000);
        let micros = self.0.rem_euclid(1_000_000_000) / 1000;
        let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil(days);
        if !(0..=9999).contains(&y) {
            return write!(
                f,
                "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
                sod / 3600,
                sod % 3600 / 60,
                sod % 60
            );
        }
        // Digit by digit into a fixed buffer: `write!` with padded integers cost a busy trace
        // 6 % of its CPU, one time per hop line.
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: i64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, sod / 3600);
        put(14, 2, sod % 3600 / 60);
        put(17, 2, sod % 60);
        put(20, 6, micros);
        // The buffer holds ASCII digits and separators only.
        f.write_str(std::str::from_utf8(&b).map_err(|_| std::fmt::Error)?)
    }
}

/// Year, month, day of a day count since 1970-01-01 (the proleptic Gregorian calendar, by
/// 400-year eras).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_rfc3339_utc_with_microseconds() {
        let at = |ns: i64| Rfc3339(ns).to_string();
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
