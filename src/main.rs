use std::io::IsTerminal;

use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fer_server::config::{Cli, Command, LogFormat};

/// Logs to stderr, filtered by `RUST_LOG` or else `default`; coloured only on a terminal.
fn init_logging(format: LogFormat, default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Errors end the process with one line (and their causes), never a backtrace dump.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_format, "info,ort=error");
            let server = fer_server::server::Server::build(&args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let http = tokio::net::TcpListener::bind(args.listen).await?;
                let grpc = tokio::net::TcpListener::bind(args.grpc_listen).await?;
                server.run(http, grpc).await
            })
        }
        // The offline commands print their results; their logs stay quiet unless asked for.
        Command::Classify(args) => {
            init_logging(LogFormat::Text, "warn,ort=error");
            fer_server::cli::classify::run(&args)
        }
        Command::ScoreVideo(args) => {
            init_logging(LogFormat::Text, "warn,ort=error");
            fer_server::cli::video::run(&args)
        }
        Command::Healthcheck {
            url,
            api_key,
            timeout_ms,
        } => fer_server::cli::healthcheck::run(
            &url,
            api_key.as_deref(),
            std::time::Duration::from_millis(timeout_ms),
        ),
        Command::Openapi { out } => {
            let spec = fer_server::http::openapi::spec_json();
            match out {
                Some(path) => std::fs::write(path, spec)?,
                None => print!("{spec}"),
            }
            Ok(())
        }
    }
}
