//! Authentication: who is asking.
//!
//! A verified client certificate names the user (CN) and groups (O), as in Kubernetes; a
//! bearer token is looked up in the static token file (`token,user,uid,"group1,group2"`,
//! kube-apiserver's `--token-auth-file` format). Everyone authenticated is also in
//! `system:authenticated`. Requests with neither are anonymous, which only the health,
//! version and metrics endpoints accept.

use std::collections::HashMap;

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
}
