//! `fake-e2b`: serve the fake E2B server (control plane and envd) on a port, for
//! running the worker against it by hand:
//!
//! ```text
//! cargo run -p fleet-tests --bin fake-e2b -- --port 3900
//! E2B_API_KEY=<printed key> FLEET_SANDBOX__PROVIDER=e2b \
//!   FLEET_SANDBOX__E2B__API_URL=http://127.0.0.1:3900 \
//!   FLEET_SANDBOX__E2B__ENVD_URL='http://127.0.0.1:3900/envd/{id}' fleet-worker
//! ```
//!
//! Commands run on this machine through the local provider, in a temporary
//! directory: it is a development tool, not a sandbox. It listens on loopback only.

use std::net::SocketAddr;

use fleet_tests::fake_e2b::{DEFAULT_API_KEY, FakeE2b, local_provider};

fn usage() -> ! {
    eprintln!("usage: fake-e2b [--port PORT] [--api-key KEY]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut port = 3900u16;
    let mut api_key = DEFAULT_API_KEY.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--api-key" => api_key = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    // The sandboxes live in a temporary directory, deleted on exit.
    let (provider, root) = local_provider()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let fake = FakeE2b::start_on(addr, provider, &api_key).await?;
    println!(
        "fake E2B listening (sandboxes in {})",
        root.path().display()
    );
    println!("  FLEET_SANDBOX__E2B__API_URL={}", fake.api_url());
    println!("  FLEET_SANDBOX__E2B__ENVD_URL={}", fake.envd_url());
    println!("  E2B_API_KEY={api_key}");
    tokio::signal::ctrl_c().await?;
    let c = fake.counters();
    println!(
        "stopping: {} created, {} killed, {} running, {} paused",
        c.created, c.killed, c.running, c.paused
    );
    Ok(())
}
