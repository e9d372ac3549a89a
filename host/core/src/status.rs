//! API errors as Kubernetes `Status` objects.
//!
//! Every failure the API answers with is an [`ApiError`]: an HTTP code, a machine-readable
//! reason and a message in the words the real apiserver uses, so that kubectl prints
//! `Error from server (NotFound): pods "nope" not found` exactly as it would against
//! Kubernetes.

use serde_json::{Value, json};

/// The `reason` of a failed `Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: no valid credentials.
    Unauthorized,
    /// 403: not allowed (also creating in a terminating namespace).
    Forbidden,
    /// 404: no such object or path.
    NotFound,
    /// 405: the verb is not supported on the resource.
    MethodNotAllowed,
    /// 406: none of the accepted media types can be produced.
    NotAcceptable,
    /// 409: a create found the name taken.
    AlreadyExists,
    /// 409: a write lost a race or an apply hit another manager's fields.
    Conflict,
    /// 410: the resourceVersion is older than the history.
    Expired,
    /// 413: the body is too large.
    RequestEntityTooLarge,
    /// 415: the body's media type is not understood.
    UnsupportedMediaType,
    /// 422: the object failed validation.
    Invalid,
    /// 429: retry later (an eviction blocked by a disruption budget).
    TooManyRequests,
    /// 500: a server fault.
    InternalError,
    /// 504: the request timed out (a resourceVersion too far in the future).
    Timeout,
}

impl Reason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "BadRequest",
            Reason::Unauthorized => "Unauthorized",
            Reason::Forbidden => "Forbidden",
            Reason::NotFound => "NotFound",
            Reason::MethodNotAllowed => "MethodNotAllowed",
            Reason::NotAcceptable => "NotAcceptable",
            Reason::AlreadyExists => "AlreadyExists",
            Reason::Conflict => "Conflict",
            Reason::Expired => "Expired",
            Reason::RequestEntityTooLarge => "RequestEntityTooLarge",
            Reason::UnsupportedMediaType => "UnsupportedMediaType",
            Reason::Invalid => "Invalid",
            Reason::TooManyRequests => "TooManyRequests",
            Reason::InternalError => "InternalError",
            Reason::Timeout => "Timeout",
        }
    }

    /// The HTTP status code that goes with the reason.
    pub fn code(self) -> u16 {
        match self {
            Reason::BadRequest => 400,
            Reason::Unauthorized => 401,
            Reason::Forbidden => 403,
            Reason::NotFound => 404,
            Reason::MethodNotAllowed => 405,
            Reason::NotAcceptable => 406,
            Reason::AlreadyExists | Reason::Conflict => 409,
            Reason::Expired => 410,
            Reason::RequestEntityTooLarge => 413,
            Reason::UnsupportedMediaType => 415,
            Reason::Invalid => 422,
            Reason::TooManyRequests => 429,
            Reason::InternalError => 500,
            Reason::Timeout => 504,
        }
    }
}

/// One cause of a failure (a `StatusCause`): usually a field that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// A machine-readable cause, e.g. `FieldValueRequired`.
    pub reason: String,
    /// What is wrong.
    pub message: String,
    /// The field path, e.g. `spec.containers[0].name`.
    pub field: String,
}

/// A failed API request, rendered as a `Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// Why it failed.
    pub reason: Reason,
    /// The message kubectl prints.
    pub message: String,
    /// `details`, boxed: errors travel in every `Result` of the request path.
    pub details: Box<Details>,
}

/// The `details` of a failed `Status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    /// `details.name`.
    pub name: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.kind` (the resource or kind the error is about).
    pub kind: Option<String>,
    /// `details.causes`.
    pub causes: Vec<Cause>,
    /// `details.retryAfterSeconds`.
    pub retry_after_seconds: Option<u32>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.reason.as_str())
    }
}

impl std::error::Error for ApiError {}

/// `resource.group`, or just `resource` for the core group, as Kubernetes qualifies names in
/// messages (`deployments.apps "web" not found`).
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    /// An error with just a reason and a message.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        ApiError {
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    fn about(mut self, group: &str, resource: &str, name: &str) -> Self {
        self.details.group = Some(group.to_owned());
        self.details.kind = Some(resource.to_owned());
        self.details.name = Some(name.to_owned());
        self
    }

    /// 404 for a missing object: `pods "nope" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let message = format!("{} \"{name}\" not found", qualified(resource, group));
        ApiError::new(Reason::NotFound, message).about(group, resource, name)
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        ApiError::new(
            Reason::NotFound,
            "the server could not find the requested resource",
        )
    }

    /// 409 for a create of a taken name: `pods "web" already exists`.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let message = format!("{} \"{name}\" already exists", qualified(resource, group));
        ApiError::new(Reason::AlreadyExists, message).about(group, resource, name)
    }

    /// 409 for a write based on a stale resourceVersion.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            qualified(resource, group)
        );
        ApiError::new(Reason::Conflict, message).about(group, resource, name)
    }

    /// 403 for a request refused by policy: `namespaces "default" is forbidden: this
    /// namespace may not be deleted`.
    pub fn forbidden(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let message = format!(
            "{} \"{name}\" is forbidden: {why}",
            qualified(resource, group)
        );
        ApiError::new(Reason::Forbidden, message).about(group, resource, name)
    }

    /// The reason of a 409 for a stale resourceVersion.
    pub const STALE: &'static str = "the object has been modified; please apply your changes to the latest version and try again";

    /// 422 with one cause per field error: `Pod "web" is invalid: spec.containers: Required value`.
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{group}")
        };
        let list = errors.iter().map(FieldError::to_string).collect::<Vec<_>>();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let message = format!("{qualified_kind} \"{name}\" is invalid: {joined}");
        let mut err = ApiError::new(Reason::Invalid, message).about(group, kind, name);
        err.details.causes = errors
            .iter()
            .map(|e| Cause {
                reason: e.kind.cause_reason().to_owned(),
                message: e.cause_message(),
                field: e.field.clone(),
            })
            .collect();
        err
    }

    /// 400 with a message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(Reason::BadRequest, message)
    }

    /// 500 with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(Reason::InternalError, message)
    }

    /// 410 for a resourceVersion older than the history.
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(Reason::Expired, message)
    }

    /// 405 for a verb the resource does not support.
    pub fn method_not_allowed(verb: &str, resource: &str) -> Self {
        ApiError::new(
            Reason::MethodNotAllowed,
            format!(
                "the server does not allow this method on the requested resource: {verb} {resource}"
            ),
        )
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason.as_str(),
            "code": self.reason.code(),
        });
        let mut details = serde_json::Map::new();
        let d = &self.details;
        if let Some(name) = &d.name {
            details.insert("name".into(), name.clone().into());
        }
        if let Some(group) = &d.group {
            details.insert("group".into(), group.clone().into());
        }
        if let Some(kind) = &d.kind {
            details.insert("kind".into(), kind.clone().into());
        }
        if !d.causes.is_empty() {
            let causes = d
                .causes
                .iter()
                .map(|c| {
                    let mut cause = json!({"reason": c.reason, "message": c.message});
                    if !c.field.is_empty() {
                        cause["field"] = c.field.clone().into();
                    }
                    cause
                })
                .collect::<Vec<_>>();
            details.insert("causes".into(), causes.into());
        }
        if let Some(secs) = d.retry_after_seconds {
            details.insert("retryAfterSeconds".into(), secs.into());
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// What is wrong with a field (Kubernetes' `field.ErrorType`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// A required field is missing.
    Required,
    /// The value is malformed or out of range.
    Invalid(Value),
    /// The value is not one of the allowed ones.
    NotSupported(Value, Vec<String>),
    /// The value repeats one that must be unique.
    Duplicate(Value),
    /// The field may not be set or changed.
    Forbidden,
    /// The value is too long.
    TooLong(usize),
    /// The field is not declared in the schema (strict field validation).
    Unknown,
}

impl FieldErrorKind {
    fn cause_reason(&self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong(_) => "FieldValueTooLong",
            FieldErrorKind::Unknown => "FieldValueUnknown",
        }
    }
}

/// A validation failure of one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The path, e.g. `metadata.name` or `spec.containers[0].image`.
    pub field: String,
    /// What is wrong.
    pub kind: FieldErrorKind,
    /// Why, in words.
    pub detail: String,
}

impl FieldError {
    /// A missing required field.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required,
            detail: detail.into(),
        }
    }

    /// A malformed value.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<Value>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid(value.into()),
            detail: detail.into(),
        }
    }

    /// A value not among `allowed`.
    pub fn not_supported(
        field: impl Into<String>,
        value: impl Into<Value>,
        allowed: &[&str],
    ) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::NotSupported(
                value.into(),
                allowed.iter().map(|s| (*s).to_owned()).collect(),
            ),
            detail: String::new(),
        }
    }

    /// A repeated value.
    pub fn duplicate(field: impl Into<String>, value: impl Into<Value>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Duplicate(value.into()),
            detail: String::new(),
        }
    }

    /// A field that may not be set or changed.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Forbidden,
            detail: detail.into(),
        }
    }

    /// A value longer than `max`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::TooLong(max),
            detail: String::new(),
        }
    }

    /// A field the schema does not declare.
    pub fn unknown(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Unknown,
            detail: String::new(),
        }
    }

    fn cause_message(&self) -> String {
        let text = self.to_string();
        // The cause repeats the message without the leading field path.
        text.strip_prefix(&format!("{}: ", self.field))
            .map(str::to_owned)
            .unwrap_or(text)
    }
}

fn render(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let detail = |f: &mut std::fmt::Formatter<'_>| {
            if self.detail.is_empty() {
                Ok(())
            } else {
                write!(f, ": {}", self.detail)
            }
        };
        match &self.kind {
            FieldErrorKind::Required => {
                write!(f, "{}: Required value", self.field)?;
                detail(f)
            }
            FieldErrorKind::Invalid(v) => {
                write!(f, "{}: Invalid value: {}", self.field, render(v))?;
                detail(f)
            }
            FieldErrorKind::NotSupported(v, allowed) => {
                write!(f, "{}: Unsupported value: {}", self.field, render(v))?;
                if !allowed.is_empty() {
                    let quoted = allowed
                        .iter()
                        .map(|a| format!("\"{a}\""))
                        .collect::<Vec<_>>();
                    write!(f, ": supported values: {}", quoted.join(", "))?;
                }
                Ok(())
            }
            FieldErrorKind::Duplicate(v) => {
                write!(f, "{}: Duplicate value: {}", self.field, render(v))
            }
            FieldErrorKind::Forbidden => {
                write!(f, "{}: Forbidden", self.field)?;
                detail(f)
            }
            FieldErrorKind::TooLong(max) => {
                write!(
                    f,
                    "{}: Too long: may not be more than {max} bytes",
                    self.field
                )
            }
            FieldErrorKind::Unknown => {
                write!(f, "{}: unknown field \"{}\"", self.field, self.field)
            }
        }
    }
}

/// An error and its causes, `: `-joined, for messages a client
/// sees without the server's logs (a `Status`, a Plugin's `status.lastError`).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        // Some errors already print their cause; it isn't repeated.
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let status = ApiError::not_found("", "pods", "nope").to_status();
        assert_eq!(status["message"], "pods \"nope\" not found");
        assert_eq!(status["code"], 404);
        assert_eq!(status["details"]["kind"], "pods");
        let status = ApiError::not_found("apps", "deployments", "web").to_status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
    }

    #[test]
    fn invalid_lists_every_field_with_causes() {
        let errs = [
            FieldError::required("spec.containers", ""),
            FieldError::invalid(
                "metadata.name",
                "Bad_Name",
                "a lowercase RFC 1123 subdomain",
            ),
        ];
        let err = ApiError::invalid("", "Pod", "Bad_Name", &errs);
        assert_eq!(
            err.message,
            "Pod \"Bad_Name\" is invalid: [spec.containers: Required value, metadata.name: \
             Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain]"
        );
        let status = err.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["details"]["causes"][1]["field"], "metadata.name");
        assert_eq!(
            status["details"]["causes"][0]["reason"],
            "FieldValueRequired"
        );
    }
}
