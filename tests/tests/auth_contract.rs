//! Every row of CONTRACT.md's Auth table through the BFF, with svc-auth behind it, against
//! the real PostgreSQL: the happy paths and each documented bad input.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use svc_auth::domain::{AccessTokenIssuer, SigningKey};
use tertulia_tests::{Stack, assert_problem};

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn register_answers_201_with_the_user_and_409_for_a_taken_name() {
    let stack = Stack::start().await;
    let body = json!({"username": "alice", "password": PASSWORD, "display_name": "Alice A."});
    let created = stack.post("/api/v1/auth/register", &body, None).await;
    assert_eq!(created.status(), 201);
    assert!(created.headers().contains_key("x-request-id"));
    let user: Value = created.json().await.unwrap();
    assert_eq!(user["username"], "alice");
    assert_eq!(user["display_name"], "Alice A.");
    assert!(user["user_id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());

    let again = stack.post("/api/v1/auth/register", &body, None).await;
    assert_problem(again, 409, "already_exists").await;
}

#[tokio::test]
async fn register_rejects_bad_usernames_and_passwords_with_400() {
    let stack = Stack::start().await;
    let long_password = "x".repeat(10 * 1024);
    let cases = [
        json!({"username": "ab", "password": PASSWORD}),
        json!({"username": "Alice", "password": PASSWORD}),
        json!({"username": "al ice", "password": PASSWORD}),
        json!({"username": "a".repeat(33), "password": PASSWORD}),
        json!({"username": "alice", "password": "short"}),
        json!({"username": "alice", "password": long_password}),
        json!({"username": "alice", "password": PASSWORD, "display_name": "  "}),
        json!({"username": "alice"}),
        json!({"username": 7, "password": PASSWORD}),
    ];
    for case in cases {
        let answer = stack.post("/api/v1/auth/register", &case, None).await;
        let problem = assert_problem(answer, 400, "invalid_argument").await;
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_huge_bodies_are_problems() {
    let stack = Stack::start().await;
    let url = stack.url("/api/v1/auth/register");
    let malformed = stack
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, 400, "invalid_argument").await;

    let not_json = stack
        .http
        .post(&url)
        .body("username=alice")
        .send()
        .await
        .unwrap();
    assert_problem(not_json, 415, "unsupported_media_type").await;

    let huge = format!("{{\"username\":\"{}\"}}", "a".repeat(2 * 1024 * 1024));
    let too_large = stack
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_problem(too_large, 413, "payload_too_large").await;
}

#[tokio::test]
async fn login_answers_tokens_and_one_401_for_unknown_user_and_wrong_password() {
    let stack = Stack::start().await;
    let session = stack.signed_up("bob").await;
    assert_eq!(session.access_token.split('.').count(), 3);

    let login = stack.login("bob", PASSWORD).await;
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["cache-control"], "no-store");
    let body: Value = login.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body["user_id"], session.user_id.as_str());

    let wrong = stack.login("bob", "not the password").await;
    let wrong = assert_problem(wrong, 401, "unauthenticated").await;
    let unknown = stack.login("nobody", "not the password").await;
    let unknown = assert_problem(unknown, 401, "unauthenticated").await;
    assert_eq!(wrong, unknown, "the same answer for both");

    let malformed = stack
        .post("/api/v1/auth/login", &json!({"username": "bob"}), None)
        .await;
    assert_problem(malformed, 400, "invalid_argument").await;
}

#[tokio::test]
async fn login_is_rate_limited_per_username_with_retry_after() {
    let stack = Stack::start_with(|c| c.login_limits.per_username = 3).await;
    stack.signed_up("carol").await; // one attempt used
    for _ in 0..2 {
        let answer = stack.login("carol", "wrong password").await;
        assert_eq!(answer.status(), 401);
    }
    let limited = stack.login("carol", PASSWORD).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_problem(limited, 429, "rate_limited").await;
    // Another username is not affected.
    stack.signed_up("dave").await;
}

#[tokio::test]
async fn login_is_rate_limited_per_client_address() {
    let stack = Stack::start_with(|c| c.login_limits.per_address = 2).await;
    for name in ["erin", "frank"] {
        let answer = stack.login(name, PASSWORD).await;
        assert_eq!(answer.status(), 401);
    }
    let limited = stack.login("grace", PASSWORD).await;
    assert_problem(limited, 429, "rate_limited").await;
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let stack = Stack::start().await;
    let session = stack.signed_up("heidi").await;
    let first = stack.refresh(&session.refresh_token).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let rotated = first["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rotated, session.refresh_token);
    let me = stack
        .get("/api/v1/me", first["access_token"].as_str())
        .await;
    assert_eq!(me.status(), 200);

    // The spent token again: refused, and the family is revoked...
    let reuse = stack.refresh(&session.refresh_token).await;
    assert_problem(reuse, 401, "unauthenticated").await;
    // ...so the token rotated from it no longer works either.
    let after = stack.refresh(&rotated).await;
    assert_problem(after, 401, "unauthenticated").await;

    let garbage = stack.refresh("nope").await;
    assert_problem(garbage, 401, "unauthenticated").await;
}

#[tokio::test]
async fn logout_revokes_the_family_and_needs_a_token() {
    let stack = Stack::start().await;
    let session = stack.signed_up("ivan").await;
    let body = json!({"refresh_token": session.refresh_token});
    let anonymous = stack.post("/api/v1/auth/logout", &body, None).await;
    assert_problem(anonymous, 401, "unauthenticated").await;

    let out = stack
        .post("/api/v1/auth/logout", &body, Some(&session.access_token))
        .await;
    assert_eq!(out.status(), 204);
    let refresh = stack.post("/api/v1/auth/refresh", &body, None).await;
    assert_problem(refresh, 401, "unauthenticated").await;

    // Someone else's refresh token is not theirs to revoke.
    let judy = stack.signed_up("judy").await;
    let foreign = stack
        .post(
            "/api/v1/auth/logout",
            &json!({"refresh_token": judy.refresh_token}),
            Some(&session.access_token),
        )
        .await;
    assert_eq!(foreign.status(), 204);
    let still = stack.refresh(&judy.refresh_token).await;
    assert_eq!(still.status(), 200);
}

#[tokio::test]
async fn me_requires_a_valid_access_token() {
    let stack = Stack::start().await;
    let session = stack.signed_up("kim").await;
    let me = stack.get("/api/v1/me", Some(&session.access_token)).await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["user_id"], session.user_id.as_str());
    assert_eq!(me["username"], "kim");

    let missing = stack.get("/api/v1/me", None).await;
    assert!(
        missing.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_problem(missing, 401, "unauthenticated").await;

    let basic = stack
        .http
        .get(stack.url("/api/v1/me"))
        .header("authorization", "Basic a2ltOnB3")
        .send()
        .await
        .unwrap();
    assert_problem(basic, 401, "unauthenticated").await;

    for token in invalid_tokens(&stack, &session.user_id) {
        let answer = stack.get("/api/v1/me", Some(&token)).await;
        assert_problem(answer, 401, "unauthenticated").await;
    }
}

/// Expired, forged (right `kid`, wrong key), `alg: none`, refresh-token-as-access-token,
/// wrong `typ`, and garbage.
fn invalid_tokens(stack: &Stack, user_id: &str) -> Vec<String> {
    let real = stack.accounts.issuer();
    let expired = real
        .issue_at(
            user_id,
            time::OffsetDateTime::now_utc() - time::Duration::hours(2),
        )
        .unwrap();
    let valid = real.issue(user_id).unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(valid.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let kid = header["kid"].as_str().unwrap().to_owned();
    let forged = AccessTokenIssuer::new(
        &SigningKey {
            kid: kid.clone(),
            ..SigningKey::generate()
        },
        "tertulia-auth".into(),
        "tertulia".into(),
        time::Duration::minutes(15),
    )
    .issue(user_id)
    .unwrap();
    let claims = valid.split('.').nth(1).unwrap();
    let none_header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt", "kid": kid}).to_string());
    let alg_none = format!("{none_header}.{claims}.");
    let jwt_header =
        URL_SAFE_NO_PAD.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}).to_string());
    let signature = valid.split('.').nth(2).unwrap();
    let wrong_typ = format!("{jwt_header}.{claims}.{signature}");
    vec![
        expired,
        forged,
        alg_none,
        wrong_typ,
        "not-a-token".into(),
        format!("{valid}x"),
    ]
}

/// `field` of each user in a `{users: [...]}` answer, in order.
fn field_of_users<'a>(answer: &'a Value, field: &str) -> Vec<&'a str> {
    answer["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u[field].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn users_search_is_a_prefix_search_with_a_bounded_limit() {
    let stack = Stack::start().await;
    let session = stack.signed_up("ann_1").await;
    stack.signed_up("ann.2").await;
    stack.signed_up("annex").await;
    stack.signed_up("bert").await;
    let found = stack
        .get("/api/v1/users?query=ann", Some(&session.access_token))
        .await;
    assert_eq!(found.status(), 200);
    let found: Value = found.json().await.unwrap();
    assert_eq!(
        field_of_users(&found, "username"),
        ["ann.2", "ann_1", "annex"]
    );

    // `_` is literal, not a wildcard.
    let literal: Value = stack
        .get_json("/api/v1/users?query=ann_", Some(&session.access_token))
        .await;
    assert_eq!(literal["users"].as_array().unwrap().len(), 1);

    let limited: Value = stack
        .get(
            "/api/v1/users?query=ann&limit=2",
            Some(&session.access_token),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(limited["users"].as_array().unwrap().len(), 2);

    for bad in ["limit=0", "limit=201", "limit=abc"] {
        let answer = stack
            .get(&format!("/api/v1/users?{bad}"), Some(&session.access_token))
            .await;
        assert_problem(answer, 400, "invalid_argument").await;
    }
    let anonymous = stack.get("/api/v1/users?query=ann", None).await;
    assert_problem(anonymous, 401, "unauthenticated").await;
}

#[tokio::test]
async fn users_are_looked_up_by_id_in_the_order_asked() {
    let stack = Stack::start().await;
    let me = stack.signed_up("olga").await;
    let pia = stack.signed_up("pia").await;
    let token = Some(me.access_token.as_str());
    let unknown = uuid::Uuid::now_v7().to_string();
    let path = format!(
        "/api/v2/users?ids={},{unknown},{},{}",
        pia.user_id, me.user_id, pia.user_id
    );
    let found = stack.get(&path, token).await;
    assert_eq!(found.status(), 200);
    let found: Value = found.json().await.unwrap();
    // Unknown ids are left out, repeated ones answered once.
    assert_eq!(field_of_users(&found, "display_name"), ["pia", "olga"]);

    let too_many = vec![me.user_id.as_str(); 201].join(",");
    for bad in [
        "ids=".to_owned(),
        format!("ids={too_many}"),
        format!("ids={}&query=p", me.user_id),
    ] {
        let answer = stack.get(&format!("/api/v2/users?{bad}"), token).await;
        assert_problem(answer, 400, "invalid_argument").await;
    }
    let anonymous = stack
        .get(&format!("/api/v2/users?ids={}", me.user_id), None)
        .await;
    assert_problem(anonymous, 401, "unauthenticated").await;
}

#[tokio::test]
async fn contacts_can_be_added_listed_and_removed() {
    let stack = Stack::start().await;
    let me = stack.signed_up("lena").await;
    let friend = stack.signed_up("mike").await;
    let token = Some(me.access_token.as_str());

    let added = stack
        .post(
            "/api/v1/contacts",
            &json!({"user_id": friend.user_id}),
            token,
        )
        .await;
    assert_eq!(added.status(), 201);
    let added: Value = added.json().await.unwrap();
    assert_eq!(added["username"], "mike");
    let again = stack
        .post(
            "/api/v1/contacts",
            &json!({"user_id": friend.user_id}),
            token,
        )
        .await;
    assert_eq!(again.status(), 200, "adding twice is idempotent");

    let listed: Value = stack.get_json("/api/v1/contacts", token).await;
    assert_eq!(listed["contacts"][0]["user_id"], friend.user_id.as_str());
    assert_eq!(listed["contacts"].as_array().unwrap().len(), 1);

    let unknown = stack
        .post(
            "/api/v1/contacts",
            &json!({"user_id": uuid::Uuid::now_v7().to_string()}),
            token,
        )
        .await;
    assert_problem(unknown, 404, "not_found").await;
    let myself = stack
        .post("/api/v1/contacts", &json!({"user_id": me.user_id}), token)
        .await;
    assert_problem(myself, 400, "invalid_argument").await;

    let path = format!("/api/v1/contacts/{}", friend.user_id);
    let removed = stack.delete(&path, &me.access_token).await;
    assert_eq!(removed.status(), 204);
    let gone = stack.delete(&path, &me.access_token).await;
    assert_problem(gone, 404, "not_found").await;
    let listed: Value = stack.get_json("/api/v1/contacts", token).await;
    assert!(listed["contacts"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn jwks_publishes_the_ed25519_key_that_verifies_tokens() {
    let stack = Stack::start().await;
    let answer = stack.get("/.well-known/jwks.json", None).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "application/jwk-set+json");
    let jwks = answer.text().await.unwrap();
    let verifier = tertulia_plumbing::token::TokenVerifier::from_jwks(
        &tertulia_plumbing::token::TokenPolicy::standard(),
        &jwks,
    )
    .unwrap();
    let session = stack.signed_up("nina").await;
    let claims = verifier.verify(&session.access_token).await.unwrap();
    assert_eq!(claims.sub, session.user_id);
    let parsed: Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(parsed["keys"][0]["kty"], "OKP");
    assert_eq!(parsed["keys"][0]["crv"], "Ed25519");
    assert!(parsed["keys"][0].get("d").is_none(), "no private part");
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_and_request_ids_echo() {
    let stack = Stack::start().await;
    let missing = stack.get("/api/v1/nope", None).await;
    assert_problem(missing, 404, "not_found").await;
    let wrong_method = stack.get("/api/v1/auth/login", None).await;
    assert_problem(wrong_method, 405, "method_not_allowed").await;
    let echoed = stack
        .http
        .get(stack.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "abc-123");
    let ready = stack.get("/readyz", None).await;
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn two_concurrent_refreshes_of_one_token_are_one_rotation_and_one_reuse() {
    let stack = Stack::start().await;
    let session = stack.signed_up("olaf").await;
    let body = json!({"refresh_token": session.refresh_token});
    let (a, b) = tokio::join!(
        stack.post("/api/v1/auth/refresh", &body, None),
        stack.post("/api/v1/auth/refresh", &body, None)
    );
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401]);
}
