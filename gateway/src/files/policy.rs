//! Which declared content types the server accepts (AC-12), decided before any byte is stored.

/// `type/subtype` of RFC 6838 restricted-name characters, at most 127 bytes, no parameters.
pub fn valid_content_type(t: &str) -> bool {
    let name = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    };
    t.len() <= tern_engine::store::files::MAX_FILE_CONTENT_TYPE_BYTES
        && t.split_once('/').is_some_and(|(a, b)| name(a) && name(b))
}

/// Whether `content_type` (already lowercased and valid) matches an allow-list entry:
/// `*`, an exact type, or a prefix ending in `*` (`image/*`, `application/vnd.oasis.*`).
pub fn allowed(allow: &[String], content_type: &str) -> bool {
    allow.iter().any(|entry| match entry.strip_suffix('*') {
        Some(prefix) => content_type.starts_with(prefix),
        None => entry == content_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching() {
        let allow: Vec<String> = ["image/*", "application/pdf"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(allowed(&allow, "image/png"));
        assert!(allowed(&allow, "application/pdf"));
        assert!(!allowed(&allow, "application/pdfx"));
        assert!(!allowed(&allow, "application/x-msdownload"));
        assert!(allowed(&["*".to_string()], "application/x-msdownload"));
        assert!(valid_content_type("application/vnd.ms-excel"));
        assert!(!valid_content_type("image/png; charset=x"));
        assert!(!valid_content_type("image"));
        assert!(!valid_content_type("/png"));
        assert!(!valid_content_type(&format!("a/{}", "b".repeat(130))));
    }
}
