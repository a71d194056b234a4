//! The web client in a real browser: the built app (`web/dist`, made by `scripts/web.sh build`,
//! which `make test` runs first) served by svc-bff over a stack of its own, driven by the
//! playwright-core tests in `web/e2e/` through Debian's Chromium. Screenshots of the main
//! screens land in `web/e2e-artifacts/`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tertulia_tests::{Stack, media::video_fixture};

/// The browser tests take about 20 s alone; generous for a loaded machine.
const BOUND: Duration = Duration::from_mins(6);

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_video_work_in_a_real_browser() {
    let web = web_dir();
    let dist = web.join("dist");
    assert!(
        dist.join("index.html").is_file(),
        "the web client is not built: run scripts/web.sh build (make test does)"
    );
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).is_file(),
        "no Chromium at {chromium}: run scripts/tools.sh --browser (make test does)"
    );
    let stack = Stack::start_tuned(
        |_| {},
        |bff| {
            bff.web = Some(svc_bff::web::WebConfig { root: dist.clone() });
        },
    )
    .await;
    let scratch = std::env::temp_dir()
        .join("tertulia-tests")
        .join(tertulia_tests::unique_name("web"));
    std::fs::create_dir_all(&scratch).expect("scratch folder");
    let video = scratch.join("clip.mp4");
    std::fs::write(&video, video_fixture(6, 640, 360)).expect("video fixture");

    let run = tokio::process::Command::new("node")
        .args(["--test", "e2e/"])
        .current_dir(&web)
        .env("TERTULIA_WEB_URL", stack.url("/"))
        .env("TERTULIA_E2E_VIDEO", &video)
        .env("TERTULIA_E2E_ARTIFACTS", web.join("e2e-artifacts"))
        .env("CHROMIUM_BIN", &chromium)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BOUND, run)
        .await
        .expect("the browser tests finish in time")
        .expect("node runs (scripts/tools.sh installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        output.status.success(),
        "browser tests failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Every test ran and passed (node prints its own tally).
    assert!(report.contains("# fail 0"), "{report}");
    assert!(!report.contains("# pass 0"), "{report}");
    for screen in [
        "04-conversation",
        "05-phone-conversation",
        "12-player",
        "14-phone-library",
    ] {
        assert!(
            web.join("e2e-artifacts")
                .join(format!("{screen}.png"))
                .is_file(),
            "screenshot {screen} saved"
        );
    }
}

/// The files themselves: the app at `/` and at its own routes, hashed assets cached for good,
/// and the API's paths still answering as the API.
#[tokio::test]
async fn the_gateway_serves_the_app_beside_the_api() {
    let root = std::env::temp_dir()
        .join("tertulia-tests")
        .join(tertulia_tests::unique_name("dist"));
    std::fs::create_dir_all(root.join("assets")).expect("dist folder");
    std::fs::write(root.join("index.html"), "<!doctype html><title>app</title>").expect("index");
    std::fs::write(root.join("assets/app-0123abcd.js"), "console.log(1)").expect("asset");
    let stack = Stack::start_tuned(
        |_| {},
        |bff| {
            bff.web = Some(svc_bff::web::WebConfig { root: root.clone() });
        },
    )
    .await;
    for path in ["/", "/chat/some-conversation", "/videos"] {
        let page = stack.get(path, None).await;
        assert_eq!(page.status(), 200, "{path}");
        assert_eq!(page.headers()["content-type"], "text/html", "{path}");
        assert_eq!(page.headers()["cache-control"], "no-cache", "{path}");
        assert!(page.text().await.unwrap().contains("<title>app</title>"));
    }
    let asset = stack.get("/assets/app-0123abcd.js", None).await;
    assert_eq!(asset.status(), 200);
    assert_eq!(
        asset.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(asset.headers()["x-content-type-options"], "nosniff");
    // A missing asset is a 404, not the app's page in disguise (cached for a year).
    let missing = stack.get("/assets/gone-ffff.js", None).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    // The API keeps its own answers: problems for unknown routes and methods.
    for path in ["/api/v2/nope", "/api/v1/", "/admin/nope"] {
        let answer = stack.get(path, None).await;
        assert_eq!(answer.status(), 404, "{path}");
        assert_eq!(
            answer.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
    }
    let post = stack.post("/", &serde_json::json!({}), None).await;
    assert_eq!(post.status(), 404);
    assert_eq!(post.headers()["content-type"], "application/problem+json");
    let _ = std::fs::remove_dir_all(&root);
}
