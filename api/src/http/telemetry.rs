//! Reading telemetry back: raw points newest first, per-bucket aggregates, latest per metric.

use std::collections::BTreeMap;

use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::{Json, Path, Query};
use crate::rollups::{self, Source};

const DEFAULT_POINTS: i64 = 1000;
const MAX_POINTS: i64 = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(query))
        .routes(routes!(latest))
}

/// `{tenant_id}` and `{device_id}` in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct DevicePath {
    /// The tenant's id.
    tenant_id: Uuid,
    /// The device's id.
    device_id: Uuid,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TelemetryQuery {
    /// Only this metric.
    metric: Option<String>,
    /// From this instant on (RFC 3339), inclusive.
    from: Option<String>,
    /// Before this instant (RFC 3339).
    to: Option<String>,
    /// Points (or buckets) at most, 1 to 10000 (default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
    /// `30s`, `1m`, `15m`, `1h`, `1d`, ...: aggregate per bucket instead of raw points.
    bucket: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct Point {
    #[serde(with = "time::serde::rfc3339")]
    ts: OffsetDateTime,
    metric: String,
    value: Value,
    flagged: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct Bucket {
    #[serde(with = "time::serde::rfc3339")]
    bucket: OffsetDateTime,
    metric: String,
    avg: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    /// Numeric values in the bucket.
    count: i64,
    /// The value with the earliest event time in the bucket.
    first: Option<f64>,
    /// The value with the latest event time in the bucket.
    last: Option<f64>,
}

/// What a telemetry query answers: raw points newest first, or buckets when `bucket` is given,
/// and where they came from (`raw` or the rollup that served the buckets).
#[derive(Debug, Serialize)]
struct Series {
    source: Source,
    items: Items,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Items {
    Points(Vec<Point>),
    Buckets(Vec<Bucket>),
}

/// Written by hand: derived, the two item shapes would be `oneOf`, which an empty page satisfies
/// twice (and so not at all).
impl PartialSchema for Series {
    fn schema() -> RefOr<Schema> {
        let item = AnyOfBuilder::new()
            .item(Ref::from_schema_name("Point"))
            .item(Ref::from_schema_name("Bucket"));
        ObjectBuilder::new()
            .property("source", Ref::from_schema_name("Source"))
            .required("source")
            .property("items", ArrayBuilder::new().items(item))
            .required("items")
            .into()
    }
}

impl ToSchema for Series {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("Point".to_owned(), Point::schema()));
        schemas.push(("Bucket".to_owned(), Bucket::schema()));
        schemas.push(("Source".to_owned(), Source::schema()));
    }
}

fn time_param(name: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .or_else(|e| match unescaped_plus(v) {
                    Some(fixed) => OffsetDateTime::parse(&fixed, &Rfc3339),
                    None => Err(e),
                })
                .map_err(|_| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!(
                            "{name} must be an RFC 3339 time such as 2026-12-02T15:25:00Z or 2026-12-02T15:25:00%2B01:00 (a \"+\" in a URL must be written %2B)"
                        ),
                    )
                })
        })
        .transpose()
}

/// `2026-12-02T15:25:00 01:00` is `...+01:00` whose `+` a URL turned into a space: a space can
/// stand nowhere else in an RFC 3339 time after its `T`, so reading it back is unambiguous.
fn unescaped_plus(value: &str) -> Option<String> {
    let split = value.len().checked_sub(6)?;
    let (time, offset) = value.split_at_checked(split)?;
    let digits = offset.strip_prefix(' ')?;
    let is_offset = digits.len() == 5
        && digits.as_bytes()[2] == b':'
        && digits
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 2 || b.is_ascii_digit());
    (is_offset && time.contains('T') && !time.contains(' ')).then(|| format!("{time}+{digits}"))
}

/// `90s`, `5m`, `1h`, `1d` in seconds.
fn bucket_secs(text: &str) -> Result<i64, ApiError> {
    let invalid =
        || ApiError::bad_request("invalid_query", "bucket must look like 30s, 5m, 1h or 1d");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let n: u32 = number.parse().map_err(|_| invalid())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(invalid()),
    };
    if n == 0 || u64::from(n) * unit_secs > 366 * 86_400 {
        return Err(invalid());
    }
    Ok((u64::from(n) * unit_secs) as i64)
}

/// 404 unless the device exists and is the tenant's.
pub(super) async fn ensure_device(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    device_id: Uuid,
) -> Result<(), ApiError> {
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM devices WHERE tenant_id = $1 AND id = $2) AS "exists!""#,
        tenant_id,
        device_id
    )
    .fetch_one(db)
    .await?;
    if exists {
        Ok(())
    } else {
        Err(ApiError::NotFound("device"))
    }
}

/// Query a device's telemetry
///
/// Without `bucket`: raw points `{ts, metric, value, flagged}`, newest first, at most `limit`
/// (1–10000, default 1000). With `bucket` (`30s`, `5m`, `1h`, `1d`, at most 366 days): one
/// `{bucket, metric, avg, min, max, count, first, last}` per bucket and metric over numeric
/// values, newest first, served from the coarsest rollup that answers exactly (its width divides
/// the bucket, `from` and `to` lie on its edges, its backfill has passed the device) up to where
/// the rollup follower stands for the device, and from raw rows after that or when no rollup
/// answers; `source` says which rollup served (`1m`, `1h`, `1d`), else `raw`. There is no
/// cursor: narrow the window with `from` (inclusive) and `to` (exclusive), RFC 3339 times (write
/// an offset's `+` as `%2B`). A malformed time, bucket or limit is 400; a device that is not the
/// tenant's is 404.
#[utoipa::path(get, path = "/tenants/{tenant_id}/devices/{device_id}/telemetry", tag = "telemetry", params(DevicePath, TelemetryQuery),
    responses((status = 200, description = "Points newest first, or buckets newest first", body = Series)))]
async fn query(
    State(state): State<AppState>,
    Path((tenant_id, device_id)): Path<(Uuid, Uuid)>,
    Query(q): Query<TelemetryQuery>,
) -> Result<Json<Series>, ApiError> {
    let from = time_param("from", q.from.as_deref())?;
    let to = time_param("to", q.to.as_deref())?;
    let limit = match q.limit.unwrap_or(DEFAULT_POINTS) {
        n @ 1..=MAX_POINTS => n,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit must be between 1 and {MAX_POINTS}"),
            ));
        }
    };
    let bucket = q.bucket.as_deref().map(bucket_secs).transpose()?;
    // One connection for the request's few statements: one pool round instead of one each.
    let mut conn = state.pool.acquire().await?;
    if let Some(secs) = bucket {
        let range = Range {
            device_id,
            metric: q.metric,
            from,
            to,
            limit,
        };
        let source = Source::for_buckets(secs, from, to);
        // Edges come only for the tenant's device; without them, the check says why.
        let edges = match source {
            Source::Raw => None,
            _ => rollups::edges(&mut conn, tenant_id, device_id).await?,
        };
        if edges.is_none() {
            ensure_device(&mut *conn, tenant_id, device_id).await?;
        }
        let (source, items) = match edges {
            Some(edges) if source.secs() == Some(secs) => (
                source,
                same_width_buckets(&mut conn, source, edges, &range).await?,
            ),
            Some(edges) => (
                source,
                rollup_buckets(&mut conn, secs, source, edges, &range).await?,
            ),
            None => (Source::Raw, raw_buckets(&mut conn, secs, &range).await?),
        };
        return Ok(Json(Series {
            source,
            items: Items::Buckets(items),
        }));
    }
    ensure_device(&mut *conn, tenant_id, device_id).await?;
    let rows = sqlx::query!(
        "SELECT ts, metric, value, value_json, flagged FROM telemetry
         WHERE device_id = $1 AND ($2::text IS NULL OR metric = $2)
           AND ($3::timestamptz IS NULL OR ts >= $3) AND ($4::timestamptz IS NULL OR ts < $4)
         ORDER BY ts DESC, metric LIMIT $5",
        device_id,
        q.metric,
        from,
        to,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    let items = rows
        .into_iter()
        .map(|r| Point {
            ts: r.ts,
            metric: r.metric,
            value: stored_value(r.value, r.value_json),
            flagged: r.flagged,
        })
        .collect();
    Ok(Json(Series {
        source: Source::Raw,
        items: Items::Points(items),
    }))
}

/// What a bucketed query reads.
struct Range {
    device_id: Uuid,
    metric: Option<String>,
    from: Option<OffsetDateTime>,
    to: Option<OffsetDateTime>,
    limit: i64,
}

/// Buckets of `secs` computed from raw rows (numeric values only, as the rollups hold).
async fn raw_buckets(
    conn: &mut PgConnection,
    secs: i64,
    r: &Range,
) -> Result<Vec<Bucket>, sqlx::Error> {
    sqlx::query_as!(
        Bucket,
        r#"SELECT date_bin(make_interval(secs => $2), ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS "bucket!",
                  metric, avg(value) AS avg, min(value) AS min, max(value) AS max, count(*) AS "count!",
                  (min(first_last_key(ts, date_bin(make_interval(secs => $2), ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2] AS first,
                  (max(first_last_key(ts, date_bin(make_interval(secs => $2), ts, TIMESTAMPTZ '2000-01-01 00:00:00+00'), value)))[2] AS last
           FROM telemetry
           WHERE device_id = $1 AND value IS NOT NULL AND ($3::text IS NULL OR metric = $3)
             AND ($4::timestamptz IS NULL OR ts >= $4) AND ($5::timestamptz IS NULL OR ts < $5)
           GROUP BY 1, 2 ORDER BY 1 DESC, 2 LIMIT $6"#,
        r.device_id,
        secs as f64,
        r.metric,
        r.from,
        r.to,
        r.limit
    )
    .fetch_all(conn)
    .await
}

/// Buckets of `secs` combined from the rollup `source` (whose width divides `secs` and on whose
/// edges `from` and `to` lie, `Source::for_buckets`) before the device's `edges`, and from finer
/// pieces after them: hours up to the hour edge, minutes up to the minute edge, raw rows from
/// there on. The pieces are disjoint and cover the range, so the numbers are raw rows' numbers.
async fn rollup_buckets(
    conn: &mut PgConnection,
    secs: i64,
    source: Source,
    edges: rollups::Edges,
    r: &Range,
) -> Result<Vec<Bucket>, sqlx::Error> {
    sqlx::query_as!(
        Bucket,
        r#"SELECT date_bin(make_interval(secs => $2), bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS "bucket!",
                  metric AS "metric!", sum(sum) / sum(count)::float8 AS avg, min(min) AS min, max(max) AS max,
                  sum(count)::bigint AS "count!",
                  (min(first_last_key(first_ts, date_bin(make_interval(secs => $2), bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), first)))[2] AS first,
                  (max(first_last_key(last_ts, date_bin(make_interval(secs => $2), bucket, TIMESTAMPTZ '2000-01-01 00:00:00+00'), last)))[2] AS last
           FROM (SELECT metric, bucket, count, min, max, sum, first, first_ts, last, last_ts
                 FROM telemetry_rollup_1d WHERE $7 = '1d' AND device_id = $1 AND bucket < $8
                 UNION ALL
                 SELECT metric, bucket, count, min, max, sum, first, first_ts, last, last_ts
                 FROM telemetry_rollup_1h WHERE $7 IN ('1d', '1h') AND device_id = $1
                   AND ($7 = '1h' OR bucket >= $8) AND bucket < $9
                 UNION ALL
                 SELECT metric, bucket, count, min, max, sum, first, first_ts, last, last_ts
                 FROM telemetry_rollup_1m WHERE device_id = $1 AND ($7 = '1m' OR bucket >= $9) AND bucket < $10
                 UNION ALL
                 SELECT metric, ts, 1, value, value, value, value, ts, value, ts
                 FROM telemetry WHERE device_id = $1 AND value IS NOT NULL AND ts >= $10) r
           WHERE ($3::text IS NULL OR metric = $3)
             AND ($4::timestamptz IS NULL OR bucket >= $4) AND ($5::timestamptz IS NULL OR bucket < $5)
           GROUP BY 1, 2 ORDER BY 1 DESC, 2 LIMIT $6"#,
        r.device_id,
        secs as f64,
        r.metric,
        r.from,
        r.to,
        r.limit,
        source.as_str(),
        edges.day,
        edges.hour,
        edges.minute
    )
    .fetch_all(conn)
    .await
}

/// Fetches the rows of one rollup table before `before`, newest first, each as one bucket: the
/// same statement for every table, checked at compile time for each.
macro_rules! same_width {
    ($table:literal, $conn:expr, $r:expr, $before:expr, $left:expr) => {
        sqlx::query_as!(
            Bucket,
            r#"SELECT bucket AS "bucket!", metric AS "metric!", sum / count::float8 AS "avg?",
                      min AS "min?", max AS "max?", count AS "count!", first AS "first?", last AS "last?"
               FROM "# + $table + r#"
               WHERE device_id = $1 AND ($2::text IS NULL OR metric = $2)
                 AND ($3::timestamptz IS NULL OR bucket >= $3) AND bucket < $4
               ORDER BY bucket DESC, metric LIMIT $5"#,
            $r.device_id,
            $r.metric,
            $r.from,
            $before,
            $left
        )
        .fetch_all(&mut *$conn)
        .await
    };
}

/// Buckets as wide as the rollup `source`'s: before its edge each of its rows is one bucket, read
/// as it is (a month of hours is an index-only range scan, no regrouping); after the edge, the
/// next finer source combines the rest (`rollup_buckets`, or raw rows under minutes). The edge
/// lies on the source's bucket edges, so no bucket has parts on both sides.
async fn same_width_buckets(
    conn: &mut PgConnection,
    source: Source,
    edges: rollups::Edges,
    r: &Range,
) -> Result<Vec<Bucket>, sqlx::Error> {
    let secs = source.secs().expect("a rollup");
    let edge = edges.of(source).expect("a rollup");
    let mut items = Vec::new();
    if r.to.is_none_or(|to| to > edge) {
        let after = Range {
            from: Some(r.from.map_or(edge, |from| from.max(edge))),
            metric: r.metric.clone(),
            ..*r
        };
        items = match source.finer() {
            Source::Raw => raw_buckets(conn, secs, &after).await?,
            finer => rollup_buckets(conn, secs, finer, edges, &after).await?,
        };
    }
    let left = r.limit - items.len() as i64;
    if left > 0 {
        let before = r.to.map_or(edge, |to| to.min(edge));
        // A statement per table: one that chose its table by a parameter (`UNION ALL` of the
        // three, two of them switched off) took 0.17–1.6 ms to plan and 0.57–0.84 ms to run a
        // month of hours, the table's own 0.09–0.15 and 0.26–0.38 ms (bench/RESULTS.md).
        let rows = match source {
            Source::Day => same_width!("telemetry_rollup_1d", conn, r, before, left),
            Source::Hour => same_width!("telemetry_rollup_1h", conn, r, before, left),
            Source::Minute => same_width!("telemetry_rollup_1m", conn, r, before, left),
            Source::Raw => unreachable!("same-width buckets come from a rollup"),
        };
        items.extend(rows?);
    }
    Ok(items)
}

/// Booleans and text keep their JSON form; numbers are in `value`.
fn stored_value(value: Option<f64>, json: Option<Value>) -> Value {
    json.unwrap_or_else(|| value.map_or(Value::Null, Value::from))
}

#[derive(Debug, Serialize, ToSchema)]
struct Latest {
    #[serde(with = "time::serde::rfc3339")]
    ts: OffsetDateTime,
    value: Value,
    flagged: bool,
}

/// Read a device's latest value of each metric
///
/// Answers `{"METRIC": {"ts", "value", "flagged"}, ...}`: the newest value of every metric the
/// device has reported, or `{}` before its first. A device that is not the tenant's is 404.
#[utoipa::path(get, path = "/tenants/{tenant_id}/devices/{device_id}/latest", tag = "telemetry", params(DevicePath),
    responses((status = 200, description = "The newest value of each metric, by metric name", body = BTreeMap<String, Latest>)))]
async fn latest(
    State(state): State<AppState>,
    Path((tenant_id, device_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<BTreeMap<String, Latest>>, ApiError> {
    ensure_device(&state.pool, tenant_id, device_id).await?;
    let rows = sqlx::query!(
        "SELECT DISTINCT ON (metric) metric, ts, value, value_json, flagged
         FROM telemetry WHERE device_id = $1 ORDER BY metric, ts DESC",
        device_id
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| {
                (
                    r.metric,
                    Latest {
                        ts: r.ts,
                        value: stored_value(r.value, r.value_json),
                        flagged: r.flagged,
                    },
                )
            })
            .collect(),
    ))
}
