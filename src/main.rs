//! The `mesh` binary: parse the command line and hand it to [`mesh::cli::run`].
use clap::Parser;

fn main() {
    let cli = mesh::cli::Cli::parse();
    std::process::exit(mesh::cli::run(cli));
}
