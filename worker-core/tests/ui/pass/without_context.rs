use std::cell::Cell;

use worker_core::{handler, Handler, HandlerError, RetryPolicy};

#[derive(Debug, serde::Deserialize)]
struct UserSignedUp {
    email: String,
}

thread_local! {
    static SENT: Cell<usize> = const { Cell::new(0) };
}

#[handler(event = "UserSignedUp")]
async fn send_welcome_email(event: UserSignedUp) -> Result<(), HandlerError> {
    if event.email.is_empty() {
        return Err(HandlerError::poison("no e-mail address"));
    }
    SENT.with(|sent| sent.set(sent.get() + 1));
    Ok(())
}

fn main() {
    let spec = send_welcome_email.spec();
    assert_eq!(spec.name, "send-welcome-email");
    assert_eq!(spec.event_type, "UserSignedUp");
    assert!(!spec.dedup);
    assert_eq!(spec.retry, RetryPolicy::DEFAULT);
    assert_eq!(spec.concurrency, worker_core::transport::config::DEFAULT_CONCURRENCY);

    let ok = futures::executor::block_on(send_welcome_email::handle(UserSignedUp {
        email: "ada@example.com".into(),
    }));
    assert!(ok.is_ok());
    assert_eq!(SENT.with(Cell::get), 1);
    let err = futures::executor::block_on(send_welcome_email::handle(UserSignedUp {
        email: String::new(),
    }));
    assert!(err.unwrap_err().is_poison());
}
