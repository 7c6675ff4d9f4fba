use clap::Parser as _;
use tern_gateway::config::{Cli, Command, Config, LogFormat};

fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    // rustls warns about what clients send (an IP address as SNI, a duplicate name...), once per
    // handshake: any client could fill the disk with them. Those handshakes fail or proceed on
    // their own; only errors are ours. An operator who names rustls in TERN_LOG gets what they
    // asked for.
    let names_rustls = std::env::var("TERN_LOG").is_ok_and(|v| v.contains("rustls"));
    if !names_rustls && let Ok(directive) = "rustls=error".parse() {
        filter = filter.add_directive(directive);
    }
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::resolve(args)?;
            init_logging(config.log_format);
            // Shards (one pinned current-thread runtime per core) start inside.
            tern_gateway::server::run(config)
        }
    }
}
