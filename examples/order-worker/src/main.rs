//! `cargo run -p order-worker [-- <subcommand>]`: consumes `OrderPlaced` from the `events`
//! exchange (`run`, the default), or inspects and replays its dead letters (`dlq ...`), or
//! publishes a demo burst (`demo`, `run --demo`). `--help` lists everything.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    order_worker::worker().run().await
}
