//! An axum server on 127.0.0.1 that can be stopped gracefully.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::DemoError;

/// How long a server may take to finish its open requests once asked to
/// stop; the upstream's slowest answer takes 800 ms.
const GRACE: Duration = Duration::from_secs(5);

/// A running server.
#[derive(Debug)]
pub(crate) struct Server {
    role: &'static str,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds a port chosen by the OS on 127.0.0.1 and serves `app` there.
    pub(crate) async fn start(role: &'static str, app: Router) -> Result<Self, DemoError> {
        let bind = |source| DemoError::Bind { role, source };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender stops the server too.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            role,
            addr,
            stop,
            task,
        })
    }

    /// Where the server listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish (within a grace period)
    /// and waits for the server to end.
    pub(crate) async fn shutdown(self) -> Result<(), DemoError> {
        let role = self.role;
        // The server may have ended already; its result tells.
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(GRACE, &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(source))) => Err(DemoError::Serve { role, source }),
            Ok(Err(join)) => Err(DemoError::Serve {
                role,
                source: std::io::Error::other(join.to_string()),
            }),
            Err(_) => {
                task.abort();
                Err(DemoError::Shutdown { role })
            }
        }
    }
}
