//! `/proc/loadavg` → the 1, 5 and 15 minute load averages (`host.loadAverage`).
//!
//! Only the first three fields are used; the running/total task counts and the
//! last PID are ignored.

use super::Error;
use crate::root::Root;

const PATH: &str = "/proc/loadavg";

pub fn collect(root: &Root) -> Result<[f64; 3], Error> {
    parse(&root.read_kept(PATH, crate::root::SMALL)?.text)
}

pub fn parse(text: &str) -> Result<[f64; 3], Error> {
    let mut out = [0.0; 3];
    let mut fields = text.split_whitespace();
    for (i, slot) in out.iter_mut().enumerate() {
        let f = fields
            .next()
            .ok_or_else(|| Error::parse(PATH, format!("{} fields, want 3", i)))?;
        let v: f64 = f
            .parse()
            .map_err(|_| Error::parse(PATH, format!("not a number: {f:.40}")))?;
        if !v.is_finite() || v < 0.0 {
            return Err(Error::parse(PATH, format!("out of range: {f:.40}")));
        }
        *slot = v;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical() {
        assert_eq!(
            parse("0.42 0.37 0.31 1/207 425\n").unwrap(),
            [0.42, 0.37, 0.31]
        );
        assert_eq!(parse("0.00 0.00 0.00 1/207 425\n").unwrap(), [0.0; 3]);
    }

    #[test]
    fn hostile() {
        for bad in ["", "0.1 0.2", "a b c", "-1 0 0", "nan 0 0", "1 2 inf"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
