//! `bpfsight`: the command-line entry point. Thin: parses flags, starts the collector, serves.

use std::process::ExitCode;

use anyhow::Context;
use bpfsight::BpfsightServer;
use bpfsight_collector::{Collector, CollectorConfig};
use clap::{Parser, Subcommand};
use rmcp::ServiceExt;

/// eBPF observability for LLM agents, over the Model Context Protocol.
#[derive(Parser)]
#[command(name = "bpfsight", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MCP server on stdin/stdout (the command an MCP client's config points at).
    Serve,
}

fn main() -> ExitCode {
    // Logs go to stderr: stdout carries only MCP frames in stdio mode.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BPFSIGHT_LOG")
                .unwrap_or_else(|_| "info,rmcp=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bpfsight: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Serve => rt.block_on(serve()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bpfsight: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let collector = Collector::start(CollectorConfig::default()).context("starting the eBPF collector")?;
    let server = BpfsightServer::new(collector.store().clone());
    let running = server.serve(rmcp::transport::stdio()).await.context("MCP handshake on stdio")?;
    tracing::info!("serving MCP on stdio");
    running.waiting().await.context("MCP session")?;
    drop(collector);
    Ok(())
}
