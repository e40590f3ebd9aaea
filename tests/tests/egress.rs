//! Egress rules (`[agents.<name>.network]`) reach E2B's create request.
//!
//! A restricted profile's create carries `allow_internet_access` and
//! `network.allowOut`/`denyOut`, valid against the vendored `openapi.yml` (the
//! fake validates every request and answers 400 otherwise), with the model
//! gateway's host added to the allow list; an unrestricted profile sends neither.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_shared::sandbox::e2b::E2bProvider;
use fleet_shared::sandbox::egress;
use fleet_shared::sandbox::{META_OWNER, SandboxProvider, SandboxSpec};
use fleet_shared::settings::Settings;
use fleet_tests::fake_e2b::openapi::{OpenApi, RequestParts};
use fleet_tests::fake_e2b::{Egress, FakeE2b};
use fleet_tests::fixture::Fleet;
use serde_json::{Value, json};

const CONFIG: &str = r#"
[agents.open]
runtime = "command"
repo = ""
command = ["true"]

[agents.closed]
runtime = "command"
repo = ""
command = ["true"]

[agents.closed.network]
internet = false
allow = ["pypi.org", "*.github.com", "140.82.112.0/20"]
deny = ["169.254.169.254"]
"#;

fn settings(gateway: bool) -> Settings {
    let mut s = Settings::from_layers(Some(CONFIG), &[]).unwrap();
    s.gateway.enabled = gateway;
    s.gateway.public_url = "http://10.9.8.7:9480".into();
    s
}

fn spec_for(settings: &Settings, profile: &str) -> SandboxSpec {
    SandboxSpec {
        template: "base".into(),
        timeout: Duration::from_secs(60),
        metadata: BTreeMap::from([(META_OWNER.to_string(), "dexter-fleet".to_string())]),
        network: egress::for_profile(settings, &settings.agents[profile]),
        ..Default::default()
    }
}

/// The body of the one `POST /sandboxes` recorded, checked against the spec here too.
fn create_body(fake: &FakeE2b) -> Value {
    let creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/sandboxes")
        .collect();
    assert_eq!(creates.len(), 1);
    let r = &creates[0];
    assert_eq!(r.status, 201, "the fake accepted the create");
    OpenApi::e2b()
        .check_request(&RequestParts {
            method: &r.method,
            path: &r.path,
            query: r.query.as_deref(),
            headers: &r.headers,
            body: &r.body,
        })
        .unwrap();
    r.json().unwrap()
}

#[tokio::test]
async fn a_restricted_profile_sends_its_rules_with_the_gateway_host() {
    let fake = FakeE2b::start_local().await;
    let p = E2bProvider::new(&fake.settings()).unwrap();
    let s = settings(true);
    let sb = p.create(&spec_for(&s, "closed")).await.unwrap();
    let body = create_body(&fake);
    assert_eq!(body["allow_internet_access"], json!(false));
    assert_eq!(
        body["network"],
        json!({
            "allowOut": ["pypi.org", "*.github.com", "140.82.112.0/20", "10.9.8.7"],
            "denyOut": ["169.254.169.254"],
        })
    );
    assert_eq!(
        fake.egress_of(&sb.id).unwrap(),
        Egress {
            allow_internet_access: Some(false),
            allow_out: Some(vec![
                "pypi.org".into(),
                "*.github.com".into(),
                "140.82.112.0/20".into(),
                "10.9.8.7".into()
            ]),
            deny_out: Some(vec!["169.254.169.254".into()]),
        }
    );
    p.kill(&sb.id).await.unwrap();
}

#[tokio::test]
async fn without_the_gateway_only_the_named_hosts_are_allowed() {
    let fake = FakeE2b::start_local().await;
    let p = E2bProvider::new(&fake.settings()).unwrap();
    let sb = p
        .create(&spec_for(&settings(false), "closed"))
        .await
        .unwrap();
    let body = create_body(&fake);
    assert_eq!(
        body["network"]["allowOut"],
        json!(["pypi.org", "*.github.com", "140.82.112.0/20"])
    );
    p.kill(&sb.id).await.unwrap();
}

#[tokio::test]
async fn an_unrestricted_profile_sends_no_network_fields() {
    let fake = FakeE2b::start_local().await;
    let p = E2bProvider::new(&fake.settings()).unwrap();
    let sb = p.create(&spec_for(&settings(true), "open")).await.unwrap();
    let body = create_body(&fake);
    assert!(body.get("allow_internet_access").is_none(), "{body}");
    assert!(body.get("network").is_none(), "{body}");
    assert_eq!(fake.egress_of(&sb.id).unwrap(), Egress::default());
    p.kill(&sb.id).await.unwrap();
}

#[tokio::test]
async fn the_fake_refuses_network_fields_that_break_the_spec() {
    let fake = FakeE2b::start_local().await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        http.post(format!("{}/sandboxes", fake.api_url()))
            .header("X-API-Key", fake.api_key())
            .json(&body)
            .send()
    };
    for bad in [
        json!({"templateID": "base", "allow_internet_access": "no"}),
        json!({"templateID": "base", "network": {"allowOut": "pypi.org"}}),
        json!({"templateID": "base", "network": {"denyOut": [1]}}),
        json!({"templateID": "base", "network": {"denyOut": ["example.com"]}}),
    ] {
        let r = post(bad.clone()).await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    assert_eq!(fake.counters().created, 0);
    let ok = json!({"templateID": "base", "timeout": 60, "allow_internet_access": false,
                    "network": {"allowOut": ["pypi.org"], "denyOut": ["10.0.0.0/8"]}});
    let r = post(ok).await.unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["sandboxID"]
        .as_str()
        .unwrap()
        .to_string();
    let e = fake.egress_of(&id).unwrap();
    assert_eq!(e.allow_internet_access, Some(false));
    assert_eq!(e.deny_out, Some(vec!["10.0.0.0/8".to_string()]));
}

/// Through a real worker: the profile's rules go from settings through the pool to
/// E2B's create, the gateway's `public_url` host allowed.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_creates_a_restricted_profiles_sandbox_with_its_rules() {
    let fake = FakeE2b::start_local().await;
    let extra = format!(
        r#"
[worker]
concurrency = 1
[sandbox]
provider = "e2b"
[sandbox.e2b]
api_url = "{api}"
envd_url = "{envd}"
[gateway]
enabled = true
listen = "127.0.0.1:0"
public_url = "http://gateway.test:9480"
[agents.test.network]
internet = false
allow = ["pypi.org"]
"#,
        api = fake.api_url(),
        envd = fake.envd_url(),
    );
    let mut fleet = Fleet::start(r#"q=$(cat); printf 'answer: %s' "$q""#, &extra).await;
    fleet.start_worker_with_env("w1", &[("E2B_API_KEY", fake.api_key().to_string())]);
    let id = fleet.submit(JobSpec::research("q1", "test")).await;
    fleet
        .wait_status(
            &id.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(60),
        )
        .await;
    let body = create_body(&fake);
    assert_eq!(body["allow_internet_access"], json!(false));
    assert_eq!(
        body["network"],
        json!({"allowOut": ["pypi.org", "gateway.test"]})
    );
    fleet.workers[0].sigterm();
    fleet.workers[0].assert_clean_exit();
}

/// The local provider cannot enforce egress: a worker says so at start, once per
/// restricting profile, rather than pretending.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_worker_warns_that_it_does_not_enforce_egress() {
    let extra = "[agents.test.network]\ninternet = false\n";
    let mut fleet = Fleet::start(r#"q=$(cat); printf 'answer: %s' "$q""#, extra).await;
    fleet.start_worker("w1");
    fleet.wait_started(0).await;
    let log = fleet.workers[0].log_text();
    let warnings = log
        .lines()
        .filter(|l| l.contains("local provider does not enforce it"))
        .count();
    assert_eq!(warnings, 1, "{log}");
    assert!(log.contains("agents.test.network"), "{log}");
    fleet.workers[0].sigterm();
    fleet.workers[0].assert_clean_exit();
}
