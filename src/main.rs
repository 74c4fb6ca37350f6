use clap::Parser;
use gateway::cli::{Cli, Command};
use std::process::ExitCode;

// A faster allocator: mapping is allocation-heavy (JSON trees in, JSON trees out).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => gateway::cli::serve::run_serve(args),
        Command::Migrate(args) => gateway::cli::serve::run_migrate(args),
        Command::Map(args) => gateway::cli::map::run(args),
        Command::Check(args) => gateway::cli::check::run(args),
        Command::EnsureList(args) => gateway::cli::check::run_ensure_list(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::from(2)
        }
    }
}
