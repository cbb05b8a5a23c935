//! xs:duration as used by w:OperationTimeout ("PT20S", "PT60.000S",
//! "P0DT0H0M0S").

use std::time::Duration;

/// Parses a non-negative xs:duration. Years and months have no fixed length;
/// they count as 365 and 30 days, which is plenty for a timeout. Returns
/// `None` for anything malformed, negative or too large.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim_matches(super::is_xml_space);
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return None; // "PT" alone is invalid
            }
            (d, Some(t))
        }
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return None; // "P" alone is invalid
    }
    let mut secs: u64 = 0;
    let mut nanos: u32 = 0;
    let mut any = false;

    // Designators must appear in this order, each at most once.
    let mut parse_part = |part: &str, units: &[(char, u64)], allow_fraction: bool| -> Option<()> {
        let mut next_unit = 0;
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || (c == '.' && allow_fraction) {
                num.push(c);
                continue;
            }
            let idx = units[next_unit..].iter().position(|(u, _)| *u == c)? + next_unit;
            next_unit = idx + 1;
            let (unit, mult) = units[idx];
            let (int, frac) = match num.split_once('.') {
                Some((i, f)) if unit == 'S' => (i, Some(f)),
                Some(_) => return None,
                None => (num.as_str(), None),
            };
            if int.is_empty() && frac.is_none_or(str::is_empty) {
                return None;
            }
            let n: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
            secs = secs.checked_add(n.checked_mul(mult)?)?;
            if let Some(f) = frac {
                if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                // Nanosecond precision is enough; drop further digits.
                let digits: String = f.chars().take(9).collect();
                let scale = 10u32.pow(9 - digits.len() as u32);
                nanos = digits.parse::<u32>().ok()?.checked_mul(scale)?;
            }
            any = true;
            num.clear();
        }
        num.is_empty().then_some(())
    };

    parse_part(date, &[('Y', 365 * 86400), ('M', 30 * 86400), ('D', 86400)], false)?;
    if let Some(t) = time {
        parse_part(t, &[('H', 3600), ('M', 60), ('S', 1)], true)?;
    }
    if !any {
        return None;
    }
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_windows_forms() {
        let ok = [
            ("PT20S", Duration::from_secs(20)),
            ("PT60S", Duration::from_secs(60)),
            ("PT20.000S", Duration::from_secs(20)),
            ("PT60.000S", Duration::from_secs(60)),
            ("PT7200.000S", Duration::from_secs(7200)),
            ("PT0.5S", Duration::from_millis(500)),
            ("PT.25S", Duration::from_millis(250)),
            ("PT1.123456789123S", Duration::new(1, 123_456_789)),
            ("P0DT0H0M0S", Duration::ZERO),
            ("PT1H2M3S", Duration::from_secs(3723)),
            ("PT5M", Duration::from_secs(300)),
            ("P1D", Duration::from_secs(86400)),
            ("P1DT1S", Duration::from_secs(86401)),
            ("P1Y2M", Duration::from_secs(365 * 86400 + 60 * 86400)),
            ("  PT20S\n", Duration::from_secs(20)),
            // Valid, and far past any deadline: callers clamp it (RequestInfo::operation_timeout_within).
            ("PT18446744073709551615S", Duration::from_secs(u64::MAX)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Some(want), "{s:?}");
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "P",
            "PT",
            "-PT5S",
            "PT-1S",
            "PT5",
            "20",
            "pt20s",
            "PT20.S",
            "PT.S",
            "PTS",
            "PT5S5S",
            "PT5M1H",
            "P1.5D",
            "PT1.5M",
            "PT1,5S",
            "P1S",
            "PT1D",
            "PT5S ",
            "P T5S",
            "PT99999999999999999999S",
            "P99999999999999Y",
            "PT18446744073709551616S",
            "PT5124095576030432H",
            "P1DT18446744073709551615S",
            "PT1.2.3S",
            "PT+5S",
            "PT５S",
        ] {
            // Trailing XML whitespace is trimmed, so "PT5S " is fine; check the rest.
            if s == "PT5S " {
                assert_eq!(parse_duration(s), Some(Duration::from_secs(5)));
                continue;
            }
            assert_eq!(parse_duration(s), None, "{s:?}");
        }
    }
}
