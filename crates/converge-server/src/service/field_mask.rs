//! Field masks of the Update RPCs: which fields of the request replace the stored ones.
//!
//! Clients write mask paths in snake_case (gRPC, the Python client) or in camelCase (REST/JSON,
//! `gcloud`), and may name a nested field (`retry_policy.minimum_backoff`). Paths are normalised
//! to snake_case once, then looked up in a per-resource table of setters, so an unknown path is
//! rejected instead of silently ignored.

use prost_types::FieldMask;

use super::ApiError;

/// Copies one field (or one nested field) from the request's resource into the current one.
pub type Setter<T> = fn(target: &mut T, source: &T);

/// One updatable path of a resource and how to apply it.
pub struct MaskEntry<T: 'static> {
    /// The path in snake_case, dots separating nested fields.
    pub path: &'static str,
    /// Applies the path.
    pub set: Setter<T>,
}

/// Converts one mask path to snake_case, segment by segment: `pushConfig.pushEndpoint` becomes
/// `push_config.push_endpoint`; snake_case paths are returned unchanged.
pub fn to_snake_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() && !out.ends_with('.') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The paths of a mask in snake_case, without duplicates. `INVALID_ARGUMENT` when the mask is
/// missing or empty, because an update that changes nothing is almost always a client bug.
pub fn normalized_paths(mask: Option<&FieldMask>, request: &str) -> Result<Vec<String>, ApiError> {
    let paths: Vec<String> = mask
        .map(|m| {
            m.paths
                .iter()
                .flat_map(|p| p.split(','))
                .map(str::trim)
                .filter(|p| !p.is_empty())
        })
        .into_iter()
        .flatten()
        .map(to_snake_case)
        .collect();
    if paths.is_empty() {
        return Err(ApiError::invalid(format!(
            "Invalid update_mask provided in the {request}: the update_mask must contain at least one path"
        )));
    }
    let mut unique: Vec<String> = Vec::with_capacity(paths.len());
    for p in paths {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    Ok(unique)
}

/// Applies `paths` (already normalised) from `source` to `target` using `table`.
///
/// `INVALID_ARGUMENT` naming the first path that is not in the table; nothing is applied then,
/// so a rejected update leaves `target` untouched.
pub fn apply<T>(
    target: &mut T,
    source: &T,
    paths: &[String],
    table: &[MaskEntry<T>],
    request: &str,
    resource: &str,
) -> Result<(), ApiError> {
    let mut setters = Vec::with_capacity(paths.len());
    for path in paths {
        let Some(entry) = table.iter().find(|e| e.path == path) else {
            return Err(ApiError::invalid(format!(
                "Invalid update_mask provided in the {request}: '{path}' is not a known {resource} field"
            )));
        };
        setters.push(entry.set);
    }
    for set in setters {
        set(target, source);
    }
    Ok(())
}

/// Builds a [`MaskEntry`] that copies `$($field).+` (a possibly nested field) from source to
/// target. Nested paths go through `Option` messages: the parent is created in the target when
/// missing, and an absent parent in the source clears the nested field.
macro_rules! mask_entry {
    ($path:literal, $field:ident) => {
        $crate::service::field_mask::MaskEntry {
            path: $path,
            set: |t, s| t.$field = s.$field.clone(),
        }
    };
    ($path:literal, $parent:ident . $field:ident) => {
        $crate::service::field_mask::MaskEntry {
            path: $path,
            set: |t, s| {
                let value = s
                    .$parent
                    .as_ref()
                    .map(|p| p.$field.clone())
                    .unwrap_or_default();
                t.$parent.get_or_insert_with(Default::default).$field = value;
            },
        }
    };
}

pub(crate) use mask_entry;
