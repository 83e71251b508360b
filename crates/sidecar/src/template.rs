//! Rendering: each `[[template]]` becomes a [`TemplateUnit`] (a jinja template or an envsubst
//! file, plus where and how to write it). Template mode uses minijinja: Jinja2 syntax people
//! know, maintained, no dependencies beyond serde, compiles templates once and renders in
//! microseconds. Functions: `env`, `kv`, `kv_or`, `kv_list`, `services`, `file`.
//!
//! A render records what it read (keys, prefixes, the registry), so a KV change re-renders only
//! the templates that depend on it, and which keys were missing, so a blocked render can say by
//! name what it waits for.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

use crate::config::{Config, Engine, MissingPolicy, ModeBitsError, TemplateConfig, VariableList};
use crate::envsubst::{self, EnvVars, EnvsubstError, EnvsubstOptions};
use crate::kvlayers::{KvLayers, LayerId};
use crate::text::{InvalidByte, NotText};
use crate::write::{OwnerLookupError, WriteSpec, resolve_group, resolve_user};

/// What a render read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dependencies {
    pub keys: BTreeSet<String>,
    pub prefixes: BTreeSet<String>,
    pub services: bool,
}

impl Dependencies {
    /// Whether a change of `changed` keys in `layer` can change this render.
    pub fn touched_by(&self, layer: LayerId, changed: &[String]) -> bool {
        match layer {
            LayerId::Registry => self.services && !changed.is_empty(),
            LayerId::Kv(_) => changed.iter().any(|key| {
                self.keys.contains(key) || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
            }),
        }
    }
}

/// The outcome of rendering one template (before writing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    Ready(Vec<u8>),
    /// Waiting for these keys (policy `block`).
    Blocked(Vec<String>),
    Failed(String),
}

#[derive(Debug, Default)]
struct Scope {
    policy: MissingPolicy,
    missing_default: String,
    missing: BTreeSet<String>,
    deps: Dependencies,
}

fn lock(scope: &Mutex<Scope>) -> MutexGuard<'_, Scope> {
    scope.lock().unwrap_or_else(|e| e.into_inner())
}

/// A compiled jinja template bound to the KV layers.
#[derive(Debug)]
pub struct JinjaTemplate {
    env: Environment<'static>,
    scope: Arc<Mutex<Scope>>,
    name: String,
}

fn missing_value(scope: &Arc<Mutex<Scope>>, what: String) -> Result<Value, Error> {
    let mut scope = lock(scope);
    match scope.policy {
        MissingPolicy::Default => Ok(Value::from(scope.missing_default.clone())),
        MissingPolicy::Block | MissingPolicy::Fail => {
            scope.missing.insert(what);
            // Keep rendering so that every missing key is found in one pass.
            Ok(Value::from(""))
        }
    }
}

fn instance_value(instance: &sluice_kv::registry::ServiceDefinition) -> Value {
    let mut map = BTreeMap::new();
    map.insert("id", Value::from(instance.instance_id()));
    map.insert("name", Value::from(instance.name.clone()));
    map.insert("address", Value::from(instance.address.clone()));
    map.insert("port", Value::from(instance.port));
    map.insert("tags", Value::from(instance.tags.clone()));
    map.insert("meta", Value::from(instance.meta.clone()));
    Value::from(map)
}

/// A minijinja error of a jinja template.
#[derive(Debug, thiserror::Error)]
pub enum JinjaError {
    /// minijinja refused the syntax configuration (it refuses only invalid delimiters, and the
    /// sidecar keeps the default ones).
    #[error(transparent)]
    Syntax(Error),
    /// An error compiling or rendering the template `label`, at `line:column` of its source.
    #[error("{label}:{line}:{column}: {}", kind_and_detail(source))]
    InTemplate {
        label: String,
        line: usize,
        column: usize,
        #[source]
        source: Error,
    },
}

impl JinjaError {
    /// `error`, placed in the template `label` whose source is `text`.
    fn in_template(label: &str, text: &str, error: Error) -> Self {
        let (line, column) = match error.range() {
            Some(range) => sluice_text::line_col(text.as_bytes(), range.start),
            None => (error.line().unwrap_or(1), 1),
        };
        JinjaError::InTemplate {
            label: label.to_owned(),
            line,
            column,
            source: error,
        }
    }
}

/// `kind: detail` of a minijinja error, without the location its `Display` appends.
fn kind_and_detail(error: &Error) -> String {
    match error.detail() {
        Some(detail) => format!("{}: {detail}", error.kind()),
        None => error.kind().to_string(),
    }
}

/// A render error for a function's failure (an input that is not text, no registry).
fn invalid_operation<E: std::error::Error + Send + Sync + 'static>(error: E) -> Error {
    Error::new(ErrorKind::InvalidOperation, error.to_string()).with_source(error)
}

/// A variable's value for a jinja template, which can only insert text.
fn env_text(name: &str, value: OsString) -> Result<Value, Error> {
    String::from_utf8(value.into_vec())
        .map(Value::from)
        .map_err(|error| {
            invalid_operation(NotText::Env {
                name: name.to_owned(),
                at: InvalidByte::of(&error),
            })
        })
}

/// `env(name[, default])`: read at each render. A set variable that is not UTF-8 is an error,
/// even with a default: the variable *is* set, and quietly using the default would hide that.
fn add_env_function(env: &mut Environment<'static>, scope: Arc<Mutex<Scope>>) {
    env.add_function("env", move |name: String, default: Option<String>| -> Result<Value, Error> {
        match (std::env::var_os(&name), default) {
            (Some(value), _) => env_text(&name, value),
            (None, Some(default)) => Ok(Value::from(default)),
            (None, None) => {
                if lock(&scope).policy == MissingPolicy::Default {
                    return missing_value(&scope, format!("env {name}"));
                }
                Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("environment variable {name} is not set (write env(\"{name}\", \"default\") for a default)"),
                ))
            }
        }
    });
}

/// `kv`, `kv_or`, `kv_list`: a value that is not UTF-8 is an error naming the key and layer
/// (for `kv_or` too: the key exists, so its default does not apply).
fn add_kv_functions(env: &mut Environment<'static>, scope: &Arc<Mutex<Scope>>, kv: &Arc<KvLayers>) {
    let (s, layers) = (scope.clone(), kv.clone());
    env.add_function("kv", move |key: String| -> Result<Value, Error> {
        lock(&s).deps.keys.insert(key.clone());
        match layers.get_text(&key).map_err(invalid_operation)? {
            Some(value) => Ok(Value::from(value)),
            None => missing_value(&s, key),
        }
    });
    let (s, layers) = (scope.clone(), kv.clone());
    env.add_function(
        "kv_or",
        move |key: String, default: Value| -> Result<Value, Error> {
            lock(&s).deps.keys.insert(key.clone());
            let value = layers.get_text(&key).map_err(invalid_operation)?;
            Ok(value.map_or(default, Value::from))
        },
    );
    let (s, layers) = (scope.clone(), kv.clone());
    env.add_function("kv_list", move |prefix: String| -> Result<Value, Error> {
        lock(&s).deps.prefixes.insert(prefix.clone());
        let items: Vec<Value> = layers
            .list_text(&prefix)
            .map_err(invalid_operation)?
            .into_iter()
            .map(|(key, value)| {
                let mut map = BTreeMap::new();
                let name = key.strip_prefix(prefix.as_str()).unwrap_or(&key).to_owned();
                map.insert("name", Value::from(name));
                map.insert("value", Value::from(value));
                map.insert("key", Value::from(key));
                Value::from(map)
            })
            .collect();
        Ok(Value::from(items))
    });
}

fn add_other_functions(
    env: &mut Environment<'static>,
    scope: &Arc<Mutex<Scope>>,
    kv: Arc<KvLayers>,
) {
    let s = scope.clone();
    env.add_function("services", move |name: String| -> Result<Value, Error> {
        lock(&s).deps.services = true;
        let instances = kv.services(&name).map_err(invalid_operation)?;
        Ok(Value::from(
            instances.iter().map(instance_value).collect::<Vec<_>>(),
        ))
    });
    env.add_function("file", |path: String| -> Result<Value, Error> {
        std::fs::read_to_string(&path)
            .map(Value::from)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("file({path:?}): {e}")))
    });
}

impl JinjaTemplate {
    pub fn new(
        label: &str,
        source: String,
        kv: Arc<KvLayers>,
        policy: MissingPolicy,
        missing_default: String,
    ) -> Result<Self, JinjaError> {
        let scope = Arc::new(Mutex::new(Scope {
            policy,
            missing_default,
            ..Scope::default()
        }));
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(JinjaError::Syntax)?;
        env.set_syntax(syntax);
        add_env_function(&mut env, scope.clone());
        add_kv_functions(&mut env, &scope, &kv);
        add_other_functions(&mut env, &scope, kv);
        env.add_template_owned(label.to_owned(), source.clone())
            .map_err(|e| JinjaError::in_template(label, &source, e))?;
        Ok(Self {
            env,
            scope,
            name: label.to_owned(),
        })
    }

    /// Bounds the work of one render (minijinja's fuel: roughly one unit per instruction);
    /// `None` = unbounded, the default. A render that runs out fails with an error.
    pub fn set_fuel(&mut self, fuel: Option<u64>) {
        self.env.set_fuel(fuel);
    }

    /// Renders once and returns the outcome with what it read.
    pub fn render(&self) -> (Rendered, Dependencies) {
        {
            let mut scope = lock(&self.scope);
            scope.missing.clear();
            scope.deps = Dependencies::default();
        }
        let result = self
            .env
            .get_template(&self.name)
            .and_then(|template| template.render(()));
        let mut scope = lock(&self.scope);
        let deps = std::mem::take(&mut scope.deps);
        let missing: Vec<String> = std::mem::take(&mut scope.missing).into_iter().collect();
        let outcome = match result {
            Err(error) => {
                let source = self
                    .env
                    .get_template(&self.name)
                    .map(|t| t.source().to_owned())
                    .unwrap_or_default();
                Rendered::Failed(JinjaError::in_template(&self.name, &source, error).to_string())
            }
            Ok(_) if !missing.is_empty() && scope.policy == MissingPolicy::Fail => {
                Rendered::Failed(format!(
                    "{}: missing keys: {}",
                    self.name,
                    missing.join(", ")
                ))
            }
            Ok(_) if !missing.is_empty() => Rendered::Blocked(missing),
            Ok(text) => Rendered::Ready(text.into_bytes()),
        };
        (outcome, deps)
    }
}

#[derive(Debug)]
enum UnitEngine {
    Jinja(Box<JinjaTemplate>),
    Envsubst {
        /// Bytes: envsubst templates need not be UTF-8.
        text: Vec<u8>,
        options: EnvsubstOptions,
    },
}

/// Why one `[[template]]` cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The `source` file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither `source` nor `contents` (the `index`-th template, from 0).
    #[error("template #{} has no source", index + 1)]
    NoSource { index: usize },
    /// A jinja template that is not UTF-8.
    #[error(transparent)]
    NotText(#[from] NotText),
    /// A jinja template that does not compile.
    #[error(transparent)]
    Jinja(#[from] JinjaError),
    /// An envsubst template with a syntax error.
    #[error(transparent)]
    Envsubst(#[from] EnvsubstError),
    /// Its `mode` is not permission bits.
    #[error(transparent)]
    Mode(#[from] ModeBitsError),
    /// Its `user` or `group` cannot be resolved.
    #[error(transparent)]
    Owner(#[from] OwnerLookupError),
}

/// Every `[[template]]` that cannot be loaded, in configuration order; displayed one a line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct TemplateLoadError {
    pub errors: Vec<TemplateError>,
}

/// One `[[template]]`: how to render it and where to write it.
#[derive(Debug)]
pub struct TemplateUnit {
    pub index: usize,
    pub label: String,
    pub config: TemplateConfig,
    pub write: WriteSpec,
    pub deps: Dependencies,
    engine: UnitEngine,
}

impl TemplateUnit {
    /// Loads and compiles every template of `config`; all problems are returned together.
    pub fn load_all(
        config: &Config,
        kv: &Arc<KvLayers>,
    ) -> Result<Vec<TemplateUnit>, TemplateLoadError> {
        let mut units = Vec::new();
        let mut errors = Vec::new();
        for (index, template) in config.template.iter().enumerate() {
            match Self::load(config, index, template, kv) {
                Ok(unit) => units.push(unit),
                Err(error) => errors.push(error),
            }
        }
        if errors.is_empty() {
            Ok(units)
        } else {
            Err(TemplateLoadError { errors })
        }
    }

    fn load(
        config: &Config,
        index: usize,
        template: &TemplateConfig,
        kv: &Arc<KvLayers>,
    ) -> Result<Self, TemplateError> {
        let (label, bytes) = match (&template.source, &template.contents) {
            (Some(source), _) => {
                let path = config.resolve(source);
                match std::fs::read(&path) {
                    Ok(bytes) => (path.display().to_string(), bytes),
                    Err(source) => return Err(TemplateError::Read { path, source }),
                }
            }
            (None, Some(contents)) => (
                format!("template #{} (inline)", index + 1),
                contents.clone().into_bytes(),
            ),
            (None, None) => return Err(TemplateError::NoSource { index }),
        };
        let engine = Self::engine(&label, bytes, template, kv)?;
        let destination: PathBuf = config.resolve(&template.destination);
        let write = WriteSpec {
            destination,
            mode: template.mode_bits()?,
            uid: template.user.as_deref().map(resolve_user).transpose()?,
            gid: template.group.as_deref().map(resolve_group).transpose()?,
            check_cmd: template.check_cmd.as_ref().map(|c| c.argv()),
            check_timeout: template.check_timeout.0,
        };
        Ok(Self {
            index,
            label,
            config: template.clone(),
            write,
            deps: Dependencies::default(),
            engine,
        })
    }

    fn engine(
        label: &str,
        bytes: Vec<u8>,
        template: &TemplateConfig,
        kv: &Arc<KvLayers>,
    ) -> Result<UnitEngine, TemplateError> {
        if template.engine == Engine::Jinja {
            let text = NotText::template(label, bytes)?;
            let jinja = JinjaTemplate::new(
                label,
                text,
                kv.clone(),
                template.missing,
                template.missing_default.clone(),
            )?;
            return Ok(UnitEngine::Jinja(Box::new(jinja)));
        }
        // Syntax errors surface now, not at the first render, placed in this template.
        envsubst::referenced_names(&bytes).map_err(|mut error| {
            if let EnvsubstError::Syntax { file, .. } = &mut error {
                label.clone_into(file);
            }
            error
        })?;
        let allow = template.variables.as_ref().map(|list| match list {
            VariableList::ShellFormat(format) => EnvsubstOptions::allow_from_shell_format(format),
            VariableList::Names(names) => names.iter().cloned().collect(),
        });
        Ok(UnitEngine::Envsubst {
            text: bytes,
            options: EnvsubstOptions {
                allow,
                no_unset: template.no_unset,
                no_empty: template.no_empty,
            },
        })
    }

    /// Renders; `env` is the variable map envsubst reads and `${VAR:=x}` writes.
    pub fn render(&mut self, env: &mut EnvVars) -> Rendered {
        match &self.engine {
            UnitEngine::Jinja(template) => {
                let (outcome, deps) = template.render();
                self.deps = deps;
                outcome
            }
            UnitEngine::Envsubst { text, options } => {
                match envsubst::substitute(&self.label, text, env, options) {
                    Ok(out) => Rendered::Ready(out),
                    Err(error) => Rendered::Failed(error.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_kv::KvEntry;

    #[test]
    fn dependencies_match_keys_and_prefixes() {
        let deps = Dependencies {
            keys: ["web/debug".to_owned()].into(),
            prefixes: ["apps/".to_owned()].into(),
            services: false,
        };
        assert!(deps.touched_by(LayerId::Kv(0), &["web/debug".into()]));
        assert!(deps.touched_by(LayerId::Kv(1), &["apps/x".into()]));
        assert!(!deps.touched_by(LayerId::Kv(0), &["web/other".into()]));
        assert!(!deps.touched_by(LayerId::Registry, &["x.json".into()]));
    }

    #[test]
    fn template_syntax_errors_have_positions() {
        let kv = Arc::new(KvLayers::default());
        let err = JinjaTemplate::new(
            "t.j2",
            "line one\n{{ kv('a') \n".into(),
            kv,
            MissingPolicy::Block,
            String::new(),
        )
        .expect_err("unclosed");
        assert!(
            matches!(&err, JinjaError::InTemplate { label, line: 2, .. } if label == "t.j2"),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("t.j2:2:"), "{err}");
    }

    #[test]
    fn every_template_that_cannot_be_loaded_is_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let text = r#"
[[template]]
source = "missing.tmpl"
destination = "out1"

[[template]]
contents = "x ${A"
destination = "out2"
engine = "envsubst"

[[template]]
contents = "ok"
destination = "out3"
user = "sluice-no-such-owner"
"#;
        let config = Config::parse(&tmp.path().join("s.toml"), text).expect("valid");
        let kv = Arc::new(KvLayers::default());
        let error = TemplateUnit::load_all(&config, &kv).expect_err("three errors");
        let lines: Vec<String> = error.errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let missing = tmp.path().join("missing.tmpl");
        assert!(
            matches!(&error.errors[0], TemplateError::Read { path, .. } if *path == missing),
            "{error:?}"
        );
        let os_error = std::io::Error::from_raw_os_error(nix::libc::ENOENT);
        assert_eq!(lines[0], format!("{}: {os_error}", missing.display()));
        assert!(
            matches!(&error.errors[1], TemplateError::Envsubst(EnvsubstError::Syntax { file, line: 1, .. }) if file == "template #2 (inline)"),
            "{error:?}"
        );
        assert!(
            lines[1].starts_with("template #2 (inline):1:")
                && lines[1].ends_with(": unterminated ${...}: no closing '}'"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "no user named \"sluice-no-such-owner\"");
        assert_eq!(error.to_string(), lines.join("\n"));
    }

    #[test]
    fn missing_keys_block_fail_or_default() {
        let kv = Arc::new(KvLayers::default());
        let text = "a={{ kv('x/a') }} b={{ kv('x/b') }} c={{ kv_or('x/c', 'dflt') }}\n";
        let block = JinjaTemplate::new(
            "t",
            text.into(),
            kv.clone(),
            MissingPolicy::Block,
            String::new(),
        )
        .expect("compiles");
        let (outcome, deps) = block.render();
        assert_eq!(outcome, Rendered::Blocked(vec!["x/a".into(), "x/b".into()]));
        assert_eq!(deps.keys.len(), 3);
        let fail = JinjaTemplate::new(
            "t",
            text.into(),
            kv.clone(),
            MissingPolicy::Fail,
            String::new(),
        )
        .expect("compiles");
        assert!(matches!(fail.render().0, Rendered::Failed(m) if m.contains("x/a, x/b")));
        let default = JinjaTemplate::new("t", text.into(), kv, MissingPolicy::Default, "?".into())
            .expect("compiles");
        assert_eq!(
            default.render().0,
            Rendered::Ready(b"a=? b=? c=dflt\n".to_vec())
        );
    }

    #[test]
    fn kv_values_that_are_not_utf8_fail_the_render_at_the_call() {
        let kv = Arc::new(KvLayers::from_entries(vec![
            KvEntry::new("ok", "fine", 1),
            KvEntry::new("bad", b"caf\xe9".to_vec(), 1),
        ]));
        for (text, column) in [
            ("{{ kv('ok') }}\n{{ kv('bad') }}", 4),
            ("{{ kv('ok') }}\n x{{ kv_or('bad', 'unused') }}", 6),
            ("{{ kv('ok') }}\n{% for i in kv_list('') %}{% endfor %}", 13),
        ] {
            let template = JinjaTemplate::new(
                "t",
                text.into(),
                kv.clone(),
                MissingPolicy::Block,
                String::new(),
            )
            .expect("compiles");
            let expected = format!(
                "t:2:{column}: invalid operation: KV key \"bad\" in in-memory KV is not valid UTF-8 (byte 0xE9 at offset 3): a jinja template renders text and cannot insert it"
            );
            assert_eq!(template.render().0, Rendered::Failed(expected), "{text}");
        }
        let template = JinjaTemplate::new(
            "t",
            "{{ kv('ok') }}".into(),
            kv,
            MissingPolicy::Block,
            String::new(),
        )
        .expect("compiles");
        assert_eq!(template.render().0, Rendered::Ready(b"fine".to_vec()));
    }
}
