//! Boot order for `gito-api serve`: migrate (on one dedicated connection), open the pool, bind,
//! serve until shutdown. Split into `build` and `run` so tests can bind port 0 and learn it.

use std::net::SocketAddr;

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::http::{self, AppState, Limits};
use crate::migrate::{self, Catalog};

pub struct Server {
    listener: TcpListener,
    app: axum::Router,
}

impl Server {
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Server> {
        let url = config.database.url.expose();
        if config.migrate_on_boot {
            migrate::up(url, Catalog::embedded(), None)
                .await
                .context("migrating on boot")?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .context("connecting to the database")?;
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
        };
        Ok(Server {
            listener,
            app: http::app(AppState { pool }, limits),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "gito-api listening");
        http::serve(self.listener, self.app, shutdown)
            .await
            .context("serving HTTP")
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}
