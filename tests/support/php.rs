//! What the production PHP MIS client (`openhealths/nationHealth`) makes of a
//! response, rule by rule, as the contract sheet describes it. Tests run the
//! service's responses through it.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// The client's reading of one poll.
#[derive(Debug, PartialEq, Eq)]
pub enum Reading {
    /// Keep polling.
    Pending,
    /// Finished; the composition id if a link carried one.
    Done {
        /// The first `composition/<uuid>` found in the links.
        composition_id: Option<String>,
    },
    /// Finished with errors, as the client displays them.
    Failed {
        /// One text per error object or `links[].error`.
        errors: Vec<String>,
    },
    /// A 4xx or 5xx: the client shows `error.message` and polls again.
    HttpError {
        /// `error.message`.
        message: String,
    },
    /// The client cannot use the response.
    Unusable(&'static str),
}

static COMPOSITION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)(?:/|^)composition/([0-9a-f-]{36})").unwrap_or_else(|e| panic!("{e}"))
});
static CODED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\d{3,5}:").unwrap_or_else(|e| panic!("{e}")));

/// Reads a response the way the PHP client does.
pub fn read(status: u16, body: &Value) -> Reading {
    // Rule 6: any 4xx or 5xx is an error whose message is `error.message`.
    if status >= 400 {
        return match body.pointer("/error/message").and_then(Value::as_str) {
            Some(message) => Reading::HttpError {
                message: message.to_owned(),
            },
            None => Reading::Unusable("4xx/5xx without error.message"),
        };
    }
    // Rule 1: only `body.data`, which must be an object.
    let Some(data) = body.get("data").filter(|d| d.is_object()) else {
        return Reading::Unusable("no data object");
    };
    // Rule 3: `id` and `eta` are strings when present; `links` is an array.
    for key in ["id", "eta"] {
        if data.get(key).is_some_and(|v| !v.is_string()) {
            return Reading::Unusable("id or eta is not a string");
        }
    }
    let links = match data.get("links") {
        None => Vec::new(),
        Some(Value::Array(links)) => links.clone(),
        Some(_) => return Reading::Unusable("links is not an array"),
    };
    // Rule 2: the status, exactly and case-sensitively.
    match data.get("status").and_then(Value::as_str) {
        Some("PENDING") => Reading::Pending,
        Some("DONE") => Reading::Done {
            composition_id: composition_id(&links),
        },
        Some("FAILED") => Reading::Failed {
            errors: errors(data, &links),
        },
        _ => Reading::Unusable("status is not PENDING, DONE or FAILED"),
    }
}

/// Rule 4: the first `composition/<uuid>` in any string value of any link.
fn composition_id(links: &[Value]) -> Option<String> {
    links
        .iter()
        .filter_map(Value::as_object)
        .flat_map(|link| link.values())
        .filter_map(Value::as_str)
        .find_map(|text| COMPOSITION.captures(text).map(|c| c[1].to_owned()))
}

/// Rule 5: messages from `data.error`, `data.errors`, `data.response_data.error`
/// and every `links[].error`, prefixed with `"<code>: "` unless already coded.
fn errors(data: &Value, links: &[Value]) -> Vec<String> {
    let mut objects: Vec<&Value> = Vec::new();
    objects.extend(data.get("error"));
    if let Some(list) = data.get("errors").and_then(Value::as_array) {
        objects.extend(list);
    }
    objects.extend(data.pointer("/response_data/error"));
    let mut texts: Vec<String> = objects.into_iter().filter_map(error_text).collect();
    texts.extend(
        links
            .iter()
            .filter_map(|link| link.get("error"))
            .filter_map(error_text),
    );
    texts
}

fn error_text(error: &Value) -> Option<String> {
    if let Some(text) = error.as_str() {
        return Some(text.to_owned());
    }
    let message = error.get("message")?.as_str()?;
    match error.get("code") {
        Some(code) if !CODED.is_match(message) => Some(format!("{}: {message}", code_text(code))),
        _ => Some(message.to_owned()),
    }
}

fn code_text(code: &Value) -> String {
    code.as_str()
        .map_or_else(|| code.to_string(), str::to_owned)
}
