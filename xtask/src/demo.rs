//! `cargo xtask demo`: the story of field note 000 in one run. A Docker-like lab whose uplink
//! has forwarding off; pathtrace watches one client connect and explains the timeout.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lab::{Fault, Lab, LabConfig};

use crate::{build, require_root, setup};

pub fn run() -> Result<()> {
    setup::run()?;
    require_root("demo")?;
    let bin = build(false)?;
    let cfg = LabConfig::default();
    let lab = Lab::with_fault(cfg.clone(), Fault::ForwardingOff(cfg.uplink.clone()))?;
    println!(
        "\nLab: a client namespace ({}) reaches a Docker-like host ({}) on {}; port {} is \
         published to {}:{} in {}.\nFault: net.ipv4.conf.{}.forwarding=0 on the host, ip_forward=1.\n\
         Running: pathtrace --dport {} --count 1\n",
        lab.outside.name,
        lab.host.name,
        lab.published(),
        cfg.published_port,
        cfg.container_addr,
        cfg.container_port,
        lab.container.name,
        cfg.uplink,
        cfg.published_port
    );
    let mut child = Command::new(&bin)
        .args([
            "--dport",
            &cfg.published_port.to_string(),
            "--count",
            "1",
            "--duration",
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("pathtrace stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // Wait for the header: every probe is attached.
    for line in lines.by_ref() {
        let line = line?;
        println!("{line}");
        if line.starts_with("pathtrace: tracing") {
            break;
        }
    }
    let answered = lab.connect(Duration::from_millis(1500))?;
    println!(
        "\n(client: connect to {} {})",
        lab.published(),
        if answered { "succeeded" } else { "timed out" }
    );
    for line in lines {
        println!("{}", line?);
    }
    let st = child.wait()?;
    if !st.success() {
        anyhow::bail!("pathtrace exited with {st}");
    }
    Ok(())
}
