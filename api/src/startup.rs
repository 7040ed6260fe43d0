//! Boot order for `gito-api serve`: migrate (on one dedicated connection), open the pool, start
//! the live fan-out, bind, then serve and process until shutdown. Split into `build` and `run` so tests can bind port 0 and learn it.

use std::net::SocketAddr;

use anyhow::Context as _;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ServeConfig;
use crate::http::{self, AppState, Limits, Live, TokenCache};
use crate::migrate::{self, Catalog};
use crate::processor::{self, ProcessorConfig};

pub struct Server {
    listener: TcpListener,
    app: axum::Router,
    pool: PgPool,
    processor: Option<ProcessorConfig>,
    /// Stops the live fan-out once serving has ended.
    background: CancellationToken,
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
        let processor = config
            .processor
            .then(|| config.mqtt.processor())
            .transpose()
            .context("GITO_MQTT_URL")?;
        let background = CancellationToken::new();
        let live = if config.live {
            let client_id = format!("gito-api-live-{}", Uuid::new_v4().simple());
            let options = processor::mqtt_options(&config.mqtt.mqtt_url, &client_id)
                .context("GITO_MQTT_URL")?;
            Some(Live::start(options, background.clone()))
        } else {
            None
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
        };
        let app = http::app(
            AppState {
                pool: pool.clone(),
                live,
                admin: config.admin_token.clone(),
                tokens: TokenCache::start(pool.clone(), background.clone()),
            },
            limits,
        );
        Ok(Server {
            listener,
            app,
            pool,
            processor,
            background,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves (and processes, unless disabled) until `shutdown`; then drains both.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "gito-api listening");
        let processor = self.processor.map(|config| {
            tokio::spawn(processor::run(config, self.pool.clone(), shutdown.clone()))
        });
        let served = http::serve(self.listener, self.app, shutdown.clone())
            .await
            .context("serving HTTP");
        self.background.cancel();
        if let Some(task) = processor {
            match task.await {
                Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "the processor failed"),
                Err(e) => tracing::error!(error = %e, "the processor task panicked"),
                Ok(Ok(())) => {}
            }
        }
        served
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
