//! `publish`: one test event, published as a producer would (see [`crate::produce`]).

use std::io::Read;
use std::sync::Arc;

use worker_core::transport::message::{HeaderValue, Headers};
use worker_core::transport::trace_context::new_trace_id;

use super::args::PublishArgs;
use super::format::Colour;
use super::{CliError, Console, Setup};
use crate::publisher::{PublishError, Publisher};

/// Publishes the event `args` describe and prints its id and trace id.
pub(super) async fn run(
    setup: &Setup,
    args: PublishArgs,
    console: &mut Console,
) -> Result<u8, CliError> {
    let body = match args.body.as_deref() {
        None | Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("cannot read the body from stdin: {e}")))?;
            text
        }
        Some(body) => body.to_owned(),
    };
    if !args.raw {
        if let Err(error) = serde_json::from_str::<serde_json::Value>(&body) {
            return Err(CliError::Usage(format!(
                "the body is not JSON ({error}); pass --raw to publish it anyway (its handlers dead-letter it as poison)"
            )));
        }
    }
    let mut headers = Headers::new();
    for header in &args.headers {
        let Some((name, value)) = header.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--header {header:?}: expected NAME=VALUE"
            )));
        };
        headers.insert(name.trim().to_owned(), HeaderValue::string(value));
    }
    let event_id = args
        .id
        .unwrap_or_else(|| format!("evt_{}", &new_trace_id()[..16]));
    let connection = Arc::new(super::inspect::open(setup).await?);
    // The exchange, so that an event no queue is bound for is returned (and reported as such)
    // rather than refused as addressed to a missing exchange.
    let channel = connection
        .create_channel()
        .await
        .map_err(crate::error::WorkerError::broker("open a channel"))?;
    crate::topology::declare_exchange(&channel, &setup.broker).await?;
    let _ = channel.close(200, "declared".into()).await;
    let publisher = Publisher::new(Arc::clone(&connection));
    let exchange = &setup.broker.exchange;
    let published = crate::produce::publish_event(
        &publisher,
        exchange,
        &args.event_type,
        &event_id,
        body.into_bytes(),
        headers,
    )
    .await;
    publisher.close().await;
    let _ = connection.close(200, "published".into()).await;
    let trace_id = match published {
        Ok(trace_id) => trace_id,
        Err(PublishError::Returned { .. }) => {
            return Err(CliError::Unroutable {
                event_type: args.event_type,
                exchange: exchange.clone(),
            })
        }
        Err(error) => return Err(CliError::Publish(error)),
    };
    if args.json {
        console.line(
            serde_json::json!({
                "eventType": args.event_type,
                "eventId": event_id,
                "traceId": trace_id,
                "exchange": exchange,
            })
            .to_string(),
        );
    } else {
        console.styled(&[
            ("published ", Colour::Plain),
            (&args.event_type, Colour::Bold),
            (
                &format!(" {event_id} to `{exchange}` (trace {trace_id})"),
                Colour::Plain,
            ),
        ]);
    }
    Ok(0)
}
