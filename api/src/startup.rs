//! Boot order for `gito-api serve`: migrate (on one dedicated connection), open the pool, bind;
//! then serve HTTP, process telemetry, fan out live events, sweep device connectivity and listen
//! for token revocations as supervised tasks, until shutdown or until one of them ends (then the
//! process exits non-zero).
//! Split into `build` and `run` so tests can bind port 0 and learn it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gito_runtime::Supervisor;
use rumqttc::MqttOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgPool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{ServeConfig, StorageConfig};
use crate::db_error::DbError;
use crate::http::{self, AppState, Limits, Live, TokenCache, token_cache};
use crate::migrate::{self, Catalog};
use crate::partitions;
use crate::processor::{self, ProcessorConfig};
use crate::rollups;
use crate::status::{self, Health};
use crate::sweeper::{self, SweeperConfig};

pub struct Server {
    listener: TcpListener,
    app: axum::Router,
    pool: PgPool,
    processor: Option<ProcessorConfig>,
    live: Option<(Live, MqttOptions)>,
    sweeper: SweeperConfig,
    /// Partitions ahead and retention (the maintainer task).
    storage: StorageConfig,
    tokens: Arc<TokenCache>,
    health: Health,
    /// The token listener's own connection: named apart, so an operator can tell it.
    listener_options: PgConnectOptions,
}

/// `application_name` of the pool's connections (the token listener's add ` token-listener`,
/// the migration connection's ` migrate`), unless DATABASE_URL names one.
pub const APPLICATION_NAME: &str = "gito-api";

/// A pooled connection idle this long is pinged before a request gets it. sqlx already pings
/// every connection as it comes back to the pool, so one idle for less was found alive moments
/// ago; a ping on every acquire too was a third round trip per request (GET one device: 0.32×
/// of pgbench's rate with it, 0.35× without; bench/RESULTS.md). A connection that died in between
/// costs its request a 503 (`ApiError` from a transient database error) and is replaced.
const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// GITO_MIGRATION_DRIFT: a schema changed by hand is logged (`warn`) or stops the start
/// (`refuse`). `warn` checks in the background, so the replay never delays readiness, and only
/// one of several replicas booting together checks. A check that cannot run (e.g. no CREATEDB
/// privilege for its scratch database) is only logged, in both modes.
async fn drift_on_boot(
    url: &str,
    catalog: &Catalog,
    options: &migrate::RunOptions,
    mode: migrate::DriftMode,
) -> anyhow::Result<()> {
    match mode {
        migrate::DriftMode::Off => Ok(()),
        migrate::DriftMode::Refuse => {
            let report = migrate::check::check(url, catalog, options).await;
            report_drift(report.map(Some), true)
        }
        migrate::DriftMode::Warn => {
            let (url, catalog, options) = (url.to_owned(), catalog.clone(), *options);
            tokio::spawn(async move {
                let report = migrate::check::check_once(&url, &catalog, &options, true).await;
                let _ = report_drift(report, false);
            });
            Ok(())
        }
    }
}

fn report_drift(
    report: Result<Option<migrate::check::Report>, migrate::MigrateError>,
    refuse: bool,
) -> anyhow::Result<()> {
    match report {
        Ok(None) => {
            tracing::info!("another process is checking the schema for drift");
            Ok(())
        }
        Ok(Some(report)) if report.in_sync() => {
            tracing::info!(at = report.at, "schema matches the migrations");
            Ok(())
        }
        Ok(Some(report)) => {
            for line in &report.lines {
                tracing::warn!(difference = line, "schema drift");
            }
            let summary = format!(
                "schema drift: {} difference(s) from what the migrations produce, first: {}; \
                 `gito-api migrate check` prints each with the SQL that fixes it",
                report.lines.len(),
                report.lines[0]
            );
            if refuse {
                anyhow::bail!("{summary} (GITO_MIGRATION_DRIFT=refuse)");
            }
            tracing::warn!("{summary}");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not check the schema for drift");
            Ok(())
        }
    }
}

impl Server {
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Server> {
        gito_runtime::metrics::handle();
        crate::metrics::describe();
        let url = config.database.url.expose();
        let options = config.migration.options(config.migration_lock_wait);
        let catalog = Catalog::load(config.migration.runtime_dir.as_deref())
            .await
            .context("migrating on boot")?;
        if config.migrate_on_boot {
            migrate::up_with(url, &catalog, None, &options)
                .await
                .context("migrating on boot")?;
        }
        drift_on_boot(url, &catalog, &options, config.migration_drift).await?;
        let options = config
            .database
            .url
            .connect_options(APPLICATION_NAME)
            .map_err(DbError)
            .context("reading DATABASE_URL")?;
        // sqlx cannot enable TCP keepalive on its end, so no wait may be unbounded instead:
        // acquiring (connecting, or pinging an idle connection first) takes at most 5 s, a
        // request at most GITO_REQUEST_TIMEOUT_SECS, and the token listener has its heartbeat.
        let pool = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(DbError)
            .context("connecting to the database")?;
        let processor = config
            .processor
            .then(|| config.mqtt.processor(&config.storage));
        let live = config.live.then(|| {
            let client_id = format!("gito-api-live-{}", Uuid::new_v4().simple());
            let live = Live::new(config.ws_send_timeout);
            (live, config.mqtt.mqtt_url.options(&client_id))
        });
        let sweeper = SweeperConfig {
            offline_after: config.device_offline_after,
            mqtt: config
                .mqtt
                .mqtt_url
                .options(&format!("gito-api-sweeper-{}", Uuid::new_v4().simple())),
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
        };
        let tokens = Arc::new(TokenCache::default());
        let mut components = vec![status::DATABASE, status::ROLLUPS, status::TOKEN_LISTENER];
        if config.processor || config.live {
            components.push(status::BROKER);
        }
        if config.processor {
            components.push(status::PROCESSOR);
        }
        if config.live {
            components.push(status::LIVE);
        }
        let health = Health::new(&components);
        let app = http::app(
            AppState {
                pool: pool.clone(),
                live: live.as_ref().map(|(live, _)| live.clone()),
                admin: config.admin_token.clone(),
                tokens: tokens.clone(),
                health: health.clone(),
                retention_days: config.storage.retention_days,
            },
            limits,
        );
        Ok(Server {
            listener,
            app,
            pool,
            processor,
            live,
            sweeper,
            storage: config.storage.clone(),
            tokens,
            health,
            listener_options: config
                .database
                .url
                .connect_options(token_cache::APPLICATION_NAME)
                .map_err(DbError)
                .context("reading DATABASE_URL")?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves (and processes, unless disabled) until `shutdown`, then stops the tasks in order:
    /// HTTP first (in-flight requests finish), then the processor (its batch commits), the live
    /// fan-out, the connectivity sweeper, the partition maintainer, the token listener. An error if any task ended on its own.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr()?, "gito-api listening");
        let Server {
            listener,
            app,
            pool,
            processor,
            live,
            sweeper,
            storage,
            tokens,
            health,
            listener_options,
        } = self;
        let mut tasks = Supervisor::new();
        tasks.spawn("http", |stop| async move {
            http::serve(listener, app, stop)
                .await
                .context("serving HTTP")
        });
        // The broker as the processor sees it, else as the live fan-out does.
        let processing = processor.is_some();
        if let Some(config) = processor {
            let (pool, health) = (pool.clone(), health.clone());
            tasks.spawn("processor", |stop| {
                processor::run(config, pool, health, stop)
            });
        }
        if let Some((live, options)) = live {
            let health = health.clone();
            tasks.spawn("live", move |stop| {
                live.fan_out(options, health, !processing, stop)
            });
        }
        {
            let pool = pool.clone();
            tasks.spawn("sweeper", |stop| sweeper::run(sweeper, pool, stop));
        }
        {
            let pool = pool.clone();
            let lag = storage.rollup_lag;
            tasks.spawn("partitions", |stop| {
                partitions::run(storage, pool.clone(), stop)
            });
            let health = health.clone();
            tasks.spawn("rollups", move |stop| rollups::run(pool, lag, health, stop));
        }
        tasks.spawn("token_listener", |stop| {
            token_cache::listen(tokens, listener_options, pool, health, stop)
        });
        tasks.run(shutdown).await
    }
}
