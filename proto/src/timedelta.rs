//! Session times as producers write them: plain seconds (`3728.731`) or the pandas timedelta
//! text FastF1 exports (`0 days 01:02:08.731000`). The JSON wire format accepts both in
//! `SessionTime`; the client reads the same text from FastF1 CSV files.

/// Seconds from `3728.731` or `0 days 01:02:08.731000` (also `1 day …` and a bare
/// `01:02:08.731`); `None` for anything else, including non-finite numbers.
pub fn parse_seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let (days, rest) = match s.split_once(" days ").or_else(|| s.split_once(" day ")) {
        Some((d, r)) => (d.trim().parse::<f64>().ok()?, r),
        None => (0.0, s),
    };
    let mut parts = rest.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(days * 86_400.0 + h * 3_600.0 + m * 60.0 + sec)
}

#[cfg(test)]
mod tests {
    use super::parse_seconds;

    #[test]
    fn seconds_and_pandas_timedeltas() {
        assert_eq!(parse_seconds("0 days 00:00:01.707000"), Some(1.707));
        assert_eq!(parse_seconds("0 days 01:02:08.731000"), Some(3728.731));
        assert_eq!(parse_seconds("1 days 00:00:00"), Some(86400.0));
        assert_eq!(parse_seconds("1 day 00:00:02"), Some(86402.0));
        assert_eq!(parse_seconds("00:01:00"), Some(60.0));
        assert_eq!(parse_seconds(" 3728.731 "), Some(3728.731));
        assert_eq!(parse_seconds("NaN"), None);
        assert_eq!(parse_seconds("inf"), None);
        assert_eq!(parse_seconds("01:02:03:04"), None);
        assert_eq!(parse_seconds("soon"), None);
        assert_eq!(parse_seconds(""), None);
    }
}
