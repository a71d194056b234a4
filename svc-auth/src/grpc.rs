//! `tertulia.auth.v1.AuthService`: decode → [`Accounts`] → encode. Nothing else.

use tertulia_plumbing::wire::timestamp;
use tertulia_proto::auth::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{
    accounts::{Accounts, Tokens},
    domain::User,
};

/// The gRPC face of [`Accounts`].
#[derive(Debug, Clone)]
pub struct AuthGrpc {
    accounts: Accounts,
}

impl AuthGrpc {
    /// Serves `accounts`.
    #[must_use]
    pub fn new(accounts: Accounts) -> Self {
        Self { accounts }
    }
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        Self {
            user_id: user.user_id.to_string(),
            username: user.username,
            display_name: user.display_name,
            created_at: Some(timestamp(user.created_at)),
        }
    }
}

impl From<Tokens> for pb::TokenPair {
    fn from(tokens: Tokens) -> Self {
        Self {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            expires_in: tokens.expires_in,
            user_id: tokens.user_id.to_string(),
        }
    }
}

fn users(users: Vec<User>) -> Vec<pb::User> {
    users.into_iter().map(pb::User::from).collect()
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthGrpc {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        let user = self
            .accounts
            .register(&r.username, r.password, r.display_name.as_deref())
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user.into()),
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let r = request.into_inner();
        let tokens = self
            .accounts
            .login(&r.username, r.password, &r.client_address)
            .await?;
        Ok(Response::new(pb::LoginResponse {
            tokens: Some(tokens.into()),
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let tokens = self
            .accounts
            .refresh(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(pb::RefreshResponse {
            tokens: Some(tokens.into()),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let r = request.into_inner();
        self.accounts.logout(&r.refresh_token, &r.user_id).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let user = self.accounts.user(&request.into_inner().user_id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user.into()),
        }))
    }

    async fn batch_get_users(
        &self,
        request: Request<pb::BatchGetUsersRequest>,
    ) -> Result<Response<pb::BatchGetUsersResponse>, Status> {
        let found = self.accounts.users(&request.into_inner().user_ids).await?;
        Ok(Response::new(pb::BatchGetUsersResponse {
            users: users(found),
        }))
    }

    async fn search_users(
        &self,
        request: Request<pb::SearchUsersRequest>,
    ) -> Result<Response<pb::SearchUsersResponse>, Status> {
        let r = request.into_inner();
        let found = self.accounts.search(&r.query, r.limit).await?;
        Ok(Response::new(pb::SearchUsersResponse {
            users: users(found),
        }))
    }

    async fn add_contact(
        &self,
        request: Request<pb::AddContactRequest>,
    ) -> Result<Response<pb::AddContactResponse>, Status> {
        let r = request.into_inner();
        let (contact, created) = self
            .accounts
            .add_contact(&r.owner_id, &r.contact_id)
            .await?;
        Ok(Response::new(pb::AddContactResponse {
            contact: Some(contact.into()),
            created,
        }))
    }

    async fn remove_contact(
        &self,
        request: Request<pb::RemoveContactRequest>,
    ) -> Result<Response<pb::RemoveContactResponse>, Status> {
        let r = request.into_inner();
        self.accounts
            .remove_contact(&r.owner_id, &r.contact_id)
            .await?;
        Ok(Response::new(pb::RemoveContactResponse {}))
    }

    async fn list_contacts(
        &self,
        request: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let found = self
            .accounts
            .contacts(&request.into_inner().owner_id)
            .await?;
        Ok(Response::new(pb::ListContactsResponse {
            contacts: users(found),
        }))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: self.accounts.jwks().to_owned(),
        }))
    }
}
