//! Rendering: each `[[template]]` becomes a [`TemplateUnit`] (a jinja template or an envsubst
//! file, plus where and how to write it). Template mode uses minijinja: Jinja2 syntax people
//! know, maintained, no dependencies beyond serde, compiles templates once and renders in
//! microseconds. Functions: `env`, `kv`, `kv_or`, `kv_list`, `services`, `file`.
//!
//! A render records what it read (keys, prefixes, the registry), so a KV change re-renders only
//! the templates that depend on it, and which keys were missing, so a blocked render can say by
//! name what it waits for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

use crate::config::{Config, Engine, MissingPolicy, TemplateConfig, VariableList};
use crate::envsubst::{self, EnvsubstOptions};
use crate::kvlayers::{KvLayers, LayerId};
use crate::write::{WriteSpec, resolve_group, resolve_user};

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

/// `path:line:col: message` for a minijinja error in `source`.
fn describe_error(label: &str, source: &str, error: &Error) -> String {
    let (line, column) = match error.range() {
        Some(range) => envsubst::line_col(source, range.start),
        None => (error.line().unwrap_or(1), 1),
    };
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        message = format!("{message}: {detail}");
    }
    format!("{label}:{line}:{column}: {message}")
}

impl JinjaTemplate {
    pub fn new(
        label: &str,
        source: String,
        kv: Arc<KvLayers>,
        policy: MissingPolicy,
        missing_default: String,
    ) -> Result<Self, String> {
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
            .map_err(|e| e.to_string())?;
        env.set_syntax(syntax);

        let s = scope.clone();
        env.add_function("env", move |name: String, default: Option<String>| -> Result<Value, Error> {
            match (std::env::var(&name), default) {
                (Ok(value), _) => Ok(Value::from(value)),
                (Err(_), Some(default)) => Ok(Value::from(default)),
                (Err(_), None) => {
                    if lock(&s).policy == MissingPolicy::Default {
                        return missing_value(&s, format!("env {name}"));
                    }
                    Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("environment variable {name} is not set (write env(\"{name}\", \"default\") for a default)"),
                    ))
                }
            }
        });
        let (s, layers) = (scope.clone(), kv.clone());
        env.add_function("kv", move |key: String| -> Result<Value, Error> {
            lock(&s).deps.keys.insert(key.clone());
            match layers.get(&key) {
                Some(entry) => Ok(Value::from(entry.value_str().into_owned())),
                None => missing_value(&s, key),
            }
        });
        let (s, layers) = (scope.clone(), kv.clone());
        env.add_function(
            "kv_or",
            move |key: String, default: Value| -> Result<Value, Error> {
                lock(&s).deps.keys.insert(key.clone());
                Ok(match layers.get(&key) {
                    Some(entry) => Value::from(entry.value_str().into_owned()),
                    None => default,
                })
            },
        );
        let (s, layers) = (scope.clone(), kv.clone());
        env.add_function("kv_list", move |prefix: String| -> Result<Value, Error> {
            lock(&s).deps.prefixes.insert(prefix.clone());
            let items: Vec<Value> = layers
                .list(&prefix)
                .into_iter()
                .map(|entry| {
                    let mut map = BTreeMap::new();
                    map.insert("name", Value::from(entry.key[prefix.len()..].to_owned()));
                    map.insert("value", Value::from(entry.value_str().into_owned()));
                    map.insert("key", Value::from(entry.key));
                    Value::from(map)
                })
                .collect();
            Ok(Value::from(items))
        });
        let (s, layers) = (scope.clone(), kv);
        env.add_function("services", move |name: String| -> Result<Value, Error> {
            lock(&s).deps.services = true;
            let instances = layers
                .services(&name)
                .map_err(|message| Error::new(ErrorKind::InvalidOperation, message))?;
            Ok(Value::from(
                instances.iter().map(instance_value).collect::<Vec<_>>(),
            ))
        });
        env.add_function("file", |path: String| -> Result<Value, Error> {
            std::fs::read_to_string(&path)
                .map(Value::from)
                .map_err(|e| {
                    Error::new(ErrorKind::InvalidOperation, format!("file({path:?}): {e}"))
                })
        });

        env.add_template_owned(label.to_owned(), source.clone())
            .map_err(|e| describe_error(label, &source, &e))?;
        Ok(Self {
            env,
            scope,
            name: label.to_owned(),
        })
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
                Rendered::Failed(describe_error(&self.name, &source, &error))
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
        text: String,
        options: EnvsubstOptions,
    },
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
    pub fn load_all(config: &Config, kv: &Arc<KvLayers>) -> Result<Vec<TemplateUnit>, Vec<String>> {
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
            Err(errors)
        }
    }

    fn load(
        config: &Config,
        index: usize,
        template: &TemplateConfig,
        kv: &Arc<KvLayers>,
    ) -> Result<Self, String> {
        let (label, text) = match (&template.source, &template.contents) {
            (Some(source), _) => {
                let path = config.resolve(source);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                (path.display().to_string(), text)
            }
            (None, Some(contents)) => (
                format!("template #{} (inline)", index + 1),
                contents.clone(),
            ),
            (None, None) => return Err(format!("template #{} has no source", index + 1)),
        };
        let engine = match template.engine {
            Engine::Jinja => UnitEngine::Jinja(Box::new(JinjaTemplate::new(
                &label,
                text,
                kv.clone(),
                template.missing,
                template.missing_default.clone(),
            )?)),
            Engine::Envsubst => {
                // Syntax errors surface now, not at the first render.
                envsubst::referenced_names(&text).map_err(|e| match e {
                    envsubst::EnvsubstError::Syntax {
                        line,
                        column,
                        message,
                        ..
                    } => format!("{label}:{line}:{column}: {message}"),
                    other => other.to_string(),
                })?;
                let allow = template.variables.as_ref().map(|list| match list {
                    VariableList::ShellFormat(format) => {
                        EnvsubstOptions::allow_from_shell_format(format)
                    }
                    VariableList::Names(names) => names.iter().cloned().collect(),
                });
                UnitEngine::Envsubst {
                    text,
                    options: EnvsubstOptions {
                        allow,
                        no_unset: template.no_unset,
                        no_empty: template.no_empty,
                    },
                }
            }
        };
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

    /// Renders; `env` is the variable map envsubst reads and `${VAR:=x}` writes.
    pub fn render(&mut self, env: &mut BTreeMap<String, String>) -> Rendered {
        match &self.engine {
            UnitEngine::Jinja(template) => {
                let (outcome, deps) = template.render();
                self.deps = deps;
                outcome
            }
            UnitEngine::Envsubst { text, options } => {
                match envsubst::substitute(&self.label, text, env, options) {
                    Ok(out) => Rendered::Ready(out.into_bytes()),
                    Err(error) => Rendered::Failed(error.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(err.starts_with("t.j2:2:"), "{err}");
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
}
