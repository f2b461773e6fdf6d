//! The `kfr` binary: parse arguments, run the command, print any error chain, exit with the
//! documented code (0 ok, 1 the operation failed, 2 usage or configuration error).

fn main() -> std::process::ExitCode {
    kfr::cli::main()
}
