//! The mbox `From_` line: `From sender Www Mmm dd hh:mm:ss yyyy`.
//!
//! Every message in an mbox starts with one. We write them in UTC in the
//! asctime layout that Postfix `local`, procmail and Dovecot write, and read
//! them leniently: a time zone may stand before or after the year, and the
//! sender may be anything without a newline. A line counts as a message
//! separator only when it has a date, so an unquoted body line such as
//! "From the desk of ..." in a foreign file does not split a message.

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// What a `From_` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromLine {
    pub sender: String,
    /// Seconds since the epoch, UTC (the line's zone applied when it has one).
    pub date: i64,
}

/// Parses one `From_` line (without its newline). `None` unless it starts
/// with `From ` and carries a recognisable date.
pub fn parse(line: &[u8]) -> Option<FromLine> {
    let (date, sender_end) = parse_date_at(line)?;
    let sender = std::str::from_utf8(&line[5..sender_end]).ok().map(str::trim).unwrap_or("");
    let sender = if sender.is_empty() { "MAILER-DAEMON".to_string() } else { sender.to_string() };
    Some(FromLine { sender, date })
}

/// The date of a `From_` line, without allocating: what the indexer calls
/// for every separator.
pub fn parse_date(line: &[u8]) -> Option<i64> {
    parse_date_at(line).map(|(d, _)| d)
}

/// The date, and where the sender ends.
fn parse_date_at(line: &[u8]) -> Option<(i64, usize)> {
    let rest = line.strip_prefix(b"From ")?;
    if rest.len() > 1000 {
        return None;
    }
    // The last few words carry the date; keep their positions only.
    const KEEP: usize = 10;
    let mut words = [(0usize, 0usize); KEEP];
    let mut n = 0usize;
    let mut i = 0;
    while i < rest.len() {
        while i < rest.len() && rest[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while i < rest.len() && !rest[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > s {
            words[n % KEEP] = (s, i);
            n += 1;
        }
    }
    let kept = n.min(KEEP);
    let word = |k: usize| -> &[u8] {
        // k-th of the kept words, oldest first.
        let (s, e) = words[(n - kept + k) % KEEP];
        &rest[s..e]
    };
    // Find "Www Mmm" from the right: the sender may contain spaces.
    let mut w = kept.checked_sub(4)?;
    loop {
        if weekday(word(w)).is_some() && month(word(w + 1)).is_some() {
            break;
        }
        if w == 0 {
            return None;
        }
        w -= 1;
    }
    let mon = month(word(w + 1))?;
    let day = digits(word(w + 2))?;
    let (h, m, sec) = parse_time(word(w + 3))?;
    let mut year: Option<i64> = None;
    let mut zone: i64 = 0;
    for k in (w + 4)..(w + 6).min(kept) {
        let t = word(k);
        if let Some(z) = parse_zone(t) {
            zone = z;
        } else if t.len() == 4 {
            year = digits(t).map(i64::from);
        } else if t.len() == 2 {
            // Two-digit years appear in very old files.
            year = digits(t).map(|y| if y < 70 { 2000 + y as i64 } else { 1900 + y as i64 });
        }
    }
    let year = year?;
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, mon + 1, day);
    let date = days * 86400 + (h * 3600 + m * 60 + sec) as i64 - zone;
    let sender_end = if n - kept + w == 0 { 5 } else { 5 + words[(n - kept + w) % KEEP].0 };
    Some((date, sender_end))
}

fn digits(w: &[u8]) -> Option<u32> {
    if w.is_empty() || w.len() > 9 || !w.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(w.iter().fold(0u32, |a, &b| a * 10 + (b - b'0') as u32))
}

fn weekday(w: &[u8]) -> Option<usize> {
    WEEKDAYS.iter().position(|d| d.as_bytes().eq_ignore_ascii_case(w))
}

fn month(w: &[u8]) -> Option<u32> {
    MONTHS.iter().position(|d| d.as_bytes().eq_ignore_ascii_case(w)).map(|m| m as u32)
}

fn parse_time(w: &[u8]) -> Option<(u32, u32, u32)> {
    let mut it = w.split(|&b| b == b':');
    let h = digits(it.next()?)?;
    let m = digits(it.next()?)?;
    let s = match it.next() {
        Some(s) => digits(s)?,
        None => 0,
    };
    if it.next().is_some() {
        return None;
    }
    Some((h, m, s))
}

/// `+hhmm` / `-hhmm` to seconds east of UTC.
fn parse_zone(b: &[u8]) -> Option<i64> {
    if b.len() != 5 || !(b[0] == b'+' || b[0] == b'-') {
        return None;
    }
    let n = digits(&b[1..])? as i64;
    let secs = (n / 100) * 3600 + (n % 100) * 60;
    Some(if b[0] == b'-' { -secs } else { secs })
}

/// Formats a `From_` line (without newline) for `date` in UTC.
pub fn format(sender: &str, date: i64) -> String {
    // A sender with white space or control characters would not parse back.
    let clean: String = sender.chars().map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c }).collect();
    let sender = if clean.is_empty() { "MAILER-DAEMON".to_string() } else { clean };
    format!("From {} {}", sender, asctime(date))
}

/// `Www Mmm dd hh:mm:ss yyyy` in UTC, the day padded with a space as asctime does.
pub fn asctime(date: i64) -> String {
    let days = date.div_euclid(86400);
    let secs = date.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let wd = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        WEEKDAYS[wd],
        MONTHS[(m - 1) as usize],
        d,
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        y
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The inverse of [`days_from_civil`]: (year, month 1..=12, day 1..=31).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
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

    #[test]
    fn table() {
        let cases: &[(&str, Option<(&str, i64)>)] = &[
            ("From alice@example.org Thu Nov 26 16:01:55 2026", Some(("alice@example.org", 1795708915))),
            ("From MAILER-DAEMON Thu Jan  1 00:00:00 1970", Some(("MAILER-DAEMON", 0))),
            ("From bob Thu Jan  1 01:00:00 +0100 1970", Some(("bob", 0))),
            ("From bob Thu Jan  1 01:00:00 1970 +0100", Some(("bob", 0))),
            ("From a b c Thu Jan  1 00:00:10 1970", Some(("a b c", 10))),
            ("From Thu Jan  1 00:01 1970", Some(("MAILER-DAEMON", 60))),
            ("From the desk of the president", None),
            ("From bob Thu Jan 32 00:00:00 1970", None),
            ("From bob Thu Jan  1 25:00:00 1970", None),
            ("From bob Thu Jan  1 00:00:00", None),
            ("From: bob Thu Jan  1 00:00:00 1970", None),
            (">From bob Thu Jan  1 00:00:00 1970", None),
            ("From ", None),
        ];
        for (input, want) in cases {
            let got = parse(input.as_bytes()).map(|f| (f.sender, f.date));
            assert_eq!(got, want.map(|(s, d)| (s.to_string(), d)), "{input}");
        }
    }

    #[test]
    fn format_round_trips() {
        for date in [0i64, 1795708915, 951782400, 4102444799, 68256000] {
            let line = format("x@y", date);
            assert_eq!(parse(line.as_bytes()), Some(FromLine { sender: "x@y".into(), date }), "{line}");
        }
        assert_eq!(asctime(1795708915), "Thu Nov 26 16:01:55 2026");
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(format("a b\tc", 0), "From a_b_c Thu Jan  1 00:00:00 1970");
    }

    #[test]
    fn civil_round_trip() {
        for z in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}
