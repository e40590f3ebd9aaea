//! One module per command family; `run` loads the settings and dispatches.
//!
//! Each command returns the exit code it ends with (a job that ended dead is not an
//! error of `fleet`, but it is exit 1), or an error that `main` prints and maps to a
//! code (`exit::code_of`).

pub mod agents;
pub mod batch;
pub mod cancel;
pub mod dead;
pub mod github;
pub mod inspect;
pub mod jobs;
pub mod submit;
pub mod watch;

use crate::cli::{Cli, Command};
use crate::context::{Ctx, load_settings};

pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let settings = load_settings(cli.config.as_deref(), cli.redis_url.as_deref())?;
    let mut ctx = Ctx::new(settings, cli.json);
    match cli.command {
        Command::Submit(args) => submit::submit(&ctx, args).await,
        Command::Batch(args) => batch::batch(&ctx, args).await,
        Command::Status(args) => inspect::status(&ctx, &args.id).await,
        Command::Result(args) => inspect::result(&ctx, args).await,
        Command::Jobs => jobs::jobs(&ctx).await,
        Command::Dead { command } => dead::dead(&ctx, command).await,
        Command::Cancel(args) => cancel::cancel(&ctx, &args.id).await,
        Command::Watch(args) => watch::watch(&ctx, args).await,
        Command::Agents { command } => agents::agents(&ctx, command).await,
        Command::Pool { command } => agents::pool(&ctx, command).await,
        Command::Github { command } => github::github(&ctx, command).await,
        Command::Demo(args) => crate::demo::demo(&mut ctx, args, cli.config).await,
        Command::Serve(args) => crate::api::serve(ctx, args, cli.json).await,
    }
}
