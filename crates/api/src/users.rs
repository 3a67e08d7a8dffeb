//! `/api/v1/users`: the org chart escalations walk (`manager_id`), listed, read and upserted
//! one at a time with the manager chain kept acyclic.

use axum::extract::State;
use axum::{Extension, Json};
use escalator_store::{StoreError, User};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::Scope;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::workflows::{MAX_LIMIT, page_limit};

/// Longest manager chain walked when checking for a cycle; deeper charts are refused.
const MAX_CHAIN: usize = 64;

/// A user as the api shows and takes it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    /// Stable id, referenced by workflows and policies.
    pub id: String,
    /// Name shown in messages.
    pub display_name: String,
    /// Email address, if the user takes email.
    pub email: Option<String>,
    /// Phone number, if any.
    pub phone: Option<String>,
    /// Slack member id or handle, if any.
    pub slack: Option<String>,
    /// Who "manager" targets escalate to.
    pub manager_id: Option<String>,
    /// Inactive users receive nothing.
    pub active: bool,
    /// The channels besides in-app this user is reached on; null: the policy's, else email.
    pub channels: Option<Vec<String>>,
    /// On a `PUT` only: a chosen channel the user has no address for, on which nothing will
    /// reach them. The user is stored all the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl UserView {
    /// The view a token of `scope` gets: a read token sees a user's own Slack webhook as its
    /// host alone (its path is the credential that posts to their channel; dashboards and
    /// exporters hold read tokens). An admin sees it whole: `PUT` replaces the record, so what
    /// an admin reads is what it writes back.
    fn seen_by(mut self, scope: Scope) -> Self {
        if scope < Scope::Admin {
            self.slack = self
                .slack
                .map(|s| escalator_runtime::config::host_only(&s).into_owned());
        }
        self
    }
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            display_name: u.display_name,
            email: u.email,
            phone: u.phone,
            slack: u.slack,
            manager_id: u.manager_id,
            active: u.active,
            channels: u.channels,
            warnings: Vec::new(),
        }
    }
}

/// The channels a user chose but has no address for: SMS needs a `phone`, Slack a `slack`,
/// email an `email` (webhooks need none). Such a user got nothing on them, and the `PUT`
/// that set them up answered 200 as if all were well.
fn unreachable_channels(u: &User) -> Vec<String> {
    let Some(channels) = &u.channels else {
        return Vec::new();
    };
    channels
        .iter()
        .filter_map(|c| {
            let (has, field) = match c.as_str() {
                "email" => (u.email.is_some(), "email"),
                "sms" => (u.phone.is_some(), "phone"),
                "slack" => (u.slack.is_some(), "slack"),
                _ => return None,
            };
            (!has).then(|| {
                format!(
                    "channels names {c:?} but the user has no {field}: nothing reaches them on \
                     {c} (in-app notifications still do)"
                )
            })
        })
        .collect()
}

/// The query of `GET /api/v1/users`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsersQuery {
    /// Only users with an id after this one (`next_after` of the previous page).
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of users, by id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Users {
    /// Ordered by id.
    pub items: Vec<UserView>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/users", operation_id = "list_users", tag = "users",
    params(UsersQuery),
    responses(
        (status = 200, description = "a page of users by id", body = Users),
        (status = 400, description = "bad query parameter", body = ErrorBody),
    ))]
/// `GET /api/v1/users?after=&limit=`.
pub async fn list(
    State(s): State<AppState>,
    Extension(scope): Extension<Scope>,
    QueryParams(q): QueryParams<UsersQuery>,
) -> ApiResult<Json<Users>> {
    let limit = page_limit(q.limit, MAX_LIMIT)?;
    let users = s.store.list_users(q.after.as_deref(), limit).await?;
    let next_after = (users.len() == limit as usize)
        .then(|| users.last().map(|u| u.id.clone()))
        .flatten();
    Ok(Json(Users {
        items: users
            .into_iter()
            .map(|u| UserView::from(u).seen_by(scope))
            .collect(),
        next_after,
    }))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", operation_id = "get_user", tag = "users",
    params(("id" = String, Path, description = "user id")),
    responses(
        (status = 200, description = "the user", body = UserView),
        (status = 404, description = "unknown user", body = ErrorBody),
    ))]
/// `GET /api/v1/users/{id}`.
pub async fn get(
    State(s): State<AppState>,
    Extension(scope): Extension<Scope>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<UserView>> {
    crate::extract::path_id(&id)?;
    Ok(Json(
        UserView::from(s.store.get_user(&id).await?).seen_by(scope),
    ))
}

/// The body of `PUT /api/v1/users/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUser {
    /// Name shown in messages.
    pub display_name: String,
    /// Email address.
    pub email: Option<String>,
    /// Phone number for SMS: an optional `+`, then 7 to 15 digits (spaces, dots, dashes and
    /// parentheses allowed between them), at most 32 characters.
    pub phone: Option<String>,
    /// Slack member id or handle (letters, digits, `.`, `_`, `-`), or the `https://` URL of the
    /// user's own incoming webhook (workers send only to `ESCALATOR_SLACK_USER_WEBHOOKS`).
    pub slack: Option<String>,
    /// An existing user; the chain of managers must not lead back to this user.
    pub manager_id: Option<String>,
    /// Default true.
    pub active: Option<bool>,
    /// Channels besides in-app, from `email`, `sms`, `slack`, `webhook`, each once (`[]`:
    /// in-app only). Omitted: the stored choice is kept; null: back to the default (the
    /// policy's, else email).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub channels: Option<Option<Vec<String>>>,
}

/// A field that may be absent (None), null (Some(None)) or given (Some(Some)).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Refuses a manager that does not exist or whose chain reaches `id` (a cycle would make
/// "escalate to the manager" go round for ever).
async fn check_manager(s: &AppState, id: &str, manager: &str) -> ApiResult<()> {
    let mut current = manager.to_owned();
    for _ in 0..MAX_CHAIN {
        if current == id {
            return Err(ApiError::invalid(
                "manager_id",
                format!("{manager:?} reports to {id:?}: the manager chain would be circular"),
            ));
        }
        let user = match s.store.get_user(&current).await {
            Ok(u) => u,
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::invalid(
                    "manager_id",
                    format!("user {current:?} not found"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        match user.manager_id {
            Some(next) => current = next,
            None => return Ok(()),
        }
    }
    Err(ApiError::invalid(
        "manager_id",
        format!("the manager chain above {manager:?} is deeper than {MAX_CHAIN}"),
    ))
}

#[utoipa::path(put, path = "/api/v1/users/{id}", operation_id = "put_user", tag = "users",
    params(("id" = String, Path, description = "user id")),
    request_body = PutUser,
    responses(
        (status = 200, description = "created or replaced", body = UserView),
        (status = 422, description = "invalid field, unknown or circular manager", body = ErrorBody),
    ))]
/// `PUT /api/v1/users/{id}`: creates or replaces a user. Omitted `email`, `phone`, `slack` and
/// `manager_id` are removed, as in any replacement; omitted `channels` are kept.
pub async fn put(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<PutUser>,
) -> ApiResult<Json<UserView>> {
    crate::extract::path_id(&id)?;
    // a new user takes an id without surrounding whitespace; one stored before the rule can
    // still be changed and deactivated
    if let Err(e) = escalator_store::logic::check_new_id("id", &id) {
        match s.store.get_user(&id).await {
            Err(StoreError::NotFound { .. }) => return Err(ApiError::bad_request_from(e)),
            found => drop(found?),
        }
    }
    if let Some(manager) = &body.manager_id {
        escalator_store::logic::check_id("manager_id", manager)?;
    }
    if body.display_name.trim().is_empty() {
        return Err(ApiError::invalid("display_name", "must not be empty"));
    }
    if let Some(email) = &body.email {
        escalator_store::logic::check_email("email", email)?;
    }
    if let Some(slack) = &body.slack {
        escalator_store::logic::check_slack("slack", slack)?;
    }
    if let Some(phone) = &body.phone {
        escalator_store::logic::check_phone("phone", phone)?;
    }
    if let Some(Some(channels)) = &body.channels {
        escalator_policy::check_channels("channels", channels)
            .map_err(|e| ApiError::invalid(e.field, e.message))?;
    }
    if let Some(manager) = &body.manager_id {
        check_manager(&s, &id, manager).await?;
    }
    let user = User {
        id,
        display_name: body.display_name,
        email: body.email,
        phone: body.phone,
        slack: body.slack,
        manager_id: body.manager_id,
        active: body.active.unwrap_or(true),
        channels: body.channels.clone().flatten(),
    };
    // null: the choice is dropped (an omitted list keeps it; null used to keep it too, and the
    // default could never be had back), in the write itself
    let no_channels = match body.channels {
        Some(None) => escalator_store::NoChannels::Clear,
        _ => escalator_store::NoChannels::Keep,
    };
    s.store
        .upsert_users_with(std::slice::from_ref(&user), no_channels)
        .await?;
    // the stored row: an omitted channel list keeps the one already there
    let stored = s.store.get_user(&user.id).await?;
    let warnings = unreachable_channels(&stored);
    Ok(Json(UserView {
        warnings,
        ..stored.into()
    }))
}
