//! Keyset pagination shared by every list route. Ids are UUIDv7, so ordering by id is creation
//! order and the last id of a page is the cursor of the next: stable under concurrent inserts,
//! no OFFSET scans.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    /// The validated page size.
    pub fn limit(&self) -> Result<i64, ApiError> {
        limit(self.limit)
    }

    /// The id after which the page starts.
    pub fn after(&self) -> Result<Option<Uuid>, ApiError> {
        cursor(self.cursor.as_deref())
    }
}

pub fn limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

pub fn cursor(cursor: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    cursor
        .map(|c| {
            Uuid::try_parse(c).map_err(|_| {
                ApiError::bad_request("invalid_query", "cursor is not one this API returned")
            })
        })
        .transpose()
}

/// Something listed by id.
pub trait Keyed {
    fn key(&self) -> Uuid;
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

impl<T: Keyed> Page<T> {
    /// `rows` were fetched with `limit + 1`: the extra row only says that another page exists.
    pub fn from_rows(mut rows: Vec<T>, limit: i64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = more
            .then(|| rows.last().map(|r| r.key().to_string()))
            .flatten();
        Page {
            items: rows,
            next_cursor,
        }
    }
}
