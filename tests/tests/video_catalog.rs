//! The catalog through the public API: visibility on every read, owner-only edits, search
//! and keyset pagination, the delete saga and the orphan reconciler; and the store contract
//! suite against PostgreSQL (and MongoDB when one is configured).

use serde_json::{Value, json};
use tertulia_tests::{
    Session, Stack, assert_problem, drop_schema, fresh_database,
    media::{video_fixture, wait_for_video},
};

async fn json_of(response: reqwest::Response) -> Value {
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

async fn patch(stack: &Stack, id: &str, body: &Value, who: &Session) -> reqwest::Response {
    stack
        .http
        .patch(stack.url(&format!("/api/v1/videos/{id}")))
        .bearer_auth(&who.access_token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn delete(stack: &Stack, id: &str, who: &Session) -> reqwest::Response {
    stack
        .delete(&format!("/api/v1/videos/{id}"), &who.access_token)
        .await
}

async fn get(stack: &Stack, id: &str, who: Option<&Session>) -> reqwest::Response {
    stack
        .get(
            &format!("/api/v1/videos/{id}"),
            who.map(|s| s.access_token.as_str()),
        )
        .await
}

async fn list(stack: &Stack, query: &str, who: Option<&Session>) -> reqwest::Response {
    stack
        .get(
            &format!("/api/v1/videos?{query}"),
            who.map(|s| s.access_token.as_str()),
        )
        .await
}

fn ids(page: &Value) -> Vec<String> {
    page["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn visibility_is_enforced_for_owner_others_and_anonymous() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let private = stack.create_video(&alice, &json!({"title": "Mine"})).await;
    assert_eq!(
        private["visibility"], "private",
        "private unless said otherwise"
    );
    let private = private["id"].as_str().unwrap();
    let unlisted = stack
        .create_video(
            &alice,
            &json!({"title": "Link only", "visibility": "unlisted"}),
        )
        .await;
    let unlisted = unlisted["id"].as_str().unwrap();
    let public = stack
        .upload_video(&alice, "For all", video_fixture(2, 320, 240))
        .await;
    wait_for_video(&mut ws, &public, "ready").await;

    assert_eq!(get(&stack, private, Some(&alice)).await.status(), 200);
    assert_problem(get(&stack, private, Some(&bob)).await, 404, "not_found").await;
    assert_problem(get(&stack, private, None).await, 404, "not_found").await;
    assert_eq!(
        get(&stack, unlisted, None).await.status(),
        200,
        "unlisted opens by id"
    );
    let bobs_view = json_of(get(&stack, &public, Some(&bob)).await).await;
    assert!(
        bobs_view["playback"]["hls_url"].is_string(),
        "others get signed URLs of public videos"
    );

    // Lists: others and anonymous see public, ready videos; the owner sees all of theirs.
    let anonymous = json_of(list(&stack, "", None).await).await;
    assert_eq!(ids(&anonymous), std::slice::from_ref(&public));
    assert!(
        anonymous["videos"][0]["playback"]["hls_url"].is_string(),
        "listed videos carry signed URLs: {anonymous}"
    );
    assert_eq!(
        ids(&json_of(list(&stack, "", Some(&bob)).await).await),
        std::slice::from_ref(&public)
    );
    let own = json_of(
        stack
            .get(
                &format!("/api/v1/videos?owner_id={}", alice.user_id),
                Some(&alice.access_token),
            )
            .await,
    )
    .await;
    assert_eq!(ids(&own).len(), 3);

    only_the_owner_edits(&stack, &alice, &bob, &public, private).await;
}

#[tokio::test]
async fn search_filters_and_stable_pages() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let mut created = Vec::new();
    for (title, description, tags) in [
        (
            "Sailing the fjords",
            "Wind and water",
            vec!["travel", "norway"],
        ),
        ("Cooking paella", "Rice, saffron, patience", vec!["food"]),
        ("Fjord kayaking", "Paddles out", vec!["travel"]),
        ("Bread at home", "Flour and water", vec!["food", "baking"]),
        ("Night sky", "Stars over the fjord", vec!["astro"]),
    ] {
        let v = stack
            .create_video(
                &alice,
                &json!({"title": title, "description": description, "tags": tags}),
            )
            .await;
        created.push(v["id"].as_str().unwrap().to_owned());
    }
    stack
        .create_video(&bob, &json!({"title": "Bob's fjord"}))
        .await;

    // Full text over title, description and tags (stemmed), newest first.
    assert_eq!(
        ids(&json_of(list(&stack, "query=fjords", Some(&alice)).await).await),
        [created[4].clone(), created[2].clone(), created[0].clone()]
    );
    assert_eq!(
        ids(&json_of(list(&stack, "query=saffron", Some(&alice)).await).await),
        [created[1].clone()]
    );
    assert_eq!(
        ids(&json_of(list(&stack, "query=baking", Some(&alice)).await).await),
        [created[3].clone()]
    );
    assert_eq!(
        ids(&json_of(list(&stack, "query=water%20flour", Some(&alice)).await).await),
        [created[3].clone()],
        "all words must match"
    );
    assert!(ids(&json_of(list(&stack, "query=zeppelin", Some(&alice)).await).await).is_empty());
    assert_eq!(
        ids(&json_of(list(&stack, "tag=FOOD", Some(&alice)).await).await),
        [created[3].clone(), created[1].clone()]
    );
    assert_eq!(
        ids(&json_of(list(&stack, "tag=travel&query=kayak", Some(&alice)).await).await),
        [created[2].clone()]
    );
    assert_eq!(
        ids(
            &json_of(list(&stack, &format!("owner_id={}", alice.user_id), Some(&alice)).await)
                .await
        )
        .len(),
        5
    );
    assert!(
        ids(&json_of(list(&stack, &format!("owner_id={}", bob.user_id), Some(&alice)).await).await)
            .is_empty(),
        "bob's private video"
    );

    pages_of_two(&stack, &alice, &created).await;
    v2_search(&stack, &alice, &created).await;
}

/// `GET /api/v2/videos`: relevance first when there is a query (title over description),
/// several tags that must all match, relevance pages, and v1's `tag` refused.
async fn v2_search(stack: &Stack, alice: &Session, created: &[String]) {
    let search = |query: String| {
        let token = alice.access_token.clone();
        async move {
            stack
                .get(&format!("/api/v2/videos?{query}"), Some(&token))
                .await
        }
    };
    let ranked = json_of(search("query=fjord".into()).await).await;
    assert_eq!(ranked["order"], "relevance");
    let by_relevance = [created[2].clone(), created[0].clone(), created[4].clone()];
    assert_eq!(
        ids(&ranked),
        by_relevance,
        "titles (equal, newest first) before a description"
    );
    let newest = json_of(search("query=fjord&order=newest".into()).await).await;
    assert_eq!(newest["order"], "newest");
    assert_eq!(
        ids(&newest),
        [created[4].clone(), created[2].clone(), created[0].clone()]
    );
    assert_eq!(
        ids(&json_of(search("tags=travel,NORWAY".into()).await).await),
        [created[0].clone()],
        "every tag must match"
    );
    assert_eq!(
        ids(&json_of(search("tags=travel".into()).await).await),
        [created[2].clone(), created[0].clone()]
    );

    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = json_of(search(format!("query=fjord&limit=1&page_token={token}")).await).await;
        paged.extend(ids(&page));
        match page["next_page_token"].as_str() {
            Some(next) => next.clone_into(&mut token),
            None => break,
        }
    }
    assert_eq!(paged, by_relevance, "relevance pages");

    let v1_token =
        json_of(list(stack, "query=fjord&limit=1", Some(alice)).await).await["next_page_token"]
            .as_str()
            .unwrap()
            .to_owned();
    for bad in [
        "tag=travel".to_owned(),
        "order=relevance".to_owned(),
        "order=best&query=fjord".to_owned(),
        format!("query=fjord&page_token={v1_token}"),
        "query=fj%00ord".to_owned(),
        "query=fjord&tags=a%00".to_owned(),
    ] {
        assert_problem(search(bad).await, 400, "invalid_argument").await;
    }
    let same_order = search(format!("query=fjord&order=newest&page_token={v1_token}")).await;
    assert_eq!(
        ids(&json_of(same_order).await),
        [created[2].clone(), created[0].clone()],
        "v1 tokens of newest-first pages still work"
    );
}

#[tokio::test]
async fn delete_leaves_no_object_and_the_reconciler_finishes_interrupted_sagas() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let first = stack
        .upload_video(&alice, "First", video_fixture(2, 320, 240))
        .await;
    wait_for_video(&mut ws, &first, "ready").await;
    let before = stack.blob_keys().await;
    assert!(
        before.iter().any(|k| k.ends_with("master.m3u8")),
        "{before:?}"
    );
    let playback: Value = json_of(stack.get(&format!("/api/v1/videos/{first}"), None).await).await;

    assert_eq!(delete(&stack, &first, &alice).await.status(), 204);
    assert_problem(
        stack
            .get(
                &format!("/api/v1/videos/{first}"),
                Some(&alice.access_token),
            )
            .await,
        404,
        "not_found",
    )
    .await;
    assert!(stack.blob_keys().await.is_empty(), "every object is gone");
    let url = playback["playback"]["hls_url"].as_str().unwrap();
    assert_problem(stack.fetch(url).await, 404, "not_found").await;
    assert_problem(delete(&stack, &first, &alice).await, 404, "not_found").await;

    // A saga whose media step fails (svc-media unreachable) leaves a tombstone; the
    // reconciler finishes it.
    let second = stack
        .upload_video(&alice, "Second", video_fixture(2, 320, 240))
        .await;
    wait_for_video(&mut ws, &second, "ready").await;
    let unreachable = tertulia_plumbing::client::channel(
        &tertulia_plumbing::config::UpstreamConfig::at("http://127.0.0.1:9"),
    )
    .unwrap();
    let broken = svc_catalog::deletion::Deletion::new(
        stack.catalog_state.clone(),
        unreachable,
        std::time::Duration::from_secs(2),
    );
    broken.delete(&alice.user_id, &second).await.unwrap();
    assert_problem(
        stack
            .get(
                &format!("/api/v1/videos/{second}"),
                Some(&alice.access_token),
            )
            .await,
        404,
        "not_found",
    )
    .await;
    assert!(!stack.blob_keys().await.is_empty(), "media still there");
    assert_eq!(stack.deletion.reconcile_once().await.unwrap(), 1);
    assert!(stack.blob_keys().await.is_empty());
    assert_eq!(
        stack.deletion.reconcile_once().await.unwrap(),
        0,
        "nothing left to do"
    );
}

#[tokio::test]
async fn the_reconciler_removes_orphans_and_never_a_referenced_blob() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let kept = stack
        .upload_video(&alice, "Kept", video_fixture(2, 320, 240))
        .await;
    wait_for_video(&mut ws, &kept, "ready").await;
    let referenced = stack.blob_keys().await;
    let blobs = &stack.media_state.blobs;
    let orphan = object_store::path::Path::from(format!("originals/{}", "ab".repeat(32)));
    let orphan_derived =
        object_store::path::Path::from(format!("derived/{}/hls/master.m3u8", "ab".repeat(32)));
    blobs
        .put_bytes(&orphan, b"left behind".to_vec())
        .await
        .unwrap();
    blobs
        .put_bytes(&orphan_derived, b"#EXTM3U".to_vec())
        .await
        .unwrap();

    let grace = std::time::Duration::from_hours(1);
    assert_eq!(
        svc_media::housekeeping::reconcile_once(&stack.media_state, grace)
            .await
            .unwrap(),
        0,
        "young orphans are left alone"
    );
    let removed =
        svc_media::housekeeping::reconcile_once(&stack.media_state, std::time::Duration::ZERO)
            .await
            .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(stack.blob_keys().await, referenced, "referenced blobs stay");
    let got: Value = json_of(stack.get(&format!("/api/v1/videos/{kept}"), None).await).await;
    assert_eq!(
        stack
            .fetch(got["playback"]["hls_url"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

/// A PostgreSQL store in a fresh, migrated schema, and the schema's name.
async fn postgres_store() -> (svc_catalog::store::postgres::PostgresVideos, String) {
    let database = fresh_database();
    let pool = tertulia_plumbing::postgres::connect(&database)
        .await
        .unwrap();
    tertulia_plumbing::postgres::migrate(&pool, svc_catalog::store::postgres::MIGRATIONS)
        .await
        .unwrap();
    (
        svc_catalog::store::postgres::PostgresVideos::new(pool),
        database.schema,
    )
}

#[tokio::test]
async fn the_postgres_store_passes_the_contract() {
    let (store, schema) = postgres_store().await;
    svc_catalog::store::contract::run(&store).await;
    drop_schema(&schema);
}

#[tokio::test]
async fn the_postgres_store_reads_words_phrases_exclusions_and_alternatives() {
    let (store, schema) = postgres_store().await;
    svc_catalog::store::contract::query_syntax(&store).await;
    drop_schema(&schema);
}

#[tokio::test]
async fn the_mongodb_store_passes_the_contract_when_configured() {
    let Ok(url) = std::env::var("TERTULIA_TEST_MONGODB_URL") else {
        eprintln!("SKIPPED: MongoDB contract suite (set TERTULIA_TEST_MONGODB_URL to run it)");
        return;
    };
    let database = tertulia_tests::unique_name("t");
    let store = svc_catalog::store::mongo::MongoVideos::connect(&url, &database)
        .await
        .expect("MongoDB reachable");
    svc_catalog::store::contract::run(&store).await;
    let client = mongodb::Client::with_uri_str(&url).await.unwrap();
    client.database(&database).drop().await.unwrap();
}

/// Owner-only edits and deletes; bad input is refused.
async fn only_the_owner_edits(
    stack: &Stack,
    alice: &Session,
    bob: &Session,
    public: &str,
    private: &str,
) {
    // Only the owner edits or deletes; a private video is simply not there for others.
    assert_problem(
        patch(stack, public, &json!({"title": "Mine now"}), bob).await,
        403,
        "permission_denied",
    )
    .await;
    assert_problem(delete(stack, public, bob).await, 403, "permission_denied").await;
    assert_problem(
        patch(stack, private, &json!({"title": "x"}), bob).await,
        404,
        "not_found",
    )
    .await;
    let edited = json_of(
        patch(
            stack,
            private,
            &json!({"title": "Renamed", "tags": ["a"], "visibility": "public"}),
            alice,
        )
        .await,
    )
    .await;
    assert_eq!(
        (edited["title"].as_str(), edited["visibility"].as_str()),
        (Some("Renamed"), Some("public"))
    );
    assert_problem(
        patch(stack, private, &json!({"visibility": "everyone"}), alice).await,
        400,
        "invalid_argument",
    )
    .await;
    for bad in [
        json!({"title": ""}),
        json!({"title": "a\0b"}),
        json!({"description": "nul\0"}),
    ] {
        assert_problem(
            patch(stack, private, &bad, alice).await,
            400,
            "invalid_argument",
        )
        .await;
    }
    let bad_token = stack
        .http
        .get(stack.url("/api/v1/videos"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_problem(bad_token, 401, "unauthenticated").await;
    assert_problem(
        stack
            .post("/api/v1/videos", &json!({"title": "x"}), None)
            .await,
        401,
        "unauthenticated",
    )
    .await;
}

/// Pages of two: every video once, in order, then no token; bad paging input is refused.
async fn pages_of_two(stack: &Stack, alice: &Session, created: &[String]) {
    // Pages of two: every video once, in order, then no token.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = json_of(
            list(
                stack,
                &format!("owner_id={}&limit=2&page_token={token}", alice.user_id),
                Some(alice),
            )
            .await,
        )
        .await;
        seen.extend(ids(&page));
        match page["next_page_token"].as_str() {
            Some(t) => t.clone_into(&mut token),
            None => break,
        }
    }
    let mut newest_first = created.to_vec();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    assert_problem(
        list(stack, "page_token=garbage", Some(alice)).await,
        400,
        "invalid_argument",
    )
    .await;
    assert_problem(
        list(stack, "limit=0", Some(alice)).await,
        400,
        "invalid_argument",
    )
    .await;
    assert_problem(
        list(stack, "limit=201", Some(alice)).await,
        400,
        "invalid_argument",
    )
    .await;
    assert_problem(
        list(stack, "owner_id=nope", Some(alice)).await,
        400,
        "invalid_argument",
    )
    .await;
}
