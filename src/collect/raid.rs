//! Linux software RAID (`raid[]`, `spec/pulse-collectors.md` §2): the
//! parsers of `/proc/mdstat` (which arrays exist, their members, counts and
//! any rebuild in progress) and of `mdadm --detail /dev/mdN` (names, UUIDs,
//! exact counts and member states), and how the two are combined.
//!
//! Pure functions only: they never read a file or run a program
//! (`hardware.rs` does, on its own thread).

/// One md array as the server's `raid[]` entry describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Array {
    /// `/dev/mdN`.
    pub device: String,
    pub name: String,
    pub level: String,
    pub state: String,
    pub total: u64,
    pub active: u64,
    pub working: u64,
    pub failed: u64,
    pub spare: u64,
    pub uuid: String,
    pub members: Vec<Member>,
    pub rebuild_percent: f64,
    pub rebuild_speed: String,
    /// `recovery`, `resync`, `check` or `reshape`, while one runs.
    pub operation: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub device: String,
    pub state: String,
    /// The role number (mdstat) or the `Number` column (mdadm); -1 for a
    /// spare or faulty disk without one.
    pub slot: i64,
}

/// Every `mdN :` section of `/proc/mdstat`, in file order.
pub fn parse_mdstat(text: &str) -> Vec<Array> {
    let mut arrays = Vec::new();
    let mut lines = text.lines().map(str::trim).peekable();
    while let Some(line) = lines.next() {
        let Some(device) = section_start(line) else {
            continue;
        };
        let mut body = Vec::new();
        while let Some(next) = lines.peek() {
            if next.is_empty()
                || next.starts_with("Personalities")
                || next.starts_with("unused devices")
                || section_start(next).is_some()
            {
                break;
            }
            body.push(*next);
            lines.next();
        }
        arrays.push(mdstat_array(device, line, &body));
    }
    arrays
}

/// `md2` when `line` opens an array's section (`md2 : active ...`).
fn section_start(line: &str) -> Option<&str> {
    let (name, _) = line.split_once(':')?;
    let name = name.trim();
    let digits = name.strip_prefix("md")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

fn mdstat_array(name: &str, header: &str, body: &[&str]) -> Array {
    let mut a = Array {
        device: format!("/dev/{name}"),
        ..Array::default()
    };
    let words: Vec<&str> = header
        .split_once(':')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    a.state = words
        .first()
        .map(|w| w.to_ascii_lowercase())
        .unwrap_or_default();
    let level_at = words.iter().position(|w| {
        let w = w.to_ascii_lowercase();
        w.starts_with("raid") || w == "linear" || w == "multipath"
    });
    if let Some(i) = level_at {
        a.level = words[i].to_ascii_lowercase();
    }
    let first_member = level_at.map_or(1, |i| i + 1);
    for w in words.iter().skip(first_member) {
        let Some((dev, rest)) = w.split_once('[') else {
            continue;
        };
        let Some((role, flags)) = rest.split_once(']') else {
            continue;
        };
        let valid_name = !dev.is_empty()
            && dev
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.!/-".contains(&b));
        let Ok(slot) = role.parse::<i64>() else {
            continue;
        };
        if !valid_name {
            continue;
        }
        let state = if flags.contains('F') {
            "faulty"
        } else if flags.contains('S') {
            "spare"
        } else if a.state == "inactive" {
            "inactive"
        } else {
            "active sync"
        };
        a.members.push(Member {
            device: format!("/dev/{dev}"),
            state: state.to_string(),
            slot,
        });
    }
    for line in body {
        if a.total == 0 {
            if let Some((total, active)) = counts(line) {
                a.total = total;
                a.active = active;
            }
        }
        if a.operation.is_empty() {
            a.operation = operation(line).unwrap_or_default().to_string();
        }
        if a.rebuild_speed.is_empty() {
            if let Some(s) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("speed="))
            {
                a.rebuild_speed = s.to_string();
            }
        }
        if a.rebuild_percent == 0.0 {
            a.rebuild_percent = percent(line).unwrap_or(0.0);
        }
    }
    let faulty = a.members.iter().filter(|m| m.state == "faulty").count() as u64;
    a.spare = a.members.iter().filter(|m| m.state == "spare").count() as u64;
    a.working = a.members.len() as u64 - faulty;
    a.failed = faulty;
    if a.active == 0 {
        a.active = a.working.saturating_sub(a.spare);
    }
    if a.total == 0 {
        a.total = a.active;
    }
    // QNAP lists RAID1 system arrays as [24/2] with roles 24 and 25.
    let sparse_roles = a.state == "active"
        && a.level == "raid1"
        && faulty == 0
        && a.total > a.active
        && a.active > 0
        && a.members
            .iter()
            .filter(|m| m.state == "active sync")
            .all(|m| m.slot >= 0 && m.slot as u64 >= a.total);
    if sparse_roles {
        a.total = a.active;
    }
    if a.total > a.active {
        if !a.state.contains("degraded") {
            a.state.push_str(", degraded");
        }
        if faulty == 0 {
            a.failed = a.total - a.active;
        }
    }
    a
}

/// `[4/3] [UUU_]` → (4, 3).
fn counts(line: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find_map(|w| {
        let inner = w[0].strip_prefix('[')?.strip_suffix(']')?;
        let (t, a) = inner.split_once('/')?;
        let map = w[1].strip_prefix('[')?.strip_suffix(']')?;
        if map.is_empty() || !map.bytes().all(|b| b == b'U' || b == b'_') {
            return None;
        }
        Some((t.parse().ok()?, a.parse().ok()?))
    })
}

/// The operation named before `=` (`recovery = 12.6%`).
fn operation(line: &str) -> Option<&'static str> {
    let lower = line.to_ascii_lowercase();
    ["recovery", "resync", "check", "reshape"]
        .into_iter()
        .filter_map(|op| {
            let at = lower.find(op)?;
            lower[at + op.len()..]
                .trim_start()
                .starts_with('=')
                .then_some((at, op))
        })
        .min()
        .map(|(_, op)| op)
}

/// The number in the first `= 12.6%` (the progress bar's `=` signs are not
/// followed by a number).
///
/// Only the digits right after each `=` are looked at: searching the rest of
/// the line for `%` from every `=` was quadratic, and a 1 MB progress bar of
/// `=` did not finish.
fn percent(line: &str) -> Option<f64> {
    line.match_indices('=').find_map(|(i, _)| {
        let after = line[i + 1..].trim_start();
        let len = after
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (num, rest) = after.split_at(len);
        let ok = !num.is_empty() && !num.starts_with('.') && rest.starts_with('%');
        ok.then(|| num.parse().ok()).flatten()
    })
}

/// `mdadm --detail /dev/mdN` output. A count that is not a number fails the
/// whole array (its mdstat entry stands instead).
pub fn parse_detail(text: &str, device: &str) -> Result<Array, String> {
    let mut a = Array {
        device: device.to_string(),
        ..Array::default()
    };
    let mut in_table = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !in_table {
            if line.contains("Number") && line.contains("Major") && line.contains("Minor") {
                in_table = true;
                continue;
            }
            let Some((key, value)) = line.split_once(" : ") else {
                continue;
            };
            let value = value.trim();
            let count = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| format!("{device}: {key:?} is not a count: {v:?}"))
            };
            match key.trim() {
                "Name" => a.name = value.to_string(),
                "Raid Level" => a.level = value.to_ascii_lowercase(),
                "State" => a.state = value.to_ascii_lowercase(),
                "Total Devices" => a.total = count(value)?,
                "Active Devices" => a.active = count(value)?,
                "Working Devices" => a.working = count(value)?,
                "Failed Devices" => a.failed = count(value)?,
                "Spare Devices" => a.spare = count(value)?,
                "UUID" => a.uuid = value.to_string(),
                "Rebuild Status" | "Reshape Status" => {
                    let num = value.split('%').next().unwrap_or("").trim();
                    a.rebuild_percent = num.parse().unwrap_or(0.0);
                }
                _ => {}
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let numeric = |i: usize| words.get(i).is_some_and(|w| w.parse::<u64>().is_ok());
        let last = words.last().copied().unwrap_or("");
        if words.len() >= 6 && (0..4).all(numeric) && last.starts_with("/dev/") {
            a.members.push(Member {
                device: last.to_string(),
                state: words[4..words.len() - 1].join(" "),
                slot: words[0].parse().unwrap_or(-1),
            });
        } else if line.contains("faulty") || line.contains("spare") {
            a.members.push(Member {
                device: last.to_string(),
                state: if line.contains("faulty") {
                    "faulty"
                } else {
                    "spare"
                }
                .to_string(),
                slot: -1,
            });
        }
    }
    Ok(a)
}

/// `mdadm --detail`'s view, with what it left empty taken from mdstat, and
/// the running operation and speed from mdstat (mdadm does not print them).
pub fn merge(mut detail: Array, mdstat: &Array) -> Array {
    let fill = |a: &mut String, b: &String| {
        if a.is_empty() {
            a.clone_from(b);
        }
    };
    fill(&mut detail.level, &mdstat.level);
    fill(&mut detail.state, &mdstat.state);
    // mdadm always prints its counts, and its 0 is a real 0: a recovering
    // mirror (`[2/1]` in mdstat, where total − active would count as failed)
    // has no failed disk. The counts come from mdstat only when mdadm gave
    // none at all (the stock agent fills every 0 from mdstat instead).
    if detail.total == 0 {
        detail.total = mdstat.total;
        detail.active = mdstat.active;
        detail.working = mdstat.working;
        detail.failed = mdstat.failed;
        detail.spare = mdstat.spare;
    }
    if detail.members.is_empty() {
        detail.members.clone_from(&mdstat.members);
    }
    if detail.rebuild_percent == 0.0 {
        detail.rebuild_percent = mdstat.rebuild_percent;
    }
    detail.rebuild_speed.clone_from(&mdstat.rebuild_speed);
    detail.operation.clone_from(&mdstat.operation);
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts_of(a: &Array) -> [u64; 5] {
        [a.total, a.active, a.working, a.failed, a.spare]
    }

    #[test]
    fn a_clean_array_and_a_degraded_one_rebuilding() {
        let text = "Personalities : [raid1] [raid6] [raid5] [raid4] [raid10]\n\
            md127 : active raid10 sdd2[3] sdc2[2] sdb2[1] sda2[0]\n\
            \x20     1953258496 blocks super 1.2 512K chunks 2 near-copies [4/4] [UUUU]\n\
            \x20     bitmap: 2/15 pages [8KB], 65536KB chunk\n\
            \n\
            md3 : active raid6 sdh1[4] sdg1[2] sdf1[1] sde1[0]\n\
            \x20     7813772288 blocks super 1.2 level 6, 512k chunk, algorithm 2 [5/4] [UUU_U]\n\
            \x20     [===>.................]  recovery = 17.3% (676152320/3906886144) finish=301.4min speed=178562K/sec\n\
            \n\
            unused devices: <none>\n";
        let a = parse_mdstat(text);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].device.as_str(), a[0].level.as_str()),
            ("/dev/md127", "raid10")
        );
        assert_eq!(a[0].state, "active");
        assert_eq!(counts_of(&a[0]), [4, 4, 4, 0, 0]);
        assert_eq!(
            a[0].members[3],
            Member {
                device: "/dev/sda2".into(),
                state: "active sync".into(),
                slot: 0
            }
        );
        assert_eq!(a[1].state, "active, degraded");
        assert_eq!(counts_of(&a[1]), [5, 4, 4, 1, 0]);
        assert_eq!(
            (a[1].operation.as_str(), a[1].rebuild_speed.as_str()),
            ("recovery", "178562K/sec")
        );
        assert_eq!(a[1].rebuild_percent, 17.3);
    }

    #[test]
    fn faulty_and_spare_flags() {
        let text = "md0 : active raid5 sde1[4](S) sdd1[3](F) sdc1[2] sdb1[1] sda1[0]\n\
            \x20     11720658432 blocks super 1.2 level 5, 512k chunk, algorithm 2 [4/3] [UUU_]\n";
        let a = &parse_mdstat(text)[0];
        let states: Vec<&str> = a.members.iter().map(|m| m.state.as_str()).collect();
        assert_eq!(
            states,
            [
                "spare",
                "faulty",
                "active sync",
                "active sync",
                "active sync"
            ]
        );
        assert_eq!(counts_of(a), [4, 3, 4, 1, 1]);
        assert_eq!(a.state, "active, degraded");
    }

    #[test]
    fn qnap_system_arrays_with_sparse_roles() {
        let text = "md9 : active raid1 sdb1[25] sda1[24]\n\
            \x20     530048 blocks super 1.0 [24/2] [UU______________________]\n\
            \x20     bitmap: 1/1 pages [4KB], 65536KB chunk\n";
        let a = &parse_mdstat(text)[0];
        assert_eq!(counts_of(a), [2, 2, 2, 0, 0]);
        assert_eq!(a.state, "active");
    }

    #[test]
    fn operations_and_a_recovery_without_speed() {
        for (line, op, pct) in [
            (
                "[=>...]  check = 8.1% (1/2) finish=9min speed=91000K/sec",
                "check",
                8.1,
            ),
            (
                "[>....]  resync =  0.4% (1/2) finish=99min speed=120000K/sec",
                "resync",
                0.4,
            ),
            (
                "[====>]  reshape = 61.0% (1/2) finish=2min speed=40000K/sec",
                "reshape",
                61.0,
            ),
        ] {
            let text = format!(
                "md1 : active raid5 sdc[2] sdb[1] sda[0]\n 100 blocks [3/3] [UUU]\n {line}\n"
            );
            let a = &parse_mdstat(&text)[0];
            assert_eq!(
                (a.operation.as_str(), a.rebuild_percent),
                (op, pct),
                "{line}"
            );
        }
        let text = "md0 : active raid1 sdb1[2] sda1[0]\n 100 blocks [2/1] [U_]\n \
            [>....]  recovery =  1.0% (1/100) finish=0.0min\nmd1 : active raid1 sdd1[1] sdc1[0]\n \
            100 blocks [2/2] [UU]\n";
        let a = parse_mdstat(text);
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].operation.as_str(), a[0].rebuild_speed.as_str()),
            ("recovery", "")
        );
        assert_eq!(a[1].operation, "");
    }

    #[test]
    fn hostile_mdstat() {
        assert!(parse_mdstat("").is_empty());
        assert!(parse_mdstat("Personalities : \nunused devices: <none>\n").is_empty());
        let junk = "md0 : \nmdx : active raid1\nmd1 : active raid1 sda[x] [b] ]a[ \u{1F4A5}[1]\n [9999999999999999999999/1] [U]\n = .%\n";
        let a = parse_mdstat(junk);
        assert_eq!(a.len(), 2);
        assert!(a[1].members.is_empty());
        let big = "md0 : active raid1 sda[0]\n".repeat(10_000);
        assert_eq!(parse_mdstat(&big).len(), 10_000);
    }

    const DETAIL: &str = "/dev/md3:
           Version : 1.2
        Raid Level : raid6
        Array Size : 11720658432 (10.92 TiB 12.00 TB)
      Raid Devices : 5
     Total Devices : 5
             State : clean, degraded, recovering
    Active Devices : 4
   Working Devices : 5
    Failed Devices : 0
     Spare Devices : 1
    Rebuild Status : 17% complete
              Name : vault:3  (local to host vault)
              UUID : 5e4d3c2b:1a098f7e:6d5c4b3a:29180716
    Number   Major   Minor   RaidDevice State
       0       8       65        0      active sync   /dev/sde1
       1       8       81        1      active sync   /dev/sdf1
       2       8       97        2      active sync   /dev/sdg1
       -       0        0        3      removed
       4       8      113        4      active sync   /dev/sdh1
       5       8      129        3      spare rebuilding   /dev/sdi1
       6       8      145        -      faulty   /dev/sdj1
";

    #[test]
    fn detail_fields_and_members() {
        let a = parse_detail(DETAIL, "/dev/md3").unwrap();
        assert_eq!(
            (a.level.as_str(), a.state.as_str()),
            ("raid6", "clean, degraded, recovering")
        );
        assert_eq!(counts_of(&a), [5, 4, 5, 0, 1]);
        assert_eq!(a.rebuild_percent, 17.0);
        assert_eq!(a.name, "vault:3  (local to host vault)");
        assert_eq!(a.uuid, "5e4d3c2b:1a098f7e:6d5c4b3a:29180716");
        let m: Vec<(&str, &str, i64)> = a
            .members
            .iter()
            .map(|m| (m.device.as_str(), m.state.as_str(), m.slot))
            .collect();
        assert_eq!(
            m,
            [
                ("/dev/sde1", "active sync", 0),
                ("/dev/sdf1", "active sync", 1),
                ("/dev/sdg1", "active sync", 2),
                ("/dev/sdh1", "active sync", 4),
                ("/dev/sdi1", "spare rebuilding", 5),
                ("/dev/sdj1", "faulty", -1),
            ]
        );
        let reshaping =
            "Raid Level : raid5\nState : active, reshaping\nReshape Status : 23.5% complete\n";
        assert_eq!(
            parse_detail(reshaping, "/dev/md1").unwrap().rebuild_percent,
            23.5
        );
        assert!(parse_detail("Total Devices : many\n", "/dev/md1").is_err());
    }

    #[test]
    fn detail_is_filled_from_mdstat_and_takes_its_progress() {
        let mdstat = &parse_mdstat(
            "md3 : active raid6 sdi1[5] sdh1[4] sdg1[2] sdf1[1] sde1[0]\n 1 blocks [5/4] [UUU_U]\n \
             [==>..]  recovery = 17.3% (1/2) finish=301.4min speed=178562K/sec\n",
        )[0];
        let merged = merge(parse_detail(DETAIL, "/dev/md3").unwrap(), mdstat);
        assert_eq!(
            (merged.operation.as_str(), merged.rebuild_speed.as_str()),
            ("recovery", "178562K/sec")
        );
        assert_eq!(merged.rebuild_percent, 17.0, "mdadm's own figure wins");
        let sparse = merge(parse_detail("UUID : x\n", "/dev/md3").unwrap(), mdstat);
        assert_eq!(counts_of(&sparse), counts_of(mdstat));
        assert_eq!(sparse.members, mdstat.members);
        assert_eq!(sparse.uuid, "x");
    }
}
