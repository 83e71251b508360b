//! `sluice policy new NAME --world W [--lang rust|python] [--sdk PATH]`: writes a policy project
//! from the templates in `crates/sluice/policy-templates/<lang>/` (embedded with
//! `include_str!`), which builds and passes `sluice policy check` and `sluice policy test`
//! unchanged.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Languages a project can be created in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    /// Rust with `sluice-policy-sdk`, built with cargo for `wasm32-wasip2`.
    Rust,
    /// Python, built with componentize-py.
    Python,
}

/// Worlds a project can implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum World {
    /// Catalog → routes.
    Routing,
    /// Probe result → verdict.
    Health,
    /// Connecting peer → allow or deny.
    Authz,
    /// HTTP request → forward (edited) or reply.
    Request,
}

impl World {
    fn as_str(self) -> &'static str {
        match self {
            World::Routing => "routing",
            World::Health => "health",
            World::Authz => "authz",
            World::Request => "request",
        }
    }
}

/// One file of a template: its path in the new project and its text with `{{…}}` placeholders.
type TemplateFile = (&'static str, &'static str);

macro_rules! template {
    ($to:literal, $from:literal) => {
        (
            $to,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/policy-templates/",
                $from
            )),
        )
    };
}

const RUST_COMMON: &[TemplateFile] = &[
    template!("Cargo.toml", "rust/common/Cargo.toml.tmpl"),
    template!("README.md", "rust/common/README.md"),
    template!(".gitignore", "rust/common/gitignore"),
];
const RUST_AUTHZ: &[TemplateFile] = &[
    template!("src/lib.rs", "rust/authz/src/lib.rs"),
    template!("cases.json", "rust/authz/cases.json"),
];
const RUST_HEALTH: &[TemplateFile] = &[
    template!("src/lib.rs", "rust/health/src/lib.rs"),
    template!("cases.json", "rust/health/cases.json"),
];
const RUST_ROUTING: &[TemplateFile] = &[
    template!("src/lib.rs", "rust/routing/src/lib.rs"),
    template!("cases.json", "rust/routing/cases.json"),
];
const RUST_REQUEST: &[TemplateFile] = &[
    template!("src/lib.rs", "rust/request/src/lib.rs"),
    template!("cases.json", "rust/request/cases.json"),
];
const PYTHON_COMMON: &[TemplateFile] = &[
    template!("README.md", "python/common/README.md"),
    template!(".gitignore", "python/common/gitignore"),
    // The contract the bindings are generated from: the very WIT this binary was built with.
    ("wit/policy.wit", include_str!("../../../wit/policy.wit")),
];
const PYTHON_AUTHZ: &[TemplateFile] = &[
    template!("app.py", "python/authz/app.py"),
    template!("cases.json", "python/authz/cases.json"),
];
const PYTHON_HEALTH: &[TemplateFile] = &[
    template!("app.py", "python/health/app.py"),
    template!("cases.json", "python/health/cases.json"),
];
const PYTHON_ROUTING: &[TemplateFile] = &[
    template!("app.py", "python/routing/app.py"),
    template!("cases.json", "python/routing/cases.json"),
];
const PYTHON_REQUEST: &[TemplateFile] = &[
    template!("app.py", "python/request/app.py"),
    template!("cases.json", "python/request/cases.json"),
];

/// Where the SDK of the checkout this binary was built from would be.
const BUILT_FROM_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policy-sdk");

/// Why no project was written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NewError {
    #[error(
        "{0:?} is not a usable project name: use letters, digits, `-` and `_`, starting with a letter"
    )]
    BadName(String),
    #[error("{0} already exists; choose another name or remove it")]
    Exists(PathBuf),
    #[error(
        "cannot find the Rust SDK (package sluice-policy-sdk, not on crates.io){tried}: pass --sdk PATH, the path of a Sluice checkout or of its crates/policy-sdk"
    )]
    NoSdk { tried: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The command: writes the project, prints what was written and the next commands.
#[allow(clippy::print_stdout, reason = "the summary is the command's output")]
pub(crate) fn run(dir: &Path, world: World, lang: Lang, sdk: Option<&Path>) -> ExitCode {
    match create(dir, world, lang, sdk) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice: policy new: {e}");
            ExitCode::FAILURE
        }
    }
}

fn create(dir: &Path, world: World, lang: Lang, sdk: Option<&Path>) -> Result<String, NewError> {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
        .to_owned();
    let valid = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(NewError::BadName(dir.display().to_string()));
    }
    if dir.exists() {
        return Err(NewError::Exists(dir.to_owned()));
    }
    let crate_name = name.replace('-', "_");
    let (common, specific) = templates(lang, world);
    let sdk = match lang {
        Lang::Rust => find_sdk(sdk)?.display().to_string(),
        Lang::Python => find_python_sdk(sdk).map_or_else(String::new, |p| p.display().to_string()),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", &name)
            .replace("{{crate}}", &crate_name)
            .replace("{{world}}", world.as_str())
            .replace("{{sdk}}", &sdk)
    };
    let mut written = Vec::new();
    for (path, text) in common.iter().chain(specific) {
        let target = dir.join(path);
        let write = || -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // The WIT is copied as it is: its text is not a template.
            let contents = if path.ends_with(".wit") {
                (*text).to_owned()
            } else {
                fill(text)
            };
            std::fs::write(&target, contents)
        };
        write().map_err(|source| NewError::Write {
            path: target.clone(),
            source,
        })?;
        written.push(*path);
    }
    Ok(summary(dir, &crate_name, world, lang, &sdk, &written))
}

fn templates(lang: Lang, world: World) -> (&'static [TemplateFile], &'static [TemplateFile]) {
    match (lang, world) {
        (Lang::Rust, World::Authz) => (RUST_COMMON, RUST_AUTHZ),
        (Lang::Rust, World::Health) => (RUST_COMMON, RUST_HEALTH),
        (Lang::Rust, World::Routing) => (RUST_COMMON, RUST_ROUTING),
        (Lang::Rust, World::Request) => (RUST_COMMON, RUST_REQUEST),
        (Lang::Python, World::Authz) => (PYTHON_COMMON, PYTHON_AUTHZ),
        (Lang::Python, World::Health) => (PYTHON_COMMON, PYTHON_HEALTH),
        (Lang::Python, World::Routing) => (PYTHON_COMMON, PYTHON_ROUTING),
        (Lang::Python, World::Request) => (PYTHON_COMMON, PYTHON_REQUEST),
    }
}

/// The Python helpers (`sdk/python`, the `sluice_policy` module) of `--sdk` (a checkout) or of
/// the checkout this binary was built from; the templates do without them.
fn find_python_sdk(asked: Option<&Path>) -> Option<PathBuf> {
    let checkout = match asked {
        Some(path) => path.to_owned(),
        None => Path::new(BUILT_FROM_SDK).join("../.."),
    };
    let sdk = checkout.join("sdk/python");
    sdk.join("sluice_policy/__init__.py")
        .is_file()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

/// Where the Python helpers are, and how a build finds them.
fn python_sdk_note(sdk: &str) -> String {
    if sdk.is_empty() {
        return String::new();
    }
    format!(
        "\nSDK:     {sdk} (the `sluice_policy` helpers; to `import sluice_policy`, build with `-p . -p {sdk}`)"
    )
}

/// The SDK directory: `--sdk` (a checkout or the SDK itself), else the checkout this binary
/// was built from, if it is still there.
fn find_sdk(asked: Option<&Path>) -> Result<PathBuf, NewError> {
    let candidates: Vec<PathBuf> = match asked {
        Some(path) => vec![path.join("crates/policy-sdk"), path.to_owned()],
        None => vec![PathBuf::from(BUILT_FROM_SDK)],
    };
    for candidate in &candidates {
        let manifest = std::fs::read_to_string(candidate.join("Cargo.toml")).unwrap_or_default();
        if manifest.contains("name = \"sluice-policy-sdk\"")
            && let Ok(path) = candidate.canonicalize()
        {
            return Ok(path);
        }
    }
    let tried = candidates
        .iter()
        .map(|c| c.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(NewError::NoSdk {
        tried: format!(" in {tried}"),
    })
}

fn summary(
    dir: &Path,
    crate_name: &str,
    world: World,
    lang: Lang,
    sdk: &str,
    written: &[&str],
) -> String {
    let shown = dir.display();
    let world = world.as_str();
    let (lang_name, build, wasm, uses) = match lang {
        Lang::Rust => (
            "rust",
            "cargo build --release --target wasm32-wasip2".to_owned(),
            format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
            format!("\nSDK:     {sdk}"),
        ),
        Lang::Python => (
            "python",
            format!(
                "componentize-py --wit-path wit --world {world} componentize app -o {crate_name}.wasm"
            ),
            format!("{crate_name}.wasm"),
            python_sdk_note(sdk),
        ),
    };
    format!(
        "created {shown}/ ({lang_name}, world {world}): {}{uses}\nnext:\n  cd {shown}\n  {build}\n  sluice policy check {wasm}\n  sluice policy test {wasm} --cases cases.json",
        written.join(", ")
    )
}
