use clap::Parser;

/// Errors are one line on stderr (`chatctl: what failed: why`), never a
/// backtrace: an operator reads them.
#[tokio::main]
async fn main() {
    match chatctl::run(chatctl::Cli::parse()).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("chatctl: {e:#}");
            std::process::exit(1);
        }
    }
}
