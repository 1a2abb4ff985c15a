//! NVIDIA GPUs (`sensors.gpu[]`, `spec/pulse-collectors.md` §3.4) from
//! `nvidia-smi --query-gpu=...`'s CSV. Parsing only; the program is run by
//! the hardware thread.

use std::collections::HashSet;

/// The exact arguments: the columns [`parse`] expects, in order.
pub const QUERY: [&str; 2] = [
    "--query-gpu=index,name,temperature.gpu,utilization.gpu,memory.used,memory.total",
    "--format=csv,noheader,nounits",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub id: String,
    pub name: String,
    pub temperature: Option<f64>,
    pub utilization: Option<f64>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
}

/// One GPU per usable row. Rows with fewer than 3 columns, or with nothing
/// usable, are skipped; `[N/A]`, `Not Supported` and negative numbers mean
/// absent.
pub fn parse(text: &str) -> Vec<Gpu> {
    let mut out: Vec<Gpu> = Vec::new();
    // IDs already given (a set: scanning `out` per row was quadratic).
    let mut ids: HashSet<String> = HashSet::new();
    for (row, line) in text.lines().enumerate() {
        let cols = split_csv(line);
        if cols.len() < 3 {
            continue;
        }
        let col = |i: usize| cols.get(i).map(String::as_str).unwrap_or("");
        let mut id = normalize_id(col(0));
        if id.is_empty() || ids.contains(&id) {
            id = row.to_string();
        }
        let temperature = number(col(2)).filter(|v| *v > 0.0);
        let utilization = number(col(3));
        // MiB → bytes; a size past i64 (the server's integer) is not a size,
        // where `as` would have saturated it to u64::MAX.
        let mib = |v: f64| {
            let bytes = (v * 1_048_576.0).round();
            (bytes < 9_223_372_036_854_775_807.0).then_some(bytes as u64)
        };
        let memory_used = number(col(4)).and_then(mib);
        let memory_total = number(col(5)).filter(|v| *v > 0.0).and_then(mib);
        let name = col(1).to_string();
        if name.is_empty()
            && temperature.is_none()
            && utilization.is_none()
            && memory_used.is_none()
            && memory_total.is_none()
        {
            continue;
        }
        ids.insert(id.clone());
        out.push(Gpu {
            id,
            name,
            temperature,
            utilization,
            memory_used,
            memory_total,
        });
    }
    out
}

/// `0000:65:00.0` → `0000_65_00_0`: lowercase, each run of other characters one `_`.
fn normalize_id(raw: &str) -> String {
    let mut out = String::new();
    for c in raw.trim().chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// The first word without `%`, `C` or `MiB`; absent for `N/A` and friends.
fn number(raw: &str) -> Option<f64> {
    let word = raw.split_whitespace().next()?;
    let word = word
        .trim_end_matches('%')
        .trim_end_matches(['C', 'c'])
        .trim_end_matches("MiB")
        .trim_end_matches("Mib");
    let v: f64 = word.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// One CSV line: fields split on `,`, leading spaces trimmed, `"..."` quoting.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => {
                fields.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    fields.push(cur.trim().to_string());
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        let g = parse(
            "0, NVIDIA H100 80GB HBM3, 34, 0, 0, 81559\n1, \"Tesla, T4\", [N/A], 12 %, 100 MiB, 15360 MiB\n",
        );
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].id, "0");
        assert_eq!(g[0].temperature, Some(34.0));
        assert_eq!(g[0].utilization, Some(0.0));
        assert_eq!(g[0].memory_used, Some(0));
        assert_eq!(g[0].memory_total, Some(81559 * 1_048_576));
        assert_eq!(g[1].name, "Tesla, T4");
        assert_eq!(g[1].temperature, None);
        assert_eq!(g[1].utilization, Some(12.0));
        assert_eq!(normalize_id("0000:65:00.0"), "0000_65_00_0");
    }

    /// `1e300` MiB became u64::MAX bytes (a saturating `as`), past the
    /// server's int64: now absent.
    #[test]
    fn memory_past_the_servers_integers_is_absent_not_saturated() {
        let g = parse("0, A, 30, 1, 1e300, 8796093022208\n1, B, 30, 1, 8796093022207, 5\n");
        assert_eq!((g[0].memory_used, g[0].memory_total), (None, None));
        assert_eq!(g[1].memory_used, Some(8_796_093_022_207 * 1_048_576));
        assert_eq!(g[1].memory_total, Some(5 * 1_048_576));
    }

    #[test]
    fn hostile() {
        for text in [
            "",
            "garbage",
            "a,b",
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
            ",,,,,",
            "0, , -5, -1, x, 0",
        ] {
            assert!(parse(text).is_empty(), "{text}");
        }
        // Duplicate and empty IDs fall back to the row number.
        let g = parse("0, A, 30\n0, B, 31\n, C, 32\n");
        let ids: Vec<&str> = g.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2"]);
    }
}
