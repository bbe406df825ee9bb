//! `breakwater`: validate, compile and publish policy documents, run scenarios through the
//! compiled filter, serve the admin, package the filter for Istio and render Envoy or Istio
//! configuration. This file is the command tree; each command lives in `cmd/<command>.rs`.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "breakwater",
    version,
    about = "Resilience policies for Envoy: validate, compile, test, publish, serve the admin, package, render"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check policy documents; print every problem with its line. Exit 1 on errors.
    Validate(cmd::validate::Args),
    /// Print the JSON Schema of the policy language.
    Schema,
    /// Run scenario files: simulated traffic through the compiled filter (host-test), each
    /// expectation checked. Exit 1 when an expectation fails, 2 when a scenario cannot run.
    Test(cmd::test::Args),
    /// Print the JSON the filter receives as plugin configuration (defaults filled in, or left out
    /// with --compact). Several files are merged, policies in the order given.
    Compile(cmd::compile::Args),
    /// Validate and compile a policy, then write it as the next version of an ECDS resource file
    /// (atomically: Envoy applies it without a restart). Several files are merged in order.
    Publish(cmd::publish::Args),
    /// Run the admin server: the web admin and its JSON API (bearer token), the policy store with
    /// history, simulation, publishing to Envoy over ECDS and live stats.
    Serve(Box<cmd::serve::Args>),
    /// Print deployable configuration for policies: an Istio WasmPlugin or an Envoy bootstrap.
    #[command(subcommand)]
    Render(cmd::render::Render),
    /// Package the filter as an OCI image (the layout Istio's WasmPlugin pulls), optionally push it.
    Package(cmd::package::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate(args) => cmd::validate::run(args),
        Command::Schema => {
            cmd::emit(&breakwater_policy::schema::json_schema());
            ExitCode::SUCCESS
        }
        Command::Test(args) => cmd::test::run(args),
        Command::Compile(args) => cmd::compile::run(args),
        Command::Publish(args) => cmd::publish::run(args),
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Render(r) => cmd::render::run(r),
        Command::Package(args) => cmd::package::run(args),
    }
}
