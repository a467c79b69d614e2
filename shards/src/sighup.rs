//! SIGHUP: the users file, the TLS certificate, and the peer links' certificate and cluster
//! secret are read again (docs/security.md). A
//! thread of its own waits for the signal for the life of the process. The handler is
//! installed whatever the configuration: SIGHUP then reloads nothing, where its default would
//! end the process.

use std::sync::Arc;

use crate::auth::Auth;
use crate::cluster::peer_security::PeerSecurity;
use crate::tls::Tls;

/// Starts the thread that reloads `auth`'s users, `tls`'s files and `peer`'s on each
/// SIGHUP. What does not read is logged, and what was loaded before stays in use.
pub fn reload_on_sighup(auth: Arc<Auth>, tls: Option<Arc<Tls>>, peer: Arc<PeerSecurity>) {
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
                if peer.is_configured() {
                    match peer.reload() {
                        Ok(()) => tracing::info!("SIGHUP: peer TLS files and cluster secret read again; new peer links use them"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: the peer TLS files or the cluster secret were not read; those in use stay"),
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the SIGHUP thread");
    }
}
