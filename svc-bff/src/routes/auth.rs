//! `/api/v1/auth/*`, `/api/v1/me`, `/api/v1/users`, `/api/v1/contacts`: accounts, tokens and
//! contacts, all answered by svc-auth.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::{Deserialize, Serialize};
use tertulia_plumbing::client::with_deadline;
use tertulia_proto::auth::v1 as pb;

use crate::{
    app::AppState,
    extract::{ApiQuery, Caller, ClientAddress, JsonBody, page_limit},
    problem::ApiError,
    views::rfc3339,
};

/// The routes of this module, relative to `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/me", get(me))
        .route("/users", get(search_users))
        .route("/contacts", post(add_contact).get(list_contacts))
        .route("/contacts/{user_id}", delete(remove_contact))
}

/// A user as clients see it.
#[derive(Debug, Serialize)]
pub struct UserView {
    user_id: String,
    username: String,
    display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<String>,
}

impl From<pb::User> for UserView {
    fn from(user: pb::User) -> Self {
        Self {
            created_at: rfc3339(user.created_at.as_ref()),
            user_id: user.user_id,
            username: user.username,
            display_name: user.display_name,
        }
    }
}

fn user_view(user: Option<pb::User>) -> Result<UserView, ApiError> {
    crate::routes::answered(user, "svc-auth answered without a user")
}

/// A token pair as clients see it (RFC 6749 §5.1 field names).
#[derive(Debug, Serialize)]
struct TokenView {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u32,
    user_id: String,
}

/// Token answers must never be cached (RFC 6749 §5.1).
fn token_response(tokens: Option<pb::TokenPair>) -> Result<Response, ApiError> {
    let t = tokens.ok_or_else(|| ApiError::unavailable("svc-auth answered without tokens"))?;
    let view = TokenView {
        access_token: t.access_token,
        refresh_token: t.refresh_token,
        token_type: "Bearer",
        expires_in: t.expires_in,
        user_id: t.user_id,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(view)).into_response())
}

#[derive(Debug, Deserialize)]
struct RegisterBody {
    username: String,
    password: String,
    display_name: Option<String>,
}

async fn register(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let request = pb::RegisterRequest {
        username: body.username,
        password: body.password,
        display_name: body.display_name,
    };
    let user = state
        .auth
        .clone()
        .register(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .user;
    Ok((StatusCode::CREATED, Json(user_view(user)?)))
}

#[derive(Debug, Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ClientAddress(client_address): ClientAddress,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<Response, ApiError> {
    let request = pb::LoginRequest {
        username: body.username,
        password: body.password,
        client_address,
    };
    let tokens = state
        .auth
        .clone()
        .login(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .tokens;
    token_response(tokens)
}

#[derive(Debug, Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<Response, ApiError> {
    let request = pb::RefreshRequest {
        refresh_token: body.refresh_token,
    };
    let tokens = state
        .auth
        .clone()
        .refresh(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .tokens;
    token_response(tokens)
}

async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<RefreshBody>,
) -> Result<StatusCode, ApiError> {
    let request = pb::LogoutRequest {
        refresh_token: body.refresh_token,
        user_id: caller.user_id,
    };
    state
        .auth
        .clone()
        .logout(with_deadline(request, state.call_deadline))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<UserView>, ApiError> {
    let request = pb::GetUserRequest {
        user_id: caller.user_id,
    };
    let user = state
        .auth
        .clone()
        .get_user(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .user;
    Ok(Json(user_view(user)?))
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    query: String,
    limit: Option<u32>,
    /// Comma-separated user ids: look these users up instead of searching.
    ids: Option<String>,
}

/// Most ids one lookup takes (as many as a page).
const MAX_IDS: usize = 200;

#[derive(Debug, Serialize)]
struct UsersPage {
    users: Vec<UserView>,
}

async fn search_users(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<UsersPage>, ApiError> {
    if let Some(ids) = q.ids {
        if !q.query.is_empty() || q.limit.is_some() {
            return Err(ApiError::invalid_argument(
                "pass either ids or query (and limit), not both",
            ));
        }
        return users_by_id(&state, &ids).await;
    }
    let request = pb::SearchUsersRequest {
        query: q.query,
        limit: page_limit(q.limit)?,
    };
    let users = state
        .auth
        .clone()
        .search_users(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .users;
    Ok(Json(UsersPage {
        users: users.into_iter().map(UserView::from).collect(),
    }))
}

/// The users that exist among `user_ids`, in svc-auth's order.
pub(crate) async fn users_among(
    state: &AppState,
    user_ids: Vec<String>,
) -> Result<Vec<pb::User>, ApiError> {
    let request = pb::BatchGetUsersRequest { user_ids };
    Ok(state
        .auth
        .clone()
        .batch_get_users(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .users)
}

/// The users among `ids` (comma-separated, 1..=200) that exist, in the order asked; unknown
/// ids are left out, as in a search.
async fn users_by_id(state: &AppState, ids: &str) -> Result<Json<UsersPage>, ApiError> {
    let user_ids: Vec<String> = ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    if user_ids.is_empty() || user_ids.len() > MAX_IDS {
        return Err(ApiError::invalid_argument(format!(
            "ids: between 1 and {MAX_IDS} comma-separated user ids"
        )));
    }
    let mut found = users_among(state, user_ids.clone()).await?;
    found.sort_by_key(|user| user_ids.iter().position(|id| *id == user.user_id));
    found.dedup_by(|a, b| a.user_id == b.user_id);
    Ok(Json(UsersPage {
        users: found.into_iter().map(UserView::from).collect(),
    }))
}

#[derive(Debug, Deserialize)]
struct ContactBody {
    user_id: String,
}

#[derive(Debug, Serialize)]
struct ContactsPage {
    contacts: Vec<UserView>,
}

/// 201 with the contact when added, 200 when it already was one.
async fn add_contact(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<ContactBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let request = pb::AddContactRequest {
        owner_id: caller.user_id,
        contact_id: body.user_id,
    };
    let answer = state
        .auth
        .clone()
        .add_contact(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    let status = crate::routes::created_or_ok(answer.created);
    Ok((status, Json(user_view(answer.contact)?)))
}

async fn list_contacts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ContactsPage>, ApiError> {
    let request = pb::ListContactsRequest {
        owner_id: caller.user_id,
    };
    let contacts = state
        .auth
        .clone()
        .list_contacts(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .contacts;
    Ok(Json(ContactsPage {
        contacts: contacts.into_iter().map(UserView::from).collect(),
    }))
}

async fn remove_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let request = pb::RemoveContactRequest {
        owner_id: caller.user_id,
        contact_id: user_id,
    };
    state
        .auth
        .clone()
        .remove_contact(with_deadline(request, state.call_deadline))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
