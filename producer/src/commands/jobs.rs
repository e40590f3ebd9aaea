//! `fleet jobs`: queue depths (ready, running, delayed, dead) of both queues.

use anyhow::Context as _;
use fleet_shared::job::QueueKind;

use crate::context::Ctx;
use crate::exit::SUCCESS;
use crate::output::{counts_json, emit_json, emit_text, render_counts};

pub async fn jobs(ctx: &Ctx) -> anyhow::Result<u8> {
    let queues = ctx.queues().await?;
    let mut rows = Vec::new();
    for kind in QueueKind::ALL {
        let counts = queues
            .get(kind)
            .counts()
            .await
            .with_context(|| format!("counting the {kind} queue"))?;
        rows.push((kind, counts));
    }
    if ctx.json {
        emit_json(&counts_json(&rows))?;
    } else {
        emit_text(&render_counts(&rows))?;
    }
    Ok(SUCCESS)
}
