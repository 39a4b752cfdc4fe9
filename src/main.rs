//! The `portvakt` command: `serve` (the default), `check`, `explain`, `export`, `report` and
//! `audit verify`, `catalogue`. The commands are in `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
