//! SIGHUP: the users file and the TLS certificate are read again (docs/security.md). A
//! thread of its own waits for the signal for the life of the process. The handler is
//! installed whatever the configuration: SIGHUP then reloads nothing, where its default would
//! end the process.

use std::sync::Arc;

use crate::auth::Auth;
use crate::tls::Tls;

/// Starts the thread that reloads `auth`'s users and `tls`'s files on each SIGHUP. What
/// does not read is logged, and what was loaded before stays in use.
pub fn reload_on_sighup(auth: Arc<Auth>, tls: Option<Arc<Tls>>) {
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot catch SIGHUP: users and certificates are read at start only");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("kvsd-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                match auth.reload() {
                    Ok(count) => tracing::info!(users = count, "SIGHUP: users file read again"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: the users file was not read; the users loaded before stay"),
                }
                if let Some(tls) = &tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate read again; new connections use it"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: the TLS files were not read; the certificate in use stays"),
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the SIGHUP thread");
    }
}
