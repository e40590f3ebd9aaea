//! GitHub: a REST client that keeps to GitHub's rate limits, verified webhooks, and
//! the work they lead to.
//!
//! - [`client`]: `GithubClient` — bearer token (a PAT, or an App installation token
//!   from [`app`]), GitHub's headers, rate limits waited out (`retry-after`,
//!   `x-ratelimit-reset`, secondary limits), pagination by `Link`. Tokens are
//!   [`Secret`](crate::secret::Secret)s: never logged.
//! - [`app`]: a GitHub App's JWT (RS256, from its private key) and installation
//!   tokens, minted again before they expire.
//! - [`webhook`]: the signature check (HMAC-SHA256 over the raw body, constant time)
//!   and what each delivery asks for (pure: refresh jobs for a push, a research job
//!   for a labelled issue or a `/research` comment), unit-tested.
//! - [`notify`]: the issue comment that answers a research job from an issue (or
//!   reports its failure), posted once per job when it ends.
//! - [`publish`]: a batch's results as a Markdown + JSON report committed to a branch,
//!   and the pull request for it; publishing again updates both.
//!
//! The HTTP route (`POST /webhooks/github`) is the producer's; the notifier and the
//! `publish` lifecycle job run in the worker.

pub mod app;
pub mod client;
pub mod notify;
pub mod publish;
pub mod webhook;

pub use client::{GithubClient, GithubError};

/// A repository, `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName {
    pub owner: String,
    pub name: String,
}

impl RepoName {
    /// `owner/name`, each part letters, digits, `-`, `_` or `.`.
    pub fn parse(s: &str) -> Result<RepoName, String> {
        let s = s.trim();
        let Some((owner, name)) = s.split_once('/') else {
            return Err(format!("{s:?} is not a repository: expected owner/name"));
        };
        let ok = |part: &str| {
            !part.is_empty()
                && part.len() <= 100
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !ok(owner) || !ok(name) {
            return Err(format!(
                "{s:?} is not a repository: expected owner/name (letters, digits, '-', '_', '.')"
            ));
        }
        Ok(RepoName {
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }

    /// The repository a git URL points to, by its path's last two segments
    /// (`https://github.com/o/r.git`, `git@github.com:o/r.git`, `http://127.0.0.1:9/o/r.git`).
    pub fn from_git_url(url: &str) -> Option<RepoName> {
        let path = match url.split_once("://") {
            Some((_, rest)) => rest.split_once('/')?.1,
            None => url.split_once(':')?.1,
        };
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let mut parts = path.rsplit('/');
        let name = parts.next()?;
        let owner = parts.next()?;
        RepoName::parse(&format!("{owner}/{name}")).ok()
    }

    /// Case-insensitive, as GitHub compares them.
    pub fn same_as(&self, other: &RepoName) -> bool {
        self.owner.eq_ignore_ascii_case(&other.owner) && self.name.eq_ignore_ascii_case(&other.name)
    }
}

impl std::fmt::Display for RepoName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// The client `[github]` describes, with its credentials from the environment: an
/// App when `app_id` is set, else the token in `token_env`. `Ok(None)`: no
/// credentials configured.
pub fn client_from_settings(
    settings: &crate::settings::GithubSettings,
) -> Result<Option<GithubClient>, String> {
    let auth = if settings.app_id != 0 {
        let pem = std::fs::read_to_string(&settings.app_private_key_file).map_err(|e| {
            format!(
                "github.app_private_key_file: cannot read {}: {e}",
                settings.app_private_key_file
            )
        })?;
        let app = app::AppAuth::from_pem(settings.app_id, settings.app_installation_id, &pem)
            .map_err(|m| format!("github.app_private_key_file: {m}"))?;
        client::Auth::App(std::sync::Arc::new(app))
    } else {
        match std::env::var(&settings.token_env) {
            Ok(token) if !token.trim().is_empty() => {
                client::Auth::Token(crate::secret::Secret::new(token.trim()))
            }
            _ => return Ok(None),
        }
    };
    GithubClient::new(&settings.api_url, auth, &settings.user_agent)
        .map(Some)
        .map_err(|e| e.message)
}

/// Percent-encode one path segment of a REST URL.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%2D", "-")
        .replace("%5F", "_")
        .replace("%2E", ".")
}

/// Percent-encode a path of several segments, keeping its slashes.
pub fn path_segments(s: &str) -> String {
    s.split('/').map(segment).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_from_settings_and_urls() {
        let r = RepoName::parse("octo-org/hello.world").unwrap();
        assert_eq!(r.to_string(), "octo-org/hello.world");
        assert!(RepoName::parse("nope").is_err());
        assert!(RepoName::parse("a/b/c").is_err());
        assert!(RepoName::parse("../x").is_err());
        for url in [
            "https://github.com/Octo/Repo.git",
            "git@github.com:octo/repo.git",
            "http://127.0.0.1:4567/octo/repo",
        ] {
            let got = RepoName::from_git_url(url).unwrap();
            assert!(got.same_as(&RepoName::parse("octo/repo").unwrap()), "{url}");
        }
        assert_eq!(path_segments("reports/a b.md"), "reports/a%20b.md");
    }
}
