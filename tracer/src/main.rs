//! The `pathtrace` binary: parse flags, run a trace, exit non-zero on errors.

use std::io::{IsTerminal, stdout};

use anyhow::Context as _;
use clap::Parser;
use pathtrace::{
    cli::Cli,
    output::{Output, human::HumanOutput, json::JsonOutput},
    trace,
};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PATHTRACE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pathtrace: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = cli
        .trace_config()
        .map_err(anyhow::Error::msg)
        .context("invalid filter")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out: Box<dyn Output> = if cli.output.json {
        Box::new(JsonOutput::new(stdout().lock()))
    } else {
        Box::new(HumanOutput::new(stdout().lock()))
    };
    runtime
        .block_on(trace::run(cfg, out.as_mut()))
        .context("tracing")?;
    Ok(())
}
