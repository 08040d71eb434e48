//! MCP prompts: the templates in `prompts/*.md`, compiled into the binary.
//!
//! A template is Markdown after a TOML header between `+++` lines that names it and declares
//! its arguments; `{{name}}` in the body is replaced by an argument's value. Arguments are
//! checked the way tool arguments are (a window is parsed as a window), so a bad one is an
//! invalid-params error that says what is accepted, before any text reaches the model.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rmcp::ErrorData;
use rmcp::model::{GetPromptResult, JsonObject, Prompt, PromptArgument, PromptMessage, Role};
use serde::Deserialize;

/// The template files, in the order `prompts/list` gives them.
const SOURCES: &[(&str, &str)] = &[
    ("triage_host.md", include_str!("../../prompts/triage_host.md")),
    ("investigate_service.md", include_str!("../../prompts/investigate_service.md")),
    ("write_postmortem.md", include_str!("../../prompts/write_postmortem.md")),
];

/// Windows offered when a client asks to complete a `window` argument.
pub const WINDOW_SUGGESTIONS: &[&str] = &["30s", "1m", "5m", "15m", "30m", "1h", "6h", "1d", "7d"];

/// Longest free-text argument accepted, in bytes.
const MAX_TEXT: usize = 2000;
/// Longest service name accepted, in bytes.
const MAX_SERVICE: usize = 256;

/// What an argument holds, which decides how it is checked.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ArgKind {
    /// A look-back window, checked like the tools' `window`.
    Window,
    /// A service name.
    Service,
    /// Free text.
    #[default]
    Text,
}

/// One declared argument of a template.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgSpec {
    name: String,
    description: String,
    #[serde(default)]
    kind: ArgKind,
    #[serde(default)]
    required: bool,
    /// Used when the caller leaves the argument out.
    default: Option<String>,
}

/// A template's header.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: String,
    title: String,
    description: String,
    #[serde(default)]
    arguments: Vec<ArgSpec>,
}

/// A parsed prompt template.
#[derive(Clone, Debug)]
pub struct Template {
    header: Header,
    body: String,
}

/// Why a template file could not be used (a build-time mistake, caught by the unit tests).
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// No `+++` header.
    #[error("{file}: the template must start with a TOML header between +++ lines")]
    NoHeader {
        /// File name.
        file: String,
    },
    /// The header is not valid.
    #[error("{file}: {source}")]
    Header {
        /// File name.
        file: String,
        /// Cause.
        source: toml::de::Error,
    },
    /// The body uses a placeholder no argument declares, or an argument is declared twice.
    #[error("{file}: {problem}")]
    Inconsistent {
        /// File name.
        file: String,
        /// What is wrong.
        problem: String,
    },
}

impl Template {
    /// Parses one template file.
    pub fn parse(file: &str, text: &str) -> Result<Template, TemplateError> {
        let rest = text.strip_prefix("+++\n").ok_or_else(|| TemplateError::NoHeader { file: file.into() })?;
        let (head, body) =
            rest.split_once("\n+++\n").ok_or_else(|| TemplateError::NoHeader { file: file.into() })?;
        let header: Header =
            toml::from_str(head).map_err(|source| TemplateError::Header { file: file.into(), source })?;
        let inconsistent = |problem: String| TemplateError::Inconsistent { file: file.into(), problem };
        let mut seen = std::collections::HashSet::new();
        for a in &header.arguments {
            if !seen.insert(a.name.as_str()) {
                return Err(inconsistent(format!("argument {} is declared twice", a.name)));
            }
            if a.required && a.default.is_some() {
                return Err(inconsistent(format!("argument {} is required and has a default", a.name)));
            }
        }
        for name in placeholders(body) {
            if !seen.contains(name) {
                return Err(inconsistent(format!("{{{{{name}}}}} is not a declared argument")));
            }
        }
        Ok(Template { header, body: body.to_string() })
    }

    /// The template's name, as clients ask for it.
    pub fn name(&self) -> &str {
        &self.header.name
    }

    /// What the argument `name` holds, if the template has it (for completion).
    pub fn argument_kind(&self, name: &str) -> Option<ArgKind> {
        self.header.arguments.iter().find(|a| a.name == name).map(|a| a.kind)
    }

    /// How `prompts/list` describes the template.
    pub fn describe(&self) -> Prompt {
        let arguments = self
            .header
            .arguments
            .iter()
            .map(|a| {
                let mut d = a.description.clone();
                if let Some(v) = &a.default {
                    d.push_str(&format!(" Default: {v}."));
                }
                PromptArgument::new(&a.name).with_description(d).with_required(a.required)
            })
            .collect();
        Prompt::new(&self.header.name, Some(&self.header.description), Some(arguments))
            .with_title(&self.header.title)
    }

    /// The prompt with `args` filled in, or an invalid-params error naming the argument.
    pub fn render(&self, args: Option<&JsonObject>) -> Result<GetPromptResult, ErrorData> {
        let name = &self.header.name;
        let bad = |msg: String| ErrorData::invalid_params(msg, None);
        let declared =
            || self.header.arguments.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ");
        if let Some(args) = args
            && let Some(unknown) = args.keys().find(|k| !self.header.arguments.iter().any(|a| &a.name == *k))
        {
            return Err(bad(format!(
                "prompt {name} has no argument {unknown:?}; its arguments are: {}",
                declared()
            )));
        }
        let mut values = BTreeMap::new();
        for a in &self.header.arguments {
            let given = match args.and_then(|m| m.get(&a.name)) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(other) => {
                    return Err(bad(format!(
                        "argument {} of prompt {name} must be a string, got {other}",
                        a.name
                    )));
                }
            };
            let value = match (given, &a.default) {
                (Some(v), _) => v.to_string(),
                (None, Some(d)) => d.clone(),
                (None, None) if a.required => {
                    return Err(bad(format!("prompt {name} needs argument {}: {}", a.name, a.description)));
                }
                (None, None) => String::new(),
            };
            check(name, a, &value)?;
            values.insert(a.name.as_str(), value);
        }
        let mut text = self.body.clone();
        for (k, v) in &values {
            text = text.replace(&format!("{{{{{k}}}}}"), v);
        }
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(&self.header.description))
    }
}

/// Checks one argument's value by its kind.
fn check(prompt: &str, a: &ArgSpec, value: &str) -> Result<(), ErrorData> {
    let bad = |why: String| {
        ErrorData::invalid_params(format!("argument {} of prompt {prompt}: {why}", a.name), None)
    };
    match a.kind {
        ArgKind::Window => {
            crate::args::window(Some(value)).map(|_| ()).map_err(|e| bad(e.message.to_string()))
        }
        ArgKind::Service if value.trim().is_empty() && a.required => {
            Err(bad("is empty; use a service name from list_services".into()))
        }
        ArgKind::Service if value.len() > MAX_SERVICE || value.chars().any(char::is_control) => {
            Err(bad(format!(
                "is not a service name (at most {MAX_SERVICE} bytes, no control characters); use one from list_services"
            )))
        }
        ArgKind::Text if value.len() > MAX_TEXT => {
            Err(bad(format!("is {} bytes; at most {MAX_TEXT}", value.len())))
        }
        _ => Ok(()),
    }
}

/// The `{{name}}` placeholders in `body`.
fn placeholders(body: &str) -> impl Iterator<Item = &str> {
    body.split("{{").skip(1).filter_map(|s| s.split_once("}}").map(|(name, _)| name))
}

/// Every template, parsed once.
pub fn all() -> &'static [Template] {
    static ALL: OnceLock<Vec<Template>> = OnceLock::new();
    ALL.get_or_init(|| {
        SOURCES
            .iter()
            // The files are compiled in and checked by the unit tests, so a failure here is a
            // build that skipped them.
            .map(|(file, text)| {
                Template::parse(file, text).unwrap_or_else(|e| panic!("prompt template: {e}"))
            })
            .collect()
    })
}

/// The template called `name`, or an invalid-params error listing the names.
pub fn get(name: &str) -> Result<&'static Template, ErrorData> {
    all().iter().find(|t| t.name() == name).ok_or_else(|| {
        let names: Vec<&str> = all().iter().map(Template::name).collect();
        ErrorData::invalid_params(format!("no prompt {name:?}; the prompts are: {}", names.join(", ")), None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(pairs: &[(&str, &str)]) -> JsonObject {
        pairs.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect()
    }

    fn text(r: &GetPromptResult) -> String {
        serde_json::to_value(&r.messages[0]).unwrap()["content"]["text"].as_str().unwrap().to_string()
    }

    #[test]
    fn every_shipped_template_parses_and_has_a_unique_name() {
        let names: std::collections::HashSet<&str> = all().iter().map(Template::name).collect();
        assert_eq!(names.len(), SOURCES.len());
        for t in all() {
            let p = t.describe();
            assert!(p.description.as_deref().is_some_and(|d| !d.is_empty()), "{}", t.name());
        }
    }

    #[test]
    fn renders_arguments_and_defaults() {
        let t = get("investigate_service").unwrap();
        let r = t.render(Some(&args(&[("service", "postgres.service")]))).unwrap();
        let s = text(&r);
        assert!(s.contains("`postgres.service`") && s.contains("last 5m"), "{s}");
        assert!(!s.contains("{{"), "{s}");
        let s = text(&get("triage_host").unwrap().render(None).unwrap());
        assert!(s.contains("window: \"5m\""), "{s}");
    }

    #[test]
    fn refuses_bad_arguments_with_what_is_accepted() {
        let t = get("investigate_service").unwrap();
        let e = t.render(None).unwrap_err();
        assert!(e.message.contains("needs argument service"), "{}", e.message);
        let e = t.render(Some(&args(&[("service", "x"), ("window", "5x")]))).unwrap_err();
        assert!(e.message.contains("argument window") && e.message.contains("\"30s\""), "{}", e.message);
        let e = t.render(Some(&args(&[("service", "x"), ("colour", "red")]))).unwrap_err();
        assert!(
            e.message.contains("no argument \"colour\"") && e.message.contains("service, window"),
            "{}",
            e.message
        );
        let e = t.render(Some(&args(&[("service", " ")]))).unwrap_err();
        assert!(e.message.contains("is empty"), "{}", e.message);
        let e = get("nope").unwrap_err();
        assert!(e.message.contains("triage_host"), "{}", e.message);
    }

    #[test]
    fn every_suggested_window_is_accepted() {
        for w in WINDOW_SUGGESTIONS {
            crate::args::window(Some(w)).unwrap_or_else(|e| panic!("{w}: {}", e.message));
        }
    }

    #[test]
    fn rejects_inconsistent_templates() {
        let bad = "+++\nname = \"x\"\ntitle = \"x\"\ndescription = \"x\"\n+++\nhello {{who}}\n";
        assert!(matches!(Template::parse("x.md", bad), Err(TemplateError::Inconsistent { .. })));
        assert!(matches!(Template::parse("x.md", "no header"), Err(TemplateError::NoHeader { .. })));
    }
}
