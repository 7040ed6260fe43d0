//! Boot: process start → `/ready` 200 for gito-api, on an empty database (every migration) and
//! on an up-to-date one, beside `alembic upgrade head` running the same migrations' SQL on the
//! same server (Alembic and psycopg2 installed into a throwaway venv by this bench).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gito_testkit::{TestDb, free_port};
use tokio::process::Command;

use crate::procs::binary;
use crate::stack::wait_http_ok;

pub struct BootResult {
    pub runs: usize,
    pub empty_ms: f64,
    pub up_to_date_ms: f64,
    pub alembic_ms: f64,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Milliseconds from spawning gito-api to `/ready` answering 200.
async fn boot_once(db_url: &str) -> anyhow::Result<f64> {
    let addr = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let mut child = Command::new(binary("gito-api")?)
        .env("DATABASE_URL", db_url)
        .env("GITO_ADMIN_TOKEN", gito_testkit::ADMIN_TOKEN)
        .env("GITO_API_ADDR", &addr)
        .env("GITO_PROCESSOR", "off")
        .env("GITO_LIVE", "off")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    wait_http_ok(&format!("http://{addr}/ready"), Duration::from_secs(30)).await?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    child.kill().await?;
    Ok(elapsed)
}

pub async fn run(runs: usize) -> anyhow::Result<BootResult> {
    let mut empty = Vec::new();
    let mut up_to_date = Vec::new();
    for _ in 0..runs {
        let db = TestDb::empty().await;
        empty.push(boot_once(&db.url).await?);
        up_to_date.push(boot_once(&db.url).await?);
    }
    let alembic = Alembic::prepare().await?;
    let mut alembic_runs = Vec::new();
    for _ in 0..runs {
        let db = TestDb::empty().await;
        alembic_runs.push(alembic.upgrade_head(&db.url).await?);
    }
    Ok(BootResult {
        runs,
        empty_ms: median(empty),
        up_to_date_ms: median(up_to_date),
        alembic_ms: median(alembic_runs),
    })
}

/// An Alembic project whose revisions execute gito's migration files.
struct Alembic {
    dir: PathBuf,
    python_bin: PathBuf,
}

impl Drop for Alembic {
    /// The generated project is the run's own: every bench run (and CI's smoke run) left one.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Alembic {
    async fn prepare() -> anyhow::Result<Alembic> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let venv = root.join("target/bench-alembic-venv");
        if !venv.join("bin/alembic").exists() {
            run_ok(Command::new("python3").args(["-m", "venv"]).arg(&venv)).await?;
            run_ok(Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                "alembic",
                "psycopg2-binary",
            ]))
            .await?;
        }
        let dir = std::env::temp_dir().join(format!(
            "gito-bench-alembic-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(dir.join("versions"))?;
        std::fs::write(dir.join("alembic.ini"), "[alembic]\nscript_location = .\n")?;
        std::fs::write(
            dir.join("env.py"),
            "import os\nfrom alembic import context\nfrom sqlalchemy import create_engine\n\
             engine = create_engine(os.environ['ALEMBIC_URL'])\n\
             with engine.connect() as connection:\n    context.configure(connection=connection)\n    with context.begin_transaction():\n        context.run_migrations()\n",
        )?;
        std::fs::write(dir.join("script.py.mako"), "")?;
        let mut previous = "None".to_owned();
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("migrations"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".up.sql"))
            .collect();
        files.sort();
        for file in files {
            let stem = file
                .file_name()
                .and_then(|n| n.to_str())
                .context("name")?
                .trim_end_matches(".up.sql")
                .to_owned();
            let revision = stem[..3].to_owned();
            let sql = std::fs::read_to_string(&file)?;
            // A `-- gito: no-transaction` migration runs statement by statement outside a
            // transaction (CREATE INDEX CONCURRENTLY refuses one), as gito's runner does it:
            // alembic's `autocommit_block`, the statements split by gito's own parser.
            let upgrade = if sql.starts_with("-- gito: no-transaction") {
                let statements: Vec<String> = gito_api::migrate::sql::parse(&sql)
                    .statements
                    .into_iter()
                    .map(|s| s.text)
                    .collect();
                let listed = dir.join("versions").join(format!("{stem}.json"));
                std::fs::write(&listed, serde_json::to_string(&statements)?)?;
                format!(
                    "    import json\n    with op.get_context().autocommit_block():\n        \
                     for statement in json.load(open({listed:?})):\n            \
                     op.get_bind().connection.cursor().execute(statement)\n",
                    listed = listed.display().to_string()
                )
            } else {
                format!(
                    "    op.get_bind().connection.cursor().execute(open({path:?}).read())\n",
                    path = file.canonicalize()?.display().to_string()
                )
            };
            std::fs::write(
                dir.join("versions").join(format!("{stem}.py")),
                format!(
                    "from alembic import op\nrevision = '{revision}'\ndown_revision = {previous}\nbranch_labels = None\ndepends_on = None\n\n\
                     def upgrade():\n{upgrade}\n\
                     def downgrade():\n    pass\n"
                ),
            )?;
            previous = format!("'{revision}'");
        }
        Ok(Alembic {
            dir,
            python_bin: venv.join("bin"),
        })
    }

    async fn upgrade_head(&self, db_url: &str) -> anyhow::Result<f64> {
        let url = db_url.replacen("postgres://", "postgresql+psycopg2://", 1);
        let started = Instant::now();
        run_ok(
            Command::new(self.python_bin.join("alembic"))
                .arg("upgrade")
                .arg("head")
                .current_dir(&self.dir)
                .env("ALEMBIC_URL", url),
        )
        .await?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

async fn run_ok(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

impl BootResult {
    pub fn rows(&self) -> Vec<crate::Row> {
        use crate::Row;
        let reference = format!("alembic upgrade head {:.0} ms", self.alembic_ms);
        vec![
            Row::new(
                format!(
                    "boot to /ready, empty database (all migrations), median of {}",
                    self.runs
                ),
                format!("{:.0} ms", self.empty_ms),
            )
            .against(reference.clone(), self.empty_ms / self.alembic_ms),
            Row::new(
                format!(
                    "boot to /ready, up-to-date database, median of {}",
                    self.runs
                ),
                format!("{:.0} ms", self.up_to_date_ms),
            )
            .against(reference, self.up_to_date_ms / self.alembic_ms),
        ]
    }
}
