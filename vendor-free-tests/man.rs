//! The man page documents exactly the flags the FLAGS table defines, with
//! their environment variables: one definition drives parsing, --help and
//! this check.

use std::collections::BTreeSet;

use pulse_agent::cli::FLAGS;

fn page() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/pulse-agent.8")).unwrap()
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
    // nvidia-smi), quoted in the SMART and HARDWARE sections.
    const OTHERS: [&str; 7] = [
        "scan",
        "scan-open",
        "json",
        "version",
        "detail",
        "query-gpu",
        "format",
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
    let page = page();
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
