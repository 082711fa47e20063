//! The names a client gives (tenants, keys, tenant admins, plans, allowed models): 1 to
//! [`MAX_NAME_LEN`] characters, not blank.

use super::error::AppError;

/// Most characters of a tenant, key, tenant admin or plan name.
pub const MAX_NAME_LEN: usize = 200;

/// `name` as the value of `what`: 400 `<what> must be 1 to 200 characters` when it is blank or
/// longer.
///
/// # Errors
/// [`AppError::BadRequest`].
pub fn check_name(what: &str, name: &str) -> Result<(), AppError> {
    if name.trim().is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(AppError::BadRequest(format!(
            "{what} must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}
