//! `/proc/stat` → CPU usage percent (`metrics.cpuUsagePercent`).
//!
//! Usage is busy time over total time between this cycle's sample of the
//! aggregate `cpu` line and the previous one, so it averages over the whole
//! report interval. `guest` and `guest_nice` are already inside `user` and
//! `nice`, so they are not added again. When there is no usable previous sample
//! (first cycle, counters reset or stalled) the collector watches for a short
//! spot interval instead. It never reports a number it could not measure: if
//! the counters do not move at all, usage is absent.

use std::time::Duration;

use super::Error;
use crate::root::Root;

const PATH: &str = "/proc/stat";
/// The aggregate line comes first; reading more would make the kernel format
/// every per-CPU and interrupt line for nothing.
const HEAD: usize = 8 * 1024;

/// Jiffies from the aggregate `cpu` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl Times {
    fn total(&self) -> u64 {
        [
            self.user,
            self.nice,
            self.system,
            self.idle,
            self.iowait,
            self.irq,
            self.softirq,
            self.steal,
        ]
        .iter()
        .fold(0u64, |a, &b| a.saturating_add(b))
    }

    fn busy(&self) -> u64 {
        self.total()
            .saturating_sub(self.idle)
            .saturating_sub(self.iowait)
    }
}

/// Parses the aggregate `cpu` line. Kernels before 2.6.11 print only four
/// numbers; the missing ones count as zero.
pub fn parse(text: &str) -> Result<Times, Error> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu ") || l.starts_with("cpu\t"))
        .ok_or_else(|| Error::parse(PATH, "no aggregate cpu line"))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::parse(PATH, "cpu line holds a non-number"))?;
    if nums.len() < 4 {
        return Err(Error::parse(PATH, "cpu line has fewer than 4 counters"));
    }
    let at = |i: usize| nums.get(i).copied().unwrap_or(0);
    Ok(Times {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
    })
}

/// Counts the per-CPU `cpuN` lines: the CPU count when `/proc/cpuinfo` has no
/// `processor` lines.
pub fn count_cpus(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count() as u64
}

/// Usage between two samples, or `None` when the counters did not advance.
pub fn usage(prev: &Times, cur: &Times) -> Option<f64> {
    let total = cur.total().checked_sub(prev.total())?;
    let busy = cur.busy().checked_sub(prev.busy())?;
    if total == 0 {
        return None;
    }
    Some((busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

/// The previous sample, kept between cycles.
pub struct Usage {
    prev: Option<Times>,
    spot: Duration,
}

impl Usage {
    pub fn new(spot: Duration) -> Usage {
        Usage { prev: None, spot }
    }

    pub fn collect(&mut self, root: &Root) -> Result<Option<f64>, Error> {
        let read = || -> Result<Times, Error> { parse(&root.read_kept(PATH, HEAD)?.text) };
        let cur = read()?;
        if let Some(pct) = self.prev.and_then(|p| usage(&p, &cur)) {
            self.prev = Some(cur);
            return Ok(Some(pct));
        }
        // No usable baseline: watch for a moment rather than report a guess.
        if self.spot.is_zero() {
            self.prev = Some(cur);
            return Ok(None);
        }
        std::thread::sleep(self.spot);
        let after = read()?;
        self.prev = Some(after);
        Ok(usage(&cur, &after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modern_and_old_kernels() {
        let t =
            parse("cpu  57 0 464 40160 119 0 24 4 0 0\ncpu0 0 0 67 2473 3 0 21 0 0 0\n").unwrap();
        assert_eq!(t.user, 57);
        assert_eq!(t.steal, 4);
        let old = parse("cpu 1 2 3 4\n").unwrap();
        assert_eq!(old.idle, 4);
        assert_eq!(old.iowait, 0);
    }

    #[test]
    fn guest_is_not_counted_twice() {
        // guest (9th) and guest_nice (10th) are ignored.
        let a = parse("cpu 100 0 0 100 0 0 0 0 500 500").unwrap();
        let b = parse("cpu 200 0 0 200 0 0 0 0 900 900").unwrap();
        assert_eq!(usage(&a, &b), Some(50.0));
    }

    #[test]
    fn stalled_or_reset_counters_give_nothing() {
        let a = parse("cpu 100 0 0 100").unwrap();
        assert_eq!(usage(&a, &a), None);
        let reset = parse("cpu 1 0 0 1").unwrap();
        assert_eq!(usage(&a, &reset), None);
    }

    #[test]
    fn counts_per_cpu_lines() {
        assert_eq!(
            count_cpus("cpu  1 2 3 4\ncpu0 1 2 3 4\ncpu1 1 2 3 4\nintr 5\n"),
            2
        );
        assert_eq!(count_cpus(""), 0);
    }

    #[test]
    fn hostile() {
        for bad in [
            "",
            "cpu",
            "cpu 1 2 3",
            "cpu a b c d",
            "cpu0 1 2 3 4",
            "cpu -1 2 3 4",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // Huge but valid counters saturate instead of overflowing.
        let big = parse(&format!(
            "cpu {} {} {} {}",
            u64::MAX,
            u64::MAX,
            u64::MAX,
            u64::MAX
        ))
        .unwrap();
        assert_eq!(big.total(), u64::MAX);
    }
}
