//! The `kfr` binary: parse arguments, run the command, print any error chain, exit with the
//! documented code (0 ok, 1 the operation failed, 2 usage or configuration error).

// mimalloc: with glibc's allocator, malloc and free were about an eighth of the sync agent's CPU (HTTP
// requests, rows, log lines on several threads); with it the agent delivers ~20 % more events a
// second (docs/benchmarks.md, "Sync agent").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    kfr::cli::main()
}
