//! RFC 3339 timestamps without allocation.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Length of `2026-11-25T18:00:03.123456Z`.
pub(crate) const LEN: usize = 27;

/// The current time as RFC 3339; the date-and-seconds part is formatted once per second per
/// thread, the microseconds every time.
pub(crate) fn rfc3339_now() -> [u8; LEN] {
    thread_local! {
        static LAST: Cell<(u64, [u8; LEN])> = const { Cell::new((u64::MAX, [0; LEN])) };
    }
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    LAST.with(|last| {
        let (cached_secs, mut out) = last.get();
        if cached_secs != secs {
            out = rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            last.set((secs, out));
        }
        put(&mut out[20..26], u64::from(since.subsec_micros()));
        out
    })
}

/// Formats `t` as RFC 3339 UTC with microseconds into a fixed buffer.
pub(crate) fn rfc3339(t: SystemTime) -> [u8; LEN] {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let micros = since.subsec_micros();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    put(&mut out[0..4], year as u64);
    put(&mut out[5..7], month as u64);
    put(&mut out[8..10], day as u64);
    put(&mut out[11..13], rem / 3600);
    put(&mut out[14..16], rem % 3600 / 60);
    put(&mut out[17..19], rem % 60);
    put(&mut out[20..26], micros as u64);
    out
}

fn put(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, micros: u32) -> String {
        let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros.into());
        String::from_utf8(rfc3339(t).to_vec()).unwrap()
    }

    #[test]
    fn cached_now_matches_a_fresh_format() {
        let a = rfc3339_now();
        let b = rfc3339_now();
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(text.ends_with('Z') && text.len() == LEN, "{text}");
        // Same second (almost always): same prefix; either way, both parse as the same shape.
        assert_eq!(a[4], b'-');
        assert_eq!(b[19], b'.');
    }

    #[test]
    fn known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_795_629_603, 123_456), "2026-11-25T18:00:03.123456Z");
        assert_eq!(at(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
    }
}
