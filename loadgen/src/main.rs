//! `tern-loadgen`: see `tern-loadgen --help` and loadgen/REPORT.md.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tern_loadgen::cli::{self, Cli};

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tern-loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let expanded = cli::expand_scenario(argv.clone())?;
    let parsed = match Cli::try_parse_from(&expanded) {
        Ok(c) => c,
        // Help, version and usage errors print themselves with clap's own exit codes.
        Err(e) => e.exit(),
    };
    // Logs go to stderr: a worker's stdout carries its messages to the coordinator.
    tracing_subscriber::fmt()
        .with_writer(|| tern_loadgen::run::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOADGEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tern_loadgen=info")),
        )
        .init();

    // Every connection is a socket: take the whole hard limit (children inherit it).
    let limit =
        tern_loadgen::sysstat::raise_nofile_limit().context("raising the open-file limit")?;
    tracing::debug!(limit, "open-file limit");

    if let cli::Command::Attack(a) = parsed.command {
        tern_loadgen::attack::main(a, argv)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let cli::Command::Rotation(r) = parsed.command {
        let passed = tern_loadgen::rotation::main(r, argv)?;
        return Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if let cli::Command::HistoryBench(h) = parsed.command {
        let passed = tern_loadgen::history_bench::main(h, argv)?;
        return Ok(if passed {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    if let cli::Command::Worker(w) = &parsed.command {
        tern_loadgen::worker_process::main(&w.plan)?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some((common, scenario, output)) = cli::into_run(parsed.command, argv)? else {
        return Ok(ExitCode::SUCCESS);
    };
    // One current-thread runtime: a multi-thread runtime measured ~8x worse QUIC round trips.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(tern_loadgen::run::run(common, scenario))?;

    if let Some(path) = &output.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    if let Some(path) = &output.plot {
        let svg = tern_loadgen::run::plot(&report)?;
        std::fs::write(path, svg)
            .with_context(|| format!("writing the plot to {}", path.display()))?;
    }
    print!("{}", report.human());
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
