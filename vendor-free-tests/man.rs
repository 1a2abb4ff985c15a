//! The man page documents exactly the flags the FLAGS table defines, with
//! their environment variables: one definition drives parsing, --help and
//! this check. And it renders without splitting a name across lines.

use std::collections::BTreeSet;
use std::process::Command;

use pulse_agent::cli::FLAGS;

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/man/pulse-agent.8");
/// pulse-sensor-proxy(8): the checks that are not about the FLAGS table.
const PROXY_PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/man/pulse-sensor-proxy.8");
const PAGES: [&str; 2] = [PAGE, PROXY_PAGE];

fn page() -> String {
    std::fs::read_to_string(PAGE).unwrap()
}

/// `\-\-name` tokens in the page (roff escapes the dashes).
fn documented_flags(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in page.match_indices("\\-\\-") {
        let rest = &page[i + 4..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '\\' || *c == '-')
            .collect::<String>()
            .replace("\\-", "-");
        let name = name.trim_end_matches('-').to_string();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

#[test]
fn every_flag_is_documented_with_its_environment() {
    let page = page();
    let documented = documented_flags(&page);
    for f in FLAGS {
        assert!(documented.contains(f.name), "man page lacks --{}", f.name);
        for var in f.env {
            assert!(
                page.contains(var),
                "man page lacks {var} (for --{})",
                f.name
            );
        }
    }
}

#[test]
fn the_page_documents_no_flag_that_does_not_exist() {
    // The options of the programs the agent runs (smartctl, mdadm,
    // nvidia-smi, pvesh), quoted in the SMART, HARDWARE and CLUSTER SENSORS
    // sections.
    const OTHERS: [&str; 8] = [
        "scan",
        "scan-open",
        "json",
        "version",
        "detail",
        "query-gpu",
        "format",
        "output-format",
    ];
    for name in documented_flags(&page()) {
        if OTHERS.contains(&name.as_str()) {
            continue;
        }
        assert!(
            FLAGS.iter().any(|f| f.name == name),
            "man page documents --{name}, which is not a flag"
        );
    }
}

#[test]
fn the_page_has_the_usual_sections() {
    for path in PAGES {
        has_the_usual_sections(&std::fs::read_to_string(path).unwrap());
    }
}

fn has_the_usual_sections(page: &str) {
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "ENVIRONMENT",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(
            page.contains(&format!(".SH \"{section}\""))
                || page.contains(&format!(".SH {section}")),
            "{section}"
        );
    }
}

/// The page as `man` shows it in a terminal `width` columns wide, without
/// bold or underline. Needs groff (Debian: groff-base, which man-db needs
/// too); without it this fails rather than passing unchecked.
fn render(page: &str, width: usize) -> String {
    let out = Command::new("groff")
        .args(["-man", "-Tutf8", &format!("-rLL={width}n"), "-P-cbou", page])
        .output()
        .unwrap_or_else(|e| {
            panic!("groff is needed to check the rendered page (Debian: apt-get install groff-base): {e}")
        });
    assert!(out.status.success(), "groff at width {width}: {out:?}");
    String::from_utf8(out.stdout).expect("groff -Tutf8 writes UTF-8")
}

/// A variable (`PULSE_INSECURE_SKIP_VERIFY`), flag (`--allow-plaintext-http`)
/// or path (`STATE-DIR/spool-docker`), not an English word (`read-only`).
fn is_name(word: &str) -> bool {
    let w = word.trim_matches(|c: char| !(c.is_alphanumeric() || "-_/.".contains(c)));
    let flag = w.starts_with('-')
        && w.trim_start_matches('-')
            .starts_with(|c: char| c.is_ascii_alphabetic());
    let caps = w.contains(|c: char| c.is_ascii_uppercase())
        && w.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-');
    flag || caps || w.contains(['_', '/'])
}

/// Issue 12: the rendered page hyphenated variable names across lines
/// (`PULSE_INSE‐` / `CURE_SKIP_VERIFY`), so they could not be searched for
/// or copied. No width may split a name, by hyphenation (`‐`) or at a dash.
#[test]
fn man_page_never_hyphenates_a_name() {
    let mut split = BTreeSet::new();
    for (page, width) in PAGES
        .into_iter()
        .flat_map(|p| (40..=120).map(move |w| (p, w)))
    {
        let text = render(page, width);
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            let (head, tail) = (pair[0], pair[1].trim_start());
            let Some(last) = head.split_whitespace().last() else {
                continue;
            };
            let Some(first) = tail.split_whitespace().next() else {
                continue;
            };
            let word = if let Some(h) = last.strip_suffix('\u{2010}') {
                format!("{h}{first}")
            } else if last.ends_with('-') && last.len() > 1 && head.ends_with(last) {
                format!("{last}{first}")
            } else {
                continue;
            };
            if is_name(&word) {
                split.insert(format!("{last} / {first}"));
            }
        }
    }
    assert!(split.is_empty(), "names split across lines: {split:#?}");
}

#[test]
fn names_are_told_from_words() {
    for name in [
        "[PULSE_INSECURE_SKIP_VERIFY].",
        "--allow-plaintext-http,",
        "-token-file",
        "STATE-DIR/spool-docker,",
        "LOG_LEVEL",
        "STATE-DIR",
    ] {
        assert!(is_name(name), "{name}");
    }
    for word in [
        "read-only",
        "one-second",
        "comma-separated",
        "Bool-eans",
        "-",
        "1-2",
    ] {
        assert!(!is_name(word), "{word}");
    }
}

/// `mandoc -Tlint` finds nothing: no error, warning or style note (lines
/// longer than 80 bytes included). Needs mandoc (Debian: mandoc).
#[test]
fn mandoc_lint_is_clean() {
    for page in PAGES {
        mandoc_lint(page);
    }
}

fn mandoc_lint(page: &str) {
    let out = Command::new("mandoc")
        .args(["-Tlint", page])
        .output()
        .unwrap_or_else(|e| panic!("mandoc is needed (Debian: apt-get install mandoc): {e}"));
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "mandoc -Tlint:\n{said}"
    );
}

/// Every command of `pulse-sensor-proxy --help` has its entry in the page.
#[test]
fn the_proxy_page_documents_every_command() {
    let help = Command::new(env!("CARGO_BIN_EXE_pulse-sensor-proxy"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let page = std::fs::read_to_string(PROXY_PAGE)
        .unwrap()
        .replace("\\-", "-");
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.trim().split("  ").next().unwrap())
        .collect();
    assert!(commands.len() >= 8, "{commands:?}");
    for c in commands {
        let words: Vec<&str> = c
            .split_whitespace()
            .take_while(|w| w.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-'))
            .collect();
        let name = words.join(" ");
        assert!(
            page.contains(&name),
            "{name:?} is not in pulse-sensor-proxy.8"
        );
    }
}
