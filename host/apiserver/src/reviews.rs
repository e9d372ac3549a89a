//! Review resources, answered per request and never stored: access reviews (`kubectl auth
//! can-i`), rules reviews (`auth can-i --list`), `auth whoami`, and token reviews.
//!
//! Authorization arrives with RBAC; until then every authenticated user may do everything,
//! and the reviews say so.

use ::http::{Response, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};
use skiff_core::status::ApiError;

use crate::authn::Identity;
use crate::http::{self, Body};
use crate::rest::{Ctx, check_type, decode_body};

fn user_info(user: &crate::User) -> Value {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    info
}

/// `POST` a review: fills in its status and echoes it.
pub(crate) async fn create(ctx: &Ctx, body: Bytes) -> Result<Response<Body>, ApiError> {
    let mut review = decode_body(&ctx.headers, &body)?;
    check_type(&ctx.def, &mut review)?;
    if review.get("metadata").is_none() {
        review["metadata"] = json!({});
    }
    let status = match ctx.def.kind.as_str() {
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            json!({"allowed": true, "reason": "skiff authorizes every authenticated user until RBAC is enabled"})
        }
        "SelfSubjectRulesReview" => json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        }),
        "SelfSubjectReview" => json!({"userInfo": user_info(&ctx.user)}),
        "TokenReview" => {
            let token = review
                .pointer("/spec/token")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let identity = ctx
                .server
                .config
                .authenticator
                .authenticate(None, Some(&format!("Bearer {token}")));
            match identity {
                Identity::User(user) => json!({"authenticated": true, "user": user_info(&user)}),
                _ => json!({"authenticated": false, "error": "invalid bearer token"}),
            }
        }
        other => return Err(ApiError::internal(format!("no review logic for {other}"))),
    };
    review["status"] = status;
    Ok(http::json(StatusCode::CREATED, &review))
}
