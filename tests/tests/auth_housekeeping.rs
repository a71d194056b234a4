//! svc-auth keeps its bookkeeping tables bounded and its secrets unreadable at rest.

use serde_json::json;
use tertulia_tests::{Stack, sql_client};

#[tokio::test]
async fn sweep_deletes_past_throttle_windows_and_long_expired_refresh_tokens() {
    let stack = Stack::start().await;
    stack.signed_up("olga").await;
    let db = sql_client().await;
    let s = &stack.schema;
    db.batch_execute(&format!(
        "INSERT INTO {s}.login_throttle VALUES ('user:ghost', now() - interval '2 hours', 3);
         UPDATE {s}.refresh_tokens SET expires_at = now() - interval '2 days';"
    ))
    .await
    .unwrap();

    let deleted = stack.accounts.sweep().await.unwrap();
    assert_eq!(deleted, 2, "the old window and the expired token");
    let left: i64 = db
        .query_one(&format!("SELECT count(*) FROM {s}.login_throttle"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2, "this window's rows (user and address) stay");
}

#[tokio::test]
async fn passwords_and_refresh_tokens_are_not_stored_in_clear() {
    let stack = Stack::start().await;
    let session = stack.signed_up("pablo").await;
    let db = sql_client().await;
    let s = &stack.schema;
    let hash: String = db
        .query_one(&format!("SELECT password_hash FROM {s}.users"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    let found: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {s}.refresh_tokens WHERE token_hash = $1"),
            &[&session.refresh_token.as_bytes()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 0, "only the hash is stored");
    // A malformed username is throttled by address only: no row keyed by the input.
    let long = "x".repeat(5000);
    let answer = stack
        .post(
            "/api/v1/auth/login",
            &json!({"username": long, "password": "whatever-password"}),
            None,
        )
        .await;
    assert_eq!(answer.status(), 401);
    let keys: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {s}.login_throttle WHERE length(throttle_key) > 100"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(keys, 0);
}
