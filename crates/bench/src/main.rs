//! `hotline-bench`: parses the command line, runs the scenario, sets the exit status
//! (0 correct, 2 lost / duplicated / out of order / unconfirmed, 1 error).

use std::process::ExitCode;

use clap::Parser;
use hotline_bench::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Libraries emit; in-process nodes log here, at --log (default warn).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.opts.log))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(hotline_bench::scenario::run(&cli)) {
        Ok(report) if report.ok => ExitCode::SUCCESS,
        Ok(report) => {
            let c = &report.counts;
            eprintln!(
                "FAIL: lost {}, duplicated {}, order violations {}, unconfirmed {}",
                c.lost, c.duplicated, c.order_violations, c.unconfirmed
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
