//! The `pathtrace` binary: parse flags, run a trace, exit non-zero on errors.

use std::io::{IsTerminal, stdout};

use anyhow::Context as _;
use clap::Parser;
use pathtrace::{
    cli::{Cli, Command, DaemonArgs, DoctorArgs},
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("pathtrace: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match &cli.command {
        Some(Command::Doctor(args)) => return doctor(args),
        Some(Command::Daemon(args)) => return daemon(args),
        None => {}
    }
    let cfg = cli
        .trace_config()
        .map_err(anyhow::Error::msg)
        .context("invalid arguments")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
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

/// `pathtrace daemon`: the config file, then flags on top.
fn daemon(args: &DaemonArgs) -> anyhow::Result<std::process::ExitCode> {
    use pathtrace::daemon::{self, config::DaemonConfig};
    let mut cfg = match &args.config {
        Some(path) => DaemonConfig::load(path)?,
        None => DaemonConfig::default(),
    };
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(path) = &args.json_log {
        cfg.json.path = Some(path.clone());
    }
    let f = &args.filter;
    if f.dport.is_some() || f.sport.is_some() || f.host.is_some() || f.proto.is_some() {
        cfg.filter.dport = f.dport.or(cfg.filter.dport);
        cfg.filter.sport = f.sport.or(cfg.filter.sport);
        cfg.filter.host = f.host.or(cfg.filter.host);
        if let Some(p) = f.proto {
            cfg.filter.proto = Some(p.to_string());
        }
    }
    if args.filter.container.is_some() {
        anyhow::bail!("--container is not supported by the daemon yet: use --dport/--host");
    }
    if args.probes.backend != pathtrace::probes::loader::BackendChoice::Auto {
        cfg.backend = match args.probes.backend {
            pathtrace::probes::loader::BackendChoice::Only(b) => b.to_string(),
            pathtrace::probes::loader::BackendChoice::Auto => "auto".into(),
        };
    }
    if let Some(hooks) = args.probes.hooks {
        cfg.hooks = Some(hooks.to_string());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(daemon::run(cfg, args.config.clone()))?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `pathtrace doctor`: static checks of this namespace; exit status 1 when anything is found.
fn doctor(args: &DoctorArgs) -> anyhow::Result<std::process::ExitCode> {
    use pathtrace::{
        doctor::{HostConfig, PortCheck, examine},
        resolve::{LinkTable, docker, netns::sysctl_path, read_ruleset},
    };
    let links = LinkTable::dump_here().context("listing interfaces (rtnetlink)")?;
    let ruleset = read_ruleset(links.links.values().any(|l| l.kind == "bridge"));
    let mut ports = Vec::new();
    let mut docker_status = String::from("not used (--dport given)");
    if let Some(port) = args.dport {
        ports.push(PortCheck {
            port,
            proto: args.proto,
            published: None,
        });
    } else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let index = pathtrace::resolve::SharedIndex::default();
        docker_status = runtime
            .block_on(docker::initial(&index, &docker::socket_path()))
            .to_string();
        if let Ok(index) = index.read() {
            for p in &index.published {
                ports.push(PortCheck {
                    port: p.host_port,
                    proto: p.proto,
                    published: Some(p.clone()),
                });
            }
        }
    }
    let host = HostConfig {
        links,
        sysctl: Box::new(|key| {
            std::fs::read_to_string(sysctl_path(key))
                .ok()
                .map(|v| v.trim().to_owned())
        }),
        ruleset,
    };
    let findings = examine(&host, &ports);
    let checked: Vec<String> = ports
        .iter()
        .map(|p| format!("{}/{}", p.port, pathtrace::events::proto_name(p.proto)))
        .collect();
    if args.json {
        let v = serde_json::json!({
            "kind": "doctor",
            "ports": checked,
            "docker": docker_status,
            "iptables": host.ruleset.is_some(),
            "findings": findings,
        });
        println!("{v}");
    } else {
        println!(
            "pathtrace doctor: checked forwarding, rp_filter, br_netfilter{}; ports: {}; Docker {docker_status}",
            if host.ruleset.is_some() {
                ", iptables"
            } else {
                " (no iptables rules found)"
            },
            if checked.is_empty() {
                "none".to_owned()
            } else {
                checked.join(", ")
            }
        );
        if findings.is_empty() {
            println!("no problems found");
        }
        for f in &findings {
            println!("\n[{}] ({:?}) {}", f.code, f.confidence, f.summary);
            for e in &f.evidence {
                println!("  evidence: {e}");
            }
            if let Some(fix) = &f.fix {
                println!("  fix: {fix}");
            }
        }
    }
    Ok(if findings.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
