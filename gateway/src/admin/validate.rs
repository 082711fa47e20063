//! The names a client gives (tenants, keys, tenant admins, plans, allowed models): 1 to
//! [`MAX_NAME_LEN`] characters, not blank, no control characters (PostgreSQL's `text` cannot
//! hold NUL, and a name with a newline or an escape reads wrong in every listing).

use super::error::AppError;

/// Most characters of a tenant, key, tenant admin or plan name.
pub const MAX_NAME_LEN: usize = 200;

/// `name` as the value of `what`: 400 `<what> must be 1 to 200 characters` when it is blank or
/// longer, 400 `<what> must not contain control characters` when it has one (NUL, newline, ...).
///
/// # Errors
/// [`AppError::BadRequest`].
pub fn check_name(what: &str, name: &str) -> Result<(), AppError> {
    name_problem(what, name).map_or(Ok(()), |m| Err(AppError::BadRequest(m)))
}

/// What is wrong with `name` as the value of `what` (the message of [`check_name`]'s 400), or
/// `None` when it is a valid name.
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Some(format!("{what} must be 1 to {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return Some(format!("{what} must not contain control characters"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_printable() {
        assert_eq!(name_problem("name", "acme"), None);
        assert_eq!(name_problem("name", "Ünïcode key ✓"), None);
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for bad in ["", "   ", long.as_str()] {
            assert_eq!(
                name_problem("name", bad).as_deref(),
                Some("name must be 1 to 200 characters")
            );
        }
        for bad in ["a\u{0}b", "line\nbreak", "tab\t", "\u{1b}[31m"] {
            assert_eq!(
                name_problem("plan", bad).as_deref(),
                Some("plan must not contain control characters")
            );
        }
    }
}
