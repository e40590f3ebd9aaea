//! The dashboard (`/ui`) in a real headless Chromium, driven over WebDriver
//! (chromedriver, `fantoccini`), against a real `fleet serve`, a real `fleet-worker`
//! and a real redis-server: log in with a token, submit a batch, watch it end, open
//! its failed job and read its attempt errors, retry it from the dead-letter screen
//! and see it succeed. A read-only login sees no action buttons; actions with the
//! session cookie need the session's CSRF token; logging out ends the session.
//! Screenshots of every screen go to `target/dashboard-screenshots/`
//! (`FLEET_UPDATE_SCREENSHOTS=1` also copies them to `docs/screenshots/`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without
//! them the test fails saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use fleet_tests::RedisServer;
use fleet_tests::harness::{eventually, workspace_root};
use fleet_tests::processes::{ServeProcess, WorkerProcess};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN: &str = "dashboard-admin-token-0123456789";
const READER: &str = "dashboard-reader-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one thing on a page may take to show up.
const PAGE_WAIT: Duration = Duration::from_secs(60);

/// A program the test needs, or a failure that says how to install it.
fn required(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: the dashboard test needs Debian's headless browser and its \
         WebDriver, `apt-get install -y chromium chromium-driver` (.ci/run installs them)"
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// chromedriver on a port of its own; killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    async fn start(log_dir: &Path) -> ChromeDriver {
        required(CHROMIUM);
        let port = free_port();
        let log = std::fs::File::create(log_dir.join("chromedriver.log")).unwrap();
        let child = Command::new(required(CHROMEDRIVER))
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        let http = reqwest::Client::new();
        eventually("chromedriver is ready", Duration::from_secs(30), || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                let body: Value = http.get(status).send().await.ok()?.json().await.ok()?;
                body["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        ChromeDriver { child, url }
    }

    /// A headless Chromium session.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page, driven: waits on DOM conditions and saves screenshots.
struct Page {
    client: Client,
    base: String,
    shots: PathBuf,
}

impl Page {
    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("navigate");
    }

    /// Wait until an element matching `css` exists and `check` holds for its text.
    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + PAGE_WAIT;
        let mut last = String::new();
        loop {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = el.text().await
            {
                if check(&text) {
                    return text;
                }
                last = text;
            }
            if std::time::Instant::now() > deadline {
                self.shot("failure").await;
                panic!(
                    "{what}: {css} did not get there within {PAGE_WAIT:?} (last text {last:?}); see failure.png"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait for an element to exist.
    async fn wait_for(&self, css: &str, what: &str) -> fantoccini::elements::Element {
        self.wait_text(css, what, |_| true).await;
        self.client.find(Locator::Css(css)).await.unwrap()
    }

    async fn click(&self, css: &str) {
        self.wait_for(css, &format!("clicking {css}"))
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn fill(&self, css: &str, text: &str) {
        let el = self.wait_for(css, &format!("filling {css}")).await;
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn session_cookie(&self) -> String {
        self.client
            .get_named_cookie("fleet_session")
            .await
            .expect("the session cookie")
            .value()
            .to_string()
    }

    async fn log_in(&self, token: &str, role: &str) {
        self.goto("/ui/").await;
        self.wait_for("#token", "the login form").await;
        self.fill("#token", token).await;
        self.click("#login-submit").await;
        self.wait_text("#who", "logged in", |t| t.contains(role))
            .await;
    }
}

#[tokio::test]
async fn dashboard_runs_a_batch_and_retries_its_failed_job_in_headless_chromium() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    // `flaky` answers every query (reporting a cost of $0.25, as Claude Code's
    // total_cost_usd), except those holding FAILME while the flag file is missing:
    // those fail (exit 1, transient), twice, and are dead-lettered.
    let extra = format!(
        r#"
[queue.research]
max_attempts = 2
backoff_base_ms = 50
backoff_cap_ms = 100
[[api.tokens]]
name = "viewer"
token_env = "DASH_READER_TOKEN"
role = "read"
[agents.flaky]
runtime = "command"
repo = ""
command = ["sh", "-c", "read q; case \"$q\" in *FAILME*) if [ ! -e {flag} ]; then echo \"cannot answer: the flag file is missing\" >&2; exit 1; fi;; esac; printf '{{\"answer\": \"answer to: %s\", \"total_cost_usd\": 0.25}}' \"$q\""]
"#,
        flag = flag.display()
    );
    let config = fleet_tests::harness::local_config(dir.path(), &extra);
    let config_arg = config.display().to_string();
    let env = vec![
        ("FLEET_REDIS__URL", redis.url()),
        ("FLEET_API__TOKEN", ADMIN.to_string()),
        ("DASH_READER_TOKEN", READER.to_string()),
    ];
    let server = ServeProcess::start(&["--config", &config_arg], &env, dir.path());
    // The worker reads the same settings, named tokens included.
    let mut worker = WorkerProcess::start(&config, "dash-worker", &env, dir.path());
    let http = reqwest::Client::new();
    let ready = server.url("/readyz");
    eventually("fleet serve is ready", Duration::from_secs(30), || {
        let (http, ready) = (http.clone(), ready.clone());
        async move {
            http.get(ready)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        }
    })
    .await;

    assert!(
        worker.is_running(),
        "the worker started: {}",
        worker.log_text()
    );
    let shots = workspace_root().join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let driver = ChromeDriver::start(dir.path()).await;
    let page = Page {
        client: driver.browser().await,
        base: server.base.clone(),
        shots: shots.clone(),
    };

    // Without a session, the dashboard sends the browser to the login form.
    page.goto("/ui/").await;
    page.wait_for("#token", "the login form").await;
    assert!(
        page.client.current_url().await.unwrap().path() == "/ui/login",
        "redirected to the login form"
    );
    page.fill("#token", "not-a-token-at-all-0000").await;
    page.click("#login-submit").await;
    page.wait_text("[role=alert]", "a wrong token is refused", |t| {
        t.contains("not one of")
    })
    .await;
    page.fill("#token", ADMIN).await;
    page.shot("01-login").await;
    page.click("#login-submit").await;
    page.wait_text("#who", "logged in as admin", |t| t.contains("admin"))
        .await;

    // The cookie holds a session ID, not the token; HttpOnly and SameSite=Strict.
    let cookie = page.client.get_named_cookie("fleet_session").await.unwrap();
    assert_ne!(cookie.value(), ADMIN);
    assert_eq!(cookie.http_only(), Some(true), "{cookie}");
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict"),
        "{cookie}"
    );

    // Submit a batch from the Batches screen and watch it to the end.
    page.goto("/ui/#/batches").await;
    page.fill(
        "#batch-queries",
        "What is the revenue of Acme?\nFAILME: a question that fails until the flag exists\nWhich company grew fastest?",
    )
    .await;
    page.fill("#batch-agent", "flaky").await;
    page.click("#batch-submit").await;
    page.wait_text("#batch-state", "the batch runs to its end", |t| {
        t.contains("All jobs finished")
    })
    .await;
    page.wait_text("[data-count=succeeded]", "two jobs succeeded", |t| t == "2")
        .await;
    page.wait_text("[data-count=dead]", "one job is dead", |t| t == "1")
        .await;
    page.wait_text("#batch-results tbody", "the results are listed", |t| {
        t.contains("answer to: What is the revenue of Acme?")
    })
    .await;
    page.shot("02-batch").await;

    // Overview: depths (one dead), live workers.
    page.goto("/ui/#/overview").await;
    page.wait_text("#stat-dead", "the overview counts the dead job", |t| {
        t == "1"
    })
    .await;
    page.wait_text("#stat-workers", "one live worker", |t| t == "1")
        .await;
    page.wait_for("svg.chart", "the throughput chart").await;
    // drawn from the per-minute history: the batch's successes and failed attempts
    // (the legend's spans run together in its text: "2 succeeded2 failed attempts…")
    let count = |t: &str, what: &str| -> u64 {
        let before = t.split(what).next().unwrap_or("");
        let digits: String = before
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .chars()
            .rev()
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    page.wait_text("#chart figcaption", "the chart counts the batch", |t| {
        count(t, " succeeded") >= 2
            && count(t, " failed attempts") >= 1
            && t.contains("$0.50 spent")
    })
    .await;
    page.shot("03-overview").await;

    // Open the failed job from the batch: its attempts and their errors.
    page.client.back().await.unwrap();
    page.wait_for("#batch-results [data-status=dead]", "the dead job's row")
        .await;
    let row = page
        .client
        .find(Locator::XPath(
            "//tr[.//span[@data-status='dead']]//a[@data-job]",
        ))
        .await
        .expect("a link to the dead job");
    let dead_id = row.attr("data-job").await.unwrap().unwrap();
    row.click().await.unwrap();
    page.wait_text("#job-status", "the job page shows it dead", |t| t == "dead")
        .await;
    page.wait_text(
        "#attempts-table tbody",
        "both attempts and their errors",
        |t| t.matches("the flag file is missing").count() == 2,
    )
    .await;
    assert_eq!(page.count("#attempts-table [data-attempt]").await, 2);
    page.shot("04-job-failed").await;

    // The CSRF token is required for actions made with the session cookie.
    let admin_cookie = format!("fleet_session={}", page.session_cookie().await);
    let retry_without_csrf = http
        .post(server.url("/v1/dead/retry"))
        .header("Cookie", &admin_cookie)
        .json(&json!({"ids": [dead_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(retry_without_csrf.status(), StatusCode::FORBIDDEN);
    let message: Value = retry_without_csrf.json().await.unwrap();
    assert!(
        message["error"].as_str().unwrap().contains("x-csrf-token"),
        "{message}"
    );
    let wrong_csrf = http
        .post(server.url("/v1/dead/retry"))
        .header("Cookie", &admin_cookie)
        .header("X-CSRF-Token", "0".repeat(64))
        .json(&json!({"ids": [dead_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_csrf.status(), StatusCode::FORBIDDEN);

    // Make the agent able to answer, then retry from the dead-letter screen.
    std::fs::write(&flag, "").unwrap();
    page.goto("/ui/#/dead").await;
    let checkbox = format!("[data-select='{dead_id}']");
    page.click(&checkbox).await;
    page.wait_text("#dead-selected", "one selected", |t| t == "1 selected")
        .await;
    page.click("#dead-retry-selected").await;
    page.wait_text("#confirm-text", "the confirmation", |t| {
        t.contains("Retry 1 selected")
    })
    .await;
    page.shot("05-dead-letters").await;
    page.click("#confirm-ok").await;
    page.wait_text("#flash", "the retry is reported", |t| {
        t.contains("Retry: 1 job")
    })
    .await;

    // And it succeeds.
    page.goto(&format!("/ui/#/job/{dead_id}")).await;
    page.wait_text("#job-status", "the retried job succeeds", |t| {
        t == "succeeded"
    })
    .await;
    page.wait_text("#job-answer", "its answer", |t| {
        t.contains("answer to: FAILME")
    })
    .await;
    page.wait_text("#job-usage", "agent and sandbox time", |t| {
        t.contains("sandbox_seconds") && t.contains("flaky")
    })
    .await;
    page.wait_text(
        "#attempts-table tbody",
        "the third attempt succeeded",
        |t| t.contains("succeeded"),
    )
    .await;
    page.shot("06-job-succeeded").await;

    page.goto("/ui/#/workers").await;
    page.wait_text("#worker-list", "the worker is listed", |t| {
        t.contains("dash-worker")
    })
    .await;
    page.shot("07-workers").await;
    page.goto("/ui/#/agents").await;
    page.wait_for("#agent-list table", "the agents table").await;
    // what each agent's attempts cost: three answers at $0.25 over the pool
    page.wait_text("#agent-list tbody", "the agents' cost", |t| {
        let total: f64 = t
            .split('$')
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .sum();
        (total - 0.75).abs() < 1e-6
    })
    .await;
    page.shot("08-agents").await;
    page.goto("/ui/#/jobs").await;
    page.wait_text("#job-list tbody", "the jobs are listed", |t| {
        t.contains("Which company grew fastest?")
    })
    .await;
    page.fill("#job-search", "grew fastest").await;
    page.click("#job-filters button[type=submit]").await;
    page.wait_text("#job-list tbody", "the search keeps one job", |t| {
        t.contains("Which company grew fastest?") && !t.contains("FAILME")
    })
    .await;
    page.shot("09-jobs").await;

    // Logging out ends the session: the old cookie is refused.
    page.click("#logout").await;
    page.wait_for("#token", "back at the login form").await;
    let after = http
        .get(server.url("/v1/jobs"))
        .header("Cookie", &admin_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    // A read-only login: the screens show no action buttons, and the API refuses
    // actions even with the right CSRF token.
    page.log_in(READER, "read-only").await;
    page.goto("/ui/#/dead").await;
    page.wait_for("#dead-total", "the dead-letter list").await;
    page.goto("/ui/#/batches").await;
    page.wait_for("#batch-open", "the batch screen").await;
    assert_eq!(page.count("#batch-form").await, 0, "no submit form");
    page.goto(&format!("/ui/#/job/{dead_id}")).await;
    page.wait_text("#job-status", "the job page", |t| t == "succeeded")
        .await;
    assert_eq!(page.count("button#job-cancel, button#job-retry").await, 0);
    page.goto("/ui/#/dead").await;
    page.wait_for("#dead-total", "the dead-letter list").await;
    assert_eq!(
        page.count("#dead-retry-selected, #dead-purge-filter, [data-select]")
            .await,
        0,
        "no action buttons for a read-only token"
    );
    let reader_cookie = format!("fleet_session={}", page.session_cookie().await);
    let who: Value = http
        .get(server.url("/ui/session"))
        .header("Cookie", &reader_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["role"], "read");
    let refused = http
        .post(server.url("/v1/dead/purge"))
        .header("Cookie", &reader_cookie)
        .header("X-CSRF-Token", who["csrf"].as_str().unwrap())
        .json(&json!({"ids": [dead_id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // The token never reached the logs.
    let logs = std::fs::read_to_string(&server.stderr).unwrap();
    assert!(!logs.contains(ADMIN) && !logs.contains(READER));

    page.client.close().await.unwrap();
    if std::env::var_os("FLEET_UPDATE_SCREENSHOTS").is_some() {
        let docs = workspace_root().join("docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        for name in [
            "01-login",
            "02-batch",
            "03-overview",
            "04-job-failed",
            "05-dead-letters",
            "06-job-succeeded",
        ] {
            std::fs::copy(
                shots.join(format!("{name}.png")),
                docs.join(format!("{name}.png")),
            )
            .unwrap();
        }
    }
}
