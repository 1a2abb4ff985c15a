//! `--disk-exclude` / `--disk-include` pattern matching.
//!
//! A pattern is `*text*` (contains), `text*` (starts with), `*text` (ends
//! with) or plain text (equal). Matching is case-sensitive, like the paths it
//! matches. The stock agent knows the first two forms and plain text; the
//! suffix form is ours and matches nothing the others would.

/// True if `pattern` matches `value`.
pub fn matches(pattern: &str, value: &str) -> bool {
    let p = pattern.trim();
    if p.is_empty() || value.is_empty() {
        return false;
    }
    if let Some(inner) = p.strip_prefix('*').and_then(|r| r.strip_suffix('*')) {
        return value.contains(inner);
    }
    if let Some(prefix) = p.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = p.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    value == p
}

/// True if any pattern matches any of the values.
pub fn any_matches(patterns: &[String], values: &[&str]) -> bool {
    patterns
        .iter()
        .any(|p| values.iter().any(|v| matches(p, v)))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn forms() {
        assert!(matches("*docker*", "/var/lib/docker/overlay2"));
        assert!(matches("/mnt/*", "/mnt/backup"));
        assert!(!matches("/mnt/*", "/media/mnt/x"));
        assert!(matches("*.img", "/srv/disk.img"));
        assert!(matches("sdb", "sdb"));
        assert!(!matches("sdb", "sdb1"));
        assert!(matches("*", "anything"));
        assert!(matches("**", "anything"));
        assert!(!matches("", "x"));
        assert!(!matches("x", ""));
    }
}
