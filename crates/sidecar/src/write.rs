//! Atomic file replacement: the new content is staged in a temporary file in the destination's
//! directory (same filesystem, so the rename is atomic), given its mode and owner, fsynced,
//! optionally vetted by `check_cmd`, then renamed over the destination, and the directory is
//! fsynced. Unchanged content is not rewritten. When the destination is a single-file bind
//! mount (rename fails with EBUSY) or the rename crosses devices (EXDEV), the content is written
//! in place instead — not atomic, but the only way to update such a file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Uid};

use crate::command::CommandOutcome;
use crate::reaper::Reaper;

/// Mode of a newly created destination when none is configured.
const DEFAULT_MODE: u32 = 0o644;

/// Where and how to write.
#[derive(Debug, Clone)]
pub struct WriteSpec {
    pub destination: PathBuf,
    pub mode: Option<u32>,
    pub uid: Option<Uid>,
    pub gid: Option<Gid>,
    pub check_cmd: Option<Vec<String>>,
    pub check_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Same bytes (and mode/owner) already there; nothing written.
    Unchanged,
    /// Replaced atomically.
    Replaced,
    /// Written in place after the rename was refused (EBUSY/EXDEV).
    WrittenInPlace,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: {operation}: {source}", path.display())]
    Io {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: check_cmd rejected the new content ({detail}); the previous file is kept", destination.display())]
    CheckRejected {
        destination: PathBuf,
        detail: String,
    },
}

fn io<'a>(
    path: &'a Path,
    operation: &'static str,
) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        path: path.to_owned(),
        operation,
        source,
    }
}

/// Which owner of a file: `user` or `group` (displayed so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerKind {
    User,
    Group,
}

impl std::fmt::Display for OwnerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OwnerKind::User => "user",
            OwnerKind::Group => "group",
        })
    }
}

/// A file owner (`user`, `group`) that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerLookupError {
    /// The system's user or group database has no such name.
    #[error("no {kind} named {name:?}")]
    NotFound { kind: OwnerKind, name: String },
    /// The lookup itself failed.
    #[error("cannot look up {kind} {name:?}: {source}")]
    Lookup {
        kind: OwnerKind,
        name: String,
        #[source]
        source: nix::Error,
    },
}

/// The entry `found` by looking up `name`, or why there is none.
fn looked_up<T>(
    kind: OwnerKind,
    name: &str,
    found: nix::Result<Option<T>>,
) -> Result<T, OwnerLookupError> {
    let name = || name.to_owned();
    found
        .map_err(|source| OwnerLookupError::Lookup {
            kind,
            name: name(),
            source,
        })?
        .ok_or_else(|| OwnerLookupError::NotFound { kind, name: name() })
}

/// Resolves a user name or numeric uid.
pub fn resolve_user(text: &str) -> Result<Uid, OwnerLookupError> {
    if let Ok(uid) = text.parse::<u32>() {
        return Ok(Uid::from_raw(uid));
    }
    let found = nix::unistd::User::from_name(text);
    Ok(looked_up(OwnerKind::User, text, found)?.uid)
}

/// Resolves a group name or numeric gid.
pub fn resolve_group(text: &str) -> Result<Gid, OwnerLookupError> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    let found = nix::unistd::Group::from_name(text);
    Ok(looked_up(OwnerKind::Group, text, found)?.gid)
}

/// Removes the staged file if the write does not complete.
struct Staged {
    path: PathBuf,
    keep: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `content` to `spec.destination` as described in the module documentation.
pub async fn write_atomically(
    spec: &WriteSpec,
    content: &[u8],
    reaper: &Reaper,
) -> Result<WriteOutcome, WriteError> {
    let destination = &spec.destination;
    let existing = std::fs::metadata(destination).ok();
    let mode = spec
        .mode
        .or_else(|| existing.as_ref().map(|m| m.permissions().mode() & 0o7777))
        .unwrap_or(DEFAULT_MODE);
    let uid = spec
        .uid
        .or_else(|| existing.as_ref().map(|m| Uid::from_raw(m.uid())));
    let gid = spec
        .gid
        .or_else(|| existing.as_ref().map(|m| Gid::from_raw(m.gid())));

    if let Some(metadata) = &existing
        && metadata.is_file()
        && metadata.len() == content.len() as u64
        && metadata.permissions().mode() & 0o7777 == mode
        && uid.is_none_or(|u| u.as_raw() == metadata.uid())
        && gid.is_none_or(|g| g.as_raw() == metadata.gid())
        && std::fs::read(destination).is_ok_and(|old| old == content)
    {
        return Ok(WriteOutcome::Unchanged);
    }

    let directory = match destination.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&directory).map_err(io(&directory, "create directory"))?;
    let name = destination
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let (mut file, staged) = {
        let mut attempt = 0;
        loop {
            // A dot name so directory watchers (sluice-kv's file source, editors) skip it.
            let path = directory.join(format!(
                ".{name}.sluice-{}-{:08x}.tmp",
                std::process::id(),
                fastrand::u32(..)
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => break (file, Staged { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1
                }
                Err(e) => return Err(io(&path, "create staged file")(e)),
            }
        }
    };
    file.write_all(content)
        .map_err(io(&staged.path, "write staged file"))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(&staged.path, "chmod staged file"))?;
    if uid.is_some() || gid.is_some() {
        nix::unistd::fchown(&file, uid, gid)
            .map_err(|e| io(&staged.path, "chown staged file")(e.into()))?;
    }
    file.sync_all()
        .map_err(io(&staged.path, "fsync staged file"))?;
    drop(file);

    if let Some(check) = &spec.check_cmd {
        let staged_text = staged.path.to_string_lossy().into_owned();
        let argv: Vec<String> = check
            .iter()
            .map(|a| a.replace("{staged}", &staged_text))
            .collect();
        let destination_text = destination.to_string_lossy().into_owned();
        let env = [
            ("SLUICE_STAGED_FILE", staged_text.as_str()),
            ("SLUICE_DESTINATION", destination_text.as_str()),
        ];
        let outcome = crate::command::run(reaper, &argv, &env, spec.check_timeout)
            .await
            .map_err(|e| WriteError::CheckRejected {
                destination: destination.clone(),
                detail: e.to_string(),
            })?;
        if !matches!(&outcome, CommandOutcome::Finished { status, .. } if status.success()) {
            return Err(WriteError::CheckRejected {
                destination: destination.clone(),
                detail: outcome.describe(spec.check_timeout),
            });
        }
    }

    match std::fs::rename(&staged.path, destination) {
        Ok(()) => {
            let mut staged = staged;
            staged.keep = true;
            // The rename is durable once the directory entry is.
            if let Ok(dir) = File::open(&directory) {
                let _ = dir.sync_all();
            }
            Ok(WriteOutcome::Replaced)
        }
        Err(e) if matches!(e.raw_os_error(), Some(code) if code == nix::libc::EBUSY || code == nix::libc::EXDEV) =>
        {
            tracing::info!(destination = %destination.display(), error = %e, "rename refused (bind mount?); writing in place");
            let mut file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(destination)
                .map_err(io(destination, "open for in-place write"))?;
            file.write_all(content)
                .map_err(io(destination, "write in place"))?;
            let _ = file.set_permissions(std::fs::Permissions::from_mode(mode));
            file.sync_all().map_err(io(destination, "fsync"))?;
            Ok(WriteOutcome::WrittenInPlace)
        }
        Err(e) => Err(io(destination, "rename staged file over destination")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_resolve_from_numbers_and_unknown_names_are_errors() {
        assert_eq!(resolve_user("1234"), Ok(Uid::from_raw(1234)));
        assert_eq!(resolve_group("0"), Ok(Gid::from_raw(0)));
        let name = "sluice-no-such-owner";
        let error = resolve_user(name).expect_err("no such user");
        assert_eq!(error.to_string(), format!("no user named {name:?}"));
        let error = resolve_group(name).expect_err("no such group");
        assert_eq!(
            error,
            OwnerLookupError::NotFound {
                kind: OwnerKind::Group,
                name: name.to_owned()
            }
        );
        assert_eq!(error.to_string(), format!("no group named {name:?}"));
    }
}
