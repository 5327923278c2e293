//! The `pathtrace` binary: parse flags, run a trace, exit non-zero on errors.

use std::io::{IsTerminal, stdout};

use anyhow::Context as _;
use clap::Parser;
use pathtrace::{
    cli::{Cli, Command, DaemonArgs, DoctorArgs},
    daemon::config::DaemonConfig,
    output::{self, Output, human::HumanOutput, json::JsonOutput},
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("pathtrace: error: {}", chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-joined; a cause the message before it already quotes (as a
/// library error that wraps another usually does) is not said twice.
fn chain(e: &anyhow::Error) -> String {
    let mut said = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if said.contains(&text) {
            continue;
        }
        if !said.is_empty() {
            said.push_str(": ");
        }
        said.push_str(&text);
    }
    said
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match &cli.command {
        Some(Command::Doctor(args)) => return doctor(args),
        Some(Command::Daemon(args)) => return daemon(args),
        None => {}
    }
    let cfg = cli.trace_config().context("invalid arguments")?;
    let runtime = runtime()?;
    let mut out: Box<dyn Output> = if cli.output.json {
        Box::new(JsonOutput::new(std::io::BufWriter::with_capacity(
            1 << 16,
            stdout().lock(),
        )))
    } else {
        Box::new(HumanOutput::new(stdout().lock()))
    };
    runtime
        .block_on(trace::run(cfg, out.as_mut()))
        .context("tracing")?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A runtime on this thread: tracing, the daemon and Docker's client are async.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `pathtrace daemon`: the config file, then flags on top.
fn daemon(args: &DaemonArgs) -> anyhow::Result<std::process::ExitCode> {
    let cfg = DaemonConfig::from_args(args)?;
    let reload = args.config.clone().map(|path| pathtrace::daemon::Reload {
        path,
        flags: args.filter.clone(),
    });
    runtime()?.block_on(pathtrace::daemon::run(cfg, reload))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `pathtrace doctor`: static checks of this namespace; exit status 1 when anything is found.
fn doctor(args: &DoctorArgs) -> anyhow::Result<std::process::ExitCode> {
    let port = args.dport.map(|p| (p, args.proto));
    let default = pathtrace::diagnose::CLIENT;
    let client = (
        args.host.unwrap_or(default.0),
        args.sport.unwrap_or(default.1),
    );
    let checkup = match runtime()?.block_on(pathtrace::doctor::run(port, client)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pathtrace: error: {}", chain(&e.into()));
            return Ok(std::process::ExitCode::from(2));
        }
    };
    let out = stdout().lock();
    if args.json {
        output::doctor::json(&checkup, out)
    } else {
        output::doctor::human(&checkup, out)
    }
    .context("writing the findings")?;
    Ok(if !checkup.findings.is_empty() {
        std::process::ExitCode::from(1)
    } else if !checkup.unchecked.is_empty() {
        std::process::ExitCode::from(3)
    } else {
        std::process::ExitCode::SUCCESS
    })
}
