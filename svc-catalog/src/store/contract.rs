//! The contract every [`VideoStore`] passes, run by the integration tests against each
//! adapter with a fresh, empty store. It panics on the first broken promise.

use time::OffsetDateTime;
use uuid::Uuid;

use super::VideoStore;
use crate::domain::{
    Cursor, Hit, Order, Rendition, Search,
    Status::{self, AwaitingUpload, Processing, Ready},
    Video, VideoChanges,
    Visibility::{self, Private, Public, Unlisted},
};

fn video(
    owner: Uuid,
    title: &str,
    description: &str,
    tags: &[&str],
    visibility: Visibility,
    status: Status,
) -> Video {
    let mut v = Video::create(
        owner,
        VideoChanges {
            title: Some(title.into()),
            description: Some(description.into()),
            tags: Some(tags.iter().map(|t| (*t).to_owned()).collect()),
            visibility: Some(visibility),
        },
        OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("valid"),
    )
    .expect("valid video");
    v.status = status;
    v
}

fn ids(hits: &[Hit]) -> Vec<Uuid> {
    hits.iter().map(|h| h.video.id).collect()
}

async fn search(store: &dyn VideoStore, search: Search) -> Vec<Uuid> {
    ids(&store
        .search(&Search {
            limit: 100,
            ..search
        })
        .await
        .expect("search"))
}

/// Runs the whole contract against `store`, which must be empty.
pub async fn run(store: &dyn VideoStore) {
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let cats = round_trip_and_replace(store, alice).await;
    let bobs_ready = visibility_and_search(store, alice, bob, &cats).await;
    pagination(store).await;
    relevance_and_tags(store).await;
    relevance_ranks_the_newest_matches(store).await;
    relevance_follows_edits(store).await;
    search_follows_changes(store).await;
    tombstones(store, &bobs_ready, &cats).await;
}

/// Round trip, unknown ids, optimistic replace. Returns the stored video.
async fn round_trip_and_replace(store: &dyn VideoStore, alice: Uuid) -> Video {
    let mut cats = video(
        alice,
        "Cats playing piano",
        "A concert by two cats.",
        &["music", "cats"],
        Public,
        Ready,
    );
    cats.duration_s = Some(12.5);
    cats.width = Some(640);
    cats.height = Some(360);
    cats.renditions = vec![Rendition {
        name: "360p".into(),
        width: 640,
        height: 360,
        bitrate: 800_000,
    }];
    cats.content_hash = Some("ab".repeat(32));
    store.insert(&cats).await.expect("insert");
    assert_eq!(
        store.get(cats.id).await.expect("get"),
        Some(cats.clone()),
        "round trip"
    );
    assert_eq!(store.get(Uuid::now_v7()).await.expect("get"), None);

    // Optimistic replace.
    let mut edited = cats.clone();
    edited.title = "Cats playing the piano".into();
    edited.revision += 1;
    assert!(
        store
            .replace(&edited, cats.revision)
            .await
            .expect("replace")
    );
    assert!(
        !store
            .replace(&edited, cats.revision)
            .await
            .expect("replace"),
        "stale revision"
    );
    assert_eq!(
        store.get(cats.id).await.expect("get").expect("found").title,
        edited.title
    );
    edited
}

/// Who lists what, filters and full text. Returns bob's ready video.
#[expect(
    clippy::too_many_lines,
    reason = "one scenario over one data set reads best top to bottom"
)]
async fn visibility_and_search(
    store: &dyn VideoStore,
    alice: Uuid,
    bob: Uuid,
    cats: &Video,
) -> Video {
    let private = video(
        alice,
        "Private diary",
        "Nobody else",
        &["diary"],
        Private,
        Ready,
    );
    let unlisted = video(
        alice,
        "Unlisted cats",
        "Cats for friends",
        &["cats"],
        Unlisted,
        Ready,
    );
    let uploading = video(
        alice,
        "Cats soon",
        "Not yet",
        &["cats"],
        Public,
        AwaitingUpload,
    );
    let bobs = video(
        bob,
        "Dogs running",
        "Dogs in a park, no cats",
        &["dogs"],
        Public,
        Processing,
    );
    let bobs_ready = video(
        bob,
        "Dogs sleeping",
        "Quiet dogs",
        &["dogs", "music"],
        Public,
        Ready,
    );
    for v in [&private, &unlisted, &uploading, &bobs, &bobs_ready] {
        store.insert(v).await.expect("insert");
    }

    // Visibility: others and anonymous list public, ready videos only; owners all of theirs.
    assert_eq!(
        search(store, Search::default()).await,
        [bobs_ready.id, cats.id],
        "anonymous"
    );
    assert_eq!(
        search(
            store,
            Search {
                viewer: Some(bob),
                ..Search::default()
            }
        )
        .await,
        [bobs_ready.id, bobs.id, cats.id],
        "bob"
    );
    assert_eq!(
        search(
            store,
            Search {
                viewer: Some(alice),
                owner_id: Some(alice),
                ..Search::default()
            }
        )
        .await,
        [uploading.id, unlisted.id, private.id, cats.id],
        "alice's own"
    );
    assert_eq!(
        search(
            store,
            Search {
                viewer: Some(bob),
                owner_id: Some(alice),
                ..Search::default()
            }
        )
        .await,
        [cats.id],
        "alice's, seen by bob"
    );

    // Filters and full text (title, tags, description; stemmed).
    let by_tag = |tag: &str, viewer| Search {
        viewer,
        tags: vec![tag.into()],
        ..Search::default()
    };
    assert_eq!(
        search(store, by_tag("music", None)).await,
        [bobs_ready.id, cats.id]
    );
    assert_eq!(
        search(store, by_tag("cats", Some(alice))).await,
        [uploading.id, unlisted.id, cats.id]
    );
    assert!(
        search(store, by_tag("nothing", Some(alice)))
            .await
            .is_empty()
    );
    let text = |q: &str, viewer| Search {
        viewer,
        text: Some(q.into()),
        ..Search::default()
    };
    assert_eq!(search(store, text("piano", None)).await, [cats.id], "title");
    assert_eq!(
        search(store, text("concert", None)).await,
        [cats.id],
        "description"
    );
    assert_eq!(
        search(store, text("music", None)).await,
        [bobs_ready.id, cats.id],
        "tags"
    );
    assert_eq!(
        search(store, text("sleep", None)).await,
        [bobs_ready.id],
        "stemmed"
    );
    assert_eq!(
        search(store, text("diary", Some(alice))).await,
        [private.id]
    );
    assert!(
        search(store, text("diary", Some(bob))).await.is_empty(),
        "private stays private"
    );
    assert!(
        search(store, text("zeppelin", Some(alice)))
            .await
            .is_empty()
    );

    bobs_ready
}

/// Keyset pagination: stable pages, newest first, no duplicates, nothing missed.
async fn pagination(store: &dyn VideoStore) {
    let carol = Uuid::now_v7();
    let mut all = Vec::new();
    for i in 0..7 {
        let v = video(
            carol,
            &format!("Episode {i}"),
            "",
            &["series"],
            Public,
            Ready,
        );
        store.insert(&v).await.expect("insert");
        all.push(v.id);
    }
    all.reverse();
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .search(&Search {
                owner_id: Some(carol),
                after,
                limit: 3,
                ..Search::default()
            })
            .await
            .expect("page");
        let done = page.len() < 3;
        after = page.last().map(|h| Cursor::Newest(h.video.id));
        pages.extend(ids(&page));
        if done {
            break;
        }
    }
    assert_eq!(pages, all, "pages");
}

/// A relevance search ranks only the newest `candidates` matches; `order=newest` still lists
/// every match.
async fn relevance_ranks_the_newest_matches(store: &dyn VideoStore) {
    let erin = Uuid::now_v7();
    // Oldest first: the best match is the oldest.
    let best = video(erin, "Clavichord", "", &[], Public, Ready);
    let in_tags = video(erin, "One", "", &["clavichord"], Public, Ready);
    let described = video(erin, "Two", "a clavichord", &[], Public, Ready);
    let newest = video(erin, "Three", "a clavichord", &[], Public, Ready);
    for v in [&best, &in_tags, &described, &newest] {
        store.insert(v).await.expect("insert");
    }
    let ranked = |candidates| Search {
        text: Some("clavichord".into()),
        order: Order::Relevance,
        limit: 10,
        candidates,
        ..Search::default()
    };
    assert_eq!(
        search(store, ranked(3)).await,
        [in_tags.id, newest.id, described.id],
        "the three newest matches, ranked; the oldest is left out"
    );
    assert_eq!(
        search(store, ranked(10)).await,
        [best.id, in_tags.id, newest.id, described.id],
        "with room for all, all are ranked"
    );
    let every = Search {
        text: Some("clavichord".into()),
        ..Search::default()
    };
    assert_eq!(
        search(store, every).await,
        [newest.id, described.id, in_tags.id, best.id],
        "newest first lists every match"
    );
}

/// Relevance order (title over tags over description, ties newest first) pages by its own
/// cursor without duplicates or gaps; several tags must all match.
async fn relevance_and_tags(store: &dyn VideoStore) {
    let dave = Uuid::now_v7();
    // Inserted best match first, so newest-first order would be the reverse.
    let in_title = video(
        dave,
        "Harpsichord basics",
        "",
        &["baroque", "lesson"],
        Public,
        Ready,
    );
    let in_tags = video(
        dave,
        "Lesson two",
        "",
        &["harpsichord", "lesson"],
        Public,
        Ready,
    );
    let in_description = video(
        dave,
        "Lesson three",
        "a harpsichord piece",
        &["lesson"],
        Public,
        Ready,
    );
    let twin = video(
        dave,
        "Lesson four",
        "a harpsichord piece",
        &["lesson"],
        Public,
        Ready,
    );
    for v in [&in_title, &in_tags, &in_description, &twin] {
        store.insert(v).await.expect("insert");
    }
    let ranked = Search {
        text: Some("harpsichord".into()),
        order: Order::Relevance,
        ..Search::default()
    };
    let hits = store
        .search(&Search {
            limit: 10,
            ..ranked.clone()
        })
        .await
        .expect("ranked");
    assert_eq!(
        ids(&hits),
        [in_title.id, in_tags.id, twin.id, in_description.id],
        "title, then tags, then description; equal scores newest first"
    );
    assert!(
        hits.windows(2).all(|w| w[0].relevance >= w[1].relevance) && hits[3].relevance > 0.0,
        "scores are positive and descending: {hits:?}"
    );
    let paged = pages_of_one(store, &ranked).await;
    assert_eq!(paged, ids(&hits), "pages of one in relevance order");

    let tagged = |tags: &[&str]| Search {
        owner_id: Some(dave),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..Search::default()
    };
    assert_eq!(
        search(store, tagged(&["lesson", "baroque"])).await,
        [in_title.id],
        "every tag must match"
    );
    assert_eq!(
        search(store, tagged(&["lesson"])).await,
        [twin.id, in_description.id, in_tags.id, in_title.id]
    );
    assert!(
        search(store, tagged(&["lesson", "nothing"]))
            .await
            .is_empty()
    );
}

/// Every result of `search`, fetched one per page, each page resuming after the last.
async fn pages_of_one(store: &dyn VideoStore, search: &Search) -> Vec<Uuid> {
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .search(&Search {
                after,
                limit: 1,
                ..search.clone()
            })
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.cursor(search.order));
        paged.extend(ids(&page));
    }
    paged
}

/// Changes `video` with `change` and stores it at its next revision.
async fn edit(store: &dyn VideoStore, video: &mut Video, change: impl FnOnce(&mut Video)) {
    let revision = video.revision;
    change(video);
    video.revision += 1;
    assert!(store.replace(video, revision).await.expect("replace"));
}

/// Searches by words, tags and owner together see every change at once: a video made
/// private leaves others' results (its owner still finds it), an edited title is found by
/// its new words only, a video that becomes ready joins them; newest-first pages of a search
/// go by their cursor.
async fn search_follows_changes(store: &dyn VideoStore) {
    let (frank, grace) = (Uuid::now_v7(), Uuid::now_v7());
    let mut oldest = video(frank, "Glacier walk", "ice", &["alps"], Public, Ready);
    let hidden = video(frank, "Glacier camp", "", &["alps"], Private, Ready);
    let mut soon = video(frank, "Glacier climb", "", &["alps"], Public, Processing);
    let other = video(grace, "Glacier lake", "", &["alps"], Public, Ready);
    let untagged = video(frank, "Glacier melt", "", &[], Public, Ready);
    for v in [&oldest, &hidden, &soon, &other, &untagged] {
        store.insert(v).await.expect("insert");
    }
    let find = |text: &str, tags: &[&str], owner_id, viewer, order| Search {
        viewer,
        text: Some(text.into()),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        owner_id,
        order,
        ..Search::default()
    };
    let newest = Order::Newest;
    assert_eq!(
        search(store, find("glacier", &["alps"], None, Some(grace), newest)).await,
        [other.id, oldest.id],
        "word and tag, by someone else"
    );
    assert_eq!(
        search(
            store,
            find("glacier", &["alps"], Some(frank), Some(grace), newest)
        )
        .await,
        [oldest.id],
        "word, tag and owner"
    );
    assert_eq!(
        search(store, find("glacier", &["alps"], None, Some(frank), newest)).await,
        [other.id, soon.id, hidden.id, oldest.id],
        "the owner also finds their videos that others cannot list"
    );
    assert_eq!(
        search(
            store,
            find("glacier", &["alps"], Some(frank), Some(frank), newest)
        )
        .await,
        [soon.id, hidden.id, oldest.id],
        "the owner's own, by themselves"
    );
    assert_eq!(
        search(
            store,
            find("glacier", &[], Some(grace), Some(frank), newest)
        )
        .await,
        [other.id],
        "someone else's, seen by the owner of the others"
    );

    // Made private: gone for others, still there for the owner.
    edit(store, &mut oldest, |v| v.visibility = Private).await;
    assert_eq!(
        search(store, find("glacier", &["alps"], None, None, newest)).await,
        [other.id],
        "made private"
    );
    assert_eq!(
        search(store, find("ice", &[], None, Some(frank), Order::Relevance)).await,
        [oldest.id],
        "the owner still finds it"
    );

    // Public again with a new title: found by its new words only.
    edit(store, &mut oldest, |v| {
        v.visibility = Public;
        v.title = "Moraine walk".into();
        v.tags = vec!["alps".into(), "hiking".into()];
    })
    .await;
    assert_eq!(
        search(store, find("glacier", &["alps"], None, None, newest)).await,
        [other.id],
        "the old title's words"
    );
    assert_eq!(
        search(
            store,
            find("moraine", &["hiking"], None, None, Order::Relevance)
        )
        .await,
        [oldest.id],
        "the new title's words and a new tag"
    );

    // Ready: listed.
    edit(store, &mut soon, |v| v.status = Ready).await;
    assert_eq!(
        search(store, find("glacier", &["alps"], None, None, newest)).await,
        [other.id, soon.id],
        "became ready"
    );

    // Newest-first pages of a word search resume after their cursor.
    let paged = pages_of_one(store, &find("glacier", &[], None, Some(frank), newest)).await;
    assert_eq!(
        paged,
        [untagged.id, other.id, soon.id, hidden.id],
        "pages of one"
    );
}

/// Relevance follows edits, and ranks the owner's unlisted videos as listed ones: a word in
/// a title outranks it in a description, and a word in both outranks it in a title.
async fn relevance_follows_edits(store: &dyn VideoStore) {
    let (frank, grace) = (Uuid::now_v7(), Uuid::now_v7());
    let find = |viewer| Search {
        viewer: Some(viewer),
        text: Some("crevasse".into()),
        order: Order::Relevance,
        limit: 100,
        ..Search::default()
    };
    let titled = video(grace, "Crevasse", "", &[], Public, Ready);
    let mut described = video(grace, "Pebbles", "crevasse", &[], Public, Ready);
    let unlisted = video(grace, "Crevasse", "", &[], Private, Ready);
    for v in [&titled, &described, &unlisted] {
        store.insert(v).await.expect("insert");
    }
    let ranked = |viewer| async move { store.search(&find(viewer)).await.expect("search") };
    let hits = ranked(grace).await;
    assert_eq!(
        ids(&hits),
        [unlisted.id, titled.id, described.id],
        "title matches first, ties newest first"
    );
    assert!(
        hits[0].relevance.total_cmp(&hits[1].relevance).is_eq()
            && hits[1].relevance > hits[2].relevance,
        "the same title, the same rank, listed or not: {hits:?}"
    );
    edit(store, &mut described, |v| v.title = "Crevasse".into()).await;
    assert_eq!(
        ids(&ranked(grace).await),
        [described.id, unlisted.id, titled.id],
        "the word now in its title and its description"
    );
    assert_eq!(
        ids(&ranked(frank).await),
        [described.id, titled.id],
        "others do not see the unlisted one"
    );
}

/// The query syntax of the PostgreSQL store (`websearch_to_tsquery`): every word must match,
/// `"quoted words"` are a phrase, `-word` excludes, `or` gives alternatives, and a query of
/// stop words only finds nothing. MongoDB's `$text` reads plain words as alternatives, so
/// its adapter is not held to this part. Needs an empty store.
pub async fn query_syntax(store: &dyn VideoStore) {
    let (heidi, ivan) = (Uuid::now_v7(), Uuid::now_v7());
    let red_fox = video(
        heidi,
        "Red fox",
        "a fox in the snow",
        &["wild"],
        Public,
        Ready,
    );
    let fox_red = video(heidi, "Fox, red", "", &["wild"], Public, Ready);
    let grey_fox = video(heidi, "Grey fox", "", &[], Public, Ready);
    let red_kite = video(ivan, "Red kite", "", &["wild"], Public, Ready);
    let mine = video(ivan, "Red fox at home", "", &["wild"], Private, Ready);
    for v in [&red_fox, &fox_red, &grey_fox, &red_kite, &mine] {
        store.insert(v).await.expect("insert");
    }
    let find = |text: &str, viewer| Search {
        viewer,
        text: Some(text.into()),
        ..Search::default()
    };
    assert_eq!(
        search(store, find("red fox", None)).await,
        [fox_red.id, red_fox.id],
        "every word"
    );
    assert_eq!(
        search(store, find("foxes REDS", Some(ivan))).await,
        [mine.id, fox_red.id, red_fox.id],
        "every word, stemmed, and the viewer's own"
    );
    assert_eq!(
        search(store, find("\"red fox\"", Some(ivan))).await,
        [mine.id, red_fox.id],
        "a phrase"
    );
    assert_eq!(
        search(store, find("fox -red", None)).await,
        [grey_fox.id],
        "an exclusion"
    );
    assert_eq!(
        search(store, find("kite or grey", None)).await,
        [red_kite.id, grey_fox.id],
        "alternatives"
    );
    assert!(
        search(store, find("the and of", None)).await.is_empty(),
        "stop words only"
    );
    let tagged = Search {
        tags: vec!["wild".into()],
        order: Order::Relevance,
        ..find("red fox", Some(ivan))
    };
    assert_eq!(
        search(store, tagged).await,
        [red_fox.id, mine.id, fox_red.id],
        "ranked with a tag: the title and description first, then the newest"
    );
}

/// Tombstones leave every listing, stay findable for the saga, then go.
async fn tombstones(store: &dyn VideoStore, bobs_ready: &Video, cats: &Video) {
    let by_tag = |tag: &str| Search {
        tags: vec![tag.into()],
        ..Search::default()
    };

    let mut gone = bobs_ready.clone();
    gone.deleted = true;
    gone.revision += 1;
    assert!(
        store
            .replace(&gone, bobs_ready.revision)
            .await
            .expect("tombstone")
    );
    assert_eq!(search(store, by_tag("music")).await, [cats.id]);
    assert_eq!(
        store
            .tombstoned(10)
            .await
            .expect("tombstoned")
            .iter()
            .map(|v| v.id)
            .collect::<Vec<_>>(),
        [gone.id]
    );
    store.remove(gone.id).await.expect("remove");
    assert_eq!(store.get(gone.id).await.expect("get"), None);
    assert!(store.tombstoned(10).await.expect("tombstoned").is_empty());
}
