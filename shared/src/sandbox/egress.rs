//! Egress rules for an agent profile's sandboxes (`[agents.<name>.network]`).
//!
//! A profile may cut its sandboxes off the internet (`internet = false`) and
//! name the hosts they may still reach (`allow`), or deny some destinations
//! (`deny`). The E2B provider sends these at create (`allow_internet_access`
//! and `network.allowOut`/`denyOut` of E2B's `NewSandbox`). The local provider
//! does not enforce them (see `local.rs`); the worker warns at start.

use std::net::IpAddr;

use serde::Deserialize;

use crate::settings::{AgentProfile, Settings};

/// `[agents.<name>.network]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Reach the internet at large (default true). False denies all egress but
    /// the `allow` list (and the model gateway, added by the worker).
    #[serde(default = "yes")]
    pub internet: bool,
    /// Destinations always reachable: CIDR blocks, IP addresses, domain names
    /// (`example.com`, `*.example.com`). Allowed entries win over denied ones.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Destinations refused: CIDR blocks or IP addresses (E2B takes no domain
    /// names here).
    #[serde(default)]
    pub deny: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            internet: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

/// The rules a profile's sandboxes get: `None` when it restricts nothing; with
/// the model gateway's host allowed when `[gateway]` is enabled.
pub fn for_profile(settings: &Settings, profile: &AgentProfile) -> Option<Egress> {
    let rules = profile.network.clone().filter(Egress::restricts)?;
    Some(if settings.gateway.enabled {
        rules.allowing_host_of(&settings.gateway.public_url())
    } else {
        rules
    })
}

impl Egress {
    /// Whether these rules restrict anything (`internet = false` or a deny list).
    pub fn restricts(&self) -> bool {
        !self.internet || !self.deny.is_empty()
    }

    /// The first problem, as (key below `network`, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(bad) = self
            .allow
            .iter()
            .find(|e| !is_cidr_or_ip(e) && !is_domain(e))
        {
            return Some((
                "allow",
                format!("{bad:?} is neither a CIDR block, an IP address nor a domain name"),
            ));
        }
        if let Some(bad) = self.deny.iter().find(|e| !is_cidr_or_ip(e)) {
            return Some((
                "deny",
                format!(
                    "{bad:?} is not a CIDR block or an IP address (domain names cannot be denied)"
                ),
            ));
        }
        if !self.allow.is_empty() && !self.restricts() {
            return Some((
                "allow",
                "has no effect while internet = true and deny is empty".to_string(),
            ));
        }
        None
    }

    /// These rules with the host of `url` allowed too (when they restrict and it
    /// is not listed yet): how the model gateway stays reachable.
    pub fn allowing_host_of(mut self, url: &str) -> Self {
        if !self.restricts() {
            return self;
        }
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
        if let Some(host) = host
            && !self.allow.contains(&host)
        {
            self.allow.push(host);
        }
        self
    }
}

fn is_cidr_or_ip(entry: &str) -> bool {
    let (addr, prefix) = match entry.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => true,
        Some(p) => p.parse::<u8>().is_ok_and(|n| n <= max) && !p.starts_with('+'),
    }
}

/// `example.com` or `*.example.com`: dot-separated labels of letters, digits and
/// hyphens (no hyphen at either end).
fn is_domain(entry: &str) -> bool {
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(internet: bool, allow: &[&str], deny: &[&str]) -> Egress {
        Egress {
            internet,
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn entries_are_checked() {
        let ok = rules(
            false,
            &["example.com", "*.pypi.org", "8.8.8.8", "10.0.0.0/8", "::1"],
            &["1.2.3.0/24"],
        );
        assert_eq!(ok.problem(), None);
        assert_eq!(
            rules(false, &["http://x.com"], &[]).problem().unwrap().0,
            "allow"
        );
        assert_eq!(
            rules(false, &["10.0.0.0/33"], &[]).problem().unwrap().0,
            "allow"
        );
        assert_eq!(rules(false, &[""], &[]).problem().unwrap().0, "allow");
        assert_eq!(
            rules(true, &[], &["example.com"]).problem().unwrap().0,
            "deny"
        );
        assert_eq!(
            rules(true, &["example.com"], &[]).problem().unwrap().0,
            "allow"
        );
    }

    #[test]
    fn the_gateway_host_is_added_only_to_restricting_rules() {
        let r = rules(false, &["example.com"], &[]).allowing_host_of("http://10.1.2.3:9480");
        assert_eq!(r.allow, ["example.com", "10.1.2.3"]);
        let twice = r.clone().allowing_host_of("http://10.1.2.3:9480");
        assert_eq!(twice, r);
        let v6 = rules(false, &[], &[]).allowing_host_of("http://[::1]:9480/");
        assert_eq!(v6.allow, ["::1"]);
        let open = Egress::default().allowing_host_of("http://10.1.2.3:9480");
        assert_eq!(open, Egress::default());
    }
}
