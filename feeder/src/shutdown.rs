//! Stopping on request: SIGTERM or SIGINT cancels a token that every long wait selects on.

use tokio_util::sync::CancellationToken;

/// Completes at SIGTERM or SIGINT.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// A token cancelled at SIGTERM or SIGINT, with `note` logged then. The handler is a task of
/// its own, so the signal is caught from now on, not only while something waits for it.
pub fn on_signal(note: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signal().await;
        if !note.is_empty() {
            tracing::info!("{note}");
        }
        cancel.cancel();
    });
    token
}

/// Sleeps for `delay`, unless stopped first; false when stopped.
pub async fn sleep(delay: std::time::Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
