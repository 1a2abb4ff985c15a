//! `/proc/meminfo` → memory and swap (`metrics.memory`).
//!
//! Used memory is `MemTotal − MemAvailable`, the kernel's own estimate of what
//! cannot be reclaimed, so page cache does not count as used. Kernels older
//! than 3.14 have no `MemAvailable`; there the classic `free + buffers +
//! cached` stands in for it.
//!
//! The ZFS ARC is a cache too, but the kernel counts it as used: when
//! `/proc/spl/kstat/zfs/arcstats` exists its `size` is taken off `used` and
//! given to `free` (as the server expects), or a TrueNAS box would show 85 %
//! used while most of it is cache.

use super::Error;
use crate::root::{self, Root};

const PATH: &str = "/proc/meminfo";

/// Memory in bytes, as the report sends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Memory {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    /// Reclaimable cache: available − free.
    pub cache: u64,
    /// used / total × 100.
    pub usage: f64,
    pub swap_total: u64,
    pub swap_used: u64,
}

/// The `/proc/meminfo` lines this collector uses, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meminfo {
    pub mem_total: Option<u64>,
    pub mem_free: Option<u64>,
    pub mem_available: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

const ARCSTATS: &str = "/proc/spl/kstat/zfs/arcstats";

pub fn collect(root: &Root, zfs_arc_is_cache: bool) -> Result<Memory, Error> {
    // A real meminfo is under 2 KiB; a capped read of a hostile one still
    // finds the lines at its top.
    let m = compute(&parse(&root.read_kept(PATH, root::SMALL)?.text)?)?;
    if !zfs_arc_is_cache {
        return Ok(m);
    }
    // No ZFS, or an unreadable arcstats: nothing to adjust.
    let arc = root
        .read_kept(ARCSTATS, root::SMALL)
        .ok()
        .and_then(|c| parse_arc_size(&c.text));
    Ok(match arc {
        Some(arc) => without_arc(m, arc),
        None => m,
    })
}

/// The ARC's current size: the third column of the `size` row of arcstats
/// (after the kstat header and the `name type data` line).
pub fn parse_arc_size(text: &str) -> Option<u64> {
    text.lines().skip(2).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[0] == "size")
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// Moves the ARC from used to free, keeping total = used + free + cache.
pub fn without_arc(mut m: Memory, arc: u64) -> Memory {
    if arc == 0 {
        return m;
    }
    m.used = m.used.saturating_sub(arc);
    m.usage = (m.used as f64 / m.total as f64 * 100.0).clamp(0.0, 100.0);
    if let Some(free) = m
        .total
        .checked_sub(m.used)
        .and_then(|r| r.checked_sub(m.cache))
    {
        m.free = free;
    } else if m.total >= m.used {
        m.cache = m.total - m.used;
        m.free = 0;
    }
    m
}

/// Parses `Key:   123 kB` lines. Unknown keys and malformed lines are skipped;
/// a known key with a bad value is an error.
pub fn parse(text: &str) -> Result<Meminfo, Error> {
    let mut m = Meminfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => &mut m.mem_total,
            "MemFree" => &mut m.mem_free,
            "MemAvailable" => &mut m.mem_available,
            "Buffers" => &mut m.buffers,
            "Cached" => &mut m.cached,
            "SwapTotal" => &mut m.swap_total,
            "SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        if slot.is_some() {
            continue; // first occurrence wins, as in the kernel's own tools
        }
        let mut f = rest.split_whitespace();
        let value: u64 = f
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::parse(PATH, format!("{key}: not a number")))?;
        let bytes = match f.next() {
            Some("kB") => value.checked_mul(1024),
            None => Some(value),
            Some(unit) => {
                return Err(Error::parse(
                    PATH,
                    format!("{key}: unknown unit {unit:.10}"),
                ));
            }
        }
        .ok_or_else(|| Error::parse(PATH, format!("{key}: value overflows")))?;
        *slot = Some(bytes);
    }
    if m.mem_total.is_none() {
        return Err(Error::parse(PATH, "no MemTotal line"));
    }
    Ok(m)
}

/// Derives the reported numbers from the raw lines.
pub fn compute(m: &Meminfo) -> Result<Memory, Error> {
    let total = m.mem_total.unwrap_or(0);
    if total == 0 {
        return Err(Error::parse(PATH, "MemTotal is 0"));
    }
    let free = m.mem_free.unwrap_or(0);
    let reclaimable = free
        .saturating_add(m.buffers.unwrap_or(0))
        .saturating_add(m.cached.unwrap_or(0));
    let available = m.mem_available.unwrap_or(reclaimable);
    let used = if available > 0 && available <= total {
        total - available
    } else {
        total.saturating_sub(reclaimable)
    };
    let swap_total = m.swap_total.unwrap_or(0);
    Ok(Memory {
        total,
        used,
        free,
        cache: available.saturating_sub(free),
        usage: (used as f64 / total as f64 * 100.0).clamp(0.0, 100.0),
        swap_total,
        swap_used: swap_total.saturating_sub(m.swap_free.unwrap_or(swap_total)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODERN: &str = "MemTotal:       16303748 kB\nMemFree:         2097152 kB\n\
        MemAvailable:   10485760 kB\nBuffers:          102400 kB\nCached:          8000000 kB\n\
        SwapTotal:       4194304 kB\nSwapFree:        4194304 kB\nHugePages_Total:       0\n";

    #[test]
    fn modern_kernel() {
        let m = compute(&parse(MODERN).unwrap()).unwrap();
        assert_eq!(m.total, 16303748 * 1024);
        assert_eq!(m.used, (16303748 - 10485760) * 1024);
        assert_eq!(m.free, 2097152 * 1024);
        assert_eq!(m.cache, (10485760 - 2097152) * 1024);
        assert_eq!(m.swap_total, 4194304 * 1024);
        assert_eq!(m.swap_used, 0);
        assert!((m.usage - 35.685).abs() < 0.01, "{}", m.usage);
    }

    #[test]
    fn old_kernel_without_memavailable() {
        let m = compute(
            &parse("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n").unwrap(),
        )
        .unwrap();
        assert_eq!(m.used, 600 * 1024);
        assert_eq!(m.cache, 300 * 1024);
    }

    #[test]
    fn available_above_total_falls_back() {
        let m =
            compute(&parse("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 5000 kB\n").unwrap())
                .unwrap();
        assert_eq!(m.used, 900 * 1024);
        assert!(m.usage <= 100.0);
    }

    #[test]
    fn zfs_arc_is_cache_not_used() {
        let arcstats = "13 1 0x01 147 39984 5367384361 1938213549117\nname                            type data\n\
                        hits                            4    2061213\nsize                            4    21474836480\n";
        assert_eq!(parse_arc_size(arcstats), Some(21_474_836_480));
        let m = compute(
            &parse("MemTotal: 32412652 kB\nMemFree: 2188344 kB\nMemAvailable: 4961224 kB\n")
                .unwrap(),
        )
        .unwrap();
        let a = without_arc(m, 21_474_836_480);
        assert_eq!(a.used, m.used - 21_474_836_480);
        assert_eq!(a.total, a.used + a.free + a.cache, "the parts still add up");
        assert!(a.usage < 25.0, "{}", a.usage);
        // An ARC larger than used (a kstat read mid-update) floors at 0.
        assert_eq!(without_arc(m, u64::MAX).used, 0);
        assert_eq!(
            parse_arc_size("size 4 5\n"),
            None,
            "header lines are skipped"
        );
        assert_eq!(parse_arc_size("a\nb\nsize 4 x\n"), None);
    }

    #[test]
    fn hostile() {
        assert!(parse("").is_err());
        assert!(parse("MemFree: 5 kB\n").is_err());
        assert!(parse("MemTotal: x kB\n").is_err());
        assert!(parse("MemTotal: 99999999999999999999 kB\n").is_err());
        assert!(parse(&format!("MemTotal: {} kB\n", u64::MAX / 2)).is_err());
        assert!(parse("MemTotal: 5 MB\n").is_err());
        assert!(compute(&parse("MemTotal: 0 kB\n").unwrap()).is_err());
        // Garbage lines around valid ones are skipped.
        let m = parse("\u{0}\u{1}garbage\nMemTotal: 10 kB\n:::\n").unwrap();
        assert_eq!(m.mem_total, Some(10240));
    }
}
