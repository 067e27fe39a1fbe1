//! The one shutdown token of a process, cancelled on SIGINT or SIGTERM.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled when the process receives SIGINT (Ctrl-C) or SIGTERM.
/// Must be called inside a Tokio runtime.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot listen for SIGTERM; Ctrl-C only");
                        let _ = ctrl_c.await;
                        trigger.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        trigger.cancel();
    });
    token
}
