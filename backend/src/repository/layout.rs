//! The repository's layout on disk (the same as Triton's model repository):
//!
//! ```text
//! <repository>/
//!   <model>/
//!     config.toml            the model's configuration
//!     1/model.safetensors    version 1's weights (a dense model)
//!     2/model.pt             version 2's module (a TorchScript model)
//! ```
//!
//! Model folders are the repository's folders whose names are UTF-8 and not hidden. Version
//! folders are named by positive integers without leading zeros; other entries (files, hidden
//! folders, `.tmp-*` folders of a trainer still writing) are ignored.

use std::path::Path;

use super::{LoadError, LoadProblem};

/// Whether `name` can be a model folder name: not empty, not hidden, one path component.
pub(super) fn is_model_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

/// The model folder names in `root`: UTF-8, not hidden, folders.
pub(super) fn model_folders(root: &Path) -> Result<Vec<String>, LoadError> {
    let cannot = |e| LoadError::at(root, LoadProblem::ListRepository(e));
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            tracing::warn!(path = %path.display(), "ignored: model folder name is not UTF-8");
            continue;
        };
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// The numbers of a model folder's version folders, ascending.
pub fn version_numbers(dir: &Path) -> Result<Vec<u64>, LoadError> {
    let cannot = |e| LoadError::at(dir, LoadProblem::ListModel(e));
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot)? {
        let entry = entry.map_err(cannot)?;
        if !entry.path().is_dir() {
            continue;
        }
        let Some(number) = entry.file_name().to_str().and_then(parse_version) else {
            continue;
        };
        numbers.push(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// A version number: a positive decimal integer without sign or leading zeros (`"1"`, `"12"`).
pub fn parse_version(text: &str) -> Option<u64> {
    if text.is_empty() || text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
