//! Authentication: who is asking.
//!
//! A verified client certificate names the user (CN) and groups (O), as in Kubernetes; a
//! bearer token is looked up in the static token file (`token,user,uid,"group1,group2"`,
//! kube-apiserver's `--token-auth-file` format). Everyone authenticated is also in
//! `system:authenticated`. A bearer token of the bootstrap form (`<id>.<secret>`) not in
//! the file is checked against its Secret in `kube-system` (see [`bootstrap_user`]).
//! Requests with no credentials are anonymous; [`crate::authz`] says what they may read.

use std::collections::HashMap;

pub use skiff_core::join::{BOOTSTRAPPERS, bootstrap_token_parts};
use x509_parser::prelude::{FromDer, X509Certificate};

/// An authenticated user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// A stable id, if the source gives one.
    pub uid: String,
    /// Group memberships, `system:authenticated` included.
    pub groups: Vec<String>,
}

impl User {
    fn new(name: String, uid: String, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User { name, uid, groups }
    }

    /// The user of requests without credentials (where they are allowed at all).
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    /// The identity of a verified client certificate (DER): CN is the user, each O a group.
    pub fn from_certificate(der: &[u8]) -> Option<User> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let subject = cert.subject();
        let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect();
        Some(User::new(name, String::new(), groups))
    }
}

/// A line of the token file did not parse.
#[derive(Debug, thiserror::Error)]
#[error("token file line {line}: expected token,user,uid[,\"groups\"]")]
pub struct TokenFileError {
    /// The 1-based line number.
    pub line: usize,
}

/// The outcome of authenticating one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A known user.
    User(User),
    /// No credentials.
    Anonymous,
    /// Credentials that do not check out.
    Invalid,
}

/// Checks request credentials.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, User>,
}

impl Authenticator {
    /// An authenticator with the tokens of a token file's contents.
    pub fn with_token_file(contents: &str) -> Result<Self, TokenFileError> {
        let mut tokens = HashMap::new();
        for (i, line) in contents.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            if fields.len() < 3 || fields[0].is_empty() || fields[1].is_empty() {
                return Err(TokenFileError { line: i + 1 });
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(
                fields[0].clone(),
                User::new(fields[1].clone(), fields[2].clone(), groups),
            );
        }
        Ok(Authenticator { tokens })
    }

    /// Who sent a request: the connection's certificate user, else the bearer token's.
    pub fn authenticate(
        &self,
        certificate_user: Option<&User>,
        authorization: Option<&str>,
    ) -> Identity {
        if let Some(user) = certificate_user {
            return Identity::User(user.clone());
        }
        match authorization {
            None => Identity::Anonymous,
            Some(header) => match header.strip_prefix("Bearer ").map(str::trim) {
                Some(token) => match self.tokens.get(token) {
                    Some(user) => Identity::User(user.clone()),
                    None => Identity::Invalid,
                },
                None => Identity::Invalid,
            },
        }
    }
}

/// The user of a bootstrap token, checked against its Secret (`kube-system/
/// bootstrap-token-<id>`, type `bootstrap.kubernetes.io/token`) as kube-apiserver's
/// bootstrap authenticator does: the secret matches, authentication is one of its usages,
/// it has not expired and is not being deleted. The user is `system:bootstrap:<id>` in
/// `system:bootstrappers` and the token's `auth-extra-groups`.
pub fn bootstrap_user(
    secret_obj: &serde_json::Value,
    id: &str,
    secret: &str,
    now: jiff::Timestamp,
) -> Option<User> {
    use base64::Engine as _;
    if secret_obj["type"] != "bootstrap.kubernetes.io/token"
        || secret_obj.pointer("/metadata/deletionTimestamp").is_some()
    {
        return None;
    }
    let field = |key: &str| -> Option<String> {
        let text = secret_obj.pointer(&format!("/data/{key}"))?.as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    // Compared without an early exit, so the time taken does not tell how much matched.
    let stored = field("token-secret")?;
    let same = stored.len() == secret.len()
        && stored
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same
        || field("token-id").as_deref() != Some(id)
        || field("usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    if let Some(expiration) = field("expiration") {
        match expiration.parse::<jiff::Timestamp>() {
            Ok(at) if at > now => {}
            _ => return None,
        }
    }
    let mut groups = vec![BOOTSTRAPPERS.to_owned()];
    for g in field("auth-extra-groups").unwrap_or_default().split(',') {
        let g = g.trim();
        // Only groups under system:bootstrappers: a token can't claim to be an admin.
        if g.starts_with("system:bootstrappers:") && !groups.iter().any(|x| x == g) {
            groups.push(g.to_owned());
        }
    }
    Some(User::new(
        format!("system:bootstrap:{id}"),
        String::new(),
        groups,
    ))
}

/// Splits a CSV line with optional double-quoted fields.
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("non-empty").push(c),
        }
    }
    fields.into_iter().map(|f| f.trim().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_with_groups() {
        let auth = Authenticator::with_token_file(
            "# comment\nsecret1,alice,1001,\"dev,ops\"\nsecret2,bob,1002\n",
        )
        .unwrap();
        let Identity::User(alice) = auth.authenticate(None, Some("Bearer secret1")) else {
            panic!()
        };
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(
            auth.authenticate(None, Some("Bearer nope")),
            Identity::Invalid
        );
        assert_eq!(auth.authenticate(None, Some("Basic x")), Identity::Invalid);
        assert_eq!(auth.authenticate(None, None), Identity::Anonymous);
        assert!(Authenticator::with_token_file("onlytoken\n").is_err());
    }

    #[test]
    fn bootstrap_tokens_authenticate_only_while_valid() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            bootstrap_token_parts("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        assert_eq!(bootstrap_token_parts("ABCDEF.0123456789abcdef"), None);
        assert_eq!(bootstrap_token_parts("abcdef.short"), None);
        let secret = serde_json::json!({
            "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "data": {
                "token-id": b64("abcdef"),
                "token-secret": b64("0123456789abcdef"),
                "usage-bootstrap-authentication": b64("true"),
                "auth-extra-groups": b64("system:bootstrappers:skiff:nodes,system:masters"),
                "expiration": b64("2030-01-01T00:00:00Z"),
            },
        });
        let now: jiff::Timestamp = "2026-12-05T00:00:00Z".parse().unwrap();
        let user = bootstrap_user(&secret, "abcdef", "0123456789abcdef", now).unwrap();
        assert_eq!(user.name, "system:bootstrap:abcdef");
        assert_eq!(
            user.groups,
            [
                "system:bootstrappers",
                "system:bootstrappers:skiff:nodes",
                "system:authenticated"
            ]
        );
        assert!(bootstrap_user(&secret, "abcdef", "0123456789abcdeX", now).is_none());
        let later: jiff::Timestamp = "2030-01-02T00:00:00Z".parse().unwrap();
        assert!(bootstrap_user(&secret, "abcdef", "0123456789abcdef", later).is_none());
        let mut unusable = secret.clone();
        unusable["data"]["usage-bootstrap-authentication"] = b64("false").into();
        assert!(bootstrap_user(&unusable, "abcdef", "0123456789abcdef", now).is_none());
    }
}
