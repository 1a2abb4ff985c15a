//! `/proc/uptime` → seconds since boot (`host.uptimeSeconds`).
//!
//! Reads the first field only (the second, idle time, is summed over CPUs and
//! means nothing to the server). Refuses values that are not a finite,
//! non-negative number of seconds.

use super::Error;
use crate::root::Root;

const PATH: &str = "/proc/uptime";

pub fn collect(root: &Root) -> Result<u64, Error> {
    parse(&root.read_kept(PATH, crate::root::SMALL)?.text)
}

pub fn parse(text: &str) -> Result<u64, Error> {
    let first = text
        .split_whitespace()
        .next()
        .ok_or_else(|| Error::parse(PATH, "empty"))?;
    let secs: f64 = first
        .parse()
        .map_err(|_| Error::parse(PATH, format!("not a number: {first:.40}")))?;
    // 2^53 seconds is far beyond any uptime; it also keeps the cast exact.
    if !secs.is_finite() || !(0.0..9.0e15).contains(&secs) {
        return Err(Error::parse(PATH, format!("out of range: {first:.40}")));
    }
    Ok(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical() {
        assert_eq!(parse("864213.58 1712345.01\n").unwrap(), 864213);
        assert_eq!(parse("25.66 401.98\n").unwrap(), 25);
    }

    #[test]
    fn hostile() {
        for bad in ["", "\n", "abc 1", "-5 1", "NaN 1", "inf", "1e300 1"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
