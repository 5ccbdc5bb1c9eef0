//! `riskstream`: one binary, every service and tool as a subcommand, so one image serves every
//! compose service. Exit codes: 0 success, 2 bad usage or configuration (every error printed),
//! 1 runtime failure.

mod auth_cmd;
mod bench;
mod bench_decide;
mod bench_worker;
mod broker;
mod cli;
mod demo;
mod produce;
mod services;
mod setup;
mod topics_cmd;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the pipeline allocates many small, short-lived objects (JSON values, records,
/// futures); it measured faster than the system allocator in `bench ingest`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(setup::Failure::Usage(errors)) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            ExitCode::from(2)
        }
        Err(setup::Failure::Runtime(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
