use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let code = chatctl::run(chatctl::Cli::parse()).await?;
    std::process::exit(code);
}
