//! Policy modules the embedding program carries in its own binary (`file = "builtin:NAME"`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use sluice_config::PolicySource;

use crate::error::LoadError;

/// The modules behind `builtin:NAME` policies, by name. The binary registers the policies it
/// embeds ([`HostConfig::builtins`](crate::HostConfig::builtins)); a policy configured as
/// [`PolicySource::Builtin`](sluice_config::PolicySource::Builtin) loads from here instead of
/// a file. The bytes never change while the host runs, so such a policy is not watched and a
/// reload finds it unchanged.
#[derive(Clone, Default)]
pub struct BuiltinModules {
    modules: BTreeMap<String, Cow<'static, [u8]>>,
}

impl BuiltinModules {
    /// No built-in modules.
    pub fn new() -> Self {
        BuiltinModules::default()
    }

    /// Registers `bytes` as `builtin:name`, replacing a module of that name.
    #[must_use]
    pub fn with(mut self, name: &str, bytes: impl Into<Cow<'static, [u8]>>) -> Self {
        self.modules.insert(name.to_owned(), bytes.into());
        self
    }

    /// The module registered as `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.modules.get(name).map(|bytes| &**bytes)
    }

    /// The registered names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// The registered names as one line (`a, b, c`), for error messages.
    pub fn names_line(&self) -> String {
        match self.modules.is_empty() {
            true => "none".to_owned(),
            false => self.names().collect::<Vec<_>>().join(", "),
        }
    }
}

/// Names and sizes: the bytes would drown any log line.
impl fmt::Debug for BuiltinModules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.modules.iter().map(|(name, bytes)| (name, bytes.len())))
            .finish()
    }
}

/// Why a policy's module could not be had.
pub(crate) enum ReadError {
    /// The file could not be read.
    File {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `builtin:NAME` is not registered.
    UnknownBuiltin { name: String, known: String },
}

impl From<ReadError> for LoadError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::File { path, error } => LoadError::Read {
                path,
                source: error,
            },
            ReadError::UnknownBuiltin { name, known } => LoadError::UnknownBuiltin { name, known },
        }
    }
}

/// The bytes of a policy's module: its file's content, or the built-in module it names.
pub(crate) fn module_bytes<'a>(
    source: &PolicySource,
    builtins: &'a BuiltinModules,
) -> Result<Cow<'a, [u8]>, ReadError> {
    match source {
        PolicySource::File(path) => {
            std::fs::read(path)
                .map(Cow::Owned)
                .map_err(|error| ReadError::File {
                    path: path.clone(),
                    error,
                })
        }
        PolicySource::Builtin(name) => {
            builtins
                .get(name)
                .map(Cow::Borrowed)
                .ok_or_else(|| ReadError::UnknownBuiltin {
                    name: name.clone(),
                    known: builtins.names_line(),
                })
        }
    }
}
